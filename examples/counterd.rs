//! `counterd`: the quick start, whole. A stateful daemon on plain threads
//! that `handoffctl` upgrades with nothing lost:
//!
//! ```text
//! handoffctl run --listen http=127.0.0.1:7878 --data-dir /var/lib/counterd -- counterd
//! printf 'INCR\n' | nc 127.0.0.1 7878      # → 1, once it is on disk
//! handoffctl upgrade                          # a new build takes over; the count goes on
//! ```
//!
//! One line per connection: `INCR` → the new count, answered only after it
//! is fsynced; `GET` → the count. What it shows, in order of `main`:
//! 1. the stop signals are blocked before `handoff::start` starts the
//!    library's threads, so only the thread that calls `sigwait` gets them;
//! 2. listeners are taken by name (inherited, or bound when run alone);
//! 3. `begin(None)` locks the directory `handoffctl run --data-dir` assigns
//!    (`HANDOFF_DATA_DIR`); the state is opened only after it;
//! 4. connections go through an [`handoff::AcceptGate`], which the drain
//!    closes and waits on;
//! 5. `ready()` is called on the main thread, and serving starts after it;
//! 6. SIGTERM (`handoffctl stop`) drains and exits 0; a committed successor
//!    retires this generation the same way.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff::os::{Sig, SignalSet};
use handoff::{AcceptGate, DrainReport, Drainable, Fingerprint, ReadyReport, SealInfo};

/// How long a stop waits for connections in flight.
const STOP_DRAIN: Duration = Duration::from_secs(10);

/// The count, and the file it lives in (8 bytes, little endian).
struct Counter {
    file: File,
    value: u64,
}

impl Counter {
    fn open(dir: &Path) -> std::io::Result<Counter> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("counter"))?;
        let mut bytes = [0u8; 8];
        let value = match file.read_exact(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(error) => return Err(error),
        };
        Ok(Counter { file, value })
    }

    /// Adds one and returns the new count once it is on disk.
    fn increment(&mut self) -> std::io::Result<u64> {
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&(self.value + 1).to_le_bytes())?;
        self.file.sync_data()?;
        self.value += 1;
        Ok(self.value)
    }

    fn seal(&self) -> SealInfo {
        SealInfo {
            revisions: self.value,
            fingerprint: Fingerprint::of_bytes(&self.value.to_le_bytes()),
        }
    }
}

/// What the handoff hooks act on.
struct Daemon {
    gate: AcceptGate,
    counter: Arc<Mutex<Counter>>,
    dir: PathBuf,
}

impl Drainable for Daemon {
    type Error = std::io::Error;

    fn drain(&mut self, deadline: Instant) -> std::io::Result<DrainReport> {
        Ok(self.gate.drain(deadline))
    }

    fn seal(&mut self, _progress: &mut handoff::SealProgress) -> std::io::Result<SealInfo> {
        // Every increment was fsynced before it was answered.
        Ok(lock(&self.counter).seal())
    }

    fn resume_after_abort(&mut self) -> std::io::Result<()> {
        // From disk, not memory: a successor may have counted meanwhile.
        *lock(&self.counter) = Counter::open(&self.dir)?;
        self.gate.reopen();
        Ok(())
    }

    fn snapshot(&self) -> handoff::Snapshot {
        handoff::Snapshot {
            revisions: lock(&self.counter).value,
            open_connections: self.gate.open_connections(),
            ..handoff::Snapshot::default()
        }
    }
}

fn lock(counter: &Mutex<Counter>) -> std::sync::MutexGuard<'_, Counter> {
    counter
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn serve(stream: &TcpStream, counter: &Mutex<Counter>) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let reply = match line.trim() {
        "INCR" => lock(counter).increment()?.to_string(),
        "GET" => lock(counter).value.to_string(),
        _ => "ERR expected INCR or GET".to_owned(),
    };
    writeln!(&*stream, "{reply}")
}

fn accept_loop(listener: TcpListener, gate: AcceptGate, counter: Arc<Mutex<Counter>>) {
    loop {
        match gate.accept(&listener) {
            Ok(connection) => {
                let counter = Arc::clone(&counter);
                // `connection` is counted until this thread drops it.
                std::thread::spawn(move || serve(&connection, &counter));
            }
            Err(error) => {
                eprintln!("counterd: {error}");
                std::thread::sleep(handoff::timeouts::POLL_SLICE);
            }
        }
    }
}

const USAGE: &str = "\
usage: handoffctl run --listen http=ADDR --data-dir DIR -- counterd
       HANDOFF_DATA_DIR=DIR counterd      (alone, on 127.0.0.1:7878)
The quick start's daemon, a counter. One line per connection: INCR answers the new
count once it is fsynced, GET the count. SIGTERM drains and exits.
";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args()
        .skip(1)
        .any(|arg| arg == "--help" || arg == "-h")
    {
        print!("{USAGE}");
        return Ok(());
    }
    let signals = SignalSet::block(&[Sig::Term, Sig::Int])?;
    let mut generation = handoff::start(handoff::StartOptions::new("counterd 1"))?;
    let listener = generation.tcp_listener("http", "127.0.0.1:7878")?;
    let begun = generation.begin(None)?;
    let dir = begun
        .data_dir()
        .ok_or("no data directory: run it with handoffctl run --data-dir DIR (or HANDOFF_DATA_DIR=DIR)")?
        .to_owned();
    let counter = Arc::new(Mutex::new(Counter::open(&dir)?));
    let gate = AcceptGate::new()?;
    let opened = lock(&counter).seal();
    let report = ReadyReport::stateful(opened.revisions, opened.fingerprint);
    let daemon = Daemon {
        gate: gate.clone(),
        counter: Arc::clone(&counter),
        dir,
    };
    // Returns once committed: nothing is answered by a generation that
    // could still be rolled back.
    let live = begun.ready(report, daemon)?;
    std::thread::spawn({
        let gate = gate.clone();
        move || accept_loop(listener, gate, counter)
    });
    // Retired: a successor committed (this generation drained and sealed in
    // its hooks); finish what is in flight and exit.
    let retiring = gate.clone();
    std::thread::spawn(move || match live.wait() {
        // An orphan (its supervisor died) keeps serving until a signal.
        handoff::Ending::SupervisorLost => {}
        ending => {
            eprintln!("counterd: {ending:?}");
            retiring.wait_idle(Instant::now() + STOP_DRAIN);
            std::process::exit(0);
        }
    });
    // A graceful stop (`handoffctl stop` sends SIGTERM).
    let signal = signals.wait()?;
    eprintln!("counterd: {signal:?}: draining");
    let report = gate.drain(Instant::now() + STOP_DRAIN);
    if report.open_connections > 0 {
        eprintln!(
            "counterd: {} connections still open",
            report.open_connections
        );
    }
    Ok(())
}
