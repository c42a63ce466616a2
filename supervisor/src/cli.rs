//! The command line: four verbs, each flag mirrored by a config key.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Runs a daemon under the handoff supervisor and upgrades it with nothing lost.
#[derive(Debug, Parser)]
#[command(name = "handoffctl", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor in the foreground: bind (or adopt) the listeners,
    /// start generation 1, serve the admin socket.
    Run(Box<RunArgs>),
    /// Replace the running generation; returns when the handoff committed
    /// (exit 0) or rolled back (exit 1). Exit 2: usage or connection error;
    /// exit 3: another handoff is in flight.
    Upgrade(UpgradeArgs),
    /// Report the supervisor, its generation and the last handoff.
    Status(StatusArgs),
    /// Stop gracefully: the generation drains, then the supervisor exits 0.
    Stop(Target),
    /// The last handoffs: outcome, binaries (path and sha256), timings,
    /// reasons.
    History(StatusArgs),
    /// Upgrade back to the binary that ran before the last commit (the
    /// path and sha256 the supervisor recorded); exit codes as `upgrade`.
    Rollback(RollbackArgs),
}

impl Command {
    /// Whether the caller asked for JSON on stdout.
    pub fn wants_json(&self) -> bool {
        match self {
            Command::Upgrade(args) => args.json,
            Command::Rollback(args) => args.json,
            Command::Status(args) | Command::History(args) => args.json,
            Command::Run(_) | Command::Stop(_) => false,
        }
    }
}

/// `handoffctl rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Where the supervisor is.
    #[command(flatten)]
    pub target: Target,
    /// The incumbent's drain timeout for this handoff.
    #[arg(long, value_name = "DUR")]
    pub drain_timeout: Option<String>,
    /// The deadline of this handoff.
    #[arg(long, value_name = "DUR")]
    pub deadline: Option<String>,
    /// Exclusive mode: if the running generation fails to drain or seal,
    /// stop it (its stop signal, SIGKILL after the kill grace) and let the
    /// new one take over as after a crash, instead of rolling back. The way
    /// out of a build whose seal always fails. Costs: clients wait in the
    /// listen backlog meanwhile, and only writes the daemon fsynced before
    /// acknowledging survive (the daemons here all do).
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// How a client finds the admin socket.
#[derive(Debug, Args)]
pub struct Target {
    /// The admin socket.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    pub socket: Option<PathBuf>,
    /// Take the admin socket from this config file (its `socket` key, or the
    /// default path).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `handoffctl run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file; flags override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The admin socket [default: $RUNTIME_DIRECTORY/handoff.sock, else
    /// $XDG_RUNTIME_DIR/handoff/handoff.sock, else /run/handoff/handoff.sock
    /// for root or /tmp/handoff-UID/handoff.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// A listener: ADDR is HOST:PORT (TCP), unix:PATH or udp:HOST:PORT.
    /// Repeatable.
    #[arg(long = "listen", value_name = "NAME=ADDR")]
    pub listen: Vec<String>,
    /// The daemon's data directory: created if missing and passed to every
    /// generation as HANDOFF_DATA_DIR.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// exclusive (stateful, the default) or overlap (stateless).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// The incumbent's drain timeout in a handoff (250ms, 30s, 5m).
    #[arg(long, value_name = "DUR")]
    pub drain_timeout: Option<String>,
    /// The overall deadline of a handoff, spawn to commit (250ms, 30s, 5m).
    #[arg(long, value_name = "DUR")]
    pub deadline: Option<String>,
    /// When a generation that exits outside a handoff is restarted.
    #[arg(long, value_enum)]
    pub restart: Option<RestartArg>,
    /// Log format on stderr.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// How the daemon is supervised: `library` (it links handoff) or
    /// `systemd` (any daemon: socket activation on fds 3.., readiness by
    /// READY=1 on NOTIFY_SOCKET or by --probe, stopped by --stop-signal;
    /// always overlap).
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// With --protocol systemd: `notify` (READY=1 from the daemon's pid) or
    /// `probe` (the daemon is ready when --probe passes).
    #[arg(long, value_enum)]
    pub ready_signal: Option<ReadySignalArg>,
    /// With --protocol systemd: the signal that stops a generation
    /// gracefully (TERM, QUIT, INT, HUP, USR1, USR2) [default: TERM];
    /// SIGKILL follows after the drain timeout.
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Health gate: before Commit, probe the successor with
    /// `http://HOST:PORT/PATH` (GET, expects --probe-status) or
    /// `tcp:HOST:PORT` (connect); a probe that never passes rolls back. Aim
    /// it at an address only the successor serves (see README).
    #[arg(long, value_name = "URL")]
    pub probe: Option<String>,
    /// The HTTP status the probe expects [default: 200].
    #[arg(long, value_name = "CODE")]
    pub probe_status: Option<u16>,
    /// Overlap mode: after a commit, keep the old generation drained and
    /// idle this long; if the new one crashes meanwhile, the old one serves
    /// again at once (an automatic rollback) [default: off].
    #[arg(long, value_name = "DUR")]
    pub probation: Option<String>,
    /// With --protocol systemd and --probation: the signal that tells the
    /// old generation at the commit to stop accepting, finish its requests
    /// and stay alive (WINCH, as nginx; TERM, QUIT, INT, HUP, USR1, USR2).
    /// Needs --resume-signal. Without it, the old generation keeps serving
    /// beside the new one until the probation ends (a warm standby).
    #[arg(long, value_name = "SIGNAL")]
    pub probation_signal: Option<String>,
    /// With --probation-signal: the signal that makes a quiesced old
    /// generation accept again when the new one fails in probation (HUP,
    /// as nginx).
    #[arg(long, value_name = "SIGNAL")]
    pub resume_signal: Option<String>,
    /// Where `history` is kept across supervisor restarts [default: next
    /// to the admin socket, its extension replaced by `.history.json`].
    #[arg(long, value_name = "FILE")]
    pub history_file: Option<PathBuf>,
    /// How long the probe is retried before the handoff rolls back
    /// [default: 30s; bounded by --deadline].
    #[arg(long, value_name = "DUR")]
    pub probe_timeout: Option<String>,
    /// After a rolled-back handoff, how long the old generation has to
    /// resume; past it, it is killed and the restart policy decides
    /// [default: 30s].
    #[arg(long, value_name = "DUR")]
    pub resume_timeout: Option<String>,
    /// A binary an upgrade may run besides the configured one (as the
    /// config's `allowed_binaries`). Repeatable.
    #[arg(long = "allow-binary", value_name = "PATH")]
    pub allow_binary: Vec<PathBuf>,
    /// The daemon binary and its arguments.
    #[arg(last = true, value_name = "BINARY [ARGS]...")]
    pub command: Vec<OsString>,
}

/// `handoffctl upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Where the supervisor is.
    #[command(flatten)]
    pub target: Target,
    /// The successor's binary [default: the configured binary, as it is on
    /// disk now]. Must be the configured one or in `allowed_binaries`.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// The binary's expected sha256 (hex); the file is hashed and that same
    /// open file is executed.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// The incumbent's drain timeout for this handoff.
    #[arg(long, value_name = "DUR")]
    pub drain_timeout: Option<String>,
    /// The deadline of this handoff.
    #[arg(long, value_name = "DUR")]
    pub deadline: Option<String>,
    /// Exclusive mode: if the running generation fails to drain or seal,
    /// stop it (its stop signal, SIGKILL after the kill grace) and let the
    /// new one take over as after a crash, instead of rolling back. The way
    /// out of a build whose seal always fails. Costs: clients wait in the
    /// listen backlog meanwhile, and only writes the daemon fsynced before
    /// acknowledging survive (the daemons here all do).
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// `handoffctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Where the supervisor is.
    #[command(flatten)]
    pub target: Target,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeArg {
    /// Drain, seal, then the successor begins: one writer at a time.
    Exclusive,
    /// The successor serves first, then the incumbent drains.
    Overlap,
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolArg {
    /// The daemon links the handoff library.
    Library,
    /// Any daemon, with systemd's conventions.
    Systemd,
}

/// `--ready-signal`.
#[derive(Debug, Clone, Copy, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadySignalArg {
    /// READY=1 on NOTIFY_SOCKET.
    Notify,
    /// The health probe passes.
    Probe,
}

/// `--restart`.
#[derive(Debug, Clone, Copy, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartArg {
    /// Whatever the exit status.
    Always,
    /// Unless it exited with status 0.
    OnFailure,
    /// Never: the supervisor stops when its generation exits.
    Never,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}
