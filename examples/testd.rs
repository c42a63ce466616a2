//! `testd`: the test daemon of the integration suite, and the shortest
//! complete example of a `Drainable` daemon with durable state.
//!
//! Protocol (one request per connection, one line each way):
//! `PUT key value` → `OK <revision>` after the write is fsynced;
//! `GET key` → `VALUE <value>` or `MISSING`; `INFO` → `pid=<pid> build=<id>
//! generation=<n> revisions=<n>`; `FDS` → one line listing the open fds as
//! comma-separated `fd:cloexec` pairs (to check that a generation holds nothing it was not
//! given); `ENV NAME` → the variable's value or `UNSET`.
//!
//! Flags make it misbehave on purpose, for the fault tests:
//! `--fail-at STAGE` exits with status 3, `--hang-at STAGE` blocks for
//! ever and `--panic-at STAGE` panics at STAGE (`start`, `warm`, `begin`,
//! `ready` on the main thread; `drain`, `seal`, `resume` in the hooks);
//! `--unhealthy`, `--seal-fail`, `--bad-fingerprint`, `--ready-on-thread`
//! (calls `ready()` off the main thread); `--resume-delay-ms N`
//! takes N ms to resume after an aborted handoff or a probation rollback.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use handoff::{
    DrainReport, Drainable, Fingerprint, Health, ReadyReport, SealInfo, SealProgress, Snapshot,
};

#[derive(Default)]
struct Args {
    build: String,
    listen: String,
    data_dir: Option<PathBuf>,
    fail_at: Option<String>,
    hang_at: Option<String>,
    panic_at: Option<String>,
    unhealthy: bool,
    ready_on_thread: bool,
    seal_fail: bool,
    bad_fingerprint: bool,
    versions: Option<(u16, u16)>,
    relock_ms: Option<u64>,
    resume_delay_ms: Option<u64>,
    unix_name: Option<String>,
    udp_name: Option<String>,
    fd_name: Option<String>,
    /// `--items N`: writes its state blob in schema version N, reads only
    /// N, and keeps a memfd hit counter.
    items: Option<u32>,
}

const USAGE: &str = "\
usage: testd [--build ID] [--listen ADDR] [--data-dir DIR] [FAULT FLAGS] [LISTENER FLAGS]
The integration tests' daemon: a line-protocol key-value store (PUT, GET, INFO, FDS, ENV).
  --build ID                 the build INFO reports [default: testd]
  --listen ADDR              the address bound when run alone [default: 127.0.0.1:0]
  --data-dir DIR             exclusive mode: the fsynced log's directory
  --fail-at STAGE            exit 3 at STAGE (start, warm, begin, ready, drain, seal, resume)
  --hang-at STAGE            block for ever at STAGE
  --panic-at STAGE           panic at STAGE
  --unhealthy, --seal-fail, --bad-fingerprint, --ready-on-thread
  --relock-ms N, --resume-delay-ms N, --protocol MIN..MAX
  --unix-name NAME, --udp-name NAME, --fd-name NAME
  --items N                  keep a blob (schema testd-state version N, read only N), a memfd
                             hit counter and a blob put at begin across generations (HIT,
                             ITEMS, BEGUN; FORGET NAME removes an item; HANDED: the blob
                             the generation replaced put in its overlap drain)
";

/// What `Ready` says: the state sealed, healthy unless `--unhealthy`.
fn ready_report(args: &Args, revisions: u64, fingerprint: Fingerprint) -> ReadyReport {
    let mut report = ReadyReport::stateful(revisions, fingerprint);
    if args.unhealthy {
        report.health = Health::Unhealthy {
            reason: "--unhealthy".into(),
        };
    }
    report
}

fn parse_args() -> Args {
    let mut args = Args {
        build: "testd".into(),
        listen: "127.0.0.1:0".into(),
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--build" => args.build = value(),
            "--listen" => args.listen = value(),
            "--data-dir" => args.data_dir = Some(value().into()),
            "--fail-at" => args.fail_at = Some(value()),
            "--hang-at" => args.hang_at = Some(value()),
            "--panic-at" => args.panic_at = Some(value()),
            "--unhealthy" => args.unhealthy = true,
            "--ready-on-thread" => args.ready_on_thread = true,
            "--seal-fail" => args.seal_fail = true,
            "--bad-fingerprint" => args.bad_fingerprint = true,
            "--relock-ms" => {
                args.relock_ms = Some(value().parse().unwrap_or_else(|_| die("--relock-ms N")))
            }
            "--resume-delay-ms" => {
                args.resume_delay_ms = Some(
                    value()
                        .parse()
                        .unwrap_or_else(|_| die("--resume-delay-ms N")),
                )
            }
            "--unix-name" => args.unix_name = Some(value()),
            "--udp-name" => args.udp_name = Some(value()),
            "--fd-name" => args.fd_name = Some(value()),
            "--items" => {
                args.items = Some(value().parse().unwrap_or_else(|_| die("--items N")));
            }
            "--protocol" => {
                let text = value();
                let (min, max) = text
                    .split_once("..")
                    .unwrap_or_else(|| die("--protocol MIN..MAX"));
                let parse = |v: &str| {
                    v.parse::<u16>()
                        .unwrap_or_else(|_| die("--protocol MIN..MAX"))
                };
                args.versions = Some((parse(min), parse(max)));
            }
            other => die(&format!("unknown flag {other}")),
        }
    }
    args
}

/// One line on stderr in one `write` (`eprintln!` writes each piece of its
/// format on its own, so a line could be cut by another process's writes
/// to the same log, and tests look for whole lines).
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }};
}

fn die(message: &str) -> ! {
    say!("testd: {message}");
    std::process::exit(2)
}

/// Stage hooks for the fault flags.
fn stage(args: &Args, name: &str) {
    if args.fail_at.as_deref() == Some(name) {
        say!("testd: failing at {name} as asked");
        std::process::exit(3);
    }
    if args.hang_at.as_deref() == Some(name) {
        say!("testd: hanging at {name} as asked");
        loop {
            std::thread::park();
        }
    }
    if args.panic_at.as_deref() == Some(name) {
        panic!("testd: panicking at {name} as asked");
    }
}

/// The durable state: an append-only log of `key value` lines, fsynced per
/// write, replayed at open.
struct Store {
    log: Option<File>,
    path: Option<PathBuf>,
    map: HashMap<String, String>,
    revisions: u64,
}

impl Store {
    fn open(dir: Option<&Path>) -> std::io::Result<Store> {
        let Some(dir) = dir else {
            return Ok(Store {
                log: None,
                path: None,
                map: HashMap::new(),
                revisions: 0,
            });
        };
        let path = dir.join("testd.log");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let mut map = HashMap::new();
        let mut revisions = 0;
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(' ') {
                map.insert(key.to_owned(), value.to_owned());
                revisions += 1;
            }
        }
        file.seek(SeekFrom::End(0))?;
        Ok(Store {
            log: Some(file),
            path: Some(path),
            map,
            revisions,
        })
    }

    fn put(&mut self, key: &str, value: &str) -> std::io::Result<u64> {
        let log = self
            .log
            .as_mut()
            .ok_or_else(|| std::io::Error::other("sealed"))?;
        writeln!(log, "{key} {value}")?;
        log.sync_data()?;
        self.map.insert(key.to_owned(), value.to_owned());
        self.revisions += 1;
        Ok(self.revisions)
    }

    fn fingerprint(&self) -> std::io::Result<Fingerprint> {
        match &self.path {
            Some(path) => Ok(Fingerprint::of_bytes(&std::fs::read(path)?)),
            None => Ok(Fingerprint::of_bytes(b"")),
        }
    }
}

struct Shared {
    store: Mutex<Store>,
    /// Counts connections from their accept; closed for a drain.
    gate: handoff::AcceptGate,
    accepting: AtomicBool,
    generation: AtomicU64,
    build: String,
    /// Fds open when `main` started: a generation must hold nothing but
    /// stdio and the control fd (3) that it was given.
    start_fds: String,
    /// What the fd of `--fd-name` held.
    file_fd: Mutex<Option<String>>,
    /// `--items`: what this generation keeps across generations.
    kept: Option<Kept>,
}

/// The items of `--items N`: a state blob and a memfd hit counter.
struct Kept {
    items: handoff::ItemStore,
    version: u32,
    /// The hit counter: 8 bytes at offset 0, shared by every generation.
    cache: File,
    /// The blob inherited at the start ("-": none; "refused": unusable).
    blob: String,
    /// The "begun" blob inherited: who put it at its own begin.
    begun: String,
    /// The blob the generation this one replaced put in its drain
    /// (overlap), once it arrived while this one serves ("-" before).
    handed: Arc<Mutex<String>>,
}

fn blob_schema(version: u32) -> handoff::wire::Schema {
    handoff::wire::Schema {
        name: "testd-state".into(),
        version,
    }
}

fn blob_reads(version: u32) -> handoff::wire::SchemaRange {
    handoff::wire::SchemaRange {
        name: "testd-state".into(),
        min: version,
        max: version,
    }
}

/// The text of each "state" blob that arrives from now on (an overlap
/// predecessor's drain), read on a thread of its own.
fn watch_handed(items: &handoff::ItemStore, version: u32) -> Arc<Mutex<String>> {
    let handed = Arc::new(Mutex::new("-".to_owned()));
    let (arrivals, items, text) = (items.arrivals(), items.clone(), Arc::clone(&handed));
    std::thread::spawn(move || {
        for name in arrivals.iter().filter(|name| name == "state") {
            let read = match items.take_blob(&name, &blob_reads(version)) {
                Ok(Some(blob)) => String::from_utf8_lossy(&blob.bytes).into_owned(),
                Ok(None) => continue,
                Err(error) => format!("refused: {error}"),
            };
            *text.lock().unwrap_or_else(|e| e.into_inner()) = read;
        }
    });
    handed
}

impl Kept {
    /// The inherited cache (else a new one, kept for the next generations)
    /// and the inherited blob: one code path for every start.
    fn open(items: handoff::ItemStore, version: u32) -> Kept {
        let cache = match items.take_fd("cache") {
            Ok(Some(fd)) => File::from(fd),
            Ok(None) | Err(_) => {
                let fd = handoff::os::memfd("testd-cache", &[0; 8])
                    .unwrap_or_else(|e| die(&format!("memfd: {e}")));
                items
                    .put_fd("cache", &fd)
                    .unwrap_or_else(|e| die(&format!("keeping the cache: {e}")));
                File::from(fd)
            }
        };
        let read = |name: &str| match items.take_blob(name, &blob_reads(version)) {
            Ok(Some(blob)) => String::from_utf8_lossy(&blob.bytes).into_owned(),
            Ok(None) => "-".into(),
            Err(error) => {
                say!("testd: {error}");
                "refused".into()
            }
        };
        let (blob, begun) = (read("state"), read("begun"));
        // Put at every begin: kept only if this generation commits.
        let mine = format!("by={}", std::process::id());
        items
            .put_blob("begun", blob_schema(version), mine.as_bytes())
            .unwrap_or_else(|e| die(&format!("keeping begun: {e}")));
        Kept {
            handed: watch_handed(&items, version),
            items,
            version,
            cache,
            blob,
            begun,
        }
    }

    fn hits(&self) -> u64 {
        let mut bytes = [0; 8];
        let _ = std::os::unix::fs::FileExt::read_exact_at(&self.cache, &mut bytes, 0);
        u64::from_le_bytes(bytes)
    }

    fn hit(&self) -> std::io::Result<u64> {
        let hits = self.hits() + 1;
        std::os::unix::fs::FileExt::write_all_at(&self.cache, &hits.to_le_bytes(), 0)?;
        Ok(hits)
    }

    /// Keeps the blob for the next generations.
    fn put_blob(&self, revisions: u64) -> std::io::Result<()> {
        let text = format!("revisions={revisions} by={}", std::process::id());
        self.items
            .put_blob("state", blob_schema(self.version), text.as_bytes())
            .map_err(std::io::Error::other)
    }
}

struct Daemon {
    shared: Arc<Shared>,
    args: Arc<Args>,
    data_dir: Option<PathBuf>,
}

impl Drainable for Daemon {
    type Error = std::io::Error;

    fn drain(&mut self, deadline: Instant) -> std::io::Result<DrainReport> {
        stage(&self.args, "drain");
        self.shared.accepting.store(false, Ordering::SeqCst);
        // Closes the accept loop and waits for the connections it let in.
        let report = self.shared.gate.drain(deadline);
        // Without a data directory (overlap) there is no seal: the blob
        // goes with the drain.
        if let (Some(kept), None) = (&self.shared.kept, &self.data_dir) {
            let revisions = self.shared.store.lock().map(|s| s.revisions).unwrap_or(0);
            kept.put_blob(revisions)?;
        }
        Ok(report)
    }

    fn seal(&mut self, progress: &mut SealProgress) -> std::io::Result<SealInfo> {
        stage(&self.args, "seal");
        if self.args.seal_fail {
            return Err(std::io::Error::other(
                "seal failure requested by --seal-fail",
            ));
        }
        let mut store = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = store.log.take() {
            log.sync_all()?;
        }
        if let Some(kept) = &self.shared.kept {
            kept.put_blob(store.revisions)?;
        }
        progress.report(1, 1);
        Ok(SealInfo {
            revisions: store.revisions,
            fingerprint: store.fingerprint()?,
        })
    }

    fn resume_after_abort(&mut self) -> std::io::Result<()> {
        stage(&self.args, "resume");
        if let Some(ms) = self.args.resume_delay_ms {
            // A slow resumption, for the race of a resume with a commit.
            say!("testd: resuming in {ms} ms as asked");
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let reopened = Store::open(self.data_dir.as_deref())?;
        *self.shared.store.lock().unwrap_or_else(|e| e.into_inner()) = reopened;
        self.shared.accepting.store(true, Ordering::SeqCst);
        self.shared.gate.reopen();
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            open_connections: self.shared.gate.open_connections(),
            in_flight: self.shared.gate.open_connections(),
            revisions: self.shared.store.lock().map(|s| s.revisions).unwrap_or(0),
            accepting: self.shared.accepting.load(Ordering::SeqCst),
        }
    }
}

fn handle(shared: &Shared, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.trim_end().splitn(3, ' ');
    let reply = match (words.next(), words.next(), words.next()) {
        (Some("PUT"), Some(key), Some(value)) => {
            let mut store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
            match store.put(key, value) {
                Ok(revision) => format!("OK {revision}"),
                Err(error) => format!("ERR {error}"),
            }
        }
        (Some("GET"), Some(key), None) => {
            let store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
            match store.map.get(key) {
                Some(value) => format!("VALUE {value}"),
                None => "MISSING".into(),
            }
        }
        (Some("INFO"), None, None) => {
            let store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
            format!(
                "pid={} build={} generation={} revisions={} start_fds={} file_fd={}",
                std::process::id(),
                shared.build,
                shared.generation.load(Ordering::SeqCst),
                store.revisions,
                shared.start_fds,
                shared
                    .file_fd
                    .lock()
                    .map(|f| f.clone().unwrap_or_else(|| "-".into()))
                    .unwrap_or_default()
            )
        }
        (Some("FDS"), None, None) => open_fds_line(),
        (Some("HIT"), None, None) => match &shared.kept {
            Some(kept) => match kept.hit() {
                Ok(hits) => format!("HITS {hits}"),
                Err(error) => format!("ERR {error}"),
            },
            None => "ERR no --items".into(),
        },
        (Some("ITEMS"), None, None) => match &shared.kept {
            Some(kept) => format!("blob={} hits={}", kept.blob, kept.hits()),
            None => "ERR no --items".into(),
        },
        (Some("BEGUN"), None, None) => match &shared.kept {
            Some(kept) => kept.begun.clone(),
            None => "ERR no --items".into(),
        },
        (Some("HANDED"), None, None) => match &shared.kept {
            Some(kept) => kept.handed.lock().map(|t| t.clone()).unwrap_or_default(),
            None => "ERR no --items".into(),
        },
        (Some("FORGET"), Some(name), None) => match &shared.kept {
            Some(kept) => match kept.items.remove(name) {
                Ok(()) => "FORGOTTEN".into(),
                Err(error) => format!("ERR {error}"),
            },
            None => "ERR no --items".into(),
        },
        (Some("ENV"), Some(name), None) => std::env::var(name).unwrap_or_else(|_| "UNSET".into()),
        _ => "ERR bad request".into(),
    };
    let mut stream = stream;
    writeln!(stream, "{reply}")?;
    stream.flush()
}

fn open_fds_line() -> String {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        for entry in entries.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let target = std::fs::read_link(entry.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if target.starts_with("/proc/") {
                continue; // the directory being read
            }
            let flags =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            // fdinfo "flags:" is octal; O_CLOEXEC is 02000000.
            let cloexec = flags
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
                .is_some_and(|f| f & 0o2000000 != 0);
            out.push(format!(
                "{fd}:{}",
                if cloexec { "cloexec" } else { "inherit" }
            ));
        }
    }
    out.join(",")
}

/// The extra fds of `--unix-name`, `--udp-name` and `--fd-name`.
#[derive(Default)]
struct Extra {
    unix: Option<std::os::unix::net::UnixListener>,
    udp: Option<std::net::UdpSocket>,
    file: Option<String>,
}

fn take_extra_fds(generation: &mut handoff::Generation<handoff::Warming>, args: &Args) -> Extra {
    let mut extra = Extra::default();
    if let Some(name) = &args.unix_name {
        let fallback = std::env::temp_dir().join(format!("testd-{}.sock", std::process::id()));
        extra.unix = Some(
            generation
                .unix_listener(name, &fallback)
                .unwrap_or_else(|e| die(&format!("unix listener: {e}"))),
        );
    }
    if let Some(name) = &args.udp_name {
        extra.udp = Some(
            generation
                .udp_socket(name, "127.0.0.1:0")
                .unwrap_or_else(|e| die(&format!("udp socket: {e}"))),
        );
    }
    if let Some(name) = &args.fd_name {
        let fd = generation
            .take_fd(name)
            .unwrap_or_else(|| die(&format!("no fd named {name}")));
        let file = File::from(fd);
        // pread: the offset is shared with every holder of the file.
        let mut buf = vec![0; 256];
        let n = std::os::unix::fs::FileExt::read_at(&file, &mut buf, 0)
            .unwrap_or_else(|e| die(&format!("read fd: {e}")));
        extra.file = Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }
    extra
}

fn serve_extra(extra: Extra, shared: &Arc<Shared>) {
    if let Some(file) = extra.file {
        *shared.file_fd.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    }
    if let Some(unix) = extra.unix {
        std::thread::spawn(move || {
            for stream in unix.incoming().flatten() {
                let _ = writeln!(&stream, "pid={}", std::process::id());
            }
        });
    }
    if let Some(udp) = extra.udp {
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("pid={}", std::process::id()).as_bytes(), peer);
            }
        });
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        // Blocks while the gate is closed (a drain); the connection counts
        // from its accept until the worker drops it.
        let connection = match shared.gate.accept(&listener) {
            Ok(connection) => connection,
            Err(error) => {
                say!("testd: {error}");
                // EMFILE and the like: back off rather than spin.
                std::thread::sleep(handoff::timeouts::POLL_SLICE);
                continue;
            }
        };
        let worker = Arc::clone(&shared);
        std::thread::spawn(move || {
            if let Ok(stream) = connection.try_clone() {
                let _ = handle(&worker, stream);
            }
            drop(connection);
        });
    }
}

/// The library's options the flags ask for.
fn start_options(args: &Args) -> handoff::StartOptions {
    let mut options = handoff::StartOptions::new(args.build.clone());
    if let Some(ms) = args.relock_ms {
        options.timeouts.relock = std::time::Duration::from_millis(ms);
    }
    if let Some((min, max)) = args.versions {
        options.versions = handoff::wire::VersionRange { min, max };
    }
    if let Some(version) = args.items {
        options = options.with_schemas(vec![blob_schema(version)], vec![blob_reads(version)]);
    }
    options
}

fn main() {
    let start_fds = open_fds_line();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Arc::new(parse_args());
    stage(&args, "start");
    let mut generation =
        handoff::start(start_options(&args)).unwrap_or_else(|e| die(&format!("start: {e}")));
    let listener = generation
        .tcp_listener("main", &args.listen)
        .unwrap_or_else(|e| die(&format!("listener: {e}")));
    // Other kinds of inherited fds, for the tests of listener passing: a
    // Unix stream listener and a UDP socket answer with this pid; a plain
    // fd (a file) is read and reported by INFO.
    let extra = take_extra_fds(&mut generation, &args);
    stage(&args, "warm");
    let number = generation.generation();
    let overlap = generation.mode() == Some(handoff::Mode::Overlap);
    let begun = generation
        .begin(args.data_dir.as_deref())
        .unwrap_or_else(|e| die(&format!("begin: {e}")));
    stage(&args, "begin");
    let store = Store::open(begun.data_dir()).unwrap_or_else(|e| die(&format!("open state: {e}")));
    let mut fingerprint = store
        .fingerprint()
        .unwrap_or_else(|e| die(&format!("fingerprint: {e}")));
    if args.bad_fingerprint {
        fingerprint = Fingerprint::of_bytes(b"not the sealed state");
    }
    let revisions = store.revisions;
    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        gate: handoff::AcceptGate::new().unwrap_or_else(|e| die(&format!("gate: {e}"))),
        accepting: AtomicBool::new(true),
        generation: AtomicU64::new(number),
        build: args.build.clone(),
        start_fds,
        file_fd: Mutex::new(None),
        kept: args.items.map(|version| Kept::open(begun.items(), version)),
    });
    stage(&args, "ready");
    let report = ready_report(&args, revisions, fingerprint);
    let daemon = Daemon {
        shared: Arc::clone(&shared),
        args: Arc::clone(&args),
        data_dir: begun.data_dir().map(Path::to_path_buf),
    };
    // Overlap mode: serve before Ready, so that someone accepts at every
    // moment. Exclusive mode: serve only once committed (no write acked by a
    // generation that may still be rolled back).
    let mut listener = Some(listener);
    if overlap && let Some(listener) = listener.take() {
        let acceptor = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, acceptor));
    }
    let live = if args.ready_on_thread {
        // Wrong on purpose: ready() belongs on the main thread.
        std::thread::Builder::new()
            .name("not-main".into())
            .spawn(move || begun.ready(report, daemon))
            .unwrap_or_else(|e| die(&format!("thread: {e}")))
            .join()
            .unwrap_or_else(|_| die("ready panicked"))
    } else {
        begun.ready(report, daemon)
    }
    .unwrap_or_else(|e| die(&format!("ready: {e}")));
    serve_extra(extra, &shared);
    if let Some(listener) = listener {
        let acceptor = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, acceptor));
    }
    let ending = live.wait();
    say!("testd {}: session ended: {ending:?}", std::process::id());
}
