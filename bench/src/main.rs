//! `handoff-bench`: open-loop HTTP load across repeated upgrades.
//!
//! While it runs it says on stderr what it does (which daemon, each phase,
//! upgrade k of n); at the end it prints a short table per run on stdout
//! (upgrades committed, requests, failures by class, lost writes, handoff
//! p50/p99, p99 during handoffs against steady, reconnects, verdict) and
//! the paths of the SVG pictures, written to `target/handoff-bench/`
//! (`--svg-dir` to choose). `--json` prints one JSON object instead of the
//! tables. Each upgrade runs a fresh build put in place just before it, as
//! a deploy does (`--builds fixed` alternates two builds instead).
//!
//! With `--reexecs N`, the supervisor itself is replaced too: after the
//! daemon upgrades (`--upgrades 0` for none), `handoffctl run` re-executes
//! N times under the load into two builds of handoffctl made from the one
//! the benchmark uses (`handoffctl-a`, `handoffctl-b`: different sha256,
//! allowed with `--allow-supervisor-binary`), then upgrades the daemon once
//! more; and N idle re-execs per daemon (no load, `--interval-ms` apart,
//! `--idle-reexecs`) time a re-exec alone. The tables and `--json` add the
//! re-execs' total p50/p99 as the supervisor reports it (`reexec --json`'s
//! `total_ms`, preflight included) and as the caller sees it (`handoffctl
//! reexec` spawn to exit), the phases' medians, and the supervisor's RSS
//! (`VmRSS`) and open fds before the first re-exec and after the last.
//!
//! Exits 1 if a zero count is not zero ([`Counts::zero_loss_violations`]),
//! if a re-exec did not commit, changed the supervisor's or the daemon's
//! pid or the generation, or the upgrade after the re-execs did not commit
//! ([`ReexecCounts::violations`]), or if the negative control saw no
//! failure (a blind harness); with `--netns`, the kernel's TCP counters are
//! a zero count too. Exits 2 if the benchmark itself could not run.
//!
//! ```text
//! cargo build --release --examples -p handoff && cargo build --release -p handoffctl
//! cargo run --release -p handoff-bench -- --mode both --upgrades 20 --clients 32
//! cargo run --release -p handoff-bench -- --mode foreign --upgrades 20   # needs python3
//! cargo run --release -p handoff-bench -- --mode exclusive --upgrades 0 --reexecs 20 \
//!     --control-restarts 0 --idle-upgrades 0
//! ```
//!
//! [`Counts::zero_loss_violations`]: handoff_bench::report::Counts::zero_loss_violations
//! [`ReexecCounts::violations`]: handoff_bench::reexec::ReexecCounts::violations

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use handoff_bench::load::Connections;
use handoff_bench::reexec::IdleReexecs;
use handoff_bench::run::{
    Builds, Config, Daemon, Idle, Observed, Progress, UpgraderKind, run_with_progress,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Supervisor {
    /// `handoffctl run` as its own process, upgraded with `handoffctl upgrade`.
    Handoffctl,
    /// The library's `Supervisor` inside the benchmark's process.
    InProcess,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Modes {
    /// kvd, exclusive mode.
    Exclusive,
    /// echod, overlap mode.
    Overlap,
    /// examples/foreign/httpd.py (python3) under `--protocol systemd`.
    Foreign,
    /// exclusive and overlap: the library daemons.
    Both,
    /// exclusive, overlap and foreign.
    All,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BuildsArg {
    /// Before each upgrade, a new build (a copy of the daemon's with a
    /// trailer of its own) is renamed over the configured binary, which
    /// the upgrade runs as it is on disk now (`handoffctl upgrade`, no
    /// --binary).
    Fresh,
    /// Two builds side by side, NAME-a and NAME-b, each upgrade naming the
    /// other (`handoffctl upgrade --binary`).
    Fixed,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConnectionsArg {
    /// Half of the clients open a new connection per request, half keep
    /// theirs alive.
    Mixed,
    /// Every client opens a new connection per request.
    PerRequest,
}

/// Load benchmark for handoff: zero-loss counts, handoff times, latency.
#[derive(Debug, Parser)]
struct Args {
    /// Which daemon: exclusive (kvd), overlap (echod), foreign (a Python
    /// daemon under --protocol systemd; needs python3), both (the library
    /// daemons), or all three.
    #[arg(long, value_enum, default_value = "both")]
    mode: Modes,
    /// Who supervises and upgrades.
    #[arg(long, value_enum, default_value = "handoffctl")]
    supervisor: Supervisor,
    /// The handoffctl binary [default: beside this binary].
    #[arg(long)]
    handoffctl: Option<PathBuf>,
    /// Upgrades per run.
    #[arg(long, default_value_t = 20)]
    upgrades: usize,
    /// What each upgrade runs.
    #[arg(long, value_enum, default_value = "fresh")]
    builds: BuildsArg,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How the clients use connections.
    #[arg(long, value_enum, default_value = "mixed")]
    connections: ConnectionsArg,
    /// Arrival rate over all clients, requests per second.
    #[arg(long, default_value_t = 800.0)]
    rate: f64,
    /// Steady load before the first and after the last upgrade, ms.
    #[arg(long, default_value_t = 1000)]
    steady_ms: u64,
    /// Steady load between upgrades, ms.
    #[arg(long, default_value_t = 300)]
    interval_ms: u64,
    /// Naive restarts in the negative control (0 skips it).
    #[arg(long, default_value_t = 3)]
    control_restarts: usize,
    /// Idle upgrades of echod (no load) to time the handoff alone and watch
    /// the supervisor host's RSS (0 skips them).
    #[arg(long, default_value_t = 100)]
    idle_upgrades: usize,
    /// Where kvd and echod are [default: target/PROFILE/examples next to
    /// this binary].
    #[arg(long)]
    examples_dir: Option<PathBuf>,
    /// The foreign daemon's script [default: examples/foreign/httpd.py in
    /// the source tree this binary was built from].
    #[arg(long)]
    foreign_script: Option<PathBuf>,
    /// Run in a network namespace of the benchmark's own (needs root or
    /// CAP_SYS_ADMIN): the kernel's TCP counters then count its traffic
    /// alone, and the verdict requires no refusal, reset or drop in them
    /// for the supervised runs and some for the naive-restart control.
    #[arg(long)]
    netns: bool,
    /// Supervisor re-execs per run (0: none). After the --upgrades daemon
    /// upgrades (--upgrades 0: none), `handoffctl run` replaces its own
    /// image N times under the load (`handoffctl reexec`), alternating two
    /// copies of the handoffctl binary with different sha256 (written into
    /// the run's directory and allowed with --allow-supervisor-binary),
    /// --interval-ms apart; then the daemon is upgraded once more. Every
    /// re-exec must commit with the supervisor's pid, the daemon's pid and
    /// its generation unchanged, and the upgrade after must commit, beside
    /// the zero counts. Reports the re-execs' total p50/p99 (the
    /// supervisor's and the caller's), phase medians, and the supervisor's
    /// RSS and fds before the first and after the last. Also runs idle
    /// re-execs (--idle-reexecs). Needs --supervisor handoffctl.
    #[arg(long, value_name = "N", default_value_t = 0)]
    reexecs: usize,
    /// Re-execs with no load, --interval-ms apart, for each daemon of
    /// --mode, then one upgrade: a re-exec's own cost (0 skips them)
    /// [default: --reexecs].
    #[arg(long, value_name = "N")]
    idle_reexecs: Option<usize>,
    /// Print one JSON object on stdout instead of the tables.
    #[arg(long)]
    json: bool,
    /// Directory for the SVG pictures, created if missing [default:
    /// handoff-bench/ in the cargo target directory this binary is in].
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    /// Run `handoffctl run` with `--metrics` and scrape it every N ms
    /// during each loaded run, as Prometheus would; the last scrape must
    /// count the commits the harness saw (0: off).
    #[arg(long, default_value_t = 0, value_name = "N")]
    scrape_metrics_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "handoff-bench: a zero count is not zero, a re-exec did not keep the supervisor, \
                 or the negative control saw nothing"
            );
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("handoff-bench: {error}");
            ExitCode::from(2)
        }
    }
}

/// Where things are, and which daemons to run.
struct Setup {
    examples_dir: PathBuf,
    svg_dir: PathBuf,
    daemons: &'static [Daemon],
    supervised: UpgraderKind,
}

impl Setup {
    fn new(args: &Args) -> Result<Setup, String> {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_owned));
        let examples_dir = args.examples_dir.clone().unwrap_or_else(|| {
            exe_dir
                .as_ref()
                .map(|dir| dir.join("examples"))
                .unwrap_or_else(|| PathBuf::from("target/release/examples"))
        });
        let svg_dir = args.svg_dir.clone().unwrap_or_else(|| {
            target_dir(exe_dir.as_deref())
                .unwrap_or_else(std::env::temp_dir)
                .join("handoff-bench")
        });
        std::fs::create_dir_all(&svg_dir).map_err(|e| format!("{}: {e}", svg_dir.display()))?;
        let supervised = match args.supervisor {
            Supervisor::Handoffctl => UpgraderKind::Ctl,
            Supervisor::InProcess => UpgraderKind::InProcess,
        };
        if supervised != UpgraderKind::Ctl && (args.reexecs > 0 || args.idle_reexecs() > 0) {
            return Err(
                "--reexecs re-executes `handoffctl run`: it needs --supervisor handoffctl".into(),
            );
        }
        if supervised != UpgraderKind::Ctl && args.scrape_metrics_ms > 0 {
            return Err("--scrape-metrics-ms needs --supervisor handoffctl".into());
        }
        Ok(Setup {
            examples_dir,
            svg_dir,
            daemons: match args.mode {
                Modes::Exclusive => &[Daemon::Kvd],
                Modes::Overlap => &[Daemon::Echod],
                Modes::Foreign => &[Daemon::ForeignHttpd],
                Modes::Both => &[Daemon::Kvd, Daemon::Echod],
                Modes::All => &[Daemon::Kvd, Daemon::Echod, Daemon::ForeignHttpd],
            },
            supervised,
        })
    }

    /// A run of `daemon` by `upgrader` with `upgrades` upgrades, as `args`
    /// shape it; no re-execs.
    fn config(
        &self,
        args: &Args,
        daemon: Daemon,
        upgrader: UpgraderKind,
        upgrades: usize,
    ) -> Config {
        let defaults = Config::new(daemon, self.examples_dir.clone());
        Config {
            upgrader,
            upgrades,
            builds: match args.builds {
                BuildsArg::Fresh => Builds::Fresh,
                BuildsArg::Fixed => Builds::Fixed,
            },
            clients: args.clients,
            connections: match args.connections {
                ConnectionsArg::Mixed => Connections::Mixed,
                ConnectionsArg::PerRequest => Connections::PerRequest,
            },
            rate: args.rate,
            scrape_metrics: (args.scrape_metrics_ms > 0)
                .then(|| Duration::from_millis(args.scrape_metrics_ms)),
            steady: Duration::from_millis(args.steady_ms),
            interval: Duration::from_millis(args.interval_ms),
            handoffctl: args.handoffctl.clone(),
            foreign_script: args
                .foreign_script
                .clone()
                .unwrap_or(defaults.foreign_script.clone()),
            ..defaults
        }
    }
}

impl Args {
    fn idle_reexecs(&self) -> usize {
        self.idle_reexecs.unwrap_or(self.reexecs)
    }
}

/// What the runs found.
#[derive(Default)]
struct Results {
    /// Every verdict held.
    ok: bool,
    /// The runs under load and the controls, with their pictures.
    finished: Vec<(Observed, PathBuf)>,
    /// Idle upgrades of echod.
    idle: Option<Idle>,
    /// Idle re-execs, one per daemon.
    idle_reexecs: Vec<IdleReexecs>,
}

/// Runs everything `args` asks for and reports it; whether every verdict
/// holds.
fn bench(args: &Args) -> Result<bool, String> {
    // Before any thread starts: the namespace is per thread.
    if args.netns {
        handoff_bench::kernel::enter_private_network().map_err(|e| format!("--netns: {e}"))?;
    }
    let setup = Setup::new(args)?;
    let loadavg_before = loadavg();
    let mut results = Results {
        ok: true,
        ..Results::default()
    };
    for &daemon in setup.daemons {
        let config = Config {
            reexecs: args.reexecs,
            ..setup.config(args, daemon, setup.supervised, args.upgrades)
        };
        results.measure(&setup, config, daemon.name())?;
    }
    // The negative control: kvd restarted the naive way, and the foreign
    // daemon too when it was measured (its client checks differ).
    if args.control_restarts > 0 {
        let restarts = args.control_restarts;
        let naive = UpgraderKind::NaiveRestart;
        let config = setup.config(args, Daemon::Kvd, naive, restarts);
        results.measure(&setup, config, "naive-restart")?;
        if setup.daemons.contains(&Daemon::ForeignHttpd) {
            let config = setup.config(args, Daemon::ForeignHttpd, naive, restarts);
            results.measure(&setup, config, "naive-restart-foreign")?;
        }
    }
    if args.idle_upgrades > 0 {
        let config = setup.config(args, Daemon::Echod, setup.supervised, args.idle_upgrades);
        eprintln!(
            "== echod, idle: {} upgrades to {} builds, no load",
            config.upgrades,
            config.builds.name()
        );
        let idle = handoff_bench::run::idle(config).map_err(|e| format!("idle: {e}"))?;
        results.ok &= idle.lingering_generations == 0 && idle.harness_errors.is_empty();
        results.idle = Some(idle);
    }
    if args.idle_reexecs() > 0 {
        for &daemon in setup.daemons {
            let config = Config {
                reexecs: args.idle_reexecs(),
                ..setup.config(args, daemon, setup.supervised, 0)
            };
            results.idle_reexecs(config)?;
        }
    }
    if args.json {
        print_json(&results, loadavg_before);
    } else {
        print_tables(&results, &loadavg_before);
    }
    Ok(results.ok)
}

impl Results {
    /// Runs `config` under load, draws `picture`, and keeps the verdict.
    fn measure(&mut self, setup: &Setup, config: Config, picture: &str) -> Result<(), String> {
        let observed = measured(config)?;
        let path = setup.svg_dir.join(format!("handoff-bench-{picture}.svg"));
        if let Err(error) = write_svg(&path, &observed, picture) {
            // The figures are still worth printing.
            eprintln!("handoff-bench: writing the picture: {error}");
        }
        self.ok &= observed.violations().is_empty();
        self.finished.push((observed, path));
        Ok(())
    }

    /// Runs `config`'s re-execs with no load, and keeps the verdict.
    fn idle_reexecs(&mut self, config: Config) -> Result<(), String> {
        eprintln!(
            "== {}, idle: {} re-execs of handoffctl run {} ms apart, no load, then one upgrade",
            config.daemon.name(),
            config.reexecs,
            config.interval.as_millis()
        );
        let idle = handoff_bench::run::idle_reexecs(config, &mut say)
            .map_err(|e| format!("idle re-execs: {e}"))?;
        self.ok &= idle.violations().is_empty();
        self.idle_reexecs.push(idle);
        Ok(())
    }

    /// Whether a naive-restart control ran.
    fn control_ran(&self) -> bool {
        self.finished
            .iter()
            .any(|(o, _)| o.config.upgrader == UpgraderKind::NaiveRestart)
    }

    /// The report of the naive-restart control of `daemon`, if it ran.
    fn control_json(&self, daemon: Daemon) -> serde_json::Value {
        self.finished
            .iter()
            .find(|(o, _)| {
                o.config.upgrader == UpgraderKind::NaiveRestart && o.config.daemon == daemon
            })
            .map_or(serde_json::Value::Null, |(o, _)| o.to_json())
    }
}

fn print_json(results: &Results, loadavg_before: String) {
    let report = serde_json::json!({
        "runs": results
            .finished
            .iter()
            .filter(|(o, _)| o.config.upgrader != UpgraderKind::NaiveRestart)
            .map(|(o, _)| o.to_json())
            .collect::<Vec<_>>(),
        "idle_overlap": results.idle.as_ref().map(Idle::to_json),
        "idle_reexecs": results
            .idle_reexecs
            .iter()
            .map(IdleReexecs::to_json)
            .collect::<Vec<_>>(),
        "negative_control": results.control_json(Daemon::Kvd),
        "negative_control_foreign": results.control_json(Daemon::ForeignHttpd),
        "netns": handoff_bench::kernel::Netns::current().name(),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        "svg": results.finished.iter().map(|(_, path)| path.display().to_string()).collect::<Vec<_>>(),
        "zero_loss": results.ok,
    });
    println!("{report}");
    for (_, path) in &results.finished {
        eprintln!("picture: {}", path.display());
    }
}

fn print_tables(results: &Results, loadavg_before: &str) {
    for (observed, path) in &results.finished {
        println!("{}", observed.title());
        print!("{}", observed.to_table());
        println!("  {:<28} {}\n", "picture", path.display());
    }
    if let Some(idle) = &results.idle {
        println!("{}", idle_summary(idle));
    }
    for idle in &results.idle_reexecs {
        println!("{}", idle.to_table());
    }
    println!(
        "load average {} before, {} after ({}); verdict: {}",
        averages(loadavg_before),
        averages(&loadavg()),
        match handoff_bench::kernel::Netns::current() {
            handoff_bench::kernel::Netns::Private => "a network namespace of its own",
            handoff_bench::kernel::Netns::Shared => "shared network namespace",
        },
        match (results.ok, results.control_ran()) {
            (true, true) => "zero loss, and the control sees losses",
            (true, false) => "zero loss (no negative control ran)",
            (false, _) => "FAILED (see the verdicts above)",
        }
    );
}

/// Runs once, saying what it does on stderr.
fn measured(config: Config) -> Result<Observed, String> {
    let upgrades = config.upgrades;
    eprintln!(
        "== {}: {} {}, {} builds{}, {} clients at {} requests/s",
        match config.daemon {
            Daemon::Kvd => "kvd, exclusive mode",
            Daemon::Echod => "echod, overlap mode",
            Daemon::ForeignHttpd => "httpd.py, foreign (python3)",
        },
        upgrades,
        match config.upgrader {
            UpgraderKind::Ctl => "upgrades by handoffctl",
            UpgraderKind::InProcess => "upgrades by the in-process supervisor",
            UpgraderKind::NaiveRestart => "naive restarts (the negative control)",
        },
        config.builds.name(),
        if config.reexecs > 0 {
            format!(
                ", then {} re-execs of handoffctl run and one more upgrade",
                config.reexecs
            )
        } else {
            String::new()
        },
        config.clients,
        config.rate
    );
    run_with_progress(config, &mut say).map_err(|error| format!("upgrades 1..{upgrades}: {error}"))
}

/// Says on stderr what a run is doing.
fn say(progress: Progress<'_>) {
    match progress {
        Progress::Phase(what) => eprintln!("   {what}"),
        Progress::Upgraded { round, of, window } => eprintln!(
            "   upgrade {round:>3} of {of}: {}, {:.1} ms, pid {} -> {}{}",
            if window.handoff.committed {
                "committed"
            } else {
                "ROLLED BACK"
            },
            window.handoff.total.as_secs_f64() * 1e3,
            window.old_pid,
            window
                .handoff
                .new_pid
                .map_or_else(|| "?".to_owned(), |pid| pid.to_string()),
            if window.identity_changed {
                ""
            } else {
                " (NOT seen running the new build)"
            }
        ),
        Progress::Reexecuted { round, of, window } => eprintln!(
            "   re-exec {round:>3} of {of} into {}: {}, {} ms (reexec call {:.1} ms); supervisor pid {} {}; daemon pid {} {}",
            window.image.label,
            if window.reexec.committed() {
                "committed".to_owned()
            } else {
                format!("NOT COMMITTED ({})", window.reexec.why())
            },
            window.reexec.total.map_or_else(
                || "?".to_owned(),
                |t| format!("{:.1}", t.as_secs_f64() * 1e3)
            ),
            window.reexec.wall.as_secs_f64() * 1e3,
            window.supervisor_pid,
            window.supervisor_fate(),
            window.daemon_before.pid,
            match &window.daemon_after {
                _ if window.daemon_kept() => "kept, same generation".to_owned(),
                Some(after) => format!(
                    "NOT KEPT: pid {} generation {:?} serves",
                    after.pid, after.generation
                ),
                None => "NOT KEPT: nothing answers".to_owned(),
            },
        ),
    }
}

/// The cargo target directory holding `exe_dir` (`target/release`): its
/// parent, if cargo marked it as one (`CACHEDIR.TAG`).
fn target_dir(exe_dir: Option<&Path>) -> Option<PathBuf> {
    let target = exe_dir?.parent()?;
    target
        .join("CACHEDIR.TAG")
        .exists()
        .then(|| target.to_owned())
}

/// `/proc/loadavg`, as the JSON report has always carried it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The 1, 5 and 15 minute load averages of a `/proc/loadavg` line.
fn averages(line: &str) -> String {
    line.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn idle_summary(idle: &handoff_bench::run::Idle) -> String {
    let json = idle.to_json();
    let figure = |key: &str, pick: &str| {
        json["handoff_ms"][key][pick]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}"))
    };
    format!(
        "echod, idle: {} of {} upgrades committed; handoff p50 / p99 {} / {} ms; \
         upgrade call p50 {} ms; supervisor RSS {} -> {} KiB; \
         {} old generations left; {} harness errors\n",
        json["handoffs"],
        idle.config.upgrades,
        figure("total", "p50"),
        figure("total", "p99"),
        figure("upgrade_call_wall", "p50"),
        kib(idle.supervisor_rss_kib.0),
        kib(idle.supervisor_rss_kib.1),
        idle.lingering_generations,
        idle.harness_errors.len()
    )
}

fn kib(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |kib| kib.to_string())
}

fn write_svg(path: &Path, observed: &Observed, name: &str) -> Result<(), String> {
    let title = format!(
        "handoff-bench {name}: {} clients, {} req/s, {} upgrades",
        observed.config.clients, observed.config.rate, observed.config.upgrades
    );
    std::fs::write(path, observed.to_svg(&title)).map_err(|e| format!("{}: {e}", path.display()))
}
