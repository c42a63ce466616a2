//! `handoff-bench`: open-loop HTTP load across repeated upgrades; prints one
//! JSON object and writes an SVG per mode. Exits 1 if a zero count is not
//! zero, or if the negative control saw no failure (a blind harness); with
//! `--netns`, the kernel's TCP counters are a zero count too.
//!
//! ```text
//! cargo build --release --examples -p handoff && cargo build --release -p handoffctl
//! cargo run --release -p handoff-bench -- --mode both --upgrades 20 --clients 32
//! cargo run --release -p handoff-bench -- --mode foreign --upgrades 20   # needs python3
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use handoff_bench::run::{Config, Daemon, Observed, UpgraderKind, run};

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
    /// Concurrent clients (half on new connections, half kept alive).
    #[arg(long, default_value_t = 32)]
    clients: usize,
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
    /// Directory for the SVG pictures.
    #[arg(long, default_value = ".")]
    svg_dir: PathBuf,
}

fn main() {
    let args = Args::parse();
    // Before any thread starts: the namespace is per thread.
    if args.netns
        && let Err(error) = handoff_bench::kernel::enter_private_network()
    {
        eprintln!("handoff-bench: --netns: {error}");
        std::process::exit(2)
    }
    let examples_dir = args.examples_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("examples")))
            .unwrap_or_else(|| PathBuf::from("target/release/examples"))
    });
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
            clients: args.clients,
            rate: args.rate,
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
    let loadavg_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut runs = Vec::new();
    let mut ok = true;
    for &daemon in daemons {
        let observed = finish(run(config(daemon, supervised, args.upgrades)));
        let counts = observed.counts();
        ok &= counts.failed == 0
            && counts.retried_idle_close == 0
            && counts.lost_writes == 0
            && counts.lingering_generations == 0
            && counts.witness_agrees
            && counts.kernel_trouble.is_none_or(|n| n == 0)
            && counts.handoffs == args.upgrades as u64
            && counts.identity_changes == args.upgrades as u64
            && observed.harness_errors.is_empty();
        write_svg(&args.svg_dir, &observed, daemon.name());
        runs.push(observed.to_json());
    }
    // The negative control: kvd restarted the naive way, and the foreign
    // daemon too when it was measured (its client checks differ).
    let mut control = |daemon: Daemon, name: &str| {
        if args.control_restarts == 0 {
            return serde_json::Value::Null;
        }
        let observed = finish(run(config(
            daemon,
            UpgraderKind::NaiveRestart,
            args.control_restarts,
        )));
        let counts = observed.counts();
        // The harness must see the losses of a naive restart.
        ok &= counts.refused + counts.reset > 0;
        // And so must the kernel, when its counters are ours alone.
        ok &= counts.kernel_trouble.is_none_or(|n| n > 0);
        write_svg(&args.svg_dir, &observed, name);
        observed.to_json()
    };
    let control_kvd = control(Daemon::Kvd, "naive-restart");
    let control_foreign = if daemons.contains(&Daemon::ForeignHttpd) {
        control(Daemon::ForeignHttpd, "naive-restart-foreign")
    } else {
        serde_json::Value::Null
    };
    let idle = if args.idle_upgrades > 0 {
        let idle = handoff_bench::run::idle(config(Daemon::Echod, supervised, args.idle_upgrades))
            .unwrap_or_else(|error| {
                eprintln!("handoff-bench: idle: {error}");
                std::process::exit(2)
            });
        ok &= idle.lingering_generations == 0 && idle.harness_errors.is_empty();
        idle.to_json()
    } else {
        serde_json::Value::Null
    };
    let report = serde_json::json!({
        "runs": runs,
        "idle_overlap": idle,
        "negative_control": control_kvd,
        "negative_control_foreign": control_foreign,
        "netns": handoff_bench::kernel::Netns::current().name(),
        "loadavg_before": loadavg_before.trim(),
        "loadavg_after": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "zero_loss": ok,
    });
    println!("{report}");
    if !ok {
        eprintln!("handoff-bench: a zero count is not zero, or the negative control saw nothing");
        std::process::exit(1);
    }
}

fn finish(result: Result<Observed, String>) -> Observed {
    result.unwrap_or_else(|error| {
        eprintln!("handoff-bench: {error}");
        std::process::exit(2)
    })
}

fn write_svg(dir: &std::path::Path, observed: &Observed, name: &str) {
    let path = dir.join(format!("handoff-bench-{name}.svg"));
    let title = format!(
        "handoff-bench {name}: {} clients, {} req/s, {} upgrades",
        observed.config.clients, observed.config.rate, observed.config.upgrades
    );
    let written =
        std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, observed.to_svg(&title)));
    if let Err(error) = written {
        eprintln!("handoff-bench: writing {}: {error}", path.display());
    }
}
