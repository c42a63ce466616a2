//! `handoffctl run`'s options: one struct, [`RunOptions`], is both the
//! command line's flags and the config file's keys (a key is its flag's
//! name with `_` for `-`), so an option is written once; a flag wins over
//! its key. Everything is checked here, before any socket is bound, and a
//! bad value is one line naming what the user wrote ([`Origin`]: the flag,
//! or the key and its file) and the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use handoff::supervisor::{DaemonProtocol, RestartPolicy};
use handoff::timeouts::parse_duration;
use handoff::{ListenAddr, Mode, Timeouts};

use crate::cli::{LogFormat, ModeArg, ProtocolArg, ReadySignalArg, RestartArg, RunArgs, Target};
use crate::error::Failure;
use crate::reexec::state::CarriedConfig;

/// The name of the admin socket inside a runtime directory.
const SOCKET_NAME: &str = "handoff.sock";

/// Which options came from the config file, and which file: a complaint
/// names what the user wrote, the flag or the key.
#[derive(Debug, Default, Clone)]
pub struct Origin {
    file: Option<PathBuf>,
    /// Config keys taken from the file (`listen.NAME` for a listener).
    keys: BTreeSet<String>,
}

impl Origin {
    fn file_of(&self, key: &str) -> Option<&Path> {
        self.file.as_deref().filter(|_| self.keys.contains(key))
    }

    /// How option `key` (a config key's name) was written: `--drain-timeout`,
    /// or `drain_timeout (in FILE)`.
    pub fn name(&self, key: &str) -> String {
        match self.file_of(key) {
            Some(file) => format!("{key} (in {})", file.display()),
            None => format!("--{}", key.replace('_', "-")),
        }
    }

    /// Option `key` with its value: `--deadline "soon"`, or
    /// `deadline = "soon" (in FILE)`.
    pub fn value(&self, key: &str, text: &str) -> String {
        self.written(key, &format!("{text:?}"))
    }

    /// Option `key` with a number, bare as TOML writes it.
    pub fn number(&self, key: &str, number: impl std::fmt::Display) -> String {
        self.written(key, &number.to_string())
    }

    fn written(&self, key: &str, value: &str) -> String {
        match self.file_of(key) {
            Some(file) => format!("{key} = {value} (in {})", file.display()),
            None => format!("--{} {value}", key.replace('_', "-")),
        }
    }

    /// A listener as written: `--listen NAME=ADDR`, or
    /// `[listen] NAME = "ADDR" (in FILE)`.
    pub fn listener(&self, name: &str, addr: &str) -> String {
        match self.file_of(&format!("listen.{name}")) {
            Some(file) => format!("[listen] {name} = {addr:?} (in {})", file.display()),
            None => format!("--listen {name}={addr}"),
        }
    }
}

/// Every option of `handoffctl run`, as a flag and as a config key. Keys
/// marked "config only" have no flag; unknown keys are an error (a typo
/// must not be silently ignored).
#[derive(Debug, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// Never read: where the options came from (see [`Origin`]).
    #[arg(skip)]
    #[serde(skip)]
    pub origin: Origin,
    /// Config only: the daemon binary (on the command line: `-- BINARY`).
    #[arg(skip)]
    pub binary: Option<PathBuf>,
    /// Config only: its arguments (on the command line: `-- BINARY ARGS`).
    #[arg(skip)]
    pub args: Option<Vec<String>>,
    /// The admin socket [default: $RUNTIME_DIRECTORY/handoff.sock, else
    /// $XDG_RUNTIME_DIR/handoff/handoff.sock, else /run/handoff/handoff.sock
    /// for root or /tmp/handoff-UID/handoff.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// A listener: ADDR is HOST:PORT (TCP), unix:PATH or udp:HOST:PORT.
    /// Repeatable. In the config, a table: `[listen]` then `NAME = "ADDR"`.
    #[arg(long = "listen", value_name = "NAME=ADDR")]
    #[serde(default, deserialize_with = "listen_table")]
    pub listen: Vec<String>,
    /// The daemon's data directory: created if missing and passed to every
    /// generation as HANDOFF_DATA_DIR.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// exclusive (stateful, the default) or overlap (stateless).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// The incumbent's drain timeout in a handoff (250ms, 30s, 5m)
    /// [default: 60s, at most the deadline].
    #[arg(long, value_name = "DUR")]
    pub drain_timeout: Option<String>,
    /// The overall deadline of a handoff, request to commit (250ms, 30s,
    /// 5m) [default: 5m].
    #[arg(long, value_name = "DUR")]
    pub deadline: Option<String>,
    /// After a rolled-back handoff, how long the old generation has to
    /// resume; past it, it is killed and the restart policy decides
    /// [default: 30s].
    #[arg(long, value_name = "DUR")]
    pub resume_timeout: Option<String>,
    /// When a generation that exits outside a handoff is restarted
    /// [default: on-failure].
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
    /// gracefully (TERM, QUIT, INT, HUP, USR1, USR2, WINCH) [default:
    /// TERM]; SIGKILL follows if it is still there after its drain (an old
    /// generation: the drain timeout; at a stop: 30 s) and the kill grace.
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Health gate: before Commit, probe the successor with
    /// `http://HOST:PORT/PATH` (GET, expects --probe-status) or
    /// `tcp:HOST:PORT` (connect); a probe that never passes rolls back. Aim
    /// it at an address only the successor serves (see the manual).
    #[arg(long, value_name = "URL")]
    pub probe: Option<String>,
    /// The HTTP status the probe expects [default: 200].
    #[arg(long, value_name = "CODE")]
    pub probe_status: Option<u16>,
    /// How long the probe is retried before the handoff rolls back
    /// [default: 30s; bounded by --deadline].
    #[arg(long, value_name = "DUR")]
    pub probe_timeout: Option<String>,
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
    /// With --protocol systemd: the most fds the daemon may keep in the
    /// supervisor's fd store (FDSTORE=1 on NOTIFY_SOCKET, as systemd's
    /// FileDescriptorStoreMax=); every later generation gets them after
    /// the listeners. 0 turns the store off [default: 16].
    #[arg(long, value_name = "N")]
    pub fd_store_max: Option<usize>,
    /// Where `history` is kept across supervisor restarts [default: next
    /// to the admin socket, its extension replaced by `.history.json`].
    #[arg(long, value_name = "FILE")]
    pub history_file: Option<PathBuf>,
    /// Config only: the sha256 the configured binary must have whenever it
    /// starts (generation 1, an upgrade to it, a restart).
    #[arg(skip)]
    pub sha256: Option<String>,
    /// Config only: uids besides ours and root that may use the admin
    /// socket.
    #[arg(skip)]
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// A binary an upgrade may run besides the configured one. Repeatable;
    /// in the config, `allowed_binaries = [...]`.
    #[arg(long = "allow-binary", value_name = "PATH")]
    #[serde(default)]
    pub allowed_binaries: Vec<PathBuf>,
    /// A `handoffctl` build `reexec` may run besides the one the supervisor
    /// was started from. Repeatable; in the config,
    /// `allowed_supervisor_binaries = [...]`.
    #[arg(long = "allow-supervisor-binary", value_name = "PATH")]
    #[serde(default)]
    pub allowed_supervisor_binaries: Vec<PathBuf>,
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics
    /// (ADDR is HOST:PORT, for example 127.0.0.1:9464) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

/// `[listen]` as `NAME=ADDR` lines, the flags' form.
fn listen_table<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    let table: BTreeMap<String, String> = serde::Deserialize::deserialize(deserializer)?;
    Ok(table
        .into_iter()
        .map(|(name, addr)| format!("{name}={addr}"))
        .collect())
}

/// Takes `$field` from `$file` where `$flags` left it unset.
macro_rules! unset_from {
    ($flags:ident, $file:ident; $($field:ident),* $(,)?) => {
        $( if $flags.$field.is_none() && $file.$field.is_some() {
            $flags.$field = $file.$field.take();
            $flags.origin.keys.insert(stringify!($field).to_owned());
        } )*
    };
}

impl RunOptions {
    /// Reads and parses a config file; its relative paths are relative to
    /// the file.
    pub fn load(path: &Path) -> Result<RunOptions, Failure> {
        RunOptions::parse(path, &read_config(path)?.text)
    }

    /// Parses the text of the config file at `path`; its relative paths
    /// are relative to the file.
    pub fn parse(path: &Path, text: &str) -> Result<RunOptions, Failure> {
        let mut options: RunOptions = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end();
            let place = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            Failure::usage(format!(
                "invalid config {}{place}: {message}",
                path.display()
            ))
        })?;
        options.origin.file = Some(path.to_path_buf());
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let relative = |path: &mut Option<PathBuf>| {
            if let Some(path) = path {
                *path = base.join(&*path);
            }
        };
        relative(&mut options.binary);
        relative(&mut options.socket);
        relative(&mut options.data_dir);
        relative(&mut options.history_file);
        for binary in options
            .allowed_binaries
            .iter_mut()
            .chain(&mut options.allowed_supervisor_binaries)
        {
            *binary = base.join(&*binary);
        }
        for spec in &mut options.listen {
            if let Some((name, path)) = spec
                .split_once("=unix:")
                .filter(|(_, path)| !path.is_empty() && Path::new(path).is_relative())
            {
                *spec = format!("{name}=unix:{}", base.join(path).display());
            }
        }
        Ok(options)
    }

    /// These options (the flags) over `file`'s: a flag wins over its key;
    /// listeners are merged by name and allowed binaries added up.
    pub fn over(mut self, mut file: RunOptions) -> RunOptions {
        unset_from!(self, file;
            binary, args, socket, data_dir, mode, drain_timeout, deadline, resume_timeout,
            restart, log_format, protocol, ready_signal, stop_signal, probe, probe_status,
            probe_timeout, probation, probation_signal, resume_signal, history_file, sha256,
            fd_store_max, metrics,
        );
        // By name, a flag over the file's; a malformed spec is kept whole,
        // and a name given twice in the flags kept twice, for `listeners`
        // to refuse in its own words.
        let name_of = |spec: &String| {
            spec.split_once('=')
                .map_or(spec.clone(), |(name, _)| name.to_owned())
        };
        let flagged: Vec<String> = self.listen.iter().map(name_of).collect();
        let kept: Vec<&String> = file
            .listen
            .iter()
            .filter(|spec| !flagged.contains(&name_of(spec)))
            .collect();
        for spec in &kept {
            self.origin.keys.insert(format!("listen.{}", name_of(spec)));
        }
        self.origin.file = file.origin.file.take();
        let mut listen: Vec<String> = kept.into_iter().chain(&self.listen).cloned().collect();
        listen.sort_by_key(name_of);
        self.listen = listen;
        file.allowed_uids.append(&mut self.allowed_uids);
        self.allowed_uids = file.allowed_uids;
        file.allowed_binaries.append(&mut self.allowed_binaries);
        self.allowed_binaries = file.allowed_binaries;
        file.allowed_supervisor_binaries
            .append(&mut self.allowed_supervisor_binaries);
        self.allowed_supervisor_binaries = file.allowed_supervisor_binaries;
        self
    }
}

/// Everything `run` needs, resolved and validated.
#[derive(Debug)]
pub struct Settings {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub socket: PathBuf,
    /// The socket path is the default one (its directory gets checked).
    pub socket_is_default: bool,
    pub listeners: Vec<(String, ListenAddr)>,
    pub data_dir: Option<PathBuf>,
    pub mode: Mode,
    pub timeouts: Timeouts,
    pub restart: RestartPolicy,
    pub log_format: LogFormat,
    pub sha256: Option<String>,
    pub allowed_uids: Vec<u32>,
    pub allowed_binaries: Vec<PathBuf>,
    /// The health gate's probe, if any.
    pub probe: Option<handoff::probe::Probe>,
    /// How the daemon is supervised.
    pub protocol: DaemonProtocol,
    /// Where the history is persisted.
    pub history_file: PathBuf,
    /// `handoffctl` builds `reexec` may run besides the start path.
    pub allowed_supervisor_binaries: Vec<PathBuf>,
    /// The config file as read (a re-exec carries it instead of reading
    /// the file again).
    pub config: Option<CarriedConfig>,
    /// Where the Prometheus metrics are served, if anywhere, and the
    /// option as the user wrote it (for a bind's failure).
    pub metrics: Option<(std::net::SocketAddr, String)>,
}

impl Settings {
    /// Merges the flags over the config file and checks everything that can
    /// be checked without binding.
    pub fn resolve(args: RunArgs) -> Result<Settings, Failure> {
        let config = args.config.as_deref().map(read_config).transpose()?;
        Settings::resolve_with(args, config, Checks::Files)
    }

    /// [`Settings::resolve`] with the config file's text given (as a
    /// re-exec carries it), checking the daemon's file or not.
    pub fn resolve_with(
        args: RunArgs,
        config: Option<CarriedConfig>,
        checks: Checks,
    ) -> Result<Settings, Failure> {
        let file = match &config {
            Some(config) => RunOptions::parse(&config.path, &config.text)?,
            None => RunOptions::default(),
        };
        let options = args.options.over(file);
        let (program, program_args) = program(&options, args.command, checks)?;
        let timeouts = timeouts(&options)?;
        let probe = probe(&options)?;
        let protocol = protocol(&options, timeouts, probe.is_some())?;
        let sha256 = options.sha256.as_deref().map(parse_sha256).transpose()?;
        if let (Some(expected), Checks::Files) = (&sha256, checks) {
            // Checked here for one clear line before anything starts; the
            // library checks again, on the file it then executes.
            handoff::os::pin_binary(&program, expected)
                .map_err(|e| Failure::usage(crate::error::chain(&e)))?;
        }
        let (socket, socket_is_default) = match options.socket {
            // Absolute: the paths beside it (the lock, the record, the
            // rendezvous and notification sockets a generation is given)
            // must not depend on a process's current directory.
            Some(socket) => (absolute_socket(socket)?, false),
            None => (default_socket()?, true),
        };
        let history_file = options
            .history_file
            .unwrap_or_else(|| socket.with_extension("history.json"));
        Ok(Settings {
            program,
            args: program_args,
            socket,
            socket_is_default,
            listeners: listeners(&options.origin, &options.listen)?,
            data_dir: options.data_dir,
            // A foreign daemon is always handed over in overlap.
            mode: match (protocol, options.mode.unwrap_or(ModeArg::Exclusive)) {
                (DaemonProtocol::Systemd { .. }, _) => Mode::Overlap,
                (_, ModeArg::Exclusive) => Mode::Exclusive,
                (_, ModeArg::Overlap) => Mode::Overlap,
            },
            timeouts,
            restart: match options.restart.unwrap_or(RestartArg::OnFailure) {
                RestartArg::Always => RestartPolicy::Always,
                RestartArg::OnFailure => RestartPolicy::OnFailure,
                RestartArg::Never => RestartPolicy::Never,
            },
            log_format: options.log_format.unwrap_or_default(),
            sha256,
            allowed_uids: options.allowed_uids,
            allowed_binaries: options.allowed_binaries,
            probe,
            protocol,
            history_file,
            allowed_supervisor_binaries: options.allowed_supervisor_binaries,
            config,
            metrics: options
                .metrics
                .as_deref()
                .map(|text| {
                    let written = options.origin.value("metrics", text);
                    Ok::<_, Failure>((metrics_addr(&written, text)?, written))
                })
                .transpose()?,
        })
    }
}

/// `--metrics HOST:PORT` (as `written`), resolved to its first address.
fn metrics_addr(written: &str, text: &str) -> Result<std::net::SocketAddr, Failure> {
    use std::net::ToSocketAddrs;
    let bad = |problem: String| {
        Failure::usage(format!(
            "{written}: {problem}; expected HOST:PORT, for example 127.0.0.1:9464"
        ))
    };
    text.to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address".to_owned()))
}

/// Reads the config file at `path`.
fn read_config(path: &Path) -> Result<CarriedConfig, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read config {}: {e}", path.display())))?;
    Ok(CarriedConfig {
        path: path.to_owned(),
        text,
    })
}

/// The daemon: `-- BINARY ARGS` on the command line, else `binary` and
/// `args` in the config; an executable file, searched in `PATH` without a
/// slash.
/// What resolving the options checks on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// The daemon's binary exists, is executable and has the pinned
    /// sha256: a first start.
    Files,
    /// Nothing on disk: a re-exec takes over settings that were checked
    /// when the supervisor started (the binary may have been replaced or
    /// removed since; a start or restart checks it again then).
    Carried,
}

fn program(
    options: &RunOptions,
    command: Vec<OsString>,
    checks: Checks,
) -> Result<(PathBuf, Vec<OsString>), Failure> {
    let mut command = command.into_iter();
    let (program, args) = match (command.next(), &options.binary) {
        (Some(binary), _) => (PathBuf::from(binary), command.collect()),
        (None, Some(binary)) => {
            let args = options.args.iter().flatten().map(OsString::from).collect();
            (binary.clone(), args)
        }
        (None, None) => {
            return Err(Failure::usage(
                "no daemon binary: give `-- BINARY [ARGS...]` or `binary =` in the config",
            ));
        }
    };
    let resolved = match checks {
        Checks::Files => resolve_program(&program)?,
        Checks::Carried => resolve_program(&program).or_else(|_| {
            std::path::absolute(&program)
                .map_err(|e| Failure::usage(format!("binary {}: {e}", program.display())))
        })?,
    };
    Ok((resolved, args))
}

/// `--listen NAME=ADDR` (or `[listen]`), each parsed.
fn listeners(origin: &Origin, specs: &[String]) -> Result<Vec<(String, ListenAddr)>, Failure> {
    let mut seen = std::collections::BTreeSet::new();
    specs
        .iter()
        .map(|spec| {
            let Some((name, addr)) = spec.split_once('=') else {
                return Err(Failure::usage(format!(
                    "--listen {spec:?}: expected NAME=ADDR, for example http=127.0.0.1:8080"
                )));
            };
            let written = origin.listener(name, addr);
            if name.is_empty() {
                return Err(Failure::usage(format!(
                    "{written}: the listener has no name (NAME=ADDR)"
                )));
            }
            if name.len() > 255 || name.chars().any(|c| c == ':' || !c.is_ascii_graphic()) {
                return Err(Failure::usage(format!(
                    "{written}: a listener's name is at most 255 printable ASCII characters \
                     without ':' (systemd's LISTEN_FDNAMES separates names by ':'); rename it"
                )));
            }
            if !seen.insert(name) {
                return Err(Failure::usage(format!(
                    "--listen {name}=...: the name {name} is given twice; give each listener \
                     a name of its own"
                )));
            }
            let parsed: ListenAddr = addr
                .parse()
                .map_err(|e| Failure::usage(format!("{written}: {e}")))?;
            Ok((name.to_owned(), absolute_unix(&written, parsed)?))
        })
        .collect()
}

/// The admin socket's path, made absolute (relative to the current
/// directory; a config file's was made relative to the file).
fn absolute_socket(socket: PathBuf) -> Result<PathBuf, Failure> {
    std::path::absolute(&socket).map_err(|e| {
        Failure::usage(format!(
            "--socket {}: cannot make the path absolute: {e}",
            socket.display()
        ))
    })
}

/// A unix listener's relative path made absolute (relative to the
/// current directory; a config file's are made relative to the file when
/// it is read): where it was bound stays what `status`, the record and
/// every later image of the supervisor name.
fn absolute_unix(written: &str, addr: ListenAddr) -> Result<ListenAddr, Failure> {
    let ListenAddr::Unix(path) = &addr else {
        return Ok(addr);
    };
    if path.is_absolute() {
        return Ok(addr);
    }
    let absolute = std::path::absolute(path)
        .map_err(|e| Failure::usage(format!("{written}: cannot make the path absolute: {e}")))?;
    if !handoff::os::fits_unix_socket(&absolute) {
        return Err(Failure::usage(format!(
            "{written}: made absolute, the path ({}) is too long for a unix \
             socket (under 108 bytes); give a shorter path",
            absolute.display()
        )));
    }
    Ok(ListenAddr::Unix(absolute))
}

/// The durations: each flag or key, then the checks between them, in the
/// words the user wrote.
fn timeouts(options: &RunOptions) -> Result<Timeouts, Failure> {
    let origin = &options.origin;
    let mut timeouts = Timeouts::default();
    if let Some(text) = &options.deadline {
        timeouts.handoff_deadline = duration_of(&origin.value("deadline", text), text)?;
        // An unset drain timeout follows a short deadline down.
        timeouts.drain_grace = timeouts.drain_grace.min(timeouts.handoff_deadline);
    }
    let durations = [
        (
            &options.drain_timeout,
            "drain_timeout",
            &mut timeouts.drain_grace,
        ),
        (&options.probe_timeout, "probe_timeout", &mut timeouts.probe),
        (&options.probation, "probation", &mut timeouts.probation),
        (
            &options.resume_timeout,
            "resume_timeout",
            &mut timeouts.resume,
        ),
    ];
    for (text, key, field) in durations {
        if let Some(text) = text {
            *field = duration_of(&origin.value(key, text), text)?;
        }
    }
    timeouts.validate().map_err(|error| match error {
        handoff::Error::InvalidTimeout { field, problem } => {
            Failure::usage(in_user_words(origin, field, problem))
        }
        other => Failure::usage(other.to_string()),
    })?;
    Ok(timeouts)
}

/// A `Timeouts::validate` complaint about a field, said with the options
/// as the user wrote them.
fn in_user_words(origin: &Origin, field: &str, problem: &str) -> String {
    const KEYS: [(&str, &str); 5] = [
        ("handoff_deadline", "deadline"),
        ("drain_grace", "drain_timeout"),
        ("probe", "probe_timeout"),
        ("resume", "resume_timeout"),
        ("probation", "probation"),
    ];
    let said = |field: &str| {
        KEYS.iter()
            .find(|(name, _)| *name == field)
            .map_or(field.to_owned(), |(_, key)| origin.name(key))
    };
    // The one other option a problem names.
    let problem = problem.replace("handoff_deadline", &said("handoff_deadline"));
    format!("{}: {problem}", said(field))
}

/// The health gate's probe: `--probe` with `--probe-status`.
fn probe(options: &RunOptions) -> Result<Option<handoff::probe::Probe>, Failure> {
    let origin = &options.origin;
    let probe = options
        .probe
        .as_deref()
        .map(|text| {
            text.parse::<handoff::probe::Probe>()
                .map_err(|e| Failure::usage(format!("{}: {e}", origin.value("probe", text))))
        })
        .transpose()?;
    match (probe, options.probe_status) {
        (Some(_), Some(status)) if !(100..=599).contains(&status) => Err(Failure::usage(format!(
            "{}: not an HTTP status; give one from 100 to 599, such as 200",
            origin.number("probe_status", status)
        ))),
        (Some(probe), Some(status)) => Ok(Some(probe.expecting(status))),
        (None, Some(_)) => Err(Failure::usage(format!(
            "{} needs --probe http://... (probe in a config file): give the address to probe",
            origin.name("probe_status")
        ))),
        (probe, None) => Ok(probe),
    }
}

/// How the daemon is supervised, with the flags that only make sense for
/// one protocol checked against it.
fn protocol(
    options: &RunOptions,
    timeouts: Timeouts,
    probe: bool,
) -> Result<DaemonProtocol, Failure> {
    let origin = &options.origin;
    let library = options.protocol.unwrap_or(ProtocolArg::Library) == ProtocolArg::Library;
    if library {
        let foreign_only = [
            ("ready_signal", options.ready_signal.is_some()),
            ("stop_signal", options.stop_signal.is_some()),
            ("probation_signal", options.probation_signal.is_some()),
            ("resume_signal", options.resume_signal.is_some()),
            ("fd_store_max", options.fd_store_max.is_some()),
        ];
        if let Some((key, _)) = foreign_only.iter().find(|(_, set)| *set) {
            return Err(Failure::usage(format!(
                "{} applies to a daemon under --protocol systemd only (a library daemon \
                 is signalled, quiesced and given fds by the protocol); remove it or add \
                 --protocol systemd",
                origin.name(key)
            )));
        }
        let exclusive = matches!(
            options.mode.unwrap_or(ModeArg::Exclusive),
            ModeArg::Exclusive
        );
        if exclusive && !timeouts.probation.is_zero() {
            return Err(Failure::usage(format!(
                "{} needs --mode overlap for a library daemon: in exclusive mode the old \
                 generation has sealed and released its data directory at the commit, so \
                 there is nothing to resume; remove it or add --mode overlap",
                origin.name("probation")
            )));
        }
        return Ok(DaemonProtocol::Library);
    }
    let ready = match options.ready_signal {
        None | Some(ReadySignalArg::Notify) => handoff::protocol::ReadySignal::Notify,
        Some(ReadySignalArg::Probe) if !probe => {
            return Err(Failure::usage(format!(
                "{} needs --probe: give the address to probe",
                origin.value("ready_signal", "probe")
            )));
        }
        Some(ReadySignalArg::Probe) => handoff::protocol::ReadySignal::Probe,
    };
    let stop_signal = match &options.stop_signal {
        None => handoff::os::Sig::Term,
        Some(name) => parse_signal(&origin.value("stop_signal", name), name)?,
    };
    let quiesce = quiesce_signals(
        origin,
        options.probation_signal.as_deref(),
        options.resume_signal.as_deref(),
        timeouts.probation,
        stop_signal,
    )?;
    Ok(DaemonProtocol::Systemd {
        ready,
        stop_signal,
        quiesce,
        fd_store_max: options
            .fd_store_max
            .unwrap_or(handoff::supervisor::DEFAULT_FD_STORE_MAX),
    })
}

/// The quiesce and resume signals of a foreign daemon's probation: both or
/// neither, different from each other and from the stop signal (a resume
/// by the stop signal would stop the generation a rollback needs; a
/// quiesce by it would stop the old generation at the commit), and only
/// with a probation.
fn quiesce_signals(
    origin: &Origin,
    quiesce: Option<&str>,
    resume: Option<&str>,
    probation: std::time::Duration,
    stop: handoff::os::Sig,
) -> Result<Option<handoff::supervisor::QuiesceSignals>, Failure> {
    let (q, r) = (
        origin.name("probation_signal"),
        origin.name("resume_signal"),
    );
    let (quiesce, resume) = match (quiesce, resume) {
        (None, None) => return Ok(None),
        (Some(quiesce), Some(resume)) => (
            parse_signal(&origin.value("probation_signal", quiesce), quiesce)?,
            parse_signal(&origin.value("resume_signal", resume), resume)?,
        ),
        (Some(_), None) => {
            return Err(Failure::usage(format!(
                "{q} needs --resume-signal: a quiesced generation must be resumable; add one"
            )));
        }
        (None, Some(_)) => {
            return Err(Failure::usage(format!(
                "{r} needs --probation-signal: add the signal that quiesces"
            )));
        }
    };
    if probation.is_zero() {
        return Err(Failure::usage(format!(
            "{q} and {r} need --probation DUR: add the probation they serve"
        )));
    }
    if quiesce == resume {
        return Err(Failure::usage(format!(
            "{q} and {r} must be different signals: change one"
        )));
    }
    if quiesce == stop || resume == stop {
        let name = format!("{stop:?}").to_ascii_uppercase();
        return Err(Failure::usage(format!(
            "{q} and {r} must differ from the stop signal (SIG{name}; --stop-signal): change one"
        )));
    }
    Ok(Some(handoff::supervisor::QuiesceSignals {
        quiesce,
        resume,
    }))
}

/// A signal by name (`TERM`, `SIGQUIT`, `quit`, `WINCH`...), `written` as
/// the user wrote the option.
fn parse_signal(written: &str, name: &str) -> Result<handoff::os::Sig, Failure> {
    use handoff::os::Sig;
    let upper = name.trim().to_ascii_uppercase();
    Ok(match upper.strip_prefix("SIG").unwrap_or(&upper) {
        "TERM" => Sig::Term,
        "QUIT" => Sig::Quit,
        "INT" => Sig::Int,
        "HUP" => Sig::Hup,
        "USR1" => Sig::Usr1,
        "USR2" => Sig::Usr2,
        "WINCH" => Sig::Winch,
        _ => {
            return Err(Failure::usage(format!(
                "{written}: not a signal; give TERM, QUIT, INT, HUP, USR1, USR2 or WINCH"
            )));
        }
    })
}

/// The admin socket a client talks to: `--socket`, else the config's
/// `socket`, else the default path.
pub fn client_socket(target: &Target) -> Result<PathBuf, Failure> {
    if let Some(socket) = &target.socket {
        return Ok(socket.clone());
    }
    if let Some(path) = &target.config
        && let Some(socket) = RunOptions::load(path)?.socket
    {
        return Ok(socket);
    }
    default_socket()
}

/// `$RUNTIME_DIRECTORY/handoff.sock` (systemd's `RuntimeDirectory=`; the
/// first one if several), else `$XDG_RUNTIME_DIR/handoff/handoff.sock`, else
/// `/run/handoff/handoff.sock` for root, else `/tmp/handoff-UID/handoff.sock`.
pub fn default_socket() -> Result<PathBuf, Failure> {
    if let Some(dirs) = std::env::var_os("RUNTIME_DIRECTORY")
        && let Some(first) = std::env::split_paths(&dirs).next()
        && !first.as_os_str().is_empty()
    {
        return Ok(first.join(SOCKET_NAME));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("handoff").join(SOCKET_NAME));
    }
    let uid = handoff::os::effective_uid();
    Ok(if uid == 0 {
        PathBuf::from("/run/handoff").join(SOCKET_NAME)
    } else {
        std::env::temp_dir()
            .join(format!("handoff-{uid}"))
            .join(SOCKET_NAME)
    })
}

/// A duration flag's value (`250ms`, `30s`, `5m`, `1h`).
pub fn duration(flag: &str, text: &str) -> Result<std::time::Duration, Failure> {
    duration_of(&format!("{flag} {text:?}"), text)
}

/// A duration's value, `written` as the user wrote it (flag or key).
fn duration_of(written: &str, text: &str) -> Result<std::time::Duration, Failure> {
    parse_duration(text).map_err(|e| {
        let problem = match e {
            handoff::Error::InvalidTimeout { problem, .. } => problem,
            _ => "not a duration",
        };
        Failure::usage(format!("{written}: {problem} (for example 250ms, 30s, 5m)"))
    })
}

/// A sha256 given in hex, normalised to lowercase.
pub fn parse_sha256(hex: &str) -> Result<String, Failure> {
    let hex = hex.trim().to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(Failure::usage(format!(
            "sha256 {hex:?}: expected 64 hexadecimal digits"
        )))
    }
}

/// The binary as an absolute path (searched in `PATH` when it has no slash),
/// checked to be an executable regular file.
pub fn resolve_program(program: &Path) -> Result<PathBuf, Failure> {
    let found = if program.components().count() == 1 && !program.starts_with(".") {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                Failure::usage(format!("binary {}: not found in PATH", program.display()))
            })?
    } else {
        program.to_path_buf()
    };
    let absolute = std::path::absolute(&found)
        .map_err(|e| Failure::usage(format!("binary {}: {e}", found.display())))?;
    check_executable(&absolute)?;
    Ok(absolute)
}

/// A regular file with an execute bit.
pub fn check_executable(path: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::usage(format!("binary {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Failure::usage(format!(
            "binary {}: not a regular file",
            path.display()
        )));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(Failure::usage(format!(
            "binary {}: not executable",
            path.display()
        )));
    }
    // The kernel runs an ELF file or a `#!` script; anything else would be
    // handed to /bin/sh by the C library's exec. A file this process may
    // execute but not read is left to the exec.
    let mut magic = [0_u8; 4];
    let read = std::fs::File::open(path)
        .and_then(|file| std::io::Read::read(&mut &file, &mut magic))
        .unwrap_or(0);
    if read >= 2 && !magic.starts_with(b"\x7fELF") && !magic.starts_with(b"#!") {
        return Err(Failure::usage(format!(
            "binary {}: neither an ELF executable nor a #! script (exec format \
             error); give a built binary or add a #! line",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_must_be_64_hex_digits() {
        let good = "AB".repeat(32);
        assert_eq!(parse_sha256(&good).expect("ok"), "ab".repeat(32));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let err = toml::from_str::<RunOptions>("bnary = \"/bin/true\"").expect_err("typo");
        assert!(err.to_string().contains("bnary"), "{err}");
    }

    /// The one-line error `run` gives for `config` (a file's text) and
    /// `flags`.
    fn refusal(config: &str, flags: &[&str]) -> String {
        let dir = testkit::TempDir::new("config-origin");
        let file = dir.path().join("handoff.toml");
        std::fs::write(&file, config).expect("write");
        let mut all = flags.to_vec();
        all.extend(["--", "/bin/true"]);
        let error = Settings::resolve(run_args(Some(&file), &all)).expect_err(config);
        error
            .to_string()
            .replace(&file.display().to_string(), "FILE")
    }

    #[test]
    fn a_bad_value_is_named_as_written_the_key_and_its_file_or_the_flag() {
        let cases: [(&str, &[&str], &str); 11] = [
            (
                "deadline = \"soon\"",
                &[],
                "deadline = \"soon\" (in FILE): ",
            ),
            ("", &["--deadline", "soon"], "--deadline \"soon\": "),
            (
                "deadline = \"1m\"\ndrain_timeout = \"2m\"",
                &[],
                "drain_timeout (in FILE): must not exceed deadline (in FILE); lower it or \
                 raise deadline (in FILE)",
            ),
            (
                "drain_timeout = \"2m\"",
                &["--deadline", "1m"],
                "drain_timeout (in FILE): must not exceed --deadline; lower it or raise \
                 --deadline",
            ),
            (
                "[listen]\nhttp = \"nowhere\"",
                &[],
                "[listen] http = \"nowhere\" (in FILE): ",
            ),
            ("", &["--listen", "http=nowhere"], "--listen http=nowhere: "),
            (
                "fd_store_max = 4",
                &[],
                "fd_store_max (in FILE) applies to a daemon under --protocol systemd only",
            ),
            (
                "metrics = \"nowhere\"",
                &[],
                "metrics = \"nowhere\" (in FILE): ",
            ),
            (
                "[listen]\n\"a:b\" = \"127.0.0.1:0\"",
                &[],
                "[listen] a:b = \"127.0.0.1:0\" (in FILE): a listener's name",
            ),
            (
                "protocol = \"systemd\"\nstop_signal = \"BOGUS\"",
                &[],
                "stop_signal = \"BOGUS\" (in FILE): not a signal",
            ),
            (
                "protocol = \"systemd\"",
                &["--stop-signal", "BOGUS"],
                "--stop-signal \"BOGUS\": not a signal",
            ),
        ];
        for (config, flags, expected) in cases {
            let said = refusal(config, flags);
            assert!(said.starts_with(expected), "{config:?} {flags:?}: {said}");
        }
    }

    fn run_args(config: Option<&Path>, flags: &[&str]) -> RunArgs {
        use clap::Parser;
        let mut argv = vec!["handoffctl", "run"];
        let config = config.map(|c| c.display().to_string());
        if let Some(config) = &config {
            argv.extend(["--config", config]);
        }
        argv.extend_from_slice(flags);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Run(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_override_the_file() {
        let scratch = testkit::TempDir::new("hctl-config");
        let dir = scratch.path().to_path_buf();
        let config = dir.join("handoff.toml");
        std::fs::write(
            &config,
            r#"
            binary = "/bin/sh"
            args = ["-c", "true"]
            socket = "admin.sock"
            mode = "overlap"
            deadline = "20s"
            [listen]
            main = "127.0.0.1:1"
            other = "unix:/tmp/x.sock"
            "#,
        )
        .expect("write");
        let from_file = Settings::resolve(run_args(Some(&config), &[])).expect("resolve");
        assert_eq!(from_file.program, PathBuf::from("/bin/sh"));
        assert_eq!(from_file.args, vec![OsString::from("-c"), "true".into()]);
        assert_eq!(
            from_file.socket,
            dir.join("admin.sock"),
            "relative to the file"
        );
        assert_eq!(from_file.mode, Mode::Overlap);
        assert_eq!(from_file.timeouts.handoff_deadline.as_secs(), 20);
        assert!(from_file.timeouts.drain_grace <= from_file.timeouts.handoff_deadline);
        assert_eq!(from_file.listeners.len(), 2);

        let flags = Settings::resolve(run_args(
            Some(&config),
            &[
                "--mode",
                "exclusive",
                "--socket",
                "/tmp/elsewhere.sock",
                "--listen",
                "main=127.0.0.1:2",
                "--drain-timeout",
                "250ms",
                "--",
                "/bin/true",
            ],
        ))
        .expect("resolve");
        assert_eq!(flags.program, PathBuf::from("/bin/true"));
        assert!(flags.args.is_empty());
        assert_eq!(flags.socket, PathBuf::from("/tmp/elsewhere.sock"));
        assert_eq!(flags.mode, Mode::Exclusive);
        assert_eq!(flags.timeouts.drain_grace.as_millis(), 250);
        let main = flags
            .listeners
            .iter()
            .find(|(n, _)| n == "main")
            .expect("main");
        assert_eq!(main.1.to_string(), "127.0.0.1:2");
        assert_eq!(flags.listeners.len(), 2, "other listeners of the file stay");
    }

    #[test]
    fn relative_socket_paths_are_relative_to_their_file_or_the_current_directory() {
        let scratch = testkit::TempDir::new("hctl-config-unix");
        let dir = scratch.path().to_path_buf();
        let config = dir.join("handoff.toml");
        let text = "binary = \"/bin/true\"\n[listen]\napp = \"unix:run/app.sock\"\n";
        std::fs::write(&config, text).expect("write");
        let unix = |settings: &Settings| settings.listeners[0].1.to_string();
        let from_file = Settings::resolve(run_args(Some(&config), &[])).expect("resolve");
        let expected = format!("unix:{}", dir.join("run/app.sock").display());
        assert_eq!(unix(&from_file), expected, "relative to the file");
        let flag = ["--listen", "app=unix:app.sock", "--", "/bin/true"];
        let from_flag = Settings::resolve(run_args(None, &flag)).expect("resolve");
        let cwd = std::env::current_dir().expect("cwd");
        let expected = format!("unix:{}", cwd.join("app.sock").display());
        assert_eq!(
            unix(&from_flag),
            expected,
            "relative to the current directory"
        );
        // The admin socket too: generations are given paths beside it.
        let socket = ["--socket", "run/admin.sock", "--", "/bin/true"];
        let from_flag = Settings::resolve(run_args(None, &socket)).expect("resolve");
        assert_eq!(from_flag.socket, cwd.join("run/admin.sock"));
        // Short enough as given, too long once absolute: said with both.
        let long = format!("app=unix:{}", "s".repeat(100));
        let err = Settings::resolve(run_args(None, &["--listen", &long, "--", "/bin/true"]))
            .expect_err("too long once absolute");
        assert!(err.to_string().contains("made absolute"), "{err}");
        assert!(err.to_string().contains("--listen app=unix:"), "{err}");
    }

    #[test]
    fn the_history_file_defaults_to_the_socket_and_follows_the_config() {
        let scratch = testkit::TempDir::new("hctl-config-history");
        let dir = scratch.path().to_path_buf();
        let socket = |flags: &[&str]| {
            let mut all = vec!["--socket", "/run/d/handoff.sock"];
            all.extend_from_slice(flags);
            all.extend(["--", "/bin/true"]);
            Settings::resolve(run_args(None, &all)).expect("resolve")
        };
        assert_eq!(
            socket(&[]).history_file,
            PathBuf::from("/run/d/handoff.history.json")
        );
        assert_eq!(
            socket(&["--history-file", "/var/lib/d/h.json"]).history_file,
            PathBuf::from("/var/lib/d/h.json")
        );
        let config = dir.join("handoff.toml");
        std::fs::write(&config, "history_file = \"state/h.json\"\n").expect("write");
        let from_file =
            Settings::resolve(run_args(Some(&config), &["--", "/bin/true"])).expect("resolve");
        assert_eq!(
            from_file.history_file,
            dir.join("state/h.json"),
            "relative to the file"
        );
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let text = include_str!("../../examples/systemd/mydaemon.toml");
        let config: RunOptions = toml::from_str(text).expect("examples/systemd/mydaemon.toml");
        assert_eq!(config.listen, ["http=0.0.0.0:8080"]);
        assert_eq!(config.log_format, Some(LogFormat::Json));
    }

    #[test]
    fn a_full_config_parses() {
        let config: RunOptions = toml::from_str(
            r#"
            binary = "/usr/bin/daemon"
            args = ["--flag"]
            socket = "/run/d/handoff.sock"
            data_dir = "/var/lib/d"
            mode = "overlap"
            drain_timeout = "10s"
            deadline = "1m"
            restart = "on-failure"
            log_format = "json"
            sha256 = "00"
            allowed_uids = [1000]
            allowed_binaries = ["/opt/d/next"]
            probe = "http://127.0.0.1:8081/healthz"
            protocol = "systemd"
            ready_signal = "notify"
            stop_signal = "QUIT"
            probe_status = 204
            probe_timeout = "10s"
            probation = "30s"
            probation_signal = "WINCH"
            resume_signal = "HUP"
            fd_store_max = 4
            history_file = "/var/lib/d/handoff-history.json"
            metrics = "127.0.0.1:9464"
            [listen]
            http = "127.0.0.1:8080"
            "#,
        )
        .expect("parse");
        assert_eq!(config.listen, ["http=127.0.0.1:8080"]);
        assert!(matches!(config.mode, Some(ModeArg::Overlap)));
        assert!(matches!(config.restart, Some(RestartArg::OnFailure)));
        assert_eq!(config.log_format, Some(LogFormat::Json));
        assert_eq!(config.fd_store_max, Some(4));
        assert_eq!(config.metrics.as_deref(), Some("127.0.0.1:9464"));
    }

    #[test]
    fn the_fd_store_bound_is_foreign_only_and_defaults_to_16() {
        let store = |flags: &[&str]| {
            let mut all = vec!["--socket", "/run/d/handoff.sock"];
            all.extend_from_slice(flags);
            all.extend(["--", "/bin/true"]);
            Settings::resolve(run_args(None, &all)).map(|s| s.protocol)
        };
        let max = |protocol: DaemonProtocol| match protocol {
            DaemonProtocol::Systemd { fd_store_max, .. } => fd_store_max,
            DaemonProtocol::Library => panic!("library"),
        };
        assert_eq!(max(store(&["--protocol", "systemd"]).expect("default")), 16);
        let set = store(&["--protocol", "systemd", "--fd-store-max", "0"]).expect("0");
        assert_eq!(max(set), 0, "0 turns it off");
        let error = store(&["--fd-store-max", "4"]).expect_err("library");
        assert!(
            error
                .to_string()
                .contains("--fd-store-max applies to a daemon under --protocol systemd only"),
            "{error}"
        );
        let scratch = testkit::TempDir::new("hctl-config-fdstore");
        let dir = scratch.path().to_path_buf();
        let config = dir.join("handoff.toml");
        std::fs::write(&config, "protocol = \"systemd\"\nfd_store_max = 3\n").expect("write");
        let from_file =
            Settings::resolve(run_args(Some(&config), &["--", "/bin/true"])).expect("resolve");
        assert_eq!(max(from_file.protocol), 3);
        let flag_wins = Settings::resolve(run_args(
            Some(&config),
            &["--fd-store-max", "5", "--", "/bin/true"],
        ))
        .expect("resolve");
        assert_eq!(max(flag_wins.protocol), 5);
        std::fs::write(&config, "fd_store_max = -1\n").expect("write");
        let error =
            Settings::resolve(run_args(Some(&config), &["--", "/bin/true"])).expect_err("negative");
        // toml names the line of the key and what it expected.
        assert!(error.to_string().contains("(line 1)"), "{error}");
        assert!(error.to_string().contains("expected usize"), "{error}");
    }

    #[test]
    fn the_metrics_address_is_host_and_port_and_a_bad_one_names_the_flag() {
        let resolve = |flags: &[&str]| {
            let mut all = vec!["--socket", "/run/d/handoff.sock"];
            all.extend_from_slice(flags);
            all.extend(["--", "/bin/true"]);
            Settings::resolve(run_args(None, &all))
        };
        let addr = |settings: Settings| settings.metrics.map(|(addr, _)| addr);
        assert_eq!(addr(resolve(&[]).expect("resolve")), None);
        let set = resolve(&["--metrics", "127.0.0.1:9464"]).expect("resolve");
        assert_eq!(addr(set), Some(([127, 0, 0, 1], 9464).into()));
        let local = resolve(&["--metrics", "localhost:0"]).expect("a name resolves");
        assert!(addr(local).is_some_and(|addr| addr.ip().is_loopback()));
        // The config's key, and the flag over it.
        let dir = testkit::TempDir::new("config-metrics");
        let config = dir.path().join("handoff.toml");
        std::fs::write(&config, "metrics = \"127.0.0.1:9465\"\n").expect("write");
        let from_file =
            Settings::resolve(run_args(Some(&config), &["--", "/bin/true"])).expect("resolve");
        let (at, written) = from_file.metrics.expect("metrics");
        assert_eq!(at, ([127, 0, 0, 1], 9465).into());
        assert!(
            written.starts_with("metrics = \"127.0.0.1:9465\" (in "),
            "{written}"
        );
        let flag = Settings::resolve(run_args(
            Some(&config),
            &["--metrics", "127.0.0.1:9466", "--", "/bin/true"],
        ))
        .expect("resolve");
        assert_eq!(addr(flag), Some(([127, 0, 0, 1], 9466).into()));
        for bad in ["9464", "127.0.0.1", "127.0.0.1:http", "[::1]:99999"] {
            let failure = resolve(&["--metrics", bad]).expect_err(bad);
            assert!(
                failure.message.starts_with(&format!("--metrics {bad:?}: "))
                    && failure.message.contains("HOST:PORT"),
                "{}",
                failure.message
            );
        }
    }
}
