//! Who replaces the daemon during the load: `handoffctl` (the default), the
//! library's supervisor in this process, or a naive restart (the negative
//! control); and what it replaces it with ([`Deploy`]). `handoffctl` can
//! also replace itself ([`Upgrader::reexec`]; [`crate::reexec`]).
//!
//! By default ([`Builds::Fresh`]) every upgrade runs a build that did not
//! exist before it, as a real deploy does: the daemon's build is copied to
//! a temporary name in the run's directory with a trailer no other build
//! has (after the ELF image, which the loader ignores; a comment at the end
//! of a script), then renamed over the deployed path, as `cp` and `mv` do
//! (a new inode and a new sha256 under the same path), and the upgrader
//! runs the configured binary as it is on disk now (`handoffctl upgrade`
//! with no `--binary`; the library's `UpgradeRequest` with no `program`).
//! [`Builds::Fixed`] installs two builds side by side, `NAME-a` and `NAME-b`
//! (the second with a trailer), and each upgrade names the other one
//! (`--binary`, both in `allowed_binaries`).
//!
//! The daemons report their executable's file name as their build in
//! `/info`; a build's path, inode and sha256 are recorded in [`Build`], and
//! [`crate::run`] checks that each new generation runs the inode it was
//! upgraded to. The foreign daemon is a Python script: its builds start
//! with a `#!` line that names the interpreter found at the start, and the
//! kernel's `/proc/PID/cmdline` names the script a generation runs.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use handoff::Mode;
use handoff::supervisor::{
    DaemonProtocol, NamedListener, Outcome, Supervisor, SupervisorConfig, UpgradeRequest,
};

use crate::reexec::Reexecuted;
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
    /// Replaces the running generation with `build` (named, or the
    /// configured binary as it is on disk now: [`Build::named`]).
    fn upgrade(&mut self, build: &Build) -> Result<Handoff, String>;
    /// The supervisor's pid when it is a process of its own.
    fn supervisor_pid(&self) -> Option<u32>;
    /// Replaces the supervisor's own image with `binary`, keeping its pid
    /// and generations (`handoffctl reexec`): only `handoffctl` can.
    fn reexec(&mut self, binary: &Path) -> Result<Reexecuted, String> {
        Err(format!(
            "re-executing the supervisor into {} needs `handoffctl run` (--supervisor handoffctl)",
            binary.display()
        ))
    }
    /// Stops everything it started.
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// How the daemon runs, whatever its build: its data directory and
/// arguments.
#[derive(Debug, Clone)]
pub struct DaemonCommand {
    /// The data directory (`kvd` only).
    pub data_dir: Option<PathBuf>,
    /// Which daemon (its mode and protocol).
    pub daemon: Daemon,
}

impl DaemonCommand {
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

/// Which files the upgrades run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Builds {
    /// A new build renamed over the deployed path before each upgrade,
    /// which runs the configured binary (the default).
    #[default]
    Fresh,
    /// Two builds side by side, `NAME-a` and `NAME-b`, alternated by name.
    Fixed,
}

impl Builds {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Builds::Fresh => "fresh",
            Builds::Fixed => "fixed",
        }
    }
}

/// A file's identity: what `/proc/PID/exe` resolves to outlives the path
/// (a build renamed over keeps its inode while a process runs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl FileId {
    /// The identity of what `path` names (following symlinks, and the
    /// `/proc` magic links to an executable or an open file).
    pub fn of(path: &Path) -> Option<FileId> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// One build put in place: what an upgrade is asked to run, and what its
/// generation must be found running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// Its path.
    pub path: PathBuf,
    /// Whether the upgrader names `path` (`--binary`); otherwise it runs
    /// the configured binary, which `path` is.
    pub named: bool,
    /// The build label a generation of it reports: the file name.
    pub label: String,
    /// The sha256 of its contents (lowercase hex), read back from the file.
    pub sha256: String,
    /// The file it was written as.
    pub file: FileId,
}

/// Puts the daemon's builds in place ([`Builds`]).
#[derive(Debug)]
pub struct Deploy {
    /// The daemon's build as read at the start (a script with its `#!`
    /// line rewritten).
    image: Vec<u8>,
    /// Whether the build is a script (its trailer is a comment).
    script: bool,
    /// Fresh builds: the deployed path, which every upgrade runs.
    deployed: PathBuf,
    /// Fixed builds: the two of them.
    fixed: Option<[Build; 2]>,
    /// Makes this run's trailers differ from any other run's.
    tag: String,
}

/// Bytes appended to the second fixed build of a binary to make it another
/// file.
const BUILD_TRAILER: &[u8] = b"\0handoff-bench: build b\0";
/// The same for a script: a comment, which the interpreter ignores.
const SCRIPT_TRAILER: &[u8] = b"\n# handoff-bench: build b\n";

impl Deploy {
    /// Builds of the binary at `binary`, written into `dir`.
    pub fn binary(binary: &Path, dir: &Path, builds: Builds) -> Result<Deploy, String> {
        let image = std::fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
        Deploy::new(binary, image, false, dir, builds)
    }

    /// Builds of the script at `script`, executable, with
    /// `#!INTERPRETER` as their first line (replacing the script's own `#!`
    /// line), written into `dir`.
    pub fn script(
        script: &Path,
        interpreter: &Path,
        dir: &Path,
        builds: Builds,
    ) -> Result<Deploy, String> {
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
        Deploy::new(script, image, true, dir, builds)
    }

    fn new(
        source: &Path,
        image: Vec<u8>,
        script: bool,
        dir: &Path,
        builds: Builds,
    ) -> Result<Deploy, String> {
        let name = source
            .file_name()
            .ok_or_else(|| format!("{}: no file name", source.display()))?;
        let fixed = match builds {
            Builds::Fresh => None,
            Builds::Fixed => {
                let mut other = image.clone();
                other.extend_from_slice(if script {
                    SCRIPT_TRAILER
                } else {
                    BUILD_TRAILER
                });
                let [a, b] = fixed_paths(source, dir)?;
                Some([
                    write_build(&a, &[&image], true)?,
                    write_build(&b, &[&other], true)?,
                ])
            }
        };
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Deploy {
            image,
            script,
            deployed: dir.join(name),
            fixed,
            tag: format!(
                "{}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                since_epoch.as_nanos()
            ),
        })
    }

    /// Which builds these are.
    pub fn builds(&self) -> Builds {
        match self.fixed {
            None => Builds::Fresh,
            Some(_) => Builds::Fixed,
        }
    }

    /// The binary the supervisor is configured with: the deployed path, or
    /// the first fixed build.
    pub fn configured(&self) -> &Path {
        match &self.fixed {
            None => &self.deployed,
            Some([a, _]) => &a.path,
        }
    }

    /// Whether each upgrade writes a new build (and the benchmark reads it
    /// back for its sha256): work of the harness's own, on the machine the
    /// load runs on.
    pub fn is_fresh(&self) -> bool {
        self.fixed.is_none()
    }

    /// Every path an upgrade may name (`allowed_binaries`): none for fresh
    /// builds, which run the configured binary.
    pub fn allowed(&self) -> Vec<PathBuf> {
        self.fixed
            .iter()
            .flat_map(|builds| builds.iter().map(|build| build.path.clone()))
            .collect()
    }

    /// The build of round `round` (0: the first generation's). Fixed: one
    /// of the two, alternating. Fresh: a new one, put in place now over the
    /// deployed path.
    pub fn build(&mut self, round: usize) -> Result<Build, String> {
        if let Some(builds) = &self.fixed {
            return Ok(builds[round % 2].clone());
        }
        let name = self
            .deployed
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = self
            .deployed
            .with_file_name(format!(".{name}.deploy-{round}"));
        let trailer = if self.script {
            format!("\n# handoff-bench build {} {round}\n", self.tag)
        } else {
            format!("\0handoff-bench build {} {round}\0", self.tag)
        };
        let build = write_build(&temporary, &[&self.image, trailer.as_bytes()], false)?;
        std::fs::rename(&temporary, &self.deployed).map_err(|e| {
            format!(
                "renaming {} over {}: {e}",
                temporary.display(),
                self.deployed.display()
            )
        })?;
        Ok(Build {
            path: self.deployed.clone(),
            label: name,
            ..build
        })
    }
}

/// `dir/STEM-a[.EXT]` and `dir/STEM-b[.EXT]`.
fn fixed_paths(source: &Path, dir: &Path) -> Result<[PathBuf; 2], String> {
    let stem = source
        .file_stem()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: no file name", source.display()))?;
    let extension = source
        .extension()
        .and_then(|e| e.to_str())
        .map_or_else(String::new, |e| format!(".{e}"));
    Ok(["a", "b"].map(|letter| dir.join(format!("{stem}-{letter}{extension}"))))
}

/// Writes `parts` to a new executable file at `path` and reads it back for
/// its sha256 and identity.
pub(crate) fn write_build(path: &Path, parts: &[&[u8]], named: bool) -> Result<Build, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .map_err(failed)?;
    for part in parts {
        std::io::Write::write_all(&mut file, part).map_err(failed)?;
    }
    // Closed before anything can execute it (ETXTBSY).
    drop(file);
    let file = std::fs::File::open(path).map_err(failed)?;
    let sha256 = handoff::os::sha256_hex(&file).map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    Ok(Build {
        path: path.to_owned(),
        named,
        label: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256,
        file: FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        },
    })
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
    /// generation with `program`, the configured binary; returns the
    /// upgrader and the address.
    pub fn start(daemon: DaemonCommand, program: &Path) -> Result<(InProcess, SocketAddr), String> {
        let bind = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let listener = NamedListener::bind("http", &bind).map_err(|e| e.to_string())?;
        let addr: SocketAddr = listener.address.parse().map_err(|e| format!("{e}"))?;
        let (args, mode) = (daemon.args(None), daemon.daemon.mode());
        let supervisor = Supervisor::start(SupervisorConfig {
            protocol: match daemon.daemon {
                Daemon::Kvd | Daemon::Echod => DaemonProtocol::Library,
                Daemon::ForeignHttpd => DaemonProtocol::Systemd {
                    ready: handoff::protocol::ReadySignal::Notify,
                    stop_signal: handoff::os::Sig::Term,
                    quiesce: None,
                    fd_store_max: handoff::supervisor::DEFAULT_FD_STORE_MAX,
                },
            },
            ..SupervisorConfig::new(program, args, mode, vec![listener])
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
    fn upgrade(&mut self, build: &Build) -> Result<Handoff, String> {
        let asked = Instant::now();
        let supervisor = self
            .supervisor
            .as_ref()
            .ok_or("the supervisor has stopped")?;
        let outcome = supervisor
            .handle()
            .upgrade(UpgradeRequest {
                // None: the configured program as it is on disk now.
                program: build.named.then(|| build.path.clone()),
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
    /// Picks a free loopback port and starts `program` alone on it
    /// (`--listen`: kvd, echod and httpd.py bind it themselves).
    pub fn start(
        daemon: DaemonCommand,
        program: &Path,
    ) -> Result<(NaiveRestart, SocketAddr), String> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?;
        let child = spawn_alone(&daemon, program, addr)?;
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
    fn upgrade(&mut self, build: &Build) -> Result<Handoff, String> {
        let started = Instant::now();
        self.stop()?;
        self.child = spawn_alone(&self.daemon, &build.path, self.addr)?;
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
/// `handoffctl upgrade` (fresh builds: no `--binary`, the configured binary
/// as it is on disk now; fixed builds: `--binary`), stopped with
/// `handoffctl stop`.
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
    /// Writes a config in `dir` (listener `http` on `127.0.0.1:0`, the
    /// deploy's configured binary and the ones it names allowed), starts
    /// `handoffctl run` with its log in `dir/handoffctl.log` and
    /// `--allow-supervisor-binary` for each of `supervisor_builds` (what
    /// [`Upgrader::reexec`] may name), and learns the address from
    /// `status`. With `metrics`, it serves its Prometheus metrics on an
    /// ephemeral loopback port (the address is in the log).
    pub fn start(
        handoffctl: PathBuf,
        daemon: &DaemonCommand,
        deploy: &Deploy,
        dir: &Path,
        supervisor_builds: &[PathBuf],
        metrics: bool,
    ) -> Result<(Ctl, SocketAddr), String> {
        let socket = dir.join("admin.sock");
        let quote = |path: &Path| format!("{:?}", path.display().to_string());
        let allowed: Vec<String> = deploy.allowed().iter().map(|path| quote(path)).collect();
        let mut config = format!(
            "binary = {}\nsocket = {}\nmode = \"{}\"\nallowed_binaries = [{}]\n",
            quote(deploy.configured()),
            quote(&socket),
            match daemon.daemon.mode() {
                Mode::Exclusive => "exclusive",
                Mode::Overlap => "overlap",
            },
            allowed.join(", "),
        );
        if daemon.daemon == Daemon::ForeignHttpd {
            // Socket activation and READY=1; the old generation gets SIGTERM.
            config.push_str("protocol = \"systemd\"\n");
        }
        if let Some(data) = &daemon.data_dir {
            config.push_str(&format!("data_dir = {}\n", quote(data)));
        }
        if metrics {
            config.push_str("metrics = \"127.0.0.1:0\"\n");
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
            .args(
                supervisor_builds
                    .iter()
                    .flat_map(|build| [OsString::from("--allow-supervisor-binary"), build.into()]),
            )
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
    fn upgrade(&mut self, build: &Build) -> Result<Handoff, String> {
        let asked = Instant::now();
        let program = build.path.to_string_lossy();
        let answer = if build.named {
            self.command(&["upgrade", "--binary", &program, "--json"])?
        } else {
            // What a deploy does: the new build is in place at the
            // configured path; upgrade to it as it is on disk now.
            self.command(&["upgrade", "--json"])?
        };
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

    fn reexec(&mut self, binary: &Path) -> Result<Reexecuted, String> {
        let asked = Instant::now();
        let output = Command::new(&self.handoffctl)
            .arg("reexec")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--binary")
            .arg(binary)
            .arg("--json")
            .output()
            .map_err(|e| format!("spawning {} reexec: {e}", self.handoffctl.display()))?;
        let wall = asked.elapsed();
        let text = String::from_utf8_lossy(&output.stdout);
        let answer = serde_json::from_str(text.trim()).map_err(|_| {
            format!(
                "handoffctl reexec: {} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
        Ok(Reexecuted::from_answer(&answer, output.status.code(), wall))
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
