//! The library's supervisor in this process, end to end: a daemon
//! (`testd`) under it, under client load, upgraded again and again; then
//! every acknowledged write is read back. Prints one JSON object and exits
//! non-zero if anything was lost.
//!
//! ```text
//! cargo build --release --examples && cargo run --release --example demo -- --upgrades 20
//! ```
//! Flags: `--upgrades N` (10), `--clients N` (8), `--mode exclusive|overlap`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff::Mode;
use handoff::supervisor::{NamedListener, Outcome, Supervisor, SupervisorConfig, UpgradeRequest};

const IO: Duration = Duration::from_secs(10);

fn request(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, IO)?;
    stream.set_read_timeout(Some(IO))?;
    let mut writer = stream.try_clone()?;
    writeln!(writer, "{line}")?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    Ok(reply.trim_end().to_owned())
}

#[derive(Default)]
struct Tally {
    ok: u64,
    refused: u64,
    reset: u64,
    other_errors: u64,
    rejected: u64,
    acked: Vec<(String, String)>,
}

/// This process's resident set (KiB): the supervisor and the load clients.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fd_count() -> usize {
    handoff::os::open_fds().map(|fds| fds.len()).unwrap_or(0)
}

const USAGE: &str = "\
usage: demo [--upgrades N] [--clients N] [--mode exclusive|overlap]
testd under the library's supervisor in this process, under client load, upgraded N times;
then every acknowledged write is read back. Prints one JSON object; exits 1 on any loss.
  --upgrades N   handoffs [default: 10]
  --clients N    load clients, one request per connection [default: 8]
  --mode MODE    exclusive (testd with a data directory) or overlap [default: exclusive]
";

/// The flags.
struct Args {
    upgrades: usize,
    clients: usize,
    mode: Mode,
}

fn parse_args() -> Option<Args> {
    let mut parsed = Args {
        upgrades: 10,
        clients: 8,
        mode: Mode::Exclusive,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            print!("{USAGE}");
            return None;
        }
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--upgrades" => parsed.upgrades = value.parse().expect("--upgrades N"),
            "--clients" => parsed.clients = value.parse().expect("--clients N"),
            "--mode" => {
                parsed.mode = match value.as_str() {
                    "exclusive" => Mode::Exclusive,
                    "overlap" => Mode::Overlap,
                    _ => panic!("--mode exclusive|overlap"),
                }
            }
            _ => panic!("unknown flag {flag}"),
        }
    }
    Some(parsed)
}

/// The load: `clients` threads sending one request per connection until
/// `stop` (writes in exclusive mode, `INFO` in overlap), counted in `tally`.
fn start_load(
    addr: SocketAddr,
    args: &Args,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Mutex<Tally>>,
) -> Vec<std::thread::JoinHandle<()>> {
    let writes = args.mode == Mode::Exclusive;
    (0..args.clients)
        .map(|client| {
            let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let (key, value) = (format!("c{client}-{n}"), format!("v{n}"));
                    let line = match writes {
                        true => format!("PUT {key} {value}"),
                        false => "INFO".into(),
                    };
                    let result = request(addr, &line);
                    tally.lock().expect("tally").count(result, key, value);
                }
            })
        })
        .collect()
}

impl Tally {
    fn count(&mut self, result: std::io::Result<String>, key: String, value: String) {
        match result {
            Ok(reply) if reply.starts_with("OK ") => {
                self.ok += 1;
                self.acked.push((key, value));
            }
            Ok(reply) if reply.starts_with("pid=") => self.ok += 1,
            Ok(_) => self.rejected += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => self.refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => self.reset += 1,
            Err(_) => self.other_errors += 1,
        }
    }

    fn failed(&self) -> u64 {
        self.refused + self.reset + self.other_errors + self.rejected
    }
}

/// What the upgrades did: commits, their totals and phase times (ms), and
/// the `INFO` line of each generation that served.
#[derive(Default)]
struct Upgrades {
    committed: usize,
    totals: Vec<f64>,
    phases: std::collections::BTreeMap<&'static str, Vec<f64>>,
    infos: Vec<String>,
}

fn run_upgrades(
    handle: &handoff::supervisor::SupervisorHandle,
    addr: SocketAddr,
    count: usize,
    args_of: impl Fn(&str) -> Vec<std::ffi::OsString>,
) -> Upgrades {
    let mut done = Upgrades {
        infos: vec![request(addr, "INFO").expect("info")],
        ..Upgrades::default()
    };
    for round in 0..count {
        let build = if round % 2 == 0 { "v2" } else { "v1" };
        let outcome = handle
            .upgrade(UpgradeRequest {
                args: Some(args_of(build)),
                ..UpgradeRequest::default()
            })
            .expect("upgrade");
        match outcome {
            Outcome::Committed { phases, .. } => {
                done.committed += 1;
                done.totals.push(phases.total.as_secs_f64() * 1e3);
                for (name, value) in phases.named() {
                    if let Some(value) = value {
                        done.phases
                            .entry(name)
                            .or_default()
                            .push(value.as_secs_f64() * 1e3);
                    }
                }
            }
            Outcome::RolledBack { reason, .. } => eprintln!("demo: handoff rolled back: {reason}"),
        }
        done.infos.push(request(addr, "INFO").expect("info"));
    }
    done
}

/// Waits until no old generation is left and the gone generations'
/// executables are closed, so that the fd count compares like with like;
/// the fds then.
fn settled_fds(handle: &handoff::supervisor::SupervisorHandle, fds_before: usize) -> usize {
    while !handle.status().expect("status").retiring.is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The supervisor closes a gone generation's executable IMAGE_RELEASE
    // after it is gone: a leak is an fd still open well past that.
    let settled = Instant::now() + handoff::timeouts::IMAGE_RELEASE + Duration::from_secs(5);
    while fd_count() > fds_before && Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(10));
    }
    fd_count()
}

/// The library's supervisor in this process, over `testd`.
fn supervise(
    testd: PathBuf,
    listener: NamedListener,
    mode: Mode,
    args: Vec<std::ffi::OsString>,
) -> Supervisor {
    Supervisor::start(SupervisorConfig::new(testd, args, mode, vec![listener])).expect("supervisor")
}

fn main() {
    let Some(args) = parse_args() else {
        return;
    };
    let exe = std::env::current_exe().expect("current_exe");
    let testd: PathBuf = exe.with_file_name("testd");
    assert!(
        testd.exists(),
        "{} is missing: run `cargo build --examples` (same profile) first",
        testd.display()
    );
    let data = std::env::temp_dir().join(format!("handoff-demo-{}", std::process::id()));
    std::fs::create_dir_all(&data).expect("data dir");

    let listener =
        NamedListener::bind("main", &"127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr: SocketAddr = listener.address.parse().expect("address");
    let mode = args.mode;
    let base_args = |build: &str| -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--build".into(), build.into()];
        if mode == Mode::Exclusive {
            args.push("--data-dir".into());
            args.push(data.clone().into());
        }
        args
    };
    let supervisor = supervise(testd, listener, mode, base_args("v1"));
    let handle = supervisor.handle();
    // Wait for generation 1 by asking it (connections wait in the backlog).
    request(addr, "INFO").expect("generation 1 serves");

    let (rss_before, fds_before) = (rss_kib(), fd_count());
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers = start_load(addr, &args, &stop, &tally);
    let done = run_upgrades(&handle, addr, args.upgrades, base_args);
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.join().expect("worker");
    }
    let fds_after = settled_fds(&handle, fds_before);
    let rss_after = rss_kib();
    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    let lost = tally
        .acked
        .iter()
        .filter(|(key, value)| {
            request(addr, &format!("GET {key}")).ok().as_deref() != Some(&format!("VALUE {value}"))
        })
        .count();
    handle.stop().expect("stop");
    supervisor.join().expect("join");
    let _ = std::fs::remove_dir_all(&data);

    let measured = Measured {
        args,
        done,
        tally,
        lost,
        rss: (rss_before, rss_after),
        fds: (fds_before, fds_after),
    };
    if !measured.print_and_judge() {
        eprintln!("demo: LOSS OR FAILURE (see above)");
        std::process::exit(1);
    }
}

/// Everything a run measured.
struct Measured {
    args: Args,
    done: Upgrades,
    tally: Tally,
    lost: usize,
    rss: (u64, u64),
    fds: (usize, usize),
}

impl Measured {
    /// Prints the JSON line; whether nothing was lost or failed.
    fn print_and_judge(mut self) -> bool {
        let Args {
            upgrades,
            clients,
            mode,
        } = self.args;
        let (tally, lost, committed) = (&self.tally, self.lost, self.done.committed);
        let ((rss_before, rss_after), (fds_before, fds_after)) = (self.rss, self.fds);
        let totals = &mut self.done.totals;
        totals.sort_by(f64::total_cmp);
        let median = totals.get(totals.len() / 2).copied().unwrap_or(f64::NAN);
        let max = totals.last().copied().unwrap_or(f64::NAN);
        let phases_json: Vec<String> = self
            .done
            .phases
            .iter_mut()
            .map(|(name, samples)| {
                samples.sort_by(f64::total_cmp);
                format!("\"{name}\":{:.3}", samples[samples.len() / 2])
            })
            .collect();
        let phases_json = phases_json.join(",");
        let failed = tally.failed();
        println!(
            "{{\"mode\":\"{mode:?}\",\"clients\":{clients},\"handoffs\":{upgrades},\"committed\":{committed},\"requests\":{},\"failed\":{{\"refused\":{},\"reset\":{},\"other\":{},\"rejected\":{}}},\"acked_writes\":{},\"lost_writes\":{lost},\"handoff_ms\":{{\"p50\":{median:.2},\"max\":{max:.2},\"phase_p50\":{{{phases_json}}}}},\"process_rss_kib\":{{\"before\":{rss_before},\"after\":{rss_after}}},\"fds\":{{\"before\":{fds_before},\"after\":{fds_after}}}}}",
            tally.ok + failed,
            tally.refused,
            tally.reset,
            tally.other_errors,
            tally.rejected,
            tally.acked.len(),
        );
        let distinct: std::collections::HashSet<_> = self
            .done
            .infos
            .iter()
            .filter_map(|p| p.split(' ').next())
            .collect();
        failed == 0
            && lost == 0
            && committed == upgrades
            && distinct.len() == upgrades + 1
            && fds_after == fds_before
    }
}
