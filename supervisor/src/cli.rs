//! The command line: its verbs and their flags (`run`'s are [`RunOptions`],
//! shared with the config file).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::RunOptions;

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
    /// (exit 0) or rolled back (exit 1: the old generation still serves;
    /// exit 4: nobody serves, the restart policy decides). Exit 2: usage,
    /// refusal or connection error; exit 3: another handoff is in flight.
    /// `--json` answers carry Ansible's `changed`, `failed` and `msg`.
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
    /// Replace the running supervisor's own image with a new handoffctl
    /// build, keeping its pid, its generations and its listeners. Exit 0:
    /// the new image is in charge (or nothing changed, with --if-changed);
    /// 1: the old image still is (the reason is printed); 2: usage or
    /// connection error; 3: a handoff or another re-exec is in flight.
    Reexec(ReexecArgs),
    /// Print what this build is and which supervisor state it can take
    /// over (JSON); `reexec` runs it on its target before anything changes.
    SelfCheck,
    /// Wait until the serving generation (of the build `--sha256`, if
    /// given) has served for `--serving-for` with no restart and no
    /// rollback, and no earlier generation is kept in probation: the gate
    /// between two batches of a rolling upgrade. Exit 0 then; exit 1 with
    /// the reason at `--timeout`; exit 2 on bad input.
    Wait(WaitArgs),
}

impl Command {
    /// Whether the caller asked for JSON on stdout.
    pub fn wants_json(&self) -> bool {
        match self {
            Command::Upgrade(args) => args.json,
            Command::Rollback(args) => args.json,
            Command::Status(args) | Command::History(args) => args.json,
            Command::Reexec(args) => args.json,
            Command::Wait(args) => args.json,
            Command::Run(_) | Command::Stop(_) | Command::SelfCheck => false,
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

/// `handoffctl reexec`.
#[derive(Debug, Args)]
pub struct ReexecArgs {
    /// Where the supervisor is.
    #[command(flatten)]
    pub target: Target,
    /// The new handoffctl [default: the path the supervisor was started
    /// from, as it is on disk now]. Must be that path or in
    /// `allowed_supervisor_binaries`.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// The new build's expected sha256 (hex); the file is hashed and that
    /// same open file is executed.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Do nothing (exit 0, "changed": false) when the target hashes like
    /// the running image: for an ExecReload= after a package upgrade.
    #[arg(long)]
    pub if_changed: bool,
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
    /// Every other option, each also a config key.
    #[command(flatten)]
    pub options: RunOptions,
    /// The daemon binary and its arguments.
    #[arg(last = true, value_name = "BINARY [ARGS]...")]
    pub command: Vec<OsString>,
    /// Set by a supervisor replacing its own image: the sealed memfd
    /// holding its state; every other option comes from there.
    #[arg(long, hide = true, value_name = "FD")]
    pub restore_fd: Option<i32>,
    /// Set by a new image that could not take over: why; this image takes
    /// its state back and answers the caller that the re-exec failed.
    #[arg(long, hide = true, value_name = "REASON", requires = "restore_fd")]
    pub exec_back: Option<String>,
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
    /// Do nothing (exit 0, `"changed": false`) when the serving generation
    /// already runs a binary with the target's sha256. Without it, an
    /// upgrade to the same build still replaces the generation.
    #[arg(long)]
    pub if_changed: bool,
    /// A dry run: make every check the upgrade makes (binary allowed,
    /// present, executable, sha256, bounds, the supervisor up and not
    /// busy) and report what it would do; change nothing. Exit codes as
    /// the upgrade's refusals (2 refused, 3 busy).
    #[arg(long)]
    pub check: bool,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// `handoffctl wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Where the supervisor is.
    #[command(flatten)]
    pub target: Target,
    /// How long the serving generation must have served, since its commit
    /// or resumption (250ms, 30s, 5m).
    #[arg(long, value_name = "DUR")]
    pub serving_for: String,
    /// Give up after this long [default: --serving-for plus 5m].
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,
    /// The build that must be serving (hex sha256 of its binary).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
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
