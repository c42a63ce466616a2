//! The shipped example units under the distribution's real systemd (Debian
//! 12: systemd 252) running as PID 1 in private namespaces, end to end,
//! under an open-loop load.
//!
//! One test, [`shipped_units_under_load`], in this order: the plain unit
//! (`examples/systemd/mydaemon.service`: handoffctl binds the listener) is
//! started; reloaded 5 times, each after a deploy of a fresh build (a copy
//! of kvd with a unique trailer, so a new sha256, `mv`ed over
//! `/usr/bin/mydaemon`, so a new inode); reloaded onto a binary that exits
//! at once (a rollback); reloaded through a drop-in `ExecReload=` with
//! `--deadline 30s` and no `--drain-timeout`, then with `--deadline 20s`
//! (30 s equals the shipped `drain_timeout`; only a shorter deadline checks
//! that an unset drain timeout follows it down rather than make the upgrade
//! invalid); reloaded through the README's drop-in that re-execs a freshly
//! deployed `handoffctl` (`reexec --if-changed`, then `upgrade`: MainPID
//! kept, the new image running); its supervisor is SIGKILLed
//! (`Restart=on-failure` brings it back, with no orphan generation); the
//! shipped drop-in `examples/systemd/adopt-after-crash.conf` is installed
//! and the supervisor SIGKILLed again (the restarted one adopts the
//! generation, which serves throughout, then reloads it); it is stopped
//! (through the drop-in's `ExecStop=`). Then the socket-activated pair
//! (`examples/systemd/socket-activated/`) is started, restarted and stopped
//! while systemd keeps the socket open. At the end every acknowledged write
//! is read back.
//!
//! A reload must keep `MainPID`, change the serving generation, run the
//! deployed build, and be bracketed for systemd: `RELOADING=1` then
//! `READY=1` reach PID 1 before `ExecReload` exits (read from systemd's own
//! debug log in the journal: its "Got notification message" lines against
//! its "Control process exited" line), and `StatusText` names the new
//! generation as soon as `systemctl reload` returns. A generation must not
//! inherit `NOTIFY_SOCKET` (the supervisor is the unit's main process;
//! anything else on that socket is refused or, worse, believed). Checks
//! are collected, so one run reports every one that fails; a step whose
//! premise broke (the unit is not active) ends the test at once. Every
//! failure message carries the unit's journal.
//!
//! # What is installed, and what differs from the shipped files
//! The units are installed byte for byte; `handoffctl` as
//! `/usr/bin/handoffctl`; kvd (`target/debug/examples/kvd`) as
//! `/usr/bin/mydaemon`. `/etc/mydaemon/handoff.toml` is
//! `examples/systemd/mydaemon.toml` with one line changed: `args = []`
//! instead of `["--config", "/etc/mydaemon/mydaemon.conf"]`, because kvd
//! has no `--config` (it exits on an unknown flag) and finds its data
//! directory in `HANDOFF_DATA_DIR`, which the template's `data_dir` already
//! sets. Everything else (socket, data directory, exclusive mode, drain
//! timeout, deadline, history file, `[listen] http`) is as shipped. The
//! test's own additions are environment, not product: `rsd.target` (the
//! boot target: an empty target, so only what the units pull in starts),
//! an empty `/etc/fstab` (the host's would have the container mount the
//! host's devices) and a journald drop-in that turns rate limiting off
//! (systemd's debug log is evidence here; a suppressed line would be a
//! false failure).
//!
//! # The container
//! `tests/real-systemd/inner.sh` builds it and lists the hazards it
//! handles (an overlay root whose upper layer is RAM, private `/run` and
//! `/tmp`, read-only `/proc/sys` and `/sys`, no kmsg, no console). Here: a
//! cgroup of its own under the host's cgroup2 mount becomes the root of the
//! container's cgroup namespace; `nsenter` into all its namespaces runs
//! `systemctl`, `journalctl` and `handoffctl`; files go in through
//! `/proc/INIT/root`; its processes are read from the host's side of its
//! cgroup (host pids, and `NSpid` for the container's). The load runs
//! with the host's python in the container's network namespace only
//! (`tests/real-systemd/loadgen.py`): entering a network namespace from
//! this process would need `setns`, and `unsafe` is denied. [`Container`]
//! tears everything down on drop, panics included: SIGRTMIN+4 to the
//! container's PID 1 (systemd's poweroff; in a child pid namespace its
//! final `reboot()` only ends the namespace), SIGKILL to `unshare` past a
//! deadline (its `--kill-child` takes the whole pid namespace along), the
//! cgroup tree removed once empty, the work directory removed only when
//! nothing is mounted under it in the host's namespace (mounts live in the
//! container's namespace and vanish with it). Never `systemctl poweroff`
//! outside `nsenter`: that would address the host.
//!
//! # Failures by design
//! The plain unit's supervisor hands its listener to systemd's fd store,
//! so across its SIGKILL and restart the listener stays open: nothing is
//! refused, but systemd kills the generation with the unit, so a request
//! it was serving at that instant is cut (reset or closed). A stop closes
//! the listener for good: connections then are refused (or reset in the
//! backlog). With the drop-in the generation survives the crash:
//! `crash-adopted` must fail nothing. The phases by design are measured
//! and printed apart: `crash` may fail
//! only by a cut request, `stop` also by a refusal, never with an error
//! answer or a lost acknowledged write. Every other phase, the
//! socket-activated unit's restart and stop included, must have 0 failed
//! requests.
//!
//! # Skipping
//! It needs root, `/lib/systemd/systemd`, a cgroup2 mount, util-linux's
//! `unshare`, `nsenter` and `setpriv`, and `python3`. Without one it
//! prints one line saying why and passes, unless
//! `HANDOFF_REQUIRE_REAL_SYSTEMD=1` (CI), where that is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use handoff::os::Sig;
use serde_json::Value;

use crate::common::{IO, Ran, example, handoffctl, run_bounded, sha256_hex};

/// Set to 1 where a missing prerequisite must fail the test (CI).
const REQUIRE: &str = "HANDOFF_REQUIRE_REAL_SYSTEMD";
const SYSTEMD: &str = "/lib/systemd/systemd";
const UNIT: &str = "mydaemon.service";
const SOCKET_UNIT: &str = "mydaemon.socket";
const CONFIG: &str = "/etc/mydaemon/handoff.toml";
const BINARY: &str = "/usr/bin/mydaemon";
/// The port of the shipped config and socket unit.
const PORT: &str = "8080";
/// Requests per second, one connection each.
const RATE: &str = "150";
/// Waits for systemd: boot, a unit reaching a state, the journal catching
/// up. Each is a few hundred milliseconds when things work.
const SETTLE: Duration = Duration::from_secs(20);
/// Load between steps, so that every phase carries traffic.
const DWELL: Duration = Duration::from_millis(600);
/// How long a notification that missed its reload is waited for, to show
/// where it arrived.
const LATE: Duration = Duration::from_secs(3);
/// The load's final read-back of every acknowledged write.
const READ_BACK: Duration = Duration::from_secs(60);
/// Teardown: poweroff, then the cgroup emptying.
const TEARDOWN: Duration = Duration::from_secs(10);
/// Lines of journal in a failure message.
const JOURNAL_LINES: usize = 200;
/// Load phases that may fail by design (see the module header), and how.
const BY_DESIGN: &[(&str, &[&str])] = &[
    ("crash", &["reset", "EOFError"]),
    ("stop", &["refused", "reset", "EOFError"]),
];

/// The failure classes phase `name` may show by design.
fn by_design(name: &str) -> Option<&'static [&'static str]> {
    BY_DESIGN
        .iter()
        .find(|(phase, _)| *phase == name)
        .map(|(_, classes)| *classes)
}

#[test]
fn shipped_units_under_load() {
    let host = match Host::check() {
        Ok(host) => host,
        Err(reason) => {
            assert!(
                std::env::var(REQUIRE).as_deref() != Ok("1"),
                "{REQUIRE}=1 but real systemd cannot run here: {reason}"
            );
            eprintln!("real_systemd: skipped: {reason} (with {REQUIRE}=1 this fails)");
            return;
        }
    };
    let started = Instant::now();
    let mut run = Scenario::boot(&host);
    run.start();
    for round in 1..=5 {
        run.reload(round);
    }
    run.rollback();
    // 30s as an operator would write it; it equals the shipped config's
    // drain_timeout, so only 20s (below it) reaches the rule that an unset
    // drain timeout follows a shorter deadline down.
    run.reload_with_deadline_drop_in("30s");
    run.reload_with_deadline_drop_in("20s");
    run.reload_with_reexec();
    run.crash();
    run.crash_adopted();
    run.stop();
    run.socket_activated();
    let report = run.finish_load();
    run.judge_load(&report);
    let summary = load_summary(&report);
    let failed = std::mem::take(&mut run.checks);
    if !failed.is_empty() {
        run.fail(format!(
            "{} check(s) failed:\n- {}\n\nload:\n{summary}",
            failed.len(),
            failed.join("\n- ")
        ));
    }
    let work = run.container.work.clone();
    let problems = run.container.teardown();
    assert!(problems.is_empty(), "teardown: {problems:?}");
    assert!(!work.exists(), "{} left behind", work.display());
    eprintln!(
        "real_systemd: passed in {:.1} s\n{summary}",
        started.elapsed().as_secs_f64()
    );
}

/// What this machine offers.
struct Host {
    /// Where the container's cgroup goes: the host's cgroup2 mount, at
    /// this process's own cgroup.
    cgroup_parent: PathBuf,
    python: PathBuf,
}

impl Host {
    fn check() -> Result<Host, String> {
        if handoff::os::effective_uid() != 0 {
            return Err("not root (namespaces, mounts and a cgroup are needed)".into());
        }
        if !Path::new(SYSTEMD).exists() {
            return Err(format!("{SYSTEMD} is missing"));
        }
        for tool in ["unshare", "nsenter", "setpriv", "systemctl", "journalctl"] {
            on_path(tool).ok_or_else(|| format!("{tool} is not on PATH"))?;
        }
        let python = on_path("python3").ok_or("python3 is not on PATH")?;
        Ok(Host {
            cgroup_parent: own_cgroup2()?,
            python,
        })
    }
}

fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// This process's cgroup in the cgroup2 hierarchy, as a host path.
fn own_cgroup2() -> Result<PathBuf, String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let mount = mounts
        .lines()
        .find_map(|line| {
            let (fields, fs) = line.split_once(" - ")?;
            (fs.split(' ').next() == Some("cgroup2")).then(|| fields.split(' ').nth(4))?
        })
        .ok_or("no cgroup2 mount")?;
    let cgroups = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let own = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or("this process is in no cgroup2 cgroup")?;
    Ok(Path::new(mount).join(own.trim_start_matches('/')))
}

/// A process of the container, seen from the host.
struct Proc {
    host_pid: u32,
    host_ppid: u32,
    /// Its pid in the container.
    pid: u32,
    name: String,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} (host pid {})", self.pid, self.name, self.host_pid)
    }
}

/// systemd as PID 1 in private namespaces; torn down on drop.
struct Container {
    work: PathBuf,
    cgroup: PathBuf,
    unshare: Option<Child>,
    /// The host pid of the container's PID 1.
    init: u32,
}

impl Container {
    /// Boots it with `seed` (a tree copied over its root) in place.
    fn boot(host: &Host, seed: impl FnOnce(&Path)) -> Container {
        let name = format!("real-systemd.{}", std::process::id());
        let mut container = Container {
            // Not the host's /tmp: nothing of this test goes there.
            work: Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name),
            cgroup: host.cgroup_parent.join(&name),
            unshare: None,
            init: 0,
        };
        for dir in ["ovl", "root", "seed"] {
            fs::create_dir_all(container.work.join(dir)).expect("create the work directory");
        }
        fs::create_dir(&container.cgroup).expect("create the container's cgroup");
        seed(&container.work.join("seed"));
        let log = File::create(container.log()).expect("container log");
        let inner = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/real-systemd/inner.sh");
        // setpriv --pdeathsig: if this test process is killed outright,
        // unshare dies too, and its --kill-child ends the namespace.
        let unshare = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "sh", "-c"])
            .arg(
                "echo $$ > \"$1/cgroup.procs\" && exec unshare --mount --pid --fork --uts \
                 --ipc --net --cgroup --kill-child --propagation private sh \"$2\" \"$3\"",
            )
            .arg("sh")
            .arg(&container.cgroup)
            .arg(inner)
            .arg(&container.work)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn unshare");
        let unshare_pid = unshare.id();
        container.unshare = Some(unshare);
        container.init = container.wait_for("the container's PID 1", || {
            children(unshare_pid).first().copied()
        });
        // Before its exec, PID 1 still has the host's root, where a host
        // systemd's bus socket would answer: systemctl would then drive
        // the host. So: systemd first, then its socket.
        let cmdline = format!("/proc/{}/cmdline", container.init);
        container.wait_for("systemd as the container's PID 1", || {
            let argv = fs::read(&cmdline).unwrap_or_default();
            argv.starts_with(format!("{SYSTEMD}\0").as_bytes())
                .then_some(())
        });
        let private = container.path("/run/systemd/private");
        container.wait_for("systemd's private bus socket", || {
            private.exists().then_some(())
        });
        let ran = container.run(&["systemctl", "is-system-running", "--wait"]);
        if !matches!(ran.stdout.trim(), "running" | "degraded") {
            let failed = container.run(&["systemctl", "--failed", "--no-pager"]);
            panic!(
                "the container's systemd did not come up: {ran:?}\n{}\n{}",
                failed.stdout,
                container.journal(&["-n", "100"]).join("\n")
            );
        }
        container
    }

    fn log(&self) -> PathBuf {
        self.work.join("container.log")
    }

    /// Polls `found` until it yields, while the container lives.
    fn wait_for<T>(&mut self, what: &str, mut found: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + SETTLE;
        loop {
            if let Some(value) = found() {
                return value;
            }
            if let Some(unshare) = &mut self.unshare
                && let Ok(Some(status)) = unshare.try_wait()
            {
                panic!(
                    "the container ended ({status}) while waiting for {what}; its output:\n{}",
                    fs::read_to_string(self.log()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {SETTLE:?}; container output:\n{}",
                fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
        }
    }

    /// The container's PID 1, checked to be alive: once unshare reaped it,
    /// its number could name a host process, and `/proc/PID/root` or
    /// `nsenter -t PID` would then reach the host.
    fn init(&self) -> u32 {
        let unshare = self.unshare.as_ref().map_or(0, Child::id);
        assert!(
            children(unshare).contains(&self.init),
            "the container's PID 1 ({}) is gone; its output:\n{}",
            self.init,
            fs::read_to_string(self.log()).unwrap_or_default()
        );
        self.init
    }

    /// A path inside the container, from the host.
    fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.init()))
    }

    /// `COMMAND...` in all the container's namespaces, bounded.
    fn run(&self, command: &[&str]) -> Ran {
        let init = self.init();
        let mut nsenter = Command::new("nsenter");
        nsenter
            .args(["-t", &init.to_string()])
            .args(["-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--"])
            .args(command);
        run_bounded(nsenter).into()
    }

    fn systemctl(&self, args: &[&str]) -> Ran {
        let mut command = vec!["systemctl", "--no-pager"];
        command.extend_from_slice(args);
        self.run(&command)
    }

    /// `systemctl show -p A,B UNIT`.
    fn show(&self, unit: &str, properties: &[&str]) -> BTreeMap<String, String> {
        let ran = self.systemctl(&["show", "-p", &properties.join(","), unit]);
        assert_eq!(ran.code, Some(0), "systemctl show {unit}: {ran:?}");
        ran.stdout
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    fn property(&self, unit: &str, property: &str) -> String {
        self.show(unit, &[property])
            .remove(property)
            .unwrap_or_default()
    }

    /// `journalctl ARGS`, one entry a line with monotonic timestamps.
    fn journal(&self, args: &[&str]) -> Vec<String> {
        let mut command = vec!["journalctl", "--no-pager", "-q", "-o", "short-monotonic"];
        command.extend_from_slice(args);
        self.run(&command)
            .stdout
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Where the journal ends now.
    fn cursor(&self) -> String {
        let ran = self.run(&["journalctl", "--no-pager", "--show-cursor", "-n", "0"]);
        ran.stdout
            .lines()
            .find_map(|line| line.strip_prefix("-- cursor: "))
            .unwrap_or_else(|| panic!("no journal cursor: {ran:?}"))
            .to_owned()
    }

    /// The processes in `unit`'s cgroup.
    fn processes(&self, unit: &str) -> Vec<Proc> {
        let group = self.property(unit, "ControlGroup");
        if group.is_empty() {
            return Vec::new(); // an inactive unit has no cgroup
        }
        let procs = self
            .cgroup
            .join(group.trim_start_matches('/'))
            .join("cgroup.procs");
        let Ok(pids) = fs::read_to_string(procs) else {
            return Vec::new(); // no cgroup: no process
        };
        pids.lines()
            .filter_map(|pid| pid.parse().ok())
            .filter_map(|host_pid: u32| {
                let status = fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(str::trim)
                        .unwrap_or_default()
                        .to_owned()
                };
                Some(Proc {
                    host_pid,
                    host_ppid: field("PPid:").parse().ok()?,
                    pid: field("NSpid:").split_whitespace().last()?.parse().ok()?,
                    name: field("Name:"),
                })
            })
            .collect()
    }

    /// Ends it all; what could not be cleaned up.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(mut unshare) = self.unshare.take() {
            // The init pid is signalled only while unshare has not reaped
            // it, so it cannot name another process.
            if matches!(unshare.try_wait(), Ok(None)) && children(unshare.id()).contains(&self.init)
            {
                let _ = Command::new("sh")
                    .args(["-c", "kill -s RTMIN+4 \"$1\"", "sh", &self.init.to_string()])
                    .status();
            }
            let deadline = Instant::now() + TEARDOWN / 2;
            while matches!(unshare.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(handoff::timeouts::POLL_SLICE);
            }
            if matches!(unshare.try_wait(), Ok(None)) {
                problems.push("systemd did not power off; SIGKILL".to_owned());
                let _ = unshare.kill();
            }
            let _ = unshare.wait();
        }
        let events = self.cgroup.join("cgroup.events");
        let deadline = Instant::now() + TEARDOWN;
        while fs::read_to_string(&events).is_ok_and(|e| e.contains("populated 1")) {
            if Instant::now() >= deadline {
                problems.push(format!("{} still populated", self.cgroup.display()));
                break;
            }
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
        }
        // Depth first: a cgroup is removed with rmdir once its children are.
        let mut groups = Vec::new();
        collect_dirs(&self.cgroup, &mut groups);
        groups.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
        for group in groups {
            if let Err(error) = fs::remove_dir(&group)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                problems.push(format!("rmdir {}: {error}", group.display()));
            }
        }
        // Never a recursive removal where a mount could sit: an overlay of
        // the host's root mounted on work/root would take the host along.
        let work = self.work.to_string_lossy().into_owned();
        let mounted = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|line| {
                line.split(' ').nth(4).is_some_and(|at| {
                    at.strip_prefix(&work)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                })
            });
        if mounted {
            problems.push(format!("something is mounted under {work}; left in place"));
            return problems;
        }
        let _ = fs::remove_dir_all(self.work.join("seed"));
        for file in ["container.log", "loadgen.err"] {
            let _ = fs::remove_file(self.work.join(file));
        }
        for dir in ["ovl", "root", ""] {
            if let Err(error) = fs::remove_dir(self.work.join(dir))
                && error.kind() != std::io::ErrorKind::NotFound
            {
                problems.push(format!("rmdir {}/{dir}: {error}", self.work.display()));
            }
        }
        problems
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for problem in self.teardown() {
            eprintln!("real_systemd: teardown: {problem}");
        }
    }
}

/// The children of `pid` (its main thread's).
fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

fn collect_dirs(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    into.push(dir.to_owned());
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), into);
        }
    }
}

/// `loadgen.py` in the container's network namespace; killed on drop.
struct Load {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
    errors: PathBuf,
}

impl Load {
    fn start(container: &Container, python: &Path) -> Load {
        let errors = container.work.join("loadgen.err");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/real-systemd/loadgen.py");
        let mut child = Command::new("nsenter")
            .args(["-t", &container.init().to_string(), "-n", "--"])
            .arg(python)
            .arg(script)
            .args(["--port", PORT, "--rate", RATE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&errors).expect("loadgen.err"))
            .spawn()
            .expect("spawn the load generator");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Load {
            child,
            stdin,
            answers,
            errors,
        }
    }

    /// Sends `command`; returns the answer that starts with `answer`.
    fn ask(&mut self, command: &str, answer: &str, within: Duration) -> String {
        writeln!(self.stdin, "{command}").expect("write to the load generator");
        // One answer per command, in order.
        match self.answers.recv_timeout(within) {
            Ok(line) if line.starts_with(answer) => line,
            Ok(line) => panic!("load generator: {line:?} to {command:?}"),
            Err(error) => panic!(
                "load generator: no {answer:?} to {command:?} within {within:?} ({error}); stderr:\n{}",
                fs::read_to_string(&self.errors).unwrap_or_default()
            ),
        }
    }

    /// Later arrivals belong to `phase`.
    fn mark(&mut self, phase: &str) {
        self.ask(&format!("mark {phase}"), &format!("marked {phase}"), IO);
    }

    /// No arrivals; returns once the requests in flight have ended.
    fn pause(&mut self) {
        self.ask("pause", "paused", IO * 2);
    }

    fn resume(&mut self) {
        self.ask("resume", "resumed", IO);
    }

    /// Ends the load, reads every acknowledged write back, reports.
    fn finish(mut self) -> Value {
        let line = self.ask("finish", "report ", READ_BACK);
        serde_json::from_str(&line["report ".len()..]).expect("load report")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's state: the container, the load, the checks that failed.
struct Scenario {
    // Dropped first: the load, then the container.
    load: Option<Load>,
    container: Container,
    checks: Vec<String>,
    /// Every supervisor and generation seen, for the journal (`_PID=`).
    pids: BTreeSet<u32>,
    kvd: PathBuf,
    python: PathBuf,
    deploys: u32,
}

/// The serving generation, from `handoffctl status`.
#[derive(Debug, Clone, PartialEq)]
struct Serving {
    generation: u64,
    pid: u32,
    sha256: String,
}

impl Scenario {
    fn boot(host: &Host) -> Scenario {
        let kvd = example("kvd");
        let container = Container::boot(host, |seed| {
            let examples = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/systemd"));
            let put = |inside: &str, contents: &[u8], mode: u32| {
                let path = seed.join(inside.trim_start_matches('/'));
                fs::create_dir_all(path.parent().expect("parent")).expect("seed directory");
                fs::write(&path, contents).expect("seed file");
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            };
            put(
                "/etc/systemd/system/rsd.target",
                b"[Unit]\nDescription=real-systemd test boot target\nDefaultDependencies=no\n",
                0o644,
            );
            // The host's fstab would make the container's systemd mount
            // the host's devices.
            put(
                "/etc/fstab",
                b"# real-systemd test: nothing to mount\n",
                0o644,
            );
            put(
                "/etc/systemd/journald.conf.d/real-systemd-test.conf",
                b"[Journal]\nRateLimitBurst=0\n",
                0o644,
            );
            put(
                "/etc/systemd/system/mydaemon.service",
                &read(&examples.join("mydaemon.service")),
                0o644,
            );
            put(
                CONFIG,
                kvd_config(&examples.join("mydaemon.toml")).as_bytes(),
                0o644,
            );
            put("/usr/bin/handoffctl", &read(&handoffctl()), 0o755);
            put(BINARY, &read(&kvd), 0o755);
        });
        Scenario {
            load: None,
            container,
            checks: Vec::new(),
            pids: BTreeSet::new(),
            kvd,
            python: host.python.clone(),
            deploys: 0,
        }
    }

    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            let message = message();
            eprintln!("real_systemd: check failed: {message}");
            self.checks.push(message);
        }
    }

    /// Ends the test: `message`, then the unit's journal.
    fn fail(&self, message: String) -> ! {
        let mut query: Vec<String> = [
            "_SYSTEMD_UNIT=mydaemon.service",
            "+",
            "UNIT=mydaemon.service",
            "+",
            "UNIT=mydaemon.socket",
        ]
        .map(String::from)
        .to_vec();
        // journald files the first stdout lines of a later start under
        // init.scope; the pid still finds them.
        for pid in &self.pids {
            query.extend(["+".to_owned(), format!("_PID={pid}")]);
        }
        let query: Vec<&str> = query.iter().map(String::as_str).collect();
        let lines: Vec<String> = self
            .container
            .journal(&query)
            .into_iter()
            .filter(|line| !is_bus_chatter(line))
            .collect();
        let tail = &lines[lines.len().saturating_sub(JOURNAL_LINES)..];
        panic!(
            "{message}\n\njournal (mydaemon, last {} lines):\n{}",
            tail.len(),
            tail.join("\n")
        );
    }

    fn load(&mut self) -> &mut Load {
        self.load.as_mut().expect("the load runs")
    }

    fn unit(&self, properties: &[&str]) -> BTreeMap<String, String> {
        self.container.show(UNIT, properties)
    }

    fn main_pid(&self) -> u32 {
        self.container
            .property(UNIT, "MainPID")
            .parse()
            .unwrap_or(0)
    }

    /// The unit must be active and running when the step's `systemctl`
    /// returned. Any other state is a failed check; the test goes on once
    /// the unit runs again (a late `RELOADING=1` puts it in `reload` for a
    /// moment) and ends if it does not within [`SETTLE`].
    fn require_running(&mut self, after: &str) {
        let properties = ["ActiveState", "SubState", "Result"];
        let running = |unit: &BTreeMap<String, String>| {
            unit.get("ActiveState").map(String::as_str) == Some("active")
                && unit.get("SubState").map(String::as_str) == Some("running")
        };
        let first = self.unit(&properties);
        if running(&first) {
            return;
        }
        self.check(false, || {
            format!("after {after}, {UNIT} was not running but {first:?}")
        });
        let deadline = Instant::now() + SETTLE;
        loop {
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
            let unit = self.unit(&properties);
            if running(&unit) {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "after {after}, {UNIT} did not run within {SETTLE:?}: {unit:?}"
                ));
            }
        }
    }

    fn serving(&mut self) -> Serving {
        let ran = self
            .container
            .run(&["handoffctl", "status", "--config", CONFIG, "--json"]);
        let status: Value = match serde_json::from_str(&ran.stdout) {
            Ok(status) if ran.code == Some(0) => status,
            _ => self.fail(format!("handoffctl status: {ran:?}")),
        };
        let serving = Serving {
            generation: status["generation"].as_u64().unwrap_or(0),
            pid: status["child_pid"].as_u64().unwrap_or(0) as u32,
            sha256: status["binary_sha256"].as_str().unwrap_or("").to_owned(),
        };
        if status["state"] != "serving" || serving.pid == 0 {
            self.fail(format!("no generation serves: {status}"));
        }
        self.pids.insert(serving.pid);
        if let Some(pid) = status["supervisor_pid"].as_u64() {
            self.pids.insert(pid as u32);
        }
        serving
    }

    /// A generation speaks to its supervisor, never to systemd.
    fn check_no_notify_socket(&mut self, serving: &Serving, after: &str) {
        let environ = self
            .container
            .processes(UNIT)
            .into_iter()
            .find(|proc| proc.pid == serving.pid)
            .and_then(|proc| fs::read(format!("/proc/{}/environ", proc.host_pid)).ok());
        let leaked = environ.as_deref().is_some_and(|environ| {
            environ
                .split(|byte| *byte == 0)
                .any(|var| var.starts_with(b"NOTIFY_SOCKET="))
        });
        self.check(environ.is_some() && !leaked, || {
            format!(
                "after {after}: generation {} (pid {}) {}",
                serving.generation,
                serving.pid,
                if leaked {
                    "inherited NOTIFY_SOCKET (only the main process may notify systemd)"
                } else {
                    "is not in the unit's cgroup"
                }
            )
        });
    }

    /// A fresh build in place, as a deploy does: a copy beside the binary
    /// with a unique trailer (ELF ignores trailing bytes), then `mv` over
    /// it: a new inode and a new sha256. `script` deploys that instead.
    fn deploy(&mut self, script: Option<&str>) -> String {
        self.deploys += 1;
        let temporary = self
            .container
            .path(&format!("{BINARY}.deploy-{}", self.deploys));
        match script {
            Some(body) => fs::write(&temporary, format!("#!/bin/sh\n{body}\n")),
            None => fs::copy(&self.kvd, &temporary).map(drop),
        }
        .expect("write the new build");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&temporary)
            .expect("open the new build");
        writeln!(
            file,
            "\nreal-systemd deploy {} of test process {}",
            self.deploys,
            std::process::id()
        )
        .expect("append the trailer");
        drop(file);
        fs::set_permissions(&temporary, fs::Permissions::from_mode(0o755)).expect("chmod");
        let sha256 = sha256_hex(&temporary);
        fs::rename(&temporary, self.container.path(BINARY)).expect("mv over the binary");
        sha256
    }

    /// Step 1.
    fn start(&mut self) {
        let ran = self.container.systemctl(&["start", UNIT]);
        if ran.code != Some(0) {
            self.fail(format!("systemctl start {UNIT}: {ran:?}"));
        }
        self.require_running("systemctl start");
        let main = self.main_pid();
        self.pids.insert(main);
        let serving = self.serving();
        self.check(serving.generation == 1, || {
            format!(
                "after start: generation {} serves, not 1",
                serving.generation
            )
        });
        let text = self.container.property(UNIT, "StatusText");
        let wanted = format!("generation {}, pid {}", serving.generation, serving.pid);
        self.check(text.contains(&wanted), || {
            format!("after start: StatusText {text:?} does not name {wanted:?}")
        });
        self.check_no_notify_socket(&serving, "start");
        self.load = Some(Load::start(&self.container, &self.python));
        self.load().mark("started");
        std::thread::sleep(DWELL);
    }

    /// Step 2: one deploy and reload.
    fn reload(&mut self, round: u32) {
        let what = format!("reload {round}");
        let before = self.serving();
        let main = self.main_pid();
        let sha256 = self.deploy(None);
        self.load().mark(&format!("reload-{round}"));
        let cursor = self.container.cursor();
        let ran = self.container.systemctl(&["reload", UNIT]);
        // Read at once: systemd must know the outcome when reload returns.
        let text = self.container.property(UNIT, "StatusText");
        self.check(ran.code == Some(0), || {
            format!("{what}: systemctl reload failed: {ran:?}")
        });
        self.require_running(&what);
        let after = self.serving();
        let main_after = self.main_pid();
        self.check(main_after == main, || {
            format!("{what}: MainPID changed from {main} to {main_after}")
        });
        self.check(after.pid != before.pid, || {
            format!("{what}: the serving pid is still {}", before.pid)
        });
        self.check(after.generation == before.generation + 1, || {
            format!(
                "{what}: generation {} serves after {}",
                after.generation, before.generation
            )
        });
        self.check(after.sha256 == sha256, || {
            format!(
                "{what}: the generation runs {}, the deployed build is {sha256}",
                after.sha256
            )
        });
        let wanted = format!("generation {}, pid {}", after.generation, after.pid);
        self.check(text.contains(&wanted), || {
            format!("{what}: StatusText when systemctl reload returned was {text:?}, not naming {wanted:?}")
        });
        self.check_notification_order(&cursor, main, &what);
        self.check_no_notify_socket(&after, &what);
        std::thread::sleep(DWELL);
    }

    /// Whether systemd saw RELOADING=1, then READY=1, from the main
    /// process before the ExecReload process exited. PID 1 logs all three
    /// itself, in the order it handled them, so its journal is the witness.
    fn check_notification_order(&mut self, cursor: &str, main: u32, what: &str) {
        let query = ["--after-cursor", cursor, "_PID=1", "UNIT=mydaemon.service"];
        let exited = "Control process exited";
        let mut lines = Vec::new();
        let deadline = Instant::now() + SETTLE;
        while !lines.iter().any(|line: &String| line.contains(exited)) {
            assert!(
                Instant::now() < deadline,
                "{what}: no {exited:?} in the journal within {SETTLE:?}"
            );
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
            lines = self.container.journal(&query);
        }
        let notification = |line: &String, tag: &str| {
            line.contains(&format!("Got notification message from PID {main} ("))
                && line.contains(tag)
        };
        let exit = lines
            .iter()
            .position(|line| line.contains(exited))
            .expect("found above");
        let reloading = lines[..exit]
            .iter()
            .position(|line| notification(line, "RELOADING=1"));
        let ready = reloading.and_then(|at| {
            lines[at..exit]
                .iter()
                .position(|line| notification(line, "READY=1"))
        });
        if ready.is_some() {
            return;
        }
        // Wait for the late ones, to show where they did arrive (and so
        // the next step does not meet them).
        let deadline = Instant::now() + LATE;
        while Instant::now() < deadline
            && !lines[exit..]
                .iter()
                .any(|line| notification(line, "READY=1"))
        {
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
            lines = self.container.journal(&query);
        }
        let story: Vec<&str> = lines
            .iter()
            .filter(|line| {
                ["Got notification", exited, "Changed ", "Forked", "Reload"]
                    .iter()
                    .any(|word| line.contains(word))
            })
            .map(String::as_str)
            .collect();
        self.check(false, || {
            format!(
                "{what}: systemd did not get RELOADING=1 then READY=1 before ExecReload exited; PID 1's log of the reload:\n    {}",
                story.join("\n    ")
            )
        });
    }

    /// Step 3: a build that exits at once is rolled back.
    fn rollback(&mut self) {
        let what = "the reload onto a failing build";
        let before = self.serving();
        let main = self.main_pid();
        self.deploy(Some("exit 1"));
        self.load().mark("rollback");
        let cursor = self.container.cursor();
        let ran = self.container.systemctl(&["reload", UNIT]);
        let text = self.container.property(UNIT, "StatusText");
        self.check(matches!(ran.code, Some(code) if code != 0), || {
            format!("{what}: systemctl reload did not fail: {ran:?}")
        });
        self.require_running(what);
        let after = self.serving();
        self.check(after == before, || {
            format!("{what}: {before:?} served before, {after:?} after")
        });
        let main_after = self.main_pid();
        self.check(main_after == main, || {
            format!("{what}: MainPID changed from {main} to {main_after}")
        });
        let wanted = format!("generation {}, pid {}", before.generation, before.pid);
        self.check(
            text.contains(&wanted) && text.contains("rolled back"),
            || {
                format!(
                    "{what}: StatusText when systemctl reload returned was {text:?}, not a rollback naming {wanted:?}"
                )
            },
        );
        self.check_notification_order(&cursor, main, what);
        std::thread::sleep(DWELL);
    }

    /// Step 4: an operator's drop-in `ExecReload=` with `--deadline` and
    /// no `--drain-timeout`: the drain timeout must follow a shorter
    /// deadline down rather than make the upgrade invalid.
    fn reload_with_deadline_drop_in(&mut self, deadline: &str) {
        let what = format!("the reload through a drop-in with --deadline {deadline}");
        let flag = format!("--deadline {deadline}");
        let dir = self
            .container
            .path("/etc/systemd/system/mydaemon.service.d");
        fs::create_dir_all(&dir).expect("drop-in directory");
        fs::write(
            dir.join("deadline.conf"),
            format!(
                "[Service]\nExecReload=\nExecReload=/usr/bin/handoffctl upgrade --config {CONFIG} {flag}\n"
            ),
        )
        .expect("drop-in");
        self.daemon_reload();
        let exec = self.container.property(UNIT, "ExecReload");
        assert!(exec.contains(&flag), "drop-in not in effect: {exec}");
        let before = self.serving();
        let main = self.main_pid();
        let sha256 = self.deploy(None);
        self.load().mark(&format!("reload-deadline-{deadline}"));
        let cursor = self.container.cursor();
        let ran = self.container.systemctl(&["reload", UNIT]);
        let said = self.control_process_said(&cursor);
        self.check(ran.code == Some(0), || {
            format!(
                "{what}: systemctl reload failed: {ran:?}; ExecReload:\n    {}",
                said.join("\n    ")
            )
        });
        self.require_running(&what);
        let after = self.serving();
        if ran.code == Some(0) {
            self.check(after.pid != before.pid && after.sha256 == sha256, || {
                format!("{what}: {before:?} before, {after:?} after (deployed {sha256})")
            });
            self.check_notification_order(&cursor, main, &what);
        }
        std::thread::sleep(DWELL);
    }

    /// A package upgrade of handoffctl itself, as the README's drop-in
    /// does it: `reexec --if-changed`, then `upgrade`, in one reload. The
    /// supervisor keeps its pid (MainPID) and runs the new image, the
    /// generation is replaced once, and the re-exec's own `RELOADING=1`
    /// and `READY=1` reach systemd before its `ExecReload` line exits.
    fn reload_with_reexec(&mut self) {
        let what = "the reload that re-execs handoffctl";
        let dir = self
            .container
            .path("/etc/systemd/system/mydaemon.service.d");
        fs::create_dir_all(&dir).expect("drop-in directory");
        fs::write(
            dir.join("reexec.conf"),
            format!(
                "[Service]\nExecReload=\n\
                 ExecReload=/usr/bin/handoffctl reexec --if-changed --config {CONFIG}\n\
                 ExecReload=/usr/bin/handoffctl upgrade --config {CONFIG}\n"
            ),
        )
        .expect("drop-in");
        self.daemon_reload();
        let before = self.serving();
        let main = self.main_pid();
        let handoffctl_sha256 = self.deploy_handoffctl();
        let sha256 = self.deploy(None);
        self.load().mark("reload-reexec");
        let cursor = self.container.cursor();
        let ran = self.container.systemctl(&["reload", UNIT]);
        self.check(ran.code == Some(0), || {
            format!("{what}: systemctl reload failed: {ran:?}")
        });
        self.require_running(what);
        let main_after = self.main_pid();
        self.check(main_after == main, || {
            format!("{what}: MainPID changed from {main} to {main_after}")
        });
        let image = self
            .container
            .processes(UNIT)
            .into_iter()
            .find(|proc| proc.pid == main)
            .map(|proc| sha256_hex(Path::new(&format!("/proc/{}/exe", proc.host_pid))));
        self.check(image.as_deref() == Some(handoffctl_sha256.as_str()), || {
            format!("{what}: the supervisor runs {image:?}, not the deployed {handoffctl_sha256}")
        });
        let after = self.serving();
        self.check(
            after.generation == before.generation + 1 && after.sha256 == sha256,
            || format!("{what}: {before:?} before, {after:?} after (deployed {sha256})"),
        );
        // The first ExecReload line to exit is the re-exec's.
        self.check_notification_order(&cursor, main, what);
        // The later reloads check their one ExecReload line again.
        fs::remove_file(dir.join("reexec.conf")).expect("remove the drop-in");
        self.daemon_reload();
        std::thread::sleep(DWELL);
    }

    /// A fresh handoffctl in place (a copy with a trailer, `mv`ed over
    /// `/usr/bin/handoffctl`), as a package upgrade leaves it; its sha256.
    fn deploy_handoffctl(&mut self) -> String {
        self.deploys += 1;
        let temporary = self
            .container
            .path(&format!("/usr/bin/handoffctl.deploy-{}", self.deploys));
        let mut bytes = read(&handoffctl());
        bytes.extend(format!("\nreal-systemd handoffctl deploy {}\n", self.deploys).bytes());
        fs::write(&temporary, &bytes).expect("write the new handoffctl");
        fs::set_permissions(&temporary, fs::Permissions::from_mode(0o755)).expect("chmod");
        let sha256 = sha256_hex(&temporary);
        fs::rename(&temporary, self.container.path("/usr/bin/handoffctl"))
            .expect("mv over handoffctl");
        sha256
    }

    /// What the `ExecReload` process started after `cursor` logged, and
    /// how PID 1 saw it exit.
    fn control_process_said(&self, cursor: &str) -> Vec<String> {
        let pid1 = ["--after-cursor", cursor, "_PID=1", "UNIT=mydaemon.service"];
        let mut lines = self.container.journal(&pid1);
        let deadline = Instant::now() + SETTLE;
        while !lines
            .iter()
            .any(|line| line.contains("Control process exited"))
            && Instant::now() < deadline
        {
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
            lines = self.container.journal(&pid1);
        }
        let control = lines.iter().find_map(|line| {
            let (_, pid) = line.split_once("Forked /usr/bin/handoffctl as ")?;
            pid.trim().parse::<u32>().ok()
        });
        let mut said = Vec::new();
        if let Some(pid) = control {
            // Its output travels through journald's stream: it may trail.
            let deadline = Instant::now() + LATE;
            while said.is_empty() && Instant::now() < deadline {
                said = self
                    .container
                    .journal(&["--after-cursor", cursor, &format!("_PID={pid}")]);
                std::thread::sleep(handoff::timeouts::POLL_SLICE);
            }
        }
        said.extend(
            lines
                .into_iter()
                .filter(|line| line.contains("Control process exited")),
        );
        said
    }

    fn daemon_reload(&mut self) {
        let ran = self.container.systemctl(&["daemon-reload"]);
        if ran.code != Some(0) {
            self.fail(format!("systemctl daemon-reload: {ran:?}"));
        }
    }

    /// Step 5: SIGKILL to the supervisor; systemd restarts the unit.
    fn crash(&mut self) {
        let before = self.serving();
        let new_main = self.kill_supervisor("crash");
        let after = self.serving();
        self.load().mark("after-crash");
        self.check_one_tree(new_main);
        self.check(after.pid != before.pid && after.generation == 1, || {
            format!("after the restart: {after:?} serves (before the crash: {before:?})")
        });
        self.check_no_notify_socket(&after, "the restart");
        std::thread::sleep(DWELL);
    }

    /// Step 6: the shipped drop-in that keeps the generation across a
    /// supervisor crash. SIGKILL to the supervisor; systemd restarts it, and
    /// it adopts the generation that kept serving: no request is cut, and
    /// the adopted generation is upgraded as usual.
    fn crash_adopted(&mut self) {
        let dir = self
            .container
            .path("/etc/systemd/system/mydaemon.service.d");
        fs::create_dir_all(&dir).expect("drop-in directory");
        let drop_in = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/systemd/adopt-after-crash.conf"
        ));
        fs::copy(drop_in, dir.join("adopt-after-crash.conf")).expect("install the drop-in");
        self.daemon_reload();
        let kill_mode = self.container.property(UNIT, "KillMode");
        assert_eq!(kill_mode, "process", "drop-in not in effect");
        let before = self.serving();
        let new_main = self.kill_supervisor("crash-adopted");
        let after = self.serving();
        self.check(
            after.pid == before.pid && after.generation == before.generation,
            || format!("after the restart: {after:?} serves, not the adopted {before:?}"),
        );
        let adopted = self
            .container
            .journal(&[&format!("_PID={new_main}")])
            .iter()
            .any(|line| line.contains("adopted"));
        self.check(adopted, || {
            format!("the restarted supervisor {new_main} logged no adoption")
        });
        std::thread::sleep(DWELL);
        // Supervised again: the next reload replaces it.
        self.reload(6);
    }

    /// SIGKILL to the supervisor (the load's phase `phase` starts), then
    /// systemd's restart of the unit; the new main pid.
    fn kill_supervisor(&mut self, phase: &str) -> u32 {
        let unit = self.unit(&["MainPID", "NRestarts"]);
        let main: u32 = unit["MainPID"].parse().expect("MainPID");
        let restarts: u32 = unit["NRestarts"].parse().expect("NRestarts");
        let supervisor = self
            .container
            .processes(UNIT)
            .into_iter()
            .find(|proc| proc.pid == main)
            .unwrap_or_else(|| self.fail(format!("MainPID {main} is not in the cgroup")));
        self.load().mark(phase);
        handoff::os::signal(supervisor.host_pid, Sig::Kill).expect("SIGKILL the supervisor");
        let new_main = self.await_restart(main, restarts);
        self.pids.insert(new_main);
        new_main
    }

    /// Waits for systemd to restart the unit after its supervisor `main`
    /// died; the new main pid.
    fn await_restart(&mut self, main: u32, restarts: u32) -> u32 {
        let deadline = Instant::now() + SETTLE;
        loop {
            let unit = self.unit(&["MainPID", "ActiveState", "SubState", "NRestarts"]);
            let pid: u32 = unit["MainPID"].parse().unwrap_or(0);
            if pid != 0 && pid != main && unit["SubState"] == "running" {
                let now: u32 = unit["NRestarts"].parse().unwrap_or(0);
                self.check(now == restarts + 1, || {
                    format!("after SIGKILL: NRestarts {now}, was {restarts}")
                });
                break pid;
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "systemd did not restart {UNIT} within {SETTLE:?} after SIGKILL of MainPID {main}: {unit:?}"
                ));
            }
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
        }
    }

    /// No orphan: every process of the unit is the new supervisor `main` or
    /// below it.
    fn check_one_tree(&mut self, main: u32) {
        let procs = self.container.processes(UNIT);
        let parents: BTreeMap<u32, u32> = procs.iter().map(|p| (p.host_pid, p.host_ppid)).collect();
        let root = procs.iter().find(|p| p.pid == main).map(|p| p.host_pid);
        let orphans: Vec<&Proc> = procs
            .iter()
            .filter(|proc| {
                let mut at = proc.host_pid;
                while Some(at) != root {
                    match parents.get(&at) {
                        Some(parent) => at = *parent,
                        None => return true,
                    }
                }
                false
            })
            .collect();
        self.check(root.is_some() && orphans.is_empty(), || {
            format!("after the restart, processes outside the new supervisor's tree: {orphans:?} (all: {procs:?})")
        });
    }

    /// Step 7.
    fn stop(&mut self) {
        self.load().mark("stop");
        let ran = self.container.systemctl(&["stop", UNIT]);
        self.check(ran.code == Some(0), || {
            format!("systemctl stop {UNIT}: {ran:?}")
        });
        self.load().pause();
        let state = self.container.property(UNIT, "ActiveState");
        let left = self.container.processes(UNIT);
        self.check(state == "inactive" && left.is_empty(), || {
            format!("after stop: ActiveState {state}, processes left {left:?}")
        });
    }

    /// Step 8: the socket-activated pair replaces the plain unit.
    fn socket_activated(&mut self) {
        let _ = fs::remove_dir_all(
            self.container
                .path("/etc/systemd/system/mydaemon.service.d"),
        );
        let examples = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/systemd/socket-activated"
        ));
        for unit in [UNIT, SOCKET_UNIT] {
            fs::copy(
                examples.join(unit),
                self.container.path(&format!("/etc/systemd/system/{unit}")),
            )
            .expect("install a socket-activated unit");
        }
        self.daemon_reload();
        let ran = self.container.systemctl(&["start", UNIT]);
        if ran.code != Some(0) {
            self.fail(format!(
                "systemctl start {UNIT} (socket-activated): {ran:?}"
            ));
        }
        self.require_running("the socket-activated start");
        self.check_socket_listening("start");
        let main = self.main_pid();
        self.pids.insert(main);
        let serving = self.serving();
        let adopted = self
            .container
            .journal(&[&format!("_PID={main}")])
            .iter()
            .any(|line| line.contains("adopted a socket-activated listener"));
        self.check(adopted, || {
            format!("the supervisor (pid {main}) did not log adopting systemd's socket")
        });
        self.check_no_notify_socket(&serving, "the socket-activated start");
        self.load().resume();
        self.load().mark("socket-started");
        std::thread::sleep(DWELL);

        self.load().mark("socket-restart");
        let ran = self.container.systemctl(&["restart", UNIT]);
        self.check(ran.code == Some(0), || {
            format!("systemctl restart: {ran:?}")
        });
        self.require_running("systemctl restart");
        self.check_socket_listening("restart");
        let restarted = self.main_pid();
        self.pids.insert(restarted);
        self.check(restarted != main, || {
            format!("systemctl restart kept MainPID {main}")
        });
        self.serving();
        std::thread::sleep(DWELL);

        // Stopped with its socket active: the load's connections wait in
        // the backlog and start it again.
        self.load().mark("socket-stop");
        let ran = self.container.systemctl(&["stop", UNIT]);
        self.check(ran.code == Some(0), || format!("systemctl stop: {ran:?}"));
        self.check_socket_listening("stop");
        let deadline = Instant::now() + SETTLE;
        let again = loop {
            let unit = self.unit(&["MainPID", "SubState"]);
            let pid: u32 = unit["MainPID"].parse().unwrap_or(0);
            if pid != 0 && pid != restarted && unit["SubState"] == "running" {
                break pid;
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "{UNIT} was not activated again by its socket within {SETTLE:?}: {unit:?}"
                ));
            }
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
        };
        self.pids.insert(again);
        self.serving();
        self.load().mark("socket-reactivated");
        std::thread::sleep(DWELL);
    }

    fn check_socket_listening(&mut self, after: &str) {
        let socket = self
            .container
            .show(SOCKET_UNIT, &["ActiveState", "SubState"]);
        // SubState `listening` while the service is down, `running` while up.
        self.check(socket["ActiveState"] == "active", || {
            format!("after {after}: {SOCKET_UNIT} is not open: {socket:?}")
        });
    }

    fn finish_load(&mut self) -> Value {
        self.load.take().expect("the load runs").finish()
    }

    /// 0 failed requests outside the phases that fail by design, only
    /// their classes inside them, and every acknowledged write read back.
    fn judge_load(&mut self, report: &Value) {
        for phase in report["phases"].as_array().expect("phases") {
            let name = phase["name"].as_str().unwrap_or("");
            let failed = phase["failed"].as_u64().unwrap_or(0);
            let failures = phase["failures"].as_object().cloned().unwrap_or_default();
            let allowed = by_design(name).is_some_and(|classes| {
                failures
                    .keys()
                    .all(|class| classes.contains(&class.as_str()))
            });
            self.check(failed == 0 || allowed, || {
                format!(
                    "load phase {name}: {failed} of {} requests failed: {failures:?}; samples {}",
                    phase["sent"], phase["samples"]
                )
            });
        }
        let read_back = &report["read_back"];
        let acknowledged = read_back["acknowledged"].as_u64().unwrap_or(0);
        let intact = read_back["intact"].as_u64().unwrap_or(0);
        self.check(acknowledged > 0 && intact == acknowledged, || {
            format!("read-back of acknowledged writes: {read_back}")
        });
    }
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The shipped config with kvd's arguments (see the module header).
fn kvd_config(template: &Path) -> String {
    let shipped = String::from_utf8(read(template)).expect("UTF-8 config");
    let mut replaced = 0;
    let config: Vec<String> = shipped
        .lines()
        .map(|line| {
            if line.starts_with("args = ") {
                replaced += 1;
                "# kvd takes no --config; its data directory comes from data_dir.\nargs = []"
                    .to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(
        replaced,
        1,
        "{} has no single `args = ` line",
        template.display()
    );
    config.join("\n") + "\n"
}

/// D-Bus traffic of PID 1's debug log: noise in a failure message.
fn is_bus_chatter(line: &str) -> bool {
    [
        "Sent message type=",
        "Got message type=",
        "Bus private-bus-connection",
        "Registering bus object",
        "sd-bus: starting bus",
        "private connection",
        "Failed to send unit change signal",
    ]
    .iter()
    .any(|noise| line.contains(noise))
}

/// One line per load phase, then the read-back.
fn load_summary(report: &Value) -> String {
    let mut lines: Vec<String> = report["phases"]
        .as_array()
        .map(|phases| {
            phases
                .iter()
                .map(|phase| {
                    let latency = &phase["latency_ms"];
                    format!(
                        "  {:<20} sent {:>5} ok {:>5} failed {:>4} {} p50 {} ms p99 {} ms max {} ms{}",
                        phase["name"].as_str().unwrap_or(""),
                        phase["sent"],
                        phase["ok"],
                        phase["failed"],
                        phase["failures"],
                        latency["p50"],
                        latency["p99"],
                        latency["max"],
                        match phase["name"].as_str().unwrap_or("") {
                            "crash" => " (by design: the generation dies with the unit)",
                            "stop" => " (by design: nothing listens)",
                            _ => "",
                        }
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    lines.push(format!(
        "  read-back at {} req/s: {}",
        report["rate"], report["read_back"]
    ));
    lines.join("\n")
}
