//! One benchmark run: a daemon, an upgrader, open-loop load, K upgrades
//! (each to a fresh build put in place just before it, or alternating two
//! fixed builds: [`Builds`]), the read-back, and the checks that each
//! upgrade really changed the serving process to the build it was asked
//! for and left nothing behind. [`run_with_progress`] says what it is
//! doing as it goes.
//!
//! The daemons are `kvd` (exclusive mode), `echod` (overlap mode), and
//! `examples/foreign/httpd.py`, a Python daemon that does not link the
//! library, supervised with `--protocol systemd` (socket activation on fd
//! 3, `READY=1`, always overlap).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use handoff::Mode;

use crate::kernel::{Counters, Netns, Witness};
use crate::load::{self, ClientLog, Connections, LoadConfig, Target};
use crate::reexec::{
    Footprint, IdleReexecs, ReexecPhase, ReexecWindow, SupervisorBuilds, UpgradeAfter, runs_image,
};
pub use crate::upgrade::Builds;
use crate::upgrade::{
    Build, Ctl, DaemonCommand, Deploy, FileId, Handoff, InProcess, NaiveRestart, Upgrader,
};

/// Who replaces the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgraderKind {
    /// `handoffctl run` / `handoffctl upgrade` (the default).
    Ctl,
    /// The library's supervisor, in the benchmark's process.
    InProcess,
    /// The negative control: SIGTERM, then start the new build alone.
    NaiveRestart,
}

/// The daemon under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `kvd`: stateful, exclusive mode; every acknowledged write is read
    /// back.
    Kvd,
    /// `echod`: stateless, overlap mode.
    Echod,
    /// `examples/foreign/httpd.py` under `--protocol systemd`: Python's
    /// `http.server` on the socket it finds on fd 3, `READY=1` on
    /// `NOTIFY_SOCKET`, SIGTERM to stop; overlap mode (the only one for a
    /// foreign daemon). It answers every `GET` with `pid=N` over HTTP/1.0,
    /// so every request of the load runs on a new connection.
    ForeignHttpd,
}

impl Daemon {
    /// The handoff mode it runs in.
    pub fn mode(self) -> Mode {
        match self {
            Daemon::Kvd => Mode::Exclusive,
            Daemon::Echod | Daemon::ForeignHttpd => Mode::Overlap,
        }
    }

    /// The benchmark mode's name (`--mode`, the report, the SVG's name).
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Kvd => "exclusive",
            Daemon::Echod => "overlap",
            Daemon::ForeignHttpd => "foreign",
        }
    }

    /// What the load expects from it.
    pub fn target(self) -> Target {
        match self {
            Daemon::Kvd => Target::KeyValue,
            Daemon::Echod => Target::Echo,
            Daemon::ForeignHttpd => Target::Pid,
        }
    }
}

/// A run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The daemon (and so the mode).
    pub daemon: Daemon,
    /// Who replaces the daemon.
    pub upgrader: UpgraderKind,
    /// Where `kvd` and `echod` are (`target/PROFILE/examples`).
    pub examples_dir: PathBuf,
    /// The foreign daemon's script [default: `examples/foreign/httpd.py`
    /// in this source tree].
    pub foreign_script: PathBuf,
    /// The `handoffctl` binary [default: `handoffctl` beside
    /// `examples_dir`, i.e. `target/PROFILE/handoffctl`].
    pub handoffctl: Option<PathBuf>,
    /// Upgrades during the load.
    pub upgrades: usize,
    /// What each upgrade runs: a fresh build put in place before it (the
    /// default), or one of two fixed builds.
    pub builds: Builds,
    /// Concurrent clients.
    pub clients: usize,
    /// Which clients keep their connection alive.
    pub connections: Connections,
    /// Arrival rate, requests per second over all clients.
    pub rate: f64,
    /// Steady load before the first upgrade and after the last one.
    pub steady: Duration,
    /// Steady load between an upgrade's end and the next one.
    pub interval: Duration,
    /// Bound on one request.
    pub request_timeout: Duration,
    /// Supervisor re-execs after the upgrades (0: none): `handoffctl run`
    /// replaces its own image this many times, alternating two builds of
    /// handoffctl, `interval` apart, then the daemon is upgraded once more
    /// ([`crate::reexec`]). `handoffctl` only.
    pub reexecs: usize,
    /// `handoffctl run` only: serve `--metrics` and scrape them this often
    /// while the load runs ([`crate::scrape`]).
    pub scrape_metrics: Option<Duration>,
}

impl Config {
    /// Defaults: 32 clients at 800 requests/s (half kept alive), 20
    /// upgrades to fresh builds.
    pub fn new(daemon: Daemon, examples_dir: PathBuf) -> Config {
        Config {
            daemon,
            upgrader: UpgraderKind::Ctl,
            examples_dir,
            foreign_script: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/foreign/httpd.py"
            )),
            handoffctl: None,
            upgrades: 20,
            builds: Builds::Fresh,
            clients: 32,
            connections: Connections::Mixed,
            rate: 800.0,
            steady: Duration::from_secs(1),
            interval: Duration::from_millis(300),
            request_timeout: Duration::from_secs(5),
            reexecs: 0,
            scrape_metrics: None,
        }
    }

    /// The daemon upgrades a run asks for: `upgrades`, and the one after
    /// the re-execs when there are any.
    pub fn upgrades_asked(&self) -> usize {
        self.upgrades + usize::from(self.reexecs > 0)
    }

    /// The `handoffctl` binary: [`Config::handoffctl`], or `handoffctl`
    /// beside `examples_dir`.
    pub fn handoffctl_path(&self) -> PathBuf {
        self.handoffctl.clone().unwrap_or_else(|| {
            self.examples_dir
                .parent()
                .unwrap_or(&self.examples_dir)
                .join("handoffctl")
        })
    }
}

/// One upgrade as observed from outside.
#[derive(Debug, Clone)]
pub struct Window {
    /// From the load's start: the upgrade was asked for.
    pub start: Duration,
    /// From the load's start: the old generation was gone (or the upgrade
    /// returned, if it failed).
    pub end: Duration,
    /// What the upgrader reported.
    pub handoff: Handoff,
    /// The build it was asked to run.
    pub build: Build,
    /// The pid that served before the upgrade.
    pub old_pid: u32,
    /// Asked for the upgrade until the old generation's process was gone.
    pub old_gone: Option<Duration>,
    /// After the upgrade a new pid answered, reporting the new build's
    /// label and a higher generation (the foreign daemon: the pid the
    /// supervisor committed), and that process runs the build's file
    /// ([`runs_build`]).
    pub identity_changed: bool,
}

/// Everything a run observed; [`crate::report`] turns it into figures.
#[derive(Debug)]
pub struct Observed {
    /// The settings.
    pub config: Config,
    /// One log per client.
    pub clients: Vec<ClientLog>,
    /// One per upgrade.
    pub windows: Vec<Window>,
    /// Fresh builds: each one's deploy (written, read back for its sha256,
    /// renamed in place), from the load's start, start and end.
    pub deploys: Vec<(Duration, Duration)>,
    /// Acknowledged writes read back wrong or missing.
    pub lost_writes: u64,
    /// Acknowledged writes that could not be read at all.
    pub unreadable_writes: u64,
    /// Old generations still running at the end.
    pub lingering_generations: usize,
    /// Supervisor RSS in KiB before and after, when it is a process.
    pub supervisor_rss_kib: (Option<u64>, Option<u64>),
    /// Errors of the harness itself (an upgrade call failing, `/info`
    /// unreachable).
    pub harness_errors: Vec<String>,
    /// How long the load ran.
    pub duration: Duration,
    /// The build the first generation runs.
    pub first_build: Build,
    /// The supervisor's own event log (`handoffctl` only), an independent
    /// witness of the handoffs.
    pub supervisor_log: Option<SupervisorLog>,
    /// The kernel's TCP counters over the load (from just before it starts
    /// to after the read-back), a third witness; `None` if `/proc/net`
    /// could not be read (the reason is in `harness_errors`).
    pub kernel: Option<Witness>,
    /// The supervisor re-execs and the upgrade after them, when asked
    /// ([`Config::reexecs`]).
    pub reexecs: Option<ReexecPhase>,
    /// The metrics scrapes, with `scrape_metrics`.
    pub scrapes: Option<crate::scrape::Scrapes>,
}

/// What `handoffctl run --log-format json` logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SupervisorLog {
    /// Upgrades committed (the cold start not counted).
    pub upgrades_committed: u64,
    /// Handoffs rolled back.
    pub rolled_back: u64,
    /// Re-execs of the supervisor committed (logged by the new image).
    pub reexecs_committed: u64,
}

impl SupervisorLog {
    /// Reads the JSON lines `handoffctl run` wrote to `path`: the outcome
    /// lines logged by the `handoffctl` binary, whichever of its modules
    /// logs them (not the library's own `handoff::supervisor` lines, which
    /// say the same of the same handoffs).
    pub fn read(path: &std::path::Path) -> Option<SupervisorLog> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut log = SupervisorLog::default();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let target = event["target"].as_str().unwrap_or_default();
            if target != "handoffctl" && !target.starts_with("handoffctl::") {
                continue;
            }
            let message = event["fields"]["message"].as_str().unwrap_or_default();
            let generation = event["fields"]["generation"].as_u64().unwrap_or(0);
            if message == "handoff committed" && generation > 1 {
                log.upgrades_committed += 1;
            } else if message.contains("rolled back") {
                log.rolled_back += 1;
            } else if message.starts_with("re-exec committed") {
                log.reexecs_committed += 1;
            }
        }
        Some(log)
    }
}

/// How long old generations get to exit after their handoff.
const RETIRE_BOUND: Duration = Duration::from_secs(15);
/// Poll period for process exit and readiness.
const POLL: Duration = Duration::from_millis(1);
/// Bound on the daemon's first start.
const FIRST_START_BOUND: Duration = Duration::from_secs(20);

/// What a run is doing, for a person watching.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A step of the run begins (or a fact worth a line).
    Phase(String),
    /// Upgrade `round` of `of` is done and checked.
    Upgraded {
        /// 1-based.
        round: usize,
        /// Upgrades asked.
        of: usize,
        /// What was seen.
        window: &'a Window,
    },
    /// Supervisor re-exec `round` of `of` is done and checked.
    Reexecuted {
        /// 1-based.
        round: usize,
        /// Re-execs asked.
        of: usize,
        /// What was seen.
        window: &'a ReexecWindow,
    },
}

/// Runs the benchmark once, silently.
pub fn run(config: Config) -> Result<Observed, String> {
    run_with_progress(config, &mut |_| {})
}

/// Runs the benchmark once, telling `progress` what it does.
pub fn run_with_progress(
    config: Config,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Observed, String> {
    let data_dir =
        std::env::temp_dir().join(format!("handoff-bench-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let result = run_in(config, &data_dir, progress);
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// What [`start`] started.
struct Started {
    upgrader: Box<dyn Upgrader>,
    addr: SocketAddr,
    deploy: Deploy,
    first_build: Build,
    /// The two handoffctl builds the re-execs alternate, when asked.
    supervisor_builds: Option<SupervisorBuilds>,
}

/// Puts the daemon's first build in place in `dir` and starts the
/// upgrader with it (and, for re-execs, two handoffctl builds it may
/// re-exec into).
fn start(config: &Config, dir: &Path) -> Result<Started, String> {
    let (daemon, mut deploy) = match config.daemon {
        Daemon::Kvd => prepare_example(config, dir, "kvd", Some(dir.join("data")))?,
        Daemon::Echod => prepare_example(config, dir, "echod", None)?,
        Daemon::ForeignHttpd => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let interpreter = python3(&path)?;
            let deploy = Deploy::script(&config.foreign_script, &interpreter, dir, config.builds)?;
            let daemon = DaemonCommand {
                data_dir: None,
                daemon: config.daemon,
            };
            (daemon, deploy)
        }
    };
    if config.reexecs > 0 && config.upgrader != UpgraderKind::Ctl {
        return Err("supervisor re-execs need `handoffctl run` (--supervisor handoffctl)".into());
    }
    let first_build = deploy.build(0)?;
    let mut supervisor_builds = None;
    let (upgrader, addr): (Box<dyn Upgrader>, SocketAddr) = match config.upgrader {
        UpgraderKind::Ctl => {
            let handoffctl = config.handoffctl_path();
            if !handoffctl.exists() {
                return Err(format!(
                    "{} is missing: build it first (`cargo build --release -p handoffctl`)",
                    handoffctl.display()
                ));
            }
            if config.reexecs > 0 {
                supervisor_builds = Some(SupervisorBuilds::write(&handoffctl, dir)?);
            }
            let allowed = supervisor_builds
                .as_ref()
                .map_or_else(Vec::new, SupervisorBuilds::paths);
            let metrics = config.scrape_metrics.is_some();
            let (upgrader, addr) =
                Ctl::start(handoffctl, &daemon, &deploy, dir, &allowed, metrics)?;
            (Box::new(upgrader), addr)
        }
        UpgraderKind::InProcess => {
            let (upgrader, addr) = InProcess::start(daemon, &first_build.path)?;
            (Box::new(upgrader), addr)
        }
        UpgraderKind::NaiveRestart => {
            let (upgrader, addr) = NaiveRestart::start(daemon, &first_build.path)?;
            (Box::new(upgrader), addr)
        }
    };
    Ok(Started {
        upgrader,
        addr,
        deploy,
        first_build,
        supervisor_builds,
    })
}

/// The builds of the example `program` (`kvd`, `echod`), with its data
/// directory if it has one.
fn prepare_example(
    config: &Config,
    dir: &Path,
    program: &str,
    data_dir: Option<PathBuf>,
) -> Result<(DaemonCommand, Deploy), String> {
    let binary = config.examples_dir.join(program);
    if !binary.exists() {
        return Err(format!(
            "{} is missing: build the examples first (`cargo build --release --examples`)",
            binary.display()
        ));
    }
    if let Some(data_dir) = &data_dir {
        std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
    }
    let deploy = Deploy::binary(&binary, dir, config.builds)?;
    let daemon = DaemonCommand {
        data_dir,
        daemon: config.daemon,
    };
    Ok((daemon, deploy))
}

/// The Python interpreter the foreign daemon runs on: `python3` found in
/// `path` (a `PATH` value), resolved to the real executable
/// (`sys.executable`; `python3` may be a shim script that would otherwise
/// run between the supervisor's `exec` and the daemon).
pub fn python3(path: &std::ffi::OsStr) -> Result<PathBuf, String> {
    let missing = || {
        "python3 is not in PATH: the foreign mode runs examples/foreign/httpd.py with it \
         (install CPython 3, or choose another --mode)"
            .to_owned()
    };
    let found = std::env::split_paths(path)
        .map(|dir| dir.join("python3"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(missing)?;
    let output = std::process::Command::new(&found)
        .args(["-c", "import sys; print(sys.executable)"])
        .env("PATH", path)
        .output()
        .map_err(|e| format!("{}: {e}", found.display()))?;
    let executable = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || executable.is_empty() {
        return Err(format!(
            "{} does not run: {} {}",
            found.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(PathBuf::from(executable))
}

fn run_in(
    config: Config,
    dir: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Observed, String> {
    progress(Progress::Phase(format!(
        "putting the first build in place and starting {}",
        match config.upgrader {
            UpgraderKind::Ctl => "`handoffctl run`",
            UpgraderKind::InProcess => "the supervisor in this process",
            UpgraderKind::NaiveRestart => "the daemon alone (naive restarts)",
        }
    )));
    let mut running = Running::start(config, dir, progress)?;
    let rss_before = running.upgrader.supervisor_pid().and_then(rss_kib);
    let netns = Netns::current();
    let kernel_before = Counters::read();
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = start_scraper(&running.config, dir, progress)?;
    let load = running.spawn_load(Arc::clone(&stop), progress);
    // The next build is put in place while the load runs steady, as a
    // deploy would; the upgrade is asked at the scheduled time.
    let mut next = running.origin + running.config.steady;
    for round in 1..=running.config.upgrades {
        next = running.upgrade(round, next, progress);
    }
    let reexecs = (running.config.reexecs > 0).then(|| running.reexecs(&mut next, progress));
    let steady = running.config.steady;
    progress(Progress::Phase(format!(
        "steady load after the last {} for {} ms",
        if reexecs.is_some() {
            "re-exec's upgrade"
        } else {
            "upgrade"
        },
        steady.as_millis()
    )));
    sleep_until(next.max(Instant::now()) + steady);
    stop.store(true, Ordering::SeqCst);
    let clients = running
        .runtime
        .block_on(load)
        .map_err(|e| format!("load task: {e}"))?;
    let duration = running.origin.elapsed();
    let scrapes = scraper.map(crate::scrape::Scraper::finish);
    if let Some(scrapes) = &scrapes {
        let committed = running
            .windows
            .iter()
            .filter(|w| w.handoff.committed)
            .count() as u64;
        let disagreements = scrapes.disagreements(committed);
        running.harness_errors.extend(disagreements);
    }
    let (lost_writes, unreadable_writes) = running.read_back(&clients, duration, progress);
    let kernel = match (kernel_before, Counters::read()) {
        (Ok(before), Ok(after)) => Some(Witness {
            delta: after.since(&before),
            netns,
        }),
        (Err(error), _) | (_, Err(error)) => {
            running
                .harness_errors
                .push(format!("kernel counters: {error}"));
            None
        }
    };
    let stopped = running.stop(dir, progress);
    Ok(Observed {
        clients,
        lost_writes,
        unreadable_writes,
        supervisor_rss_kib: (rss_before, stopped.supervisor_rss_kib.1),
        duration,
        kernel,
        reexecs,
        scrapes,
        ..stopped
    })
}

/// With `scrape_metrics`, a scraper of `handoffctl run`'s metrics (its
/// address read from its log).
fn start_scraper(
    config: &Config,
    dir: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Option<crate::scrape::Scraper>, String> {
    match config.scrape_metrics {
        Some(every) if config.upgrader == UpgraderKind::Ctl => {
            let log = dir.join(crate::upgrade::CTL_LOG);
            let addr = crate::scrape::metrics_addr(&log)
                .ok_or("handoffctl run logged no metrics address (see handoffctl.log)")?;
            progress(Progress::Phase(format!(
                "scraping http://{addr}/metrics every {} ms",
                every.as_millis()
            )));
            Ok(Some(crate::scrape::Scraper::start(addr, every)?))
        }
        _ => Ok(None),
    }
}

/// A run under way: what its steps share.
struct Running {
    config: Config,
    upgrader: Box<dyn Upgrader>,
    deploy: Deploy,
    first_build: Build,
    supervisor_builds: Option<SupervisorBuilds>,
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    target: Target,
    /// Who serves now, as `/info` last said.
    identity: Identity,
    /// Time zero of the windows: the load's start.
    origin: Instant,
    windows: Vec<Window>,
    /// Each fresh build's deploy, from `origin`.
    deploys: Vec<(Duration, Duration)>,
    /// The generations replaced so far, which must exit.
    old_pids: Vec<u32>,
    harness_errors: Vec<String>,
}

/// How long the load may run on per re-exec, beyond the interval (the
/// target's self-check and the new image's take-over have bounds of 10 s
/// and 5 s).
const REEXEC_BOUND: Duration = Duration::from_secs(30);
/// A pause before the supervisor's footprint is sampled after re-execs:
/// the admin connection that asked the last one closes after its answer.
const FOOTPRINT_SETTLE: Duration = Duration::from_millis(100);

impl Running {
    /// Starts the upgrader and waits until the first generation says who
    /// it is.
    fn start(
        config: Config,
        dir: &Path,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Running, String> {
        let Started {
            upgrader,
            addr,
            deploy,
            first_build,
            supervisor_builds,
        } = start(&config, dir)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let target = config.daemon.target();
        let first = runtime.block_on(info_until(addr, target, Instant::now() + FIRST_START_BOUND));
        let Some(identity) = first else {
            let _ = upgrader.finish();
            return Err(
                "the first generation never said who it is (`/info`, or `GET /` for the foreign daemon)"
                    .into(),
            );
        };
        let mut harness_errors = Vec::new();
        if !runs_build(identity.pid, target, &first_build) {
            harness_errors.push(format!(
                "the first generation (pid {}) does not run {}",
                identity.pid,
                first_build.path.display()
            ));
        }
        progress(Progress::Phase(format!(
            "first generation serves on {addr}: pid {}, build {} (sha256 {:.12})",
            identity.pid, identity.build, first_build.sha256
        )));
        Ok(Running {
            config,
            upgrader,
            deploy,
            first_build,
            supervisor_builds,
            runtime,
            addr,
            target,
            identity,
            origin: Instant::now(),
            windows: Vec::new(),
            deploys: Vec::new(),
            old_pids: Vec::new(),
            harness_errors,
        })
    }

    /// Starts the open-loop load (it begins a moment from now: the new
    /// time zero) until `stop`.
    fn spawn_load(
        &mut self,
        stop: Arc<AtomicBool>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> tokio::task::JoinHandle<Vec<ClientLog>> {
        let config = &self.config;
        let start = Instant::now() + Duration::from_millis(20);
        self.origin = start;
        let hard_end = start
            + config.steady * 2
            + (config.interval + RETIRE_BOUND + Duration::from_secs(30))
                * config.upgrades_asked() as u32
            + (config.interval + REEXEC_BOUND) * config.reexecs as u32;
        progress(Progress::Phase(format!(
            "load: {} clients ({} connections) at {} requests/s; steady for {} ms",
            config.clients,
            config.connections.name(),
            config.rate,
            config.steady.as_millis()
        )));
        self.runtime.spawn(load::run(
            LoadConfig {
                addr: self.addr,
                clients: config.clients,
                connections: config.connections,
                rate: config.rate,
                request_timeout: config.request_timeout,
                target: self.target,
            },
            start,
            stop,
            hard_end,
        ))
    }

    /// Upgrade `round` at `at`: puts its build in place halfway between
    /// the last step and `at`, asks for it, checks who serves after it and
    /// records its window; when the next step may come.
    fn upgrade(
        &mut self,
        round: usize,
        at: Instant,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Instant {
        let Some(build) = self.deploy_before(round, at) else {
            return at;
        };
        sleep_until(at);
        let asked = Instant::now();
        let asked_of = self.identity.pid;
        let handoff = match self.upgrader.upgrade(&build) {
            Ok(handoff) => handoff,
            Err(error) => {
                self.harness_errors
                    .push(format!("upgrade {round}: {error}"));
                return Instant::now() + self.config.interval;
            }
        };
        // After a commit away from `asked_of`, ask until another process
        // answers.
        let replaced = handoff.committed.then_some(asked_of);
        let after = self
            .runtime
            .block_on(identity_when(self.addr, self.target, |i| {
                Some(i.pid) != replaced
            }));
        let (identity_changed, old_gone) = match after {
            Some(new) => self.judge_new(new, &handoff, &build, asked),
            None => {
                self.harness_errors
                    .push(format!("upgrade {round}: no identity after it"));
                (false, None)
            }
        };
        if !handoff.committed {
            self.harness_errors.push(format!(
                "upgrade {round} rolled back: {}",
                handoff.reason.clone().unwrap_or_default()
            ));
        }
        self.windows.push(Window {
            old_pid: asked_of,
            start: asked.saturating_duration_since(self.origin),
            end: Instant::now().saturating_duration_since(self.origin),
            handoff,
            build,
            old_gone,
            identity_changed,
        });
        if let Some(window) = self.windows.last() {
            progress(Progress::Upgraded {
                round,
                of: self.config.upgrades_asked(),
                window,
            });
        }
        Instant::now() + self.config.interval
    }

    /// Puts round `round`'s build in place. A fresh build is written and
    /// read back halfway through the steady load before `at`, away from the
    /// windows on both sides (that work competes with the load and the
    /// daemon on this machine), and its span is recorded; `None` (and a
    /// harness error) if it could not be.
    fn deploy_before(&mut self, round: usize, at: Instant) -> Option<Build> {
        let fresh = self.deploy.is_fresh();
        if fresh {
            sleep_until(at.checked_sub(self.config.interval / 2).unwrap_or(at));
        }
        let started = Instant::now();
        let build = self.deploy.build(round);
        if fresh {
            let since = |t: Instant| t.saturating_duration_since(self.origin);
            self.deploys.push((since(started), since(Instant::now())));
        }
        build
            .map_err(|error| {
                self.harness_errors
                    .push(format!("upgrade {round}: deploying: {error}"))
            })
            .ok()
    }

    /// Whether `new`, seen serving after `handoff`, is a new process
    /// running `build` with a higher generation; and when the process it
    /// replaced was gone (counted from `asked`). `new` serves from now on.
    fn judge_new(
        &mut self,
        new: Identity,
        handoff: &Handoff,
        build: &Build,
        asked: Instant,
    ) -> (bool, Option<Duration>) {
        let generation_rose = match (new.generation, self.identity.generation) {
            (Some(new_generation), Some(old)) => new_generation > old,
            // A daemon that does not know its generation (the foreign
            // one): the pid the supervisor committed is the one serving.
            _ => handoff.new_pid == Some(new.pid),
        };
        let identity_changed = new.pid != self.identity.pid
            && new.build == build.label
            && (self.config.upgrader == UpgraderKind::NaiveRestart || generation_rose)
            && runs_build(new.pid, self.target, build);
        let mut old_gone = None;
        if new.pid != self.identity.pid {
            self.old_pids.push(self.identity.pid);
            if wait_gone(self.identity.pid, asked + RETIRE_BOUND) {
                old_gone = Some(asked.elapsed());
            }
        }
        self.identity = new;
        (identity_changed, old_gone)
    }

    /// `config.reexecs` re-execs of the supervisor, alternating its two
    /// builds, from `next` on and `config.interval` apart, its footprint
    /// sampled before the first and after the last; then one daemon
    /// upgrade. `next` becomes when the step after may come.
    fn reexecs(
        &mut self,
        next: &mut Instant,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> ReexecPhase {
        let count = self.config.reexecs;
        let (Some(builds), Some(pid)) = (
            self.supervisor_builds.clone(),
            self.upgrader.supervisor_pid(),
        ) else {
            self.harness_errors
                .push("re-execs asked of a supervisor that is not `handoffctl run`".into());
            return ReexecPhase::new(count, Footprint::default());
        };
        sleep_until(*next);
        let mut phase = ReexecPhase::new(count, Footprint::of(pid));
        for round in 1..=count {
            sleep_until(*next);
            if let Some(window) = self.reexec(round, &builds, pid) {
                progress(Progress::Reexecuted {
                    round,
                    of: count,
                    window: &window,
                });
                phase.windows.push(window);
            }
            *next = Instant::now() + self.config.interval;
        }
        sleep_until((*next).max(Instant::now() + FOOTPRINT_SETTLE));
        phase.after = Footprint::of(pid);
        let windows = self.windows.len();
        *next = self.upgrade(self.config.upgrades + 1, *next, progress);
        phase.upgrade_after = self
            .windows
            .get(windows)
            .map(|window| UpgradeAfter::of(&window.handoff, window.identity_changed));
        phase
    }

    /// Re-exec `round` of the supervisor `pid` into its build for that
    /// round, and who serves after it.
    fn reexec(
        &mut self,
        round: usize,
        builds: &SupervisorBuilds,
        pid: u32,
    ) -> Option<ReexecWindow> {
        let image = builds.target(round).clone();
        let asked = Instant::now();
        let reexec = match self.upgrader.reexec(&image.path) {
            Ok(reexec) => reexec,
            Err(error) => {
                self.harness_errors
                    .push(format!("re-exec {round}: {error}"));
                return None;
            }
        };
        let answered = Instant::now();
        let supervisor_running = is_running(pid);
        let supervisor_runs_image = runs_image(pid, &image);
        let daemon_after = self.runtime.block_on(info_until(
            self.addr,
            self.target,
            Instant::now() + FIRST_START_BOUND,
        ));
        if !reexec.committed() {
            self.harness_errors
                .push(format!("re-exec {round} did not commit: {}", reexec.why()));
        }
        let daemon_before = self.identity.clone();
        match &daemon_after {
            Some(now) => self.identity = now.clone(),
            None => self
                .harness_errors
                .push(format!("re-exec {round}: no identity after it")),
        }
        Some(ReexecWindow {
            start: asked.saturating_duration_since(self.origin),
            end: answered.saturating_duration_since(self.origin),
            image,
            reexec,
            supervisor_pid: pid,
            supervisor_running,
            supervisor_runs_image,
            daemon_before,
            daemon_after,
        })
    }

    /// Reads every write in `clients`' logs back; (lost, unreadable).
    fn read_back(
        &self,
        clients: &[ClientLog],
        duration: Duration,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> (u64, u64) {
        let acked: Vec<_> = clients
            .iter()
            .flat_map(|c| c.acked.iter().cloned())
            .collect();
        progress(Progress::Phase(format!(
            "load stopped after {:.1} s ({} requests); reading back {} acknowledged writes",
            duration.as_secs_f64(),
            clients.iter().map(|c| c.samples.len()).sum::<usize>(),
            acked.len()
        )));
        self.runtime.block_on(load::read_back(
            self.addr,
            acked,
            self.config.request_timeout,
        ))
    }

    /// Waits for the old generations to exit, samples the supervisor's
    /// RSS, stops the upgrader and reads its log: the report, but for
    /// the load's figures and the RSS before.
    fn stop(mut self, dir: &Path, progress: &mut dyn FnMut(Progress<'_>)) -> Observed {
        progress(Progress::Phase(format!(
            "checking that the {} old generations exited; stopping",
            self.old_pids.len()
        )));
        let lingering_generations = self
            .old_pids
            .iter()
            .filter(|pid| !wait_gone(**pid, Instant::now() + RETIRE_BOUND))
            .count();
        let rss_after = self.upgrader.supervisor_pid().and_then(rss_kib);
        if let Err(error) = self.upgrader.finish() {
            self.harness_errors.push(format!("stopping: {error}"));
        }
        let supervisor_log = (self.config.upgrader == UpgraderKind::Ctl)
            .then(|| SupervisorLog::read(&dir.join(crate::upgrade::CTL_LOG)))
            .flatten();
        Observed {
            config: self.config,
            clients: Vec::new(),
            windows: self.windows,
            deploys: self.deploys,
            lost_writes: 0,
            unreadable_writes: 0,
            lingering_generations,
            supervisor_rss_kib: (None, rss_after),
            harness_errors: self.harness_errors,
            duration: Duration::ZERO,
            first_build: self.first_build,
            supervisor_log,
            kernel: None,
            reexecs: None,
            scrapes: None,
        }
    }
}

/// Who answers `/info` once the one `wanted` answers, or at
/// [`FIRST_START_BOUND`] whoever answers then (`None`: nobody). In overlap
/// mode the old generation accepts until it reads its Drain, which follows
/// the commit: right after a commit it may still answer.
async fn identity_when(
    addr: SocketAddr,
    target: Target,
    wanted: impl Fn(&Identity) -> bool,
) -> Option<Identity> {
    let deadline = Instant::now() + FIRST_START_BOUND;
    loop {
        let seen = info_until(addr, target, deadline).await;
        if seen.as_ref().is_none_or(&wanted) || Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sleeps until `at` (now if it is past): the schedule of the upgrades,
/// not a wait for an event.
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Whether `pid` runs `build`. A binary: `/proc/PID/exe` is the file the
/// benchmark wrote as that build (its inode outlives the path once a later
/// build is renamed over it). A script: the interpreter was started on a
/// path (`/proc/PID/cmdline`) that names that file now; since a build is
/// put in place before its upgrade is asked and the next one only after
/// this check, the path named it from before the spawn until now.
pub fn runs_build(pid: u32, target: Target, build: &Build) -> bool {
    let running = if target == Target::Pid {
        script_path_of(pid).and_then(|path| FileId::of(&path))
    } else {
        FileId::of(Path::new(&format!("/proc/{pid}/exe")))
    };
    running == Some(build.file)
}

/// Who serves: what `/info` says (`kvd`, `echod`), or for the foreign
/// daemon the pid it answers with and the script the kernel says it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The serving process.
    pub pid: u32,
    /// Its build label.
    pub build: String,
    /// Its generation number, when the daemon knows it.
    pub generation: Option<u64>,
}

async fn info_once(addr: SocketAddr, target: Target) -> Option<Identity> {
    let mut connection = crate::client::Connection::open(addr).await.ok()?;
    if target == Target::Pid {
        let response = connection.exchange("GET", "/", &[], false).await.ok()?;
        let pid = load::pid_in(&response)?;
        return Some(Identity {
            pid,
            build: script_of(pid)?,
            generation: None,
        });
    }
    let response = connection.exchange("GET", "/info", &[], false).await.ok()?;
    let json: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
    Some(Identity {
        pid: u32::try_from(json.get("pid")?.as_u64()?).ok()?,
        build: json.get("build")?.as_str()?.to_owned(),
        generation: Some(json.get("generation")?.as_u64()?),
    })
}

/// The file name of the script `pid` runs ([`script_path_of`]).
fn script_of(pid: u32) -> Option<String> {
    let path = script_path_of(pid)?;
    Some(path.file_name()?.to_string_lossy().into_owned())
}

/// The path of the script `pid` runs: its first argument in
/// `/proc/PID/cmdline` (an interpreter started by a `#!` line gets the
/// script's path there).
fn script_path_of(pid: u32) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let script = cmdline.split(|&byte| byte == 0).nth(1)?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(script)))
}

async fn info_until(addr: SocketAddr, target: Target, deadline: Instant) -> Option<Identity> {
    loop {
        // The kernel completes a connect into the shared backlog whether or
        // not a daemon ever accepts it: each attempt is bounded too.
        let attempt = tokio::time::timeout_at(deadline.into(), info_once(addr, target)).await;
        if let Ok(Some(identity)) = attempt {
            return Some(identity);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL * 10).await;
    }
}

/// Whether `pid` runs (a zombie has exited and counts as gone).
pub fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn wait_gone(pid: u32, deadline: Instant) -> bool {
    loop {
        if !is_running(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// The resident set of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Upgrades with no load: the handoff's own cost, and whether the process
/// hosting the supervisor grows with the number of handoffs.
#[derive(Debug)]
pub struct Idle {
    /// The settings (`upgrades`, `daemon`, `examples_dir` are used).
    pub config: Config,
    /// Each handoff as reported by the upgrader.
    pub handoffs: Vec<Handoff>,
    /// RSS in KiB of the process hosting the supervisor after the first
    /// generation started and after the last handoff.
    pub supervisor_rss_kib: (Option<u64>, Option<u64>),
    /// `(upgrades done, RSS KiB)` every [`RSS_SAMPLE_EVERY`] upgrades.
    pub rss_samples: Vec<(usize, u64)>,
    /// Old generations still running at the end.
    pub lingering_generations: usize,
    /// Harness errors.
    pub harness_errors: Vec<String>,
}

/// How often an idle run samples the supervisor's RSS.
pub const RSS_SAMPLE_EVERY: usize = 50;

/// Runs `config.upgrades` upgrades back to back without load.
pub fn idle(config: Config) -> Result<Idle, String> {
    let data_dir = std::env::temp_dir().join(format!(
        "handoff-bench-idle-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let result = idle_in(config, &data_dir);
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

fn idle_in(config: Config, dir: &Path) -> Result<Idle, String> {
    if config.daemon.target() == Target::Pid {
        // The end check counts generations through `/info`.
        return Err("idle upgrades need a daemon that reports its generation".into());
    }
    let Started {
        mut upgrader,
        addr,
        mut deploy,
        ..
    } = start(&config, dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut harness_errors = Vec::new();
    let target = config.daemon.target();
    let Some(first) =
        runtime.block_on(info_until(addr, target, Instant::now() + FIRST_START_BOUND))
    else {
        let _ = upgrader.finish();
        return Err("the first generation never answered /info".into());
    };
    let host = upgrader.supervisor_pid().unwrap_or_else(std::process::id);
    let rss_before = rss_kib(host);
    let mut handoffs = Vec::new();
    let mut rss_samples = Vec::new();
    let mut last_build = None;
    for round in 1..=config.upgrades {
        let upgraded = deploy
            .build(round)
            .and_then(|build| Ok((upgrader.upgrade(&build)?, build)));
        match upgraded {
            Ok((handoff, build)) => {
                handoffs.push(handoff);
                last_build = Some(build);
            }
            Err(error) => harness_errors.push(format!("upgrade {round}: {error}")),
        }
        if round.is_multiple_of(RSS_SAMPLE_EVERY)
            && let Some(rss) = rss_kib(host)
        {
            rss_samples.push((round, rss));
        }
    }
    let rss_after = rss_kib(host);
    let expected = first.generation.map(|g| g + config.upgrades as u64);
    let last = runtime.block_on(identity_when(addr, target, |i| i.generation == expected));
    if last.as_ref().map(|i| i.generation) != Some(expected) {
        harness_errors.push(format!(
            "expected generation {expected:?} at the end, /info said {last:?}"
        ));
    }
    if let (Some(last), Some(build)) = (&last, &last_build)
        && !runs_build(last.pid, target, build)
    {
        harness_errors.push(format!(
            "the last generation (pid {}) does not run {}",
            last.pid,
            build.path.display()
        ));
    }
    // Every generation but the last is a child of the supervisor's process
    // that must be gone.
    let lingering_generations = children_of(host, last.map(|i| i.pid))
        .into_iter()
        .filter(|pid| !wait_gone(*pid, Instant::now() + RETIRE_BOUND))
        .count();
    if let Err(error) = upgrader.finish() {
        harness_errors.push(format!("stopping: {error}"));
    }
    Ok(Idle {
        config,
        handoffs,
        supervisor_rss_kib: (rss_before, rss_after),
        rss_samples,
        lingering_generations,
        harness_errors,
    })
}

/// Runs `config.reexecs` supervisor re-execs without load,
/// `config.interval` apart (the first one `config.interval` after the
/// first generation serves), then one daemon upgrade: a re-exec's own
/// cost, each one alone.
pub fn idle_reexecs(
    config: Config,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<IdleReexecs, String> {
    let dir = std::env::temp_dir().join(format!(
        "handoff-bench-idle-reexecs-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = Running::start(config, &dir, progress).map(|mut running| {
        running.origin = Instant::now();
        let mut next = running.origin + running.config.interval;
        let phase = running.reexecs(&mut next, progress);
        let stopped = running.stop(&dir, progress);
        IdleReexecs {
            config: stopped.config,
            phase,
            lingering_generations: stopped.lingering_generations,
            supervisor_log: stopped.supervisor_log,
            harness_errors: stopped.harness_errors,
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The children of `parent` (from `/proc/*/stat`), except `keep`.
fn children_of(parent: u32, keep: Option<u32>) -> Vec<u32> {
    let me = parent.to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != keep)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    Some(rest.split_whitespace().nth(1)? == me)
                })
                .unwrap_or(false)
        })
        .collect()
}

impl Idle {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let figures = |measure: fn(&Handoff) -> Duration| {
            let mut values: Vec<f64> = self
                .handoffs
                .iter()
                .filter(|h| h.committed)
                .map(|h| measure(h).as_secs_f64() * 1e3)
                .collect();
            values.sort_by(f64::total_cmp);
            let pick = |fraction: f64| {
                if values.is_empty() {
                    return serde_json::Value::Null;
                }
                let rank =
                    ((fraction * values.len() as f64).ceil() as usize).clamp(1, values.len());
                serde_json::json!((values[rank - 1] * 1000.0).round() / 1000.0)
            };
            serde_json::json!({ "p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0) })
        };
        serde_json::json!({
            "mode": self.config.daemon.name(),
            "builds": self.config.builds.name(),
            "upgrades_asked": self.config.upgrades,
            "upgrader": format!("{:?}", self.config.upgrader),
            "handoffs": self.handoffs.iter().filter(|h| h.committed).count(),
            "handoff_ms": {
                "total": figures(|h| h.total),
                "upgrade_call_wall": figures(|h| h.wall),
            },
            "supervisor_rss_kib": {
                "before": self.supervisor_rss_kib.0,
                "after": self.supervisor_rss_kib.1,
                "sample_every": RSS_SAMPLE_EVERY,
                "samples": self.rss_samples.iter().map(|(_, kib)| kib).collect::<Vec<_>>(),
            },
            "lingering_generations": self.lingering_generations,
            "harness_errors": self.harness_errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervisor_log_counts_upgrades_not_the_cold_start() {
        let dir = std::env::temp_dir().join(format!("handoff-bench-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("log");
        let line = |target: &str, message: &str, generation: u64| {
            format!(
                r#"{{"fields":{{"message":"{message}","generation":{generation}}},"target":"{target}"}}"#
            )
        };
        let text = [
            line("handoffctl::run", "handoff committed", 1),
            line("handoff::supervisor", "handoff committed", 2),
            line("handoffctl::run", "handoff committed", 2),
            line("handoffctl::run", "handoff rolled back", 2),
            "not json".to_owned(),
            line("handoffctl::run", "handoff committed", 3),
            line("handoffctl::events", "handoff committed", 4),
            line("handoffctlx::run", "handoff committed", 5),
            line(
                "handoffctl::reexec::restore",
                "re-exec committed: re-executed: pid 7 runs 2b now (was 1a) in 9.0 ms",
                0,
            ),
            line(
                "handoffctl::reexec::restore",
                "re-exec failed, the old image is back in charge: not re-executed",
                0,
            ),
        ]
        .join("\n");
        std::fs::write(&path, text).expect("write");
        let log = SupervisorLog::read(&path).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            log,
            SupervisorLog {
                upgrades_committed: 3,
                rolled_back: 1,
                reexecs_committed: 1,
            }
        );
    }

    /// Held by the tests that write scripts or spawn processes: a script
    /// written in one test thread and executed while another thread forks
    /// fails with ETXTBSY (the forked child holds the write fd until its
    /// exec).
    static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn spawning() -> std::sync::MutexGuard<'static, ()> {
        SPAWNING.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A scratch directory of its own, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "handoff-bench-{name}-{}-{}",
                std::process::id(),
                unique()
            ));
            std::fs::create_dir_all(&dir).expect("dir");
            Scratch(dir)
        }

        fn script(&self, name: &str, text: &str) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn python3_missing_from_the_path_is_a_clear_error() {
        let _turn = spawning();
        let empty = Scratch::new("nopython");
        let error = python3(empty.0.as_os_str()).expect_err("no python3 there");
        assert!(error.contains("python3 is not in PATH"), "{error}");
    }

    #[test]
    fn python3_is_resolved_to_the_executable_it_reports() {
        let _turn = spawning();
        let dir = Scratch::new("fakepython");
        // A stand-in that answers as `python3 -c 'print(sys.executable)'` would.
        dir.script("python3", "#!/bin/sh\necho /opt/python/bin/python3.99\n");
        assert_eq!(
            python3(dir.0.as_os_str()),
            Ok(PathBuf::from("/opt/python/bin/python3.99"))
        );
        dir.script("python3", "#!/bin/sh\necho broken >&2\nexit 1\n");
        let error = python3(dir.0.as_os_str()).expect_err("a failing python3");
        assert!(
            error.contains("does not run") && error.contains("broken"),
            "{error}"
        );
    }

    #[test]
    fn the_two_fixed_script_builds_name_the_interpreter_and_differ() {
        let _turn = spawning();
        let dir = Scratch::new("builds");
        let source = dir.script("httpd.py", "#!/usr/bin/env python3\nprint('hi')\n");
        let out = dir.0.join("out");
        std::fs::create_dir_all(&out).expect("out");
        let mut deploy = Deploy::script(&source, Path::new("/opt/py/python3"), &out, Builds::Fixed)
            .expect("prepare");
        let [a, b] = [0, 1].map(|round| deploy.build(round).expect("build"));
        assert_eq!(
            [&a.path, &b.path],
            [&out.join("httpd-a.py"), &out.join("httpd-b.py")]
        );
        assert_eq!(deploy.build(2).expect("build"), a, "they alternate");
        assert_eq!(deploy.configured(), a.path);
        assert_eq!(deploy.allowed(), [a.path.clone(), b.path.clone()]);
        assert!(a.named && b.named, "each upgrade names its build");
        let [text_a, text_b] = [&a, &b].map(|b| std::fs::read_to_string(&b.path).expect("read"));
        assert_eq!(text_a, "#!/opt/py/python3\nprint('hi')\n");
        assert!(text_b.starts_with(&text_a) && text_b.len() > text_a.len());
        assert_ne!(a.sha256, b.sha256);
        assert_eq!(b.label, "httpd-b.py");
    }

    #[test]
    fn a_fresh_build_is_a_new_file_renamed_over_the_deployed_path() {
        use std::os::unix::fs::PermissionsExt;
        let _turn = spawning();
        let dir = Scratch::new("fresh");
        let source = dir.script("kvd", "\x7fELF pretend image");
        let out = dir.0.join("out");
        std::fs::create_dir_all(&out).expect("out");
        let mut deploy = Deploy::binary(&source, &out, Builds::Fresh).expect("prepare");
        assert_eq!(deploy.configured(), out.join("kvd"));
        assert!(deploy.allowed().is_empty(), "{:?}", deploy.allowed());
        let mut builds: Vec<Build> = Vec::new();
        // Held open, as a running generation holds its binary: the inodes
        // of earlier builds are not reused.
        let mut held = Vec::new();
        for round in 0..4 {
            let build = deploy.build(round).expect("build");
            held.push(std::fs::File::open(&build.path).expect("open"));
            assert_eq!(build.path, out.join("kvd"));
            assert_eq!(build.label, "kvd");
            assert!(!build.named, "upgraded as the configured binary");
            assert_eq!(
                FileId::of(&build.path),
                Some(build.file),
                "the path names it"
            );
            let bytes = std::fs::read(&build.path).expect("read");
            assert!(bytes.starts_with(b"\x7fELF pretend image") && bytes.len() > 18);
            let file = std::fs::File::open(&build.path).expect("open");
            assert_eq!(handoff::os::sha256_hex(&file).expect("hash"), build.sha256);
            let mode = std::fs::metadata(&build.path)
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111, "executable: {mode:o}");
            for earlier in &builds {
                assert_ne!(earlier.sha256, build.sha256, "a new sha256");
                assert_ne!(earlier.file, build.file, "a new inode");
            }
            builds.push(build);
        }
        let names: Vec<_> = std::fs::read_dir(&out)
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["kvd"], "no temporary file is left");
        // A second deploy of the same source in the same run makes other
        // trailers still.
        let other = Scratch::new("fresh-other");
        let mut again = Deploy::binary(&source, &other.0, Builds::Fresh).expect("prepare");
        let first_again = again.build(0).expect("build");
        assert!(builds.iter().all(|b| b.sha256 != first_again.sha256));
    }

    #[test]
    fn the_script_a_process_runs_is_read_from_its_cmdline() {
        let _turn = spawning();
        use std::io::BufRead;
        let dir = Scratch::new("cmdline");
        let script = dir.script("waits-b.sh", "echo running\nread line\n");
        let mut child = std::process::Command::new("/bin/sh")
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // spawn() returns once the exec began, before the kernel has set
        // the new image's arguments: wait until the script runs.
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
        let seen = script_of(child.id());
        let build = |file| Build {
            path: script.clone(),
            named: false,
            label: "waits-b.sh".into(),
            sha256: String::new(),
            file,
        };
        let script_file = FileId::of(&script).expect("stat");
        let runs_it = runs_build(child.id(), Target::Pid, &build(script_file));
        let other = FileId::of(Path::new("/bin/sh")).expect("stat");
        let runs_other = runs_build(child.id(), Target::Pid, &build(other));
        drop(child.stdin.take());
        let _ = child.wait();
        assert_eq!(line, "running\n");
        assert_eq!(seen.as_deref(), Some("waits-b.sh"));
        assert_eq!(script_of(u32::MAX), None);
        assert!(runs_it && !runs_other, "{runs_it} {runs_other}");
    }

    #[test]
    fn a_binary_runs_the_file_its_exe_names_and_no_other() {
        let _turn = spawning();
        let me = FileId::of(Path::new("/proc/self/exe")).expect("stat");
        let build = |file| Build {
            path: PathBuf::from("/proc/self/exe"),
            named: false,
            label: String::new(),
            sha256: String::new(),
            file,
        };
        let pid = std::process::id();
        assert!(runs_build(pid, Target::KeyValue, &build(me)));
        // A copy of the same bytes is another build.
        let dir = Scratch::new("exe");
        let copy = dir.0.join("copy");
        std::fs::copy("/proc/self/exe", &copy).expect("copy");
        let copied = FileId::of(&copy).expect("stat");
        assert!(!runs_build(pid, Target::KeyValue, &build(copied)));
        assert!(!runs_build(u32::MAX, Target::KeyValue, &build(me)));
    }

    #[test]
    fn a_missing_process_is_not_running() {
        assert!(is_running(std::process::id()));
        assert!(!is_running(u32::MAX));
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
