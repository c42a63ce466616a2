//! Who replaces the daemon during the load: `handoffctl` (the default), the
//! library's supervisor in this process, or a naive restart (the negative
//! control).
//!
//! Every upgrader alternates between two builds: two copies of the daemon's
//! binary, `NAME-a` and `NAME-b`, that differ by a trailer appended after
//! the ELF image (so their sha256 differ, as two builds' would). The
//! daemons report their executable's file name as their build in `/info`.
//! The foreign daemon is a Python script: its two builds are copies
//! `httpd-a.py` and `httpd-b.py` whose `#!` line names the interpreter
//! found at the start, the second with a comment appended; the kernel's
//! `/proc/PID/cmdline` names the script a generation runs.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use handoff::Mode;
use handoff::supervisor::{
    DaemonProtocol, NamedListener, Outcome, RestartPolicy, Supervisor, SupervisorConfig,
    UpgradeRequest,
};

use crate::run::Daemon;

/// One replacement, as the upgrader saw it.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// Whether the new generation serves.
    pub committed: bool,
    /// The upgrader's own measure of the whole replacement.
    pub total: Duration,
    /// Named phases, when the upgrader knows them.
    pub phases: Vec<(String, Duration)>,
    /// Asked to answered, as the caller saw it (for `handoffctl`: the
    /// `handoffctl upgrade` process, spawn to exit).
    pub wall: Duration,
    /// Why it did not commit.
    pub reason: Option<String>,
    /// The pid the upgrader says serves after a commit (the supervisor's
    /// word, checked against the daemon's own answer).
    pub new_pid: Option<u32>,
}

/// Something that replaces the running daemon.
pub trait Upgrader {
    /// Replaces the running generation with the build at `program`.
    fn upgrade(&mut self, program: &Path) -> Result<Handoff, String>;
    /// The supervisor's pid when it is a process of its own.
    fn supervisor_pid(&self) -> Option<u32>;
    /// Stops everything it started.
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// The daemon's two builds and its data directory.
#[derive(Debug, Clone)]
pub struct DaemonCommand {
    /// `NAME-a` and `NAME-b`.
    pub builds: [PathBuf; 2],
    /// The data directory (`kvd` only).
    pub data_dir: Option<PathBuf>,
    /// Which daemon (its mode and protocol).
    pub daemon: Daemon,
}

/// Bytes appended to the second build of a binary to make it another file.
const BUILD_TRAILER: &[u8] = b"\0handoff-bench: build b\0";
/// The same for a script: a comment, which the interpreter ignores.
const SCRIPT_TRAILER: &[u8] = b"\n# handoff-bench: build b\n";

impl DaemonCommand {
    /// Copies `binary` to `dir/NAME-a` and `dir/NAME-b` (the second with a
    /// trailer).
    pub fn prepare(
        binary: &Path,
        dir: &Path,
        data_dir: Option<PathBuf>,
        daemon: Daemon,
    ) -> Result<DaemonCommand, String> {
        let image = std::fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
        let mut other = image.clone();
        other.extend_from_slice(BUILD_TRAILER);
        Ok(DaemonCommand {
            builds: write_builds(binary, dir, [image, other])?,
            data_dir,
            daemon,
        })
    }

    /// Copies the script at `script` to `dir/STEM-a.EXT` and
    /// `dir/STEM-b.EXT`, executable, with `#!INTERPRETER` as their first
    /// line (replacing the script's own `#!` line) and a comment appended
    /// to the second.
    pub fn prepare_script(
        script: &Path,
        interpreter: &Path,
        dir: &Path,
        daemon: Daemon,
    ) -> Result<DaemonCommand, String> {
        let text = std::fs::read(script).map_err(|e| format!("{}: {e}", script.display()))?;
        let body = match text.strip_prefix(b"#!") {
            Some(rest) => rest
                .iter()
                .position(|&byte| byte == b'\n')
                .map_or(&[][..], |end| &rest[end + 1..]),
            None => &text[..],
        };
        let mut image = format!("#!{}\n", interpreter.display()).into_bytes();
        image.extend_from_slice(body);
        let mut other = image.clone();
        other.extend_from_slice(SCRIPT_TRAILER);
        Ok(DaemonCommand {
            builds: write_builds(script, dir, [image, other])?,
            data_dir: None,
            daemon,
        })
    }

    /// The build label a generation of `program` reports.
    pub fn label(program: &Path) -> String {
        program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The arguments, with `--listen` when running alone.
    pub fn args(&self, listen: Option<SocketAddr>) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(dir) = &self.data_dir {
            args.push("--data-dir".into());
            args.push(dir.clone().into());
        }
        if let Some(addr) = listen {
            args.push("--listen".into());
            args.push(addr.to_string().into());
        }
        args
    }
}

/// Writes the two builds of `source` into `dir` as `STEM-a[.EXT]` and
/// `STEM-b[.EXT]`.
fn write_builds(source: &Path, dir: &Path, images: [Vec<u8>; 2]) -> Result<[PathBuf; 2], String> {
    let stem = source
        .file_stem()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: no file name", source.display()))?;
    let extension = source
        .extension()
        .and_then(|e| e.to_str())
        .map_or_else(String::new, |e| format!(".{e}"));
    let [a, b] = ["a", "b"].map(|letter| dir.join(format!("{stem}-{letter}{extension}")));
    for (path, bytes) in [(&a, &images[0]), (&b, &images[1])] {
        write_executable(path, bytes)?;
    }
    Ok([a, b])
}

fn write_executable(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The library's [`Supervisor`], in this process.
///
/// A guard: dropped without [`Upgrader::finish`] (an error or a panic in
/// the run), it stops the supervisor and waits for its loop, which stops
/// the generations, instead of leaving that to process exit.
pub struct InProcess {
    /// `None` once finished.
    supervisor: Option<Supervisor>,
    daemon: DaemonCommand,
}

impl InProcess {
    /// Binds `127.0.0.1:0` as listener `http` and starts the first
    /// generation with `build`; returns the upgrader and the address.
    pub fn start(daemon: DaemonCommand) -> Result<(InProcess, SocketAddr), String> {
        let bind = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let listener = NamedListener::bind("http", &bind).map_err(|e| e.to_string())?;
        let addr: SocketAddr = listener.address.parse().map_err(|e| format!("{e}"))?;
        let supervisor = Supervisor::start(SupervisorConfig {
            program: daemon.builds[0].clone(),
            args: daemon.args(None),
            env: Vec::new(),
            mode: daemon.daemon.mode(),
            timeouts: handoff::Timeouts::default(),
            restart: RestartPolicy::OnFailure,
            listeners: vec![listener],
            probe: None,
            program_sha256: None,
            protocol: match daemon.daemon {
                Daemon::Kvd | Daemon::Echod => DaemonProtocol::Library,
                Daemon::ForeignHttpd => DaemonProtocol::Systemd {
                    ready: handoff::protocol::ReadySignal::Notify,
                    stop_signal: handoff::os::Sig::Term,
                    quiesce: None,
                },
            },
        })
        .map_err(|e| e.to_string())?;
        Ok((
            InProcess {
                supervisor: Some(supervisor),
                daemon,
            },
            addr,
        ))
    }
}

impl Upgrader for InProcess {
    fn upgrade(&mut self, program: &Path) -> Result<Handoff, String> {
        let asked = Instant::now();
        let supervisor = self
            .supervisor
            .as_ref()
            .ok_or("the supervisor has stopped")?;
        let outcome = supervisor
            .handle()
            .upgrade(UpgradeRequest {
                program: Some(program.to_path_buf()),
                args: Some(self.daemon.args(None)),
                ..UpgradeRequest::default()
            })
            .map_err(|e| e.to_string())?;
        let wall = asked.elapsed();
        Ok(match outcome {
            Outcome::Committed {
                phases, new_pid, ..
            } => Handoff {
                committed: true,
                total: phases.total,
                phases: named_phases(&phases),
                wall,
                reason: None,
                new_pid: Some(new_pid),
            },
            Outcome::RolledBack { phases, reason, .. } => Handoff {
                committed: false,
                total: phases.total,
                phases: named_phases(&phases),
                wall,
                reason: Some(format!("{reason:?}")),
                new_pid: None,
            },
        })
    }

    fn supervisor_pid(&self) -> Option<u32> {
        None
    }

    fn finish(mut self: Box<Self>) -> Result<(), String> {
        self.stop()
    }
}

impl InProcess {
    /// Stops the supervisor and joins its loop; once stopped, a no-op.
    fn stop(&mut self) -> Result<(), String> {
        let Some(supervisor) = self.supervisor.take() else {
            return Ok(());
        };
        let asked = supervisor.handle().stop().map_err(|e| e.to_string());
        let joined = supervisor.join().map_err(|e| e.to_string());
        asked.and(joined)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("handoff-bench: stopping the in-process supervisor after an error: {error}");
        }
    }
}

fn named_phases(phases: &handoff::protocol::Phases) -> Vec<(String, Duration)> {
    phases
        .named()
        .into_iter()
        .filter_map(|(name, duration)| duration.map(|d| (name.to_owned(), d)))
        .collect()
}

/// The negative control: the daemon runs alone and is replaced the naive
/// way — SIGTERM (it closes its listener), wait for the exit, start the
/// new build, which binds again.
pub struct NaiveRestart {
    daemon: DaemonCommand,
    addr: SocketAddr,
    child: Child,
}

/// How long a naive restart may take to serve again.
const NAIVE_START_BOUND: Duration = Duration::from_secs(10);
/// Poll period while waiting for a naive restart to listen.
const NAIVE_POLL: Duration = Duration::from_millis(2);

impl NaiveRestart {
    /// Picks a free loopback port and starts the daemon alone on it
    /// (`--listen`: kvd, echod and httpd.py bind it themselves).
    pub fn start(daemon: DaemonCommand) -> Result<(NaiveRestart, SocketAddr), String> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?;
        let child = spawn_alone(&daemon, &daemon.builds[0], addr)?;
        wait_listening(addr)?;
        Ok((
            NaiveRestart {
                daemon,
                addr,
                child,
            },
            addr,
        ))
    }
}

fn spawn_alone(daemon: &DaemonCommand, program: &Path, addr: SocketAddr) -> Result<Child, String> {
    Command::new(program)
        .args(daemon.args(Some(addr)))
        .env_remove(handoff::ENV_CONTROL_FD)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", program.display()))
}

fn wait_listening(addr: SocketAddr) -> Result<(), String> {
    let until = Instant::now() + NAIVE_START_BOUND;
    while Instant::now() < until {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(NAIVE_POLL);
    }
    Err(format!("nothing listens on {addr}"))
}

impl Upgrader for NaiveRestart {
    fn upgrade(&mut self, program: &Path) -> Result<Handoff, String> {
        let started = Instant::now();
        self.stop()?;
        self.child = spawn_alone(&self.daemon, program, self.addr)?;
        wait_listening(self.addr)?;
        Ok(Handoff {
            committed: true,
            total: started.elapsed(),
            phases: Vec::new(),
            wall: started.elapsed(),
            reason: None,
            new_pid: Some(self.child.id()),
        })
    }

    fn supervisor_pid(&self) -> Option<u32> {
        None
    }

    fn finish(mut self: Box<Self>) -> Result<(), String> {
        self.stop()
    }
}

impl NaiveRestart {
    /// SIGTERMs the daemon and reaps it, SIGKILL past
    /// [`NAIVE_START_BOUND`]; once it has exited, a no-op.
    fn stop(&mut self) -> Result<(), String> {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Ok(());
        }
        let asked =
            handoff::os::signal(self.child.id(), handoff::os::Sig::Term).map_err(|e| e.to_string());
        let until = Instant::now() + NAIVE_START_BOUND;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return asked,
                Ok(None) if Instant::now() < until => std::thread::sleep(NAIVE_POLL),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!("{} did not stop: killed", self.child.id()));
                }
            }
        }
    }
}

/// A guard: dropped without [`Upgrader::finish`] (an error or a panic in
/// the run), the daemon, which runs without a supervisor and without a
/// parent-death signal, is stopped rather than left listening.
impl Drop for NaiveRestart {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("handoff-bench: stopping the naive daemon after an error: {error}");
        }
    }
}

/// `handoffctl run` as a process of its own, upgraded with
/// `handoffctl upgrade --binary`, stopped with `handoffctl stop`.
///
/// A guard: dropped without [`Upgrader::finish`] (an error or a panic in
/// the run), it stops `handoffctl run` the same way and SIGKILLs it if it
/// does not exit in time; its generations then die with it (they are
/// spawned with a parent-death signal).
pub struct Ctl {
    handoffctl: PathBuf,
    socket: PathBuf,
    child: Child,
    /// Set once `handoffctl run` was stopped and reaped.
    reaped: bool,
}

/// The file, in the run's directory, that takes `handoffctl run`'s JSON log.
pub const CTL_LOG: &str = "handoffctl.log";

/// Bound on `handoffctl run` starting to serve, and on its stop.
const CTL_BOUND: Duration = Duration::from_secs(30);

impl Ctl {
    /// Writes a config in `dir` (listener `http` on `127.0.0.1:0`, the two
    /// builds allowed), starts `handoffctl run` with its log in
    /// `dir/handoffctl.log`, and learns the address from `status`.
    pub fn start(
        handoffctl: PathBuf,
        daemon: &DaemonCommand,
        dir: &Path,
    ) -> Result<(Ctl, SocketAddr), String> {
        let socket = dir.join("admin.sock");
        let quote = |path: &Path| format!("{:?}", path.display().to_string());
        let mut config = format!(
            "binary = {}\nsocket = {}\nmode = \"{}\"\nallowed_binaries = [{}, {}]\n",
            quote(&daemon.builds[0]),
            quote(&socket),
            match daemon.daemon.mode() {
                Mode::Exclusive => "exclusive",
                Mode::Overlap => "overlap",
            },
            quote(&daemon.builds[0]),
            quote(&daemon.builds[1]),
        );
        if daemon.daemon == Daemon::ForeignHttpd {
            // Socket activation and READY=1; the old generation gets SIGTERM.
            config.push_str("protocol = \"systemd\"\n");
        }
        if let Some(data) = &daemon.data_dir {
            config.push_str(&format!("data_dir = {}\n", quote(data)));
        }
        config.push_str("[listen]\nhttp = \"127.0.0.1:0\"\n");
        let config_path = dir.join("handoffctl.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join(CTL_LOG)).map_err(|e| e.to_string())?;
        let child = Command::new(&handoffctl)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--log-format")
            .arg("json")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", handoffctl.display()))?;
        let mut ctl = Ctl {
            handoffctl,
            socket,
            child,
            reaped: false,
        };
        let until = Instant::now() + CTL_BOUND;
        loop {
            if let Ok(status) = ctl.command(&["status", "--json"]) {
                let address = status
                    .get("listeners")
                    .and_then(|l| l.get(0))
                    .and_then(|l| l.get("address"))
                    .and_then(|a| a.as_str())
                    .and_then(|a| a.parse().ok());
                if let Some(addr) = address {
                    return Ok((ctl, addr));
                }
            }
            if Instant::now() >= until || ctl.child.try_wait().ok().flatten().is_some() {
                let _ = ctl.stop(StopBy::Signal);
                return Err("handoffctl run did not come up (see handoffctl.log)".into());
            }
            std::thread::sleep(NAIVE_POLL * 5);
        }
    }

    /// Runs `handoffctl VERB --socket S ARGS...`; its stdout as JSON
    /// (`null` for a successful verb that prints none).
    fn command(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let output = Command::new(&self.handoffctl)
            .arg(args[0])
            .arg("--socket")
            .arg(&self.socket)
            .args(&args[1..])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout);
        match serde_json::from_str(text.trim()) {
            Ok(value) => Ok(value),
            Err(_) if output.status.success() => Ok(serde_json::Value::Null),
            Err(_) => Err(format!(
                "handoffctl {}: {} {}",
                args[0],
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
        }
    }
}

impl Upgrader for Ctl {
    fn upgrade(&mut self, program: &Path) -> Result<Handoff, String> {
        let asked = Instant::now();
        let program = program.to_string_lossy();
        let answer = self.command(&["upgrade", "--binary", &program, "--json"])?;
        let wall = asked.elapsed();
        let millis = |value: &serde_json::Value| {
            value
                .as_f64()
                .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1e3))
        };
        let phases = answer
            .get("phases_ms")
            .and_then(|p| p.as_object())
            .map(|map| {
                map.iter()
                    .filter_map(|(name, ms)| millis(ms).map(|d| (name.clone(), d)))
                    .collect()
            })
            .unwrap_or_default();
        let committed = answer.get("committed").and_then(|c| c.as_bool()) == Some(true);
        Ok(Handoff {
            committed,
            total: answer.get("total_ms").and_then(millis).unwrap_or(wall),
            phases,
            wall,
            reason: (!committed).then(|| answer.to_string()),
            new_pid: answer
                .get("new_pid")
                .and_then(|pid| pid.as_u64())
                .and_then(|pid| u32::try_from(pid).ok()),
        })
    }

    fn supervisor_pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    fn finish(mut self: Box<Self>) -> Result<(), String> {
        self.stop(StopBy::Command)
    }
}

impl Ctl {
    /// Stops `handoffctl run` as `how` says and reaps it (SIGKILL past
    /// [`CTL_BOUND`]); once stopped, a no-op.
    fn stop(&mut self, how: StopBy) -> Result<(), String> {
        if self.reaped {
            return Ok(());
        }
        let asked = match (self.child.try_wait(), how) {
            (Ok(None), StopBy::Command) => self.command(&["stop"]).map(drop),
            (Ok(None), StopBy::Signal) => {
                handoff::os::signal(self.child.id(), handoff::os::Sig::Term)
                    .map_err(|e| e.to_string())
            }
            _ => Ok(()),
        };
        let until = Instant::now() + CTL_BOUND;
        loop {
            let outcome = match self.child.try_wait() {
                Ok(Some(status)) if status.success() => asked,
                Ok(Some(status)) => Err(format!("handoffctl run: {status}")),
                Ok(None) if Instant::now() < until => {
                    std::thread::sleep(NAIVE_POLL * 5);
                    continue;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    Err("handoffctl run did not stop: killed".into())
                }
            };
            self.reaped = true;
            return outcome;
        }
    }
}

/// How [`Ctl`] stops `handoffctl run`; either way it then waits for the
/// exit at most [`CTL_BOUND`] and SIGKILLs past it.
#[derive(Debug, Clone, Copy)]
enum StopBy {
    /// `handoffctl stop`: the verb under test, at the end of a good run.
    Command,
    /// SIGTERM (handoffctl stops as for `stop`): after an error, when the
    /// admin socket may not answer.
    Signal,
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if let Err(error) = self.stop(StopBy::Signal) {
            eprintln!("handoff-bench: stopping handoffctl run after an error: {error}");
        }
    }
}
