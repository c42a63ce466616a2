//! Who replaces the daemon during the load: the library's supervisor in
//! this process, or a naive restart (the negative control).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use handoff::Mode;
use handoff::supervisor::{
    NamedListener, Outcome, RestartPolicy, Supervisor, SupervisorConfig, UpgradeRequest,
};

/// One replacement, as the upgrader saw it.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// Whether the new generation serves.
    pub committed: bool,
    /// The upgrader's own measure of the whole replacement.
    pub total: Duration,
    /// Named phases, when the upgrader knows them.
    pub phases: Vec<(&'static str, Duration)>,
    /// Why it did not commit.
    pub reason: Option<String>,
}

/// Something that replaces the running daemon.
pub trait Upgrader {
    /// Replaces the running generation with `build`.
    fn upgrade(&mut self, build: &str) -> Result<Handoff, String>;
    /// The supervisor's pid when it is a process of its own.
    fn supervisor_pid(&self) -> Option<u32>;
    /// Stops everything it started.
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// The daemon program and how to give it a build label.
#[derive(Debug, Clone)]
pub struct DaemonCommand {
    /// The binary (`kvd` or `echod`).
    pub program: PathBuf,
    /// The data directory (`kvd` only).
    pub data_dir: Option<PathBuf>,
}

impl DaemonCommand {
    /// The arguments for `build`, with `--listen` when running alone.
    pub fn args(&self, build: &str, listen: Option<SocketAddr>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--build".into(), build.into()];
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

/// The library's [`Supervisor`], in this process.
pub struct InProcess {
    supervisor: Supervisor,
    daemon: DaemonCommand,
}

impl InProcess {
    /// Binds `127.0.0.1:0` as listener `http` and starts the first
    /// generation with `build`; returns the upgrader and the address.
    pub fn start(
        daemon: DaemonCommand,
        mode: Mode,
        build: &str,
    ) -> Result<(InProcess, SocketAddr), String> {
        let bind = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let listener = NamedListener::bind("http", &bind).map_err(|e| e.to_string())?;
        let addr: SocketAddr = listener.address.parse().map_err(|e| format!("{e}"))?;
        let supervisor = Supervisor::start(SupervisorConfig {
            program: daemon.program.clone(),
            args: daemon.args(build, None),
            env: Vec::new(),
            mode,
            timeouts: handoff::Timeouts::default(),
            restart: RestartPolicy::OnFailure,
            listeners: vec![listener],
        })
        .map_err(|e| e.to_string())?;
        Ok((InProcess { supervisor, daemon }, addr))
    }
}

impl Upgrader for InProcess {
    fn upgrade(&mut self, build: &str) -> Result<Handoff, String> {
        let outcome = self
            .supervisor
            .handle()
            .upgrade(UpgradeRequest {
                args: Some(self.daemon.args(build, None)),
                ..UpgradeRequest::default()
            })
            .map_err(|e| e.to_string())?;
        Ok(match outcome {
            Outcome::Committed { phases, .. } => Handoff {
                committed: true,
                total: phases.total,
                phases: named_phases(&phases),
                reason: None,
            },
            Outcome::RolledBack { phases, reason, .. } => Handoff {
                committed: false,
                total: phases.total,
                phases: named_phases(&phases),
                reason: Some(format!("{reason:?}")),
            },
        })
    }

    fn supervisor_pid(&self) -> Option<u32> {
        None
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        self.supervisor.handle().stop().map_err(|e| e.to_string())?;
        self.supervisor.join().map_err(|e| e.to_string())
    }
}

fn named_phases(phases: &handoff::protocol::Phases) -> Vec<(&'static str, Duration)> {
    [
        ("spawn", phases.spawn),
        ("hello", phases.hello),
        ("warm_up", phases.warm_up),
        ("drain", phases.drain),
        ("seal", phases.seal),
        ("begin", phases.begin),
        ("commit", phases.commit),
    ]
    .into_iter()
    .filter_map(|(name, duration)| duration.map(|d| (name, d)))
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
    /// Picks a free loopback port and starts the daemon alone on it.
    pub fn start(daemon: DaemonCommand, build: &str) -> Result<(NaiveRestart, SocketAddr), String> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?;
        let child = spawn_alone(&daemon, build, addr)?;
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

fn spawn_alone(daemon: &DaemonCommand, build: &str, addr: SocketAddr) -> Result<Child, String> {
    Command::new(&daemon.program)
        .args(daemon.args(build, Some(addr)))
        .env_remove(handoff::ENV_CONTROL_FD)
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", daemon.program.display()))
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
    fn upgrade(&mut self, build: &str) -> Result<Handoff, String> {
        let started = Instant::now();
        handoff::os::signal(self.child.id(), handoff::os::Sig::Term).map_err(|e| e.to_string())?;
        self.child.wait().map_err(|e| e.to_string())?;
        self.child = spawn_alone(&self.daemon, build, self.addr)?;
        wait_listening(self.addr)?;
        Ok(Handoff {
            committed: true,
            total: started.elapsed(),
            phases: Vec::new(),
            reason: None,
        })
    }

    fn supervisor_pid(&self) -> Option<u32> {
        None
    }

    fn finish(mut self: Box<Self>) -> Result<(), String> {
        handoff::os::signal(self.child.id(), handoff::os::Sig::Term).map_err(|e| e.to_string())?;
        self.child.wait().map(drop).map_err(|e| e.to_string())
    }
}
