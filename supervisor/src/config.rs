//! The TOML config file and its merge with the flags: every `run` flag has a
//! key, and a flag wins over its key. Validation happens here, before any
//! socket is bound, so bad input is one clear line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use handoff::supervisor::RestartPolicy;
use handoff::timeouts::parse_duration;
use handoff::{ListenAddr, Mode, Timeouts};

use crate::cli::{LogFormat, ModeArg, ProtocolArg, ReadySignalArg, RestartArg, RunArgs, Target};
use crate::error::Failure;

/// The name of the admin socket inside a runtime directory.
const SOCKET_NAME: &str = "handoff.sock";

/// The config file, as written. Unknown keys are an error (a typo must not
/// be silently ignored).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The daemon binary (`-- BINARY`).
    pub binary: Option<PathBuf>,
    /// Its arguments (`-- BINARY ARGS...`).
    pub args: Option<Vec<String>>,
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--listen NAME=ADDR`, as a table `name = "addr"`.
    #[serde(default)]
    pub listen: BTreeMap<String, String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--mode`.
    pub mode: Option<ModeArg>,
    /// `--drain-timeout`.
    pub drain_timeout: Option<String>,
    /// `--deadline`.
    pub deadline: Option<String>,
    /// `--restart`.
    pub restart: Option<RestartArg>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--protocol`.
    pub protocol: Option<ProtocolArg>,
    /// `--ready-signal`.
    pub ready_signal: Option<ReadySignalArg>,
    /// `--stop-signal`.
    pub stop_signal: Option<String>,
    /// `--probe`.
    pub probe: Option<String>,
    /// `--probe-status`.
    pub probe_status: Option<u16>,
    /// `--probe-timeout`.
    pub probe_timeout: Option<String>,
    /// `--resume-timeout`.
    pub resume_timeout: Option<String>,
    /// `--probation`.
    pub probation: Option<String>,
    /// `--probation-signal`.
    pub probation_signal: Option<String>,
    /// `--resume-signal`.
    pub resume_signal: Option<String>,
    /// `--history-file`.
    pub history_file: Option<PathBuf>,
    /// Expected sha256 of the configured binary: checked (and the hashed
    /// file run) at start, on upgrades to it and on restarts.
    pub sha256: Option<String>,
    /// Uids besides our own and root that may use the admin socket.
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// Binaries besides the configured one an upgrade may run.
    #[serde(default)]
    pub allowed_binaries: Vec<PathBuf>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<FileConfig, Failure> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("cannot read config {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
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
        })
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
    pub protocol: handoff::supervisor::DaemonProtocol,
    /// Where the history is persisted.
    pub history_file: PathBuf,
}

impl Settings {
    /// Merges the flags over the config file and checks everything that can
    /// be checked without binding.
    pub fn resolve(args: RunArgs) -> Result<Settings, Failure> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        // Relative paths in a config file are relative to the file.
        let base = args
            .config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let from_file = |path: PathBuf| base.join(path);

        let mut command = args.command.into_iter();
        let (program, program_args) = match command.next() {
            Some(binary) => (PathBuf::from(binary), command.collect()),
            None => match file.binary {
                Some(binary) => (
                    from_file(binary),
                    file.args
                        .unwrap_or_default()
                        .into_iter()
                        .map(OsString::from)
                        .collect(),
                ),
                None => {
                    return Err(Failure::usage(
                        "no daemon binary: give `-- BINARY [ARGS...]` or `binary =` in the config",
                    ));
                }
            },
        };
        let program = resolve_program(&program)?;

        let mut listen: BTreeMap<String, String> = file.listen;
        for spec in &args.listen {
            let Some((name, addr)) = spec.split_once('=') else {
                return Err(Failure::usage(format!(
                    "--listen {spec:?}: expected NAME=ADDR"
                )));
            };
            listen.insert(name.to_owned(), addr.to_owned());
        }
        let mut listeners = Vec::new();
        for (name, addr) in listen {
            if name.is_empty() {
                return Err(Failure::usage(format!(
                    "listener {addr:?} has an empty name"
                )));
            }
            let parsed: ListenAddr = addr
                .parse()
                .map_err(|e| Failure::usage(format!("listener {name}: {e}")))?;
            listeners.push((name, parsed));
        }

        let mut timeouts = Timeouts::default();
        let drain = args.drain_timeout.or(file.drain_timeout);
        let deadline = args.deadline.or(file.deadline);
        if let Some(text) = &deadline {
            timeouts.handoff_deadline = duration("deadline", text)?;
            // An unset drain timeout follows a short deadline down.
            timeouts.drain_grace = timeouts.drain_grace.min(timeouts.handoff_deadline);
        }
        if let Some(text) = &drain {
            timeouts.drain_grace = duration("drain timeout", text)?;
        }
        if let Some(text) = args.probe_timeout.or(file.probe_timeout) {
            timeouts.probe = duration("probe timeout", &text)?;
        }
        if let Some(text) = args.probation.or(file.probation) {
            timeouts.probation = duration("probation", &text)?;
        }
        if let Some(text) = args.resume_timeout.or(file.resume_timeout) {
            timeouts.resume = duration("resume timeout", &text)?;
        }
        let probe = args
            .probe
            .or(file.probe)
            .map(|text| {
                text.parse::<handoff::probe::Probe>()
                    .map_err(|e| Failure::usage(e.to_string()))
            })
            .transpose()?;
        let probe = match (probe, args.probe_status.or(file.probe_status)) {
            (Some(probe), Some(status)) => Some(probe.expecting(status)),
            (None, Some(_)) => {
                return Err(Failure::usage("--probe-status needs --probe http://..."));
            }
            (probe, None) => probe,
        };
        let probation_signal = args.probation_signal.or(file.probation_signal);
        let resume_signal = args.resume_signal.or(file.resume_signal);
        let protocol = match args
            .protocol
            .or(file.protocol)
            .unwrap_or(ProtocolArg::Library)
        {
            ProtocolArg::Library => {
                if args.ready_signal.or(file.ready_signal).is_some()
                    || args.stop_signal.is_some()
                    || file.stop_signal.is_some()
                {
                    return Err(Failure::usage(
                        "--ready-signal and --stop-signal need --protocol systemd",
                    ));
                }
                if probation_signal.is_some() || resume_signal.is_some() {
                    return Err(Failure::usage(
                        "--probation-signal and --resume-signal need --protocol systemd \
                         (a library daemon is quiesced and resumed by the protocol)",
                    ));
                }
                handoff::supervisor::DaemonProtocol::Library
            }
            ProtocolArg::Systemd => {
                let ready = match args.ready_signal.or(file.ready_signal) {
                    None | Some(ReadySignalArg::Notify) => handoff::protocol::ReadySignal::Notify,
                    Some(ReadySignalArg::Probe) => {
                        if probe.is_none() {
                            return Err(Failure::usage("--ready-signal probe needs --probe"));
                        }
                        handoff::protocol::ReadySignal::Probe
                    }
                };
                let stop_signal = match args.stop_signal.or(file.stop_signal) {
                    None => handoff::os::Sig::Term,
                    Some(name) => parse_signal(&name)?,
                };
                let quiesce = quiesce_signals(
                    probation_signal.as_deref(),
                    resume_signal.as_deref(),
                    timeouts.probation,
                    stop_signal,
                )?;
                handoff::supervisor::DaemonProtocol::Systemd {
                    ready,
                    stop_signal,
                    quiesce,
                }
            }
        };
        timeouts
            .validate()
            .map_err(|e| Failure::usage(format!("{e}")))?;

        let sha256 = file.sha256.map(|hex| parse_sha256(&hex)).transpose()?;
        if let Some(expected) = &sha256 {
            // Checked here for one clear line before anything starts; the
            // library checks again, on the file it then executes.
            handoff::os::pin_binary(&program, expected)
                .map_err(|e| Failure::usage(crate::error::chain(&e)))?;
        }
        let (socket, socket_is_default) = match args.socket.or(file.socket.map(from_file)) {
            Some(socket) => (socket, false),
            None => (default_socket()?, true),
        };
        let history_file = args
            .history_file
            .or(file.history_file.map(from_file))
            .unwrap_or_else(|| socket.with_extension("history.json"));
        Ok(Settings {
            program,
            args: program_args,
            socket,
            socket_is_default,
            listeners,
            data_dir: args.data_dir.or(file.data_dir.map(from_file)),
            // A foreign daemon is always handed over in overlap.
            mode: match (
                protocol,
                args.mode.or(file.mode).unwrap_or(ModeArg::Exclusive),
            ) {
                (handoff::supervisor::DaemonProtocol::Systemd { .. }, _) => Mode::Overlap,
                (_, ModeArg::Exclusive) => Mode::Exclusive,
                (_, ModeArg::Overlap) => Mode::Overlap,
            },
            timeouts,
            restart: match args
                .restart
                .or(file.restart)
                .unwrap_or(RestartArg::OnFailure)
            {
                RestartArg::Always => RestartPolicy::Always,
                RestartArg::OnFailure => RestartPolicy::OnFailure,
                RestartArg::Never => RestartPolicy::Never,
            },
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            sha256,
            allowed_uids: file.allowed_uids,
            allowed_binaries: file
                .allowed_binaries
                .into_iter()
                .map(from_file)
                .chain(args.allow_binary)
                .collect(),
            probe,
            protocol,
            history_file,
        })
    }
}

/// The quiesce and resume signals of a foreign daemon's probation: both or
/// neither, different from each other and from the stop signal (a resume
/// by the stop signal would stop the generation a rollback needs; a
/// quiesce by it would stop the old generation at the commit), and only
/// with a probation.
fn quiesce_signals(
    quiesce: Option<&str>,
    resume: Option<&str>,
    probation: std::time::Duration,
    stop: handoff::os::Sig,
) -> Result<Option<handoff::supervisor::QuiesceSignals>, Failure> {
    let (quiesce, resume) = match (quiesce, resume) {
        (None, None) => return Ok(None),
        (Some(quiesce), Some(resume)) => (parse_signal(quiesce)?, parse_signal(resume)?),
        (Some(_), None) => {
            return Err(Failure::usage(
                "--probation-signal needs --resume-signal: a quiesced generation must be resumable",
            ));
        }
        (None, Some(_)) => {
            return Err(Failure::usage("--resume-signal needs --probation-signal"));
        }
    };
    if probation.is_zero() {
        return Err(Failure::usage(
            "--probation-signal and --resume-signal need --probation DUR",
        ));
    }
    if quiesce == resume {
        return Err(Failure::usage(
            "--probation-signal and --resume-signal must be different signals",
        ));
    }
    if quiesce == stop || resume == stop {
        let name = format!("{stop:?}").to_ascii_uppercase();
        return Err(Failure::usage(format!(
            "--probation-signal and --resume-signal must differ from the stop signal (SIG{name}; --stop-signal)"
        )));
    }
    Ok(Some(handoff::supervisor::QuiesceSignals {
        quiesce,
        resume,
    }))
}

/// A signal by name: `TERM`, `SIGQUIT`, `quit`, `WINCH`...
pub fn parse_signal(name: &str) -> Result<handoff::os::Sig, Failure> {
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
                "signal {name:?}: expected TERM, QUIT, INT, HUP, USR1, USR2 or WINCH"
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
    if let Some(path) = &target.config {
        let file = FileConfig::load(path)?;
        if let Some(socket) = file.socket {
            let base = path.parent().unwrap_or(Path::new(""));
            return Ok(base.join(socket));
        }
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

fn duration(what: &str, text: &str) -> Result<std::time::Duration, Failure> {
    parse_duration(text)
        .map_err(|e| Failure::usage(format!("{what} {text:?}: {e} (examples: 250ms, 30s, 5m)")))
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
        let err = toml::from_str::<FileConfig>("bnary = \"/bin/true\"").expect_err("typo");
        assert!(err.to_string().contains("bnary"), "{err}");
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
        let dir = std::env::temp_dir().join(format!("hctl-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
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
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_history_file_defaults_to_the_socket_and_follows_the_config() {
        let dir = std::env::temp_dir().join(format!("hctl-config-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
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
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let text = include_str!("../../examples/systemd/mydaemon.toml");
        let config: FileConfig = toml::from_str(text).expect("examples/systemd/mydaemon.toml");
        assert_eq!(config.listen["http"], "0.0.0.0:8080");
        assert_eq!(config.log_format, Some(LogFormat::Json));
    }

    #[test]
    fn a_full_config_parses() {
        let config: FileConfig = toml::from_str(
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
            history_file = "/var/lib/d/handoff-history.json"
            [listen]
            http = "127.0.0.1:8080"
            "#,
        )
        .expect("parse");
        assert_eq!(config.listen["http"], "127.0.0.1:8080");
        assert!(matches!(config.mode, Some(ModeArg::Overlap)));
        assert!(matches!(config.restart, Some(RestartArg::OnFailure)));
        assert_eq!(config.log_format, Some(LogFormat::Json));
    }
}
