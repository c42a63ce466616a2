//! Fixtures of the library's scenarios: the test daemon under an in-process
//! supervisor that is stopped even when a test fails, testd's INFO line, a
//! prober of the data-directory lock and a reaper of a run's processes. The
//! helpers every test crate shares (temp dirs, bounds, `example`, the
//! one-line client, `alive`, `eventually`) come from `testkit`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use handoff::supervisor::{
    EventStream, NamedListener, Outcome, Supervisor, SupervisorConfig, SupervisorEvent,
    SupervisorHandle, UpgradeRequest,
};
use handoff::{ListenAddr, Mode, Timeouts};
pub use testkit::{IO, TempDir, WAIT, alive, eventually, example, request};

/// Timeouts short enough for tests.
pub fn test_timeouts() -> Timeouts {
    Timeouts {
        handoff_deadline: Duration::from_secs(20),
        drain_grace: Duration::from_secs(5),
        kill_grace: Duration::from_secs(2),
        ..Timeouts::default()
    }
}

/// A supervisor running `testd`, stopped on drop.
pub struct Harness {
    pub supervisor: Option<Supervisor>,
    pub handle: SupervisorHandle,
    pub events: EventStream,
    pub addr: SocketAddr,
    pub data: Option<TempDir>,
}

impl Harness {
    /// Starts `testd` under a supervisor and waits until it serves.
    pub fn start(mode: Mode, extra_args: &[&str]) -> Harness {
        Harness::start_with(mode, extra_args, test_timeouts())
    }

    pub fn start_with(mode: Mode, extra_args: &[&str], timeouts: Timeouts) -> Harness {
        Harness::start_env(mode, extra_args, timeouts, Vec::new())
    }

    /// Like `start_with`, with extra environment for every generation.
    pub fn start_env(
        mode: Mode,
        extra_args: &[&str],
        timeouts: Timeouts,
        env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    ) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let data = (mode == Mode::Exclusive).then(|| TempDir::new("data"));
        let listen: ListenAddr = "127.0.0.1:0".parse().expect("addr");
        let listener = NamedListener::bind("main", &listen).expect("bind");
        let addr: SocketAddr = listener.address.parse().expect("bound address");
        let args = testd_args(data.as_ref().map(TempDir::path), extra_args);
        let config = SupervisorConfig {
            env,
            timeouts,
            ..SupervisorConfig::new(example("testd"), args, mode, vec![listener])
        };
        let (supervisor, events) =
            Supervisor::start_with_events(config).expect("supervisor starts");
        let handle = supervisor.handle();
        let harness = Harness {
            supervisor: Some(supervisor),
            handle,
            events,
            addr,
            data,
        };
        harness.wait_serving();
        harness
    }

    /// Waits until a generation serves (the cold start committed).
    pub fn wait_serving(&self) {
        if self.handle.status().expect("status").child_pid.is_some() {
            return;
        }
        self.wait_event(|event| {
            matches!(event, SupervisorEvent::HandoffFinished(outcome) if outcome.is_committed())
        });
    }

    /// Waits for the first event matching `wanted`; panics after `WAIT`.
    pub fn wait_event(&self, wanted: impl Fn(&SupervisorEvent) -> bool) -> SupervisorEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.next_timeout(left) {
                Some(event) if wanted(&event) => return event,
                Some(_) => continue,
                None => panic!("no matching supervisor event within {WAIT:?}"),
            }
        }
    }

    /// Waits for the handoff to enter `phase`; panics after `WAIT`.
    pub fn wait_phase(&self, phase: &str) {
        self.wait_event(
            |event| matches!(event, SupervisorEvent::Phase { phase: p, .. } if *p == phase),
        );
    }

    pub fn upgrade(&self, args: Vec<String>) -> Outcome {
        let args = args.into_iter().map(Into::into).collect();
        self.handle
            .upgrade(UpgradeRequest {
                args: Some(args),
                ..UpgradeRequest::default()
            })
            .expect("upgrade runs to an outcome")
    }

    /// Starts an upgrade on a thread of its own (for tests that act while
    /// it runs).
    pub fn upgrade_in_background(
        &self,
        args: Vec<String>,
    ) -> std::thread::JoinHandle<handoff::Result<Outcome>> {
        let handle = self.handle.clone();
        std::thread::spawn(move || {
            handle.upgrade(UpgradeRequest {
                args: Some(args.into_iter().map(Into::into).collect()),
                ..UpgradeRequest::default()
            })
        })
    }

    /// The args testd needs plus `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        testd_args(self.data.as_ref().map(TempDir::path), extra)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    pub fn request(&self, line: &str) -> String {
        request(self.addr, line).unwrap_or_else(|e| panic!("request {line:?}: {e}"))
    }

    pub fn info(&self) -> Info {
        Info::parse(&self.request("INFO"))
    }
}

/// How long a harness's supervisor may take to stop: its stop drain and
/// kill grace, and slack.
const STOP_BOUND: Duration = Duration::from_secs(45);

impl Drop for Harness {
    /// Stops the supervisor, bounded: one that does not stop fails the
    /// test with its status, instead of holding it for ever.
    fn drop(&mut self) {
        let handle = self.handle.clone();
        let (stopped, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = handle.stop();
            let _ = stopped.send(());
        });
        if done.recv_timeout(STOP_BOUND).is_err() {
            let message = format!(
                "the supervisor did not stop within {STOP_BOUND:?}; its status: {:#?}",
                self.handle.status()
            );
            if std::thread::panicking() {
                eprintln!("{message}");
            } else {
                panic!("{message}");
            }
            return;
        }
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
    }
}

fn testd_args(data: Option<&Path>, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(dir) = data {
        args.push("--data-dir".into());
        args.push(dir.into());
    }
    args.extend(extra.iter().map(Into::into));
    args
}

/// testd's INFO line.
#[derive(Debug)]
pub struct Info {
    pub pid: u32,
    pub build: String,
    pub generation: u64,
    pub revisions: u64,
    pub start_fds: String,
}

impl Info {
    pub fn parse(line: &str) -> Info {
        let field = |name: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("INFO lacks {name}: {line}"))
                .to_owned()
        };
        Info {
            pid: field("pid").parse().expect("pid"),
            build: field("build"),
            generation: field("generation").parse().expect("generation"),
            revisions: field("revisions").parse().expect("revisions"),
            start_fds: field("start_fds"),
        }
    }
}

/// Reads /proc/locks every millisecond and records the most distinct pids
/// ever seen holding an flock on the data directory's lock file.
pub struct LockProber {
    stop: Arc<AtomicBool>,
    max_holders: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LockProber {
    pub fn start(dir: &Path) -> LockProber {
        let lock = dir.join(".handoff.lock");
        let (stop, max_holders) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (stop2, max2) = (stop.clone(), max_holders.clone());
        let thread = std::thread::spawn(move || {
            let mut file = None;
            while !stop2.load(Ordering::SeqCst) {
                if file.is_none() {
                    file = std::fs::metadata(&lock).ok().map(|m| lock_id(&m));
                }
                if let Some(id) = &file {
                    max2.fetch_max(flocks(id).holders.len(), Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        LockProber {
            stop,
            max_holders,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("prober");
        }
        self.max_holders.load(Ordering::SeqCst)
    }
}

/// The flocks on one file, as /proc/locks shows them.
pub struct Flocks {
    /// Pids holding it (a pid holding it through two open file
    /// descriptions counts once), the most seen in one consistent read.
    pub holders: BTreeSet<String>,
    /// Requests blocked waiting for it.
    pub waiters: usize,
}

/// A file as /proc/locks names it: `MAJOR:MINOR:INODE`, the device's
/// numbers in hex.
pub fn lock_id(meta: &std::fs::Metadata) -> String {
    let dev = meta.dev();
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff);
    format!("{major:02x}:{minor:02x}:{}", meta.ino())
}

/// Reads /proc/locks for the flocks on the file `id` (see [`lock_id`]);
/// never takes a lock. The kernel lists the locks under its own lock for
/// one `read` at a time, so only the records of one read are a snapshot:
/// across two reads a lock released and another one taken meanwhile could
/// both appear. Holders are therefore counted within each read (whole
/// records, at most a page), and the largest count is kept.
pub fn flocks(id: &str) -> Flocks {
    use std::io::Read;
    let mut found = Flocks {
        holders: BTreeSet::new(),
        waiters: 0,
    };
    let Ok(mut locks) = std::fs::File::open("/proc/locks") else {
        return found;
    };
    let mut chunk = vec![0u8; 64 << 10];
    while let Ok(n @ 1..) = locks.read(&mut chunk) {
        let mut holders = BTreeSet::new();
        for line in String::from_utf8_lossy(&chunk[..n]).lines() {
            // "1: FLOCK ADVISORY WRITE <pid> <maj:min:ino> 0 EOF"; a
            // blocked request is listed under its blocker as "1: -> FLOCK".
            let mut fields: Vec<&str> = line.split_whitespace().collect();
            let waiting = fields.get(1) == Some(&"->");
            if waiting {
                fields.remove(1);
            }
            if fields.get(1) != Some(&"FLOCK") || fields.get(5) != Some(&id) {
                continue;
            }
            if waiting {
                found.waiters += 1;
            } else {
                holders.insert(fields[4].to_owned());
            }
        }
        if holders.len() > found.holders.len() {
            found.holders = holders;
        }
    }
    found
}

/// Pids of live processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills every process of a run (found by its unique data directory).
pub struct Reaper(pub String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in processes_mentioning(&self.0) {
            let _ = handoff::os::signal(pid, handoff::os::Sig::Kill);
        }
    }
}

pub fn put(addr: SocketAddr, key: &str, value: &str) {
    let reply = request(addr, &format!("PUT {key} {value}")).expect("PUT");
    assert!(reply.starts_with("OK "), "PUT {key}: {reply}");
}

pub fn get(addr: SocketAddr, key: &str) -> String {
    request(addr, &format!("GET {key}")).expect("GET")
}

/// The lines a child prints, as they come (for `faultsup`'s line protocol).
#[cfg(feature = "fault-injection")]
pub fn spawn_line_reader(stdout: std::process::ChildStdout) -> crossbeam_channel::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits up to `WAIT` for a child to exit (killed past it).
#[cfg(feature = "fault-injection")]
pub fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("faultsup did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
