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
//! Exits 1 if a zero count is not zero ([`Counts::zero_loss_violations`]),
//! or if the negative control saw no failure (a blind harness); with
//! `--netns`, the kernel's TCP counters are a zero count too. Exits 2 if
//! the benchmark itself could not run.
//!
//! ```text
//! cargo build --release --examples -p handoff && cargo build --release -p handoffctl
//! cargo run --release -p handoff-bench -- --mode both --upgrades 20 --clients 32
//! cargo run --release -p handoff-bench -- --mode foreign --upgrades 20   # needs python3
//! ```
//!
//! [`Counts::zero_loss_violations`]: handoff_bench::report::Counts::zero_loss_violations

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use handoff_bench::load::Connections;
use handoff_bench::run::{
    Builds, Config, Daemon, Observed, Progress, UpgraderKind, run_with_progress,
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
                "handoff-bench: a zero count is not zero, or the negative control saw nothing"
            );
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("handoff-bench: {error}");
            ExitCode::from(2)
        }
    }
}

/// Runs everything `args` asks for and reports it; whether every verdict
/// holds.
fn bench(args: &Args) -> Result<bool, String> {
    if args.scrape_metrics_ms > 0 && !matches!(args.supervisor, Supervisor::Handoffctl) {
        return Err("--scrape-metrics-ms needs --supervisor handoffctl".into());
    }
    // Before any thread starts: the namespace is per thread.
    if args.netns {
        handoff_bench::kernel::enter_private_network().map_err(|e| format!("--netns: {e}"))?;
    }
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
    let daemons: &[Daemon] = match args.mode {
        Modes::Exclusive => &[Daemon::Kvd],
        Modes::Overlap => &[Daemon::Echod],
        Modes::Foreign => &[Daemon::ForeignHttpd],
        Modes::Both => &[Daemon::Kvd, Daemon::Echod],
        Modes::All => &[Daemon::Kvd, Daemon::Echod, Daemon::ForeignHttpd],
    };
    let config = |daemon: Daemon, upgrader: UpgraderKind, upgrades: usize| {
        let defaults = Config::new(daemon, examples_dir.clone());
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
    };
    let supervised = match args.supervisor {
        Supervisor::Handoffctl => UpgraderKind::Ctl,
        Supervisor::InProcess => UpgraderKind::InProcess,
    };
    let loadavg_before = loadavg();
    let mut ok = true;
    let mut finished: Vec<(Observed, PathBuf)> = Vec::new();
    let mut measure = |config: Config, picture: &str| -> Result<bool, String> {
        let observed = measured(config)?;
        let path = svg_dir.join(format!("handoff-bench-{picture}.svg"));
        if let Err(error) = write_svg(&path, &observed, picture) {
            // The figures are still worth printing.
            eprintln!("handoff-bench: writing the picture: {error}");
        }
        let ok = observed.violations().is_empty();
        finished.push((observed, path));
        Ok(ok)
    };
    for &daemon in daemons {
        ok &= measure(config(daemon, supervised, args.upgrades), daemon.name())?;
    }
    // The negative control: kvd restarted the naive way, and the foreign
    // daemon too when it was measured (its client checks differ).
    if args.control_restarts > 0 {
        let restarts = args.control_restarts;
        ok &= measure(
            config(Daemon::Kvd, UpgraderKind::NaiveRestart, restarts),
            "naive-restart",
        )?;
        if daemons.contains(&Daemon::ForeignHttpd) {
            ok &= measure(
                config(Daemon::ForeignHttpd, UpgraderKind::NaiveRestart, restarts),
                "naive-restart-foreign",
            )?;
        }
    }
    let idle = if args.idle_upgrades > 0 {
        let config = config(Daemon::Echod, supervised, args.idle_upgrades);
        eprintln!(
            "== echod, idle: {} upgrades to {} builds, no load",
            config.upgrades,
            config.builds.name()
        );
        let idle = handoff_bench::run::idle(config).map_err(|e| format!("idle: {e}"))?;
        ok &= idle.lingering_generations == 0 && idle.harness_errors.is_empty();
        Some(idle)
    } else {
        None
    };
    let control_json = |daemon: Daemon| {
        finished
            .iter()
            .find(|(o, _)| {
                o.config.upgrader == UpgraderKind::NaiveRestart && o.config.daemon == daemon
            })
            .map_or(serde_json::Value::Null, |(o, _)| o.to_json())
    };
    if args.json {
        let report = serde_json::json!({
            "runs": finished
                .iter()
                .filter(|(o, _)| o.config.upgrader != UpgraderKind::NaiveRestart)
                .map(|(o, _)| o.to_json())
                .collect::<Vec<_>>(),
            "idle_overlap": idle.as_ref().map(handoff_bench::run::Idle::to_json),
            "negative_control": control_json(Daemon::Kvd),
            "negative_control_foreign": control_json(Daemon::ForeignHttpd),
            "netns": handoff_bench::kernel::Netns::current().name(),
            "loadavg_before": loadavg_before,
            "loadavg_after": loadavg(),
            "svg": finished.iter().map(|(_, path)| path.display().to_string()).collect::<Vec<_>>(),
            "zero_loss": ok,
        });
        println!("{report}");
        for (_, path) in &finished {
            eprintln!("picture: {}", path.display());
        }
    } else {
        for (observed, path) in &finished {
            println!("{}", observed.title());
            print!("{}", observed.to_table());
            println!("  {:<28} {}\n", "picture", path.display());
        }
        if let Some(idle) = &idle {
            println!("{}", idle_summary(idle));
        }
        println!(
            "load average {} before, {} after ({}); verdict: {}",
            averages(&loadavg_before),
            averages(&loadavg()),
            match handoff_bench::kernel::Netns::current() {
                handoff_bench::kernel::Netns::Private => "a network namespace of its own",
                handoff_bench::kernel::Netns::Shared => "shared network namespace",
            },
            if ok {
                "zero loss, and the control sees losses"
            } else {
                "FAILED (see the verdicts above)"
            }
        );
    }
    Ok(ok)
}

/// Runs once, saying what it does on stderr.
fn measured(config: Config) -> Result<Observed, String> {
    let upgrades = config.upgrades;
    eprintln!(
        "== {}: {} {}, {} builds, {} clients at {} requests/s",
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
        config.clients,
        config.rate
    );
    run_with_progress(config, &mut |progress| match progress {
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
    })
    .map_err(|error| format!("upgrades 1..{upgrades}: {error}"))
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
