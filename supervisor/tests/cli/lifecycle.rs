//! run, status, upgrade (commit, rollback, busy, pinned, a pinned symlink
//! swapped after the hash, a replaced build freed by the supervisor),
//! SIGHUP, restart after a crash, stop, a log that cannot be written.

use handoff::os::Sig;
use serde_json::Value;

use crate::common::{
    Start, Supervisor, TempDir, WAIT, alive, another_build, request, script, serving_pid,
    sha256_hex, testd, u64_of, wait_gone,
};

/// A supervisor whose config (written in `dir`) allows upgrades to `binary`.
fn allowing(dir: &TempDir, binary: &std::path::Path) -> Supervisor {
    let config = dir.path().join("handoff.toml");
    let toml = format!("allowed_binaries = [\"{}\"]\n", binary.display());
    std::fs::write(&config, toml).expect("config");
    let mut flags = Start::default().flags;
    flags.extend(["--config".to_owned(), config.display().to_string()]);
    Supervisor::start_with(Start {
        flags,
        ..Start::default()
    })
}

/// `status --json` of a supervisor started with the defaults on testd:
/// generation 1 serves, with no signal blocked (although the supervisor
/// blocks SIGTERM, SIGINT and SIGHUP for sigwait); its pid.
fn check_first_status(supervisor: &Supervisor) -> u32 {
    let status = supervisor.status();
    assert_eq!(status["state"], "serving");
    assert_eq!(status["generation"], 1);
    assert_eq!(
        u64_of(&status, "supervisor_pid"),
        u64::from(supervisor.pid())
    );
    assert_eq!(status["mode"], "exclusive");
    assert_eq!(status["binary"], testd().display().to_string());
    assert_eq!(status["binary_sha256"], sha256_hex(&testd()));
    assert_eq!(status["listeners"][0]["name"], "main");
    assert_eq!(status["last_handoff"]["committed"], true);
    let first_pid = u64_of(&status, "child_pid") as u32;
    let proc_status =
        std::fs::read_to_string(format!("/proc/{first_pid}/status")).expect("proc status");
    let blocked = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .expect("SigBlk")
        .trim();
    assert!(blocked.bytes().all(|b| b == b'0'), "SigBlk {blocked}");
    first_pid
}

#[test]
fn run_status_upgrade_stop() {
    let data = TempDir::new("data");
    let mut supervisor = Supervisor::start_with(Start {
        testd_args: vec!["--data-dir".into(), data.path().display().to_string()],
        ..Start::default()
    });
    let first_pid = check_first_status(&supervisor);
    let plain = supervisor.ctl("status", &[]);
    assert_eq!(plain.code, Some(0), "{plain:?}");
    assert!(plain.stdout.contains("serving"), "{}", plain.stdout);
    assert!(plain.stdout.lines().count() <= 8, "short: {}", plain.stdout);

    let addr = supervisor.addr();
    assert_eq!(serving_pid(addr), first_pid);
    assert!(request(addr, "PUT k v1").expect("PUT").starts_with("OK "));

    let upgraded = supervisor.ctl("upgrade", &["--json"]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    let report: Value = serde_json::from_str(&upgraded.stdout).expect("one JSON object");
    assert_eq!(report["committed"], true);
    assert_eq!(report["abort_reason"], Value::Null);
    assert_eq!(u64_of(&report, "old_pid"), u64::from(first_pid));
    assert_eq!(report["generation"], 2);
    let new_pid = u64_of(&report, "new_pid") as u32;
    for phase in [
        "request", "spawn", "hello", "drain", "seal", "begin", "commit",
    ] {
        assert!(
            report["phases_ms"][phase].is_number(),
            "{phase} in {report}"
        );
    }
    assert!(report["total_ms"].is_number());
    assert_eq!(serving_pid(addr), new_pid);
    assert_eq!(request(addr, "GET k").expect("GET"), "VALUE v1");
    wait_gone(first_pid);

    // Pinned: the right hash commits, a wrong one is refused up front.
    let hash = sha256_hex(&testd());
    let pinned = supervisor.ctl("upgrade", &["--sha256", &hash]);
    assert_eq!(pinned.code, Some(0), "{pinned:?}");
    assert!(pinned.stdout.starts_with("committed"), "{pinned:?}");
    let status = supervisor.status();
    assert_eq!(status["generation"], 3);
    assert_eq!(
        status["binary"],
        testd().display().to_string(),
        "not /proc/self/fd/N"
    );
    let wrong = supervisor.ctl("upgrade", &["--sha256", &"0".repeat(64)]);
    assert_eq!(wrong.code, Some(2), "{wrong:?}");
    assert!(wrong.one_error_line().contains("sha256"), "{wrong:?}");

    let last_pid = u64_of(&supervisor.status(), "child_pid") as u32;
    let stopped = supervisor.ctl("stop", &[]);
    assert_eq!(stopped.code, Some(0), "{stopped:?}");
    let exit = supervisor.wait_exit();
    assert_eq!(exit.code(), Some(0), "log:\n{}", supervisor.log());
    assert!(!alive(last_pid), "the generation outlived the supervisor");
    assert!(
        !supervisor.socket.exists(),
        "the admin socket file is removed"
    );
    let log = supervisor.log();
    assert!(
        log.contains("handoff phase"),
        "phase events are logged: {log}"
    );
}

#[test]
fn an_upgrade_to_a_binary_that_exits_rolls_back() {
    let dir = TempDir::new("rollback");
    let supervisor = allowing(&dir, std::path::Path::new("/bin/false"));
    let addr = supervisor.addr();
    let before = serving_pid(addr);

    let ran = supervisor.ctl("upgrade", &["--binary", "/bin/false"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let line = ran.one_error_line();
    assert!(line.contains("rolled back"), "{line}");
    // The exit or the closed control socket, whichever the supervisor saw
    // first.
    assert!(
        line.contains("rolled back: handoff 2: successor"),
        "the reason is given: {line}"
    );
    assert_eq!(serving_pid(addr), before, "the old generation still serves");

    let json = supervisor.ctl("upgrade", &["--binary", "/bin/false", "--json"]);
    assert_eq!(json.code, Some(1), "{json:?}");
    let report: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(report["committed"], false);
    assert!(report["abort_reason"].is_string());
    assert_eq!(u64_of(&report, "old_pid"), u64::from(before));

    // Neither configured nor allowed: refused before anything starts.
    let refused = supervisor.ctl("upgrade", &["--binary", "/bin/true"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.one_error_line().contains("allowed_binaries"));
    assert_eq!(supervisor.status()["last_handoff"]["committed"], false);
}

/// A supervisor upgrading, on a thread of its own, to a successor that
/// never says hello (the handoff waits for its deadline), with `flags`;
/// returned once the handoff is in flight.
fn upgrading_to_a_silent_successor(
    dir: &TempDir,
    flags: &[&str],
) -> (Supervisor, std::thread::JoinHandle<crate::common::Ran>) {
    let silent = script(dir.path(), "silent", "exec sleep 60");
    let supervisor = allowing(dir, &silent);
    let socket = supervisor.socket.display().to_string();
    let silent_path = silent.display().to_string();
    let mut args: Vec<String> = ["upgrade", "--socket", &socket, "--binary", &silent_path]
        .map(String::from)
        .to_vec();
    args.extend(flags.iter().map(|flag| flag.to_string()));
    let upgrade = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::common::ctl(&args)
    });
    supervisor.wait_status("a handoff in flight", |s| s["state"] == "handing_off");
    (supervisor, upgrade)
}

#[test]
fn a_second_concurrent_upgrade_is_busy() {
    let dir = TempDir::new("busy");
    let flags = ["--deadline", "3s", "--drain-timeout", "1s"];
    let (supervisor, first) = upgrading_to_a_silent_successor(&dir, &flags);
    let before = serving_pid(supervisor.addr());
    let second = supervisor.ctl("upgrade", &[]);
    assert_eq!(second.code, Some(3), "{second:?}");
    assert!(second.one_error_line().contains("in flight"));
    let first = first.join().expect("first upgrade");
    assert_eq!(
        first.code,
        Some(1),
        "the silent successor rolls back: {first:?}"
    );
    assert!(first.one_error_line().contains("deadline"), "{first:?}");
    assert_eq!(serving_pid(supervisor.addr()), before);
}

/// A stop while an upgrade waits for its successor cancels the upgrade:
/// its client hears "cancelled" (exit 1), not that the old generation
/// still serves, and the history keeps the cancelled handoff.
#[test]
fn a_stop_during_an_upgrade_cancels_it_and_says_so() {
    let dir = TempDir::new("cancel");
    let flags = ["--deadline", "30s", "--json"];
    let (mut supervisor, upgrade) = upgrading_to_a_silent_successor(&dir, &flags);
    let history_file = supervisor.socket.with_extension("history.json");
    let stop = supervisor.ctl("stop", &[]);
    assert_eq!(stop.code, Some(0), "{stop:?}");
    supervisor.wait_exit();
    let upgrade = upgrade.join().expect("the upgrade client");
    assert_eq!(upgrade.code, Some(1), "{upgrade:?}");
    let report: serde_json::Value = serde_json::from_str(&upgrade.stdout).expect("JSON");
    assert_eq!(report["cancelled"], true, "{report}");
    assert_eq!(report["committed"], false, "{report}");
    let msg = report["msg"].as_str().expect("msg");
    assert!(msg.starts_with("cancelled: "), "{msg}");
    assert!(!msg.contains("still serving"), "{msg}");
    let history: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&history_file).expect("the history file"))
            .expect("JSON");
    let last = history["entries"]
        .as_array()
        .and_then(|e| e.last())
        .cloned();
    assert_eq!(
        last.as_ref().map(|entry| entry["cancelled"].clone()),
        Some(serde_json::Value::Bool(true)),
        "{history}"
    );
}

/// A unix listener's socket file, bound by the supervisor, stays across
/// upgrades and re-execs and is removed by a clean stop.
#[test]
fn a_stop_removes_the_unix_socket_files_the_supervisor_bound() {
    let dir = TempDir::new("unix-file");
    let path = dir.path().join("side.sock");
    let mut flags = Start::default().flags;
    let side = format!("side=unix:{}", path.display());
    flags.extend(["--listen".to_owned(), side]);
    flags.extend(["--allow-supervisor-binary".to_owned()]);
    flags.push(crate::common::handoffctl().display().to_string());
    let mut supervisor = Supervisor::start_with(Start {
        flags,
        testd_args: vec!["--unix-name".into(), "side".into()],
        ..Start::default()
    });
    supervisor.wait_serving();
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).expect("stat"));
    let bound = inode();
    let upgrade = supervisor.ctl("upgrade", &[]);
    assert_eq!(upgrade.code, Some(0), "{upgrade:?}");
    let reexec = supervisor.ctl("reexec", &[]);
    assert_eq!(reexec.code, Some(0), "{reexec:?}");
    assert_eq!(inode(), bound, "the same socket across both");
    let stop = supervisor.ctl("stop", &[]);
    assert_eq!(stop.code, Some(0), "{stop:?}");
    supervisor.wait_exit();
    assert!(!path.exists(), "the socket file is removed at the stop");
}

#[test]
fn sighup_upgrades_and_sigterm_stops() {
    let mut supervisor = Supervisor::start();
    let before = u64_of(&supervisor.status(), "child_pid");
    supervisor.signal(Sig::Hup);
    let after = supervisor.wait_status("generation 2", |s| s["generation"] == 2);
    assert_ne!(u64_of(&after, "child_pid"), before);
    assert_eq!(after["last_handoff"]["committed"], true);
    wait_gone(before as u32);

    let live = u64_of(&after, "child_pid") as u32;
    supervisor.signal(Sig::Term);
    let exit = supervisor.wait_exit();
    assert_eq!(exit.code(), Some(0), "log:\n{}", supervisor.log());
    assert!(!alive(live), "the generation outlived the supervisor");
    // A normal upgrade and stop warn about nothing.
    let log = supervisor.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

#[test]
fn a_crashed_generation_is_restarted() {
    let supervisor = Supervisor::start();
    let addr = supervisor.addr();
    let crashed = serving_pid(addr);
    handoff::os::signal(crashed, Sig::Kill).expect("kill the generation");
    // Connections made meanwhile wait in the backlog: this one is answered
    // by the restarted generation.
    let pid = serving_pid(addr);
    assert_ne!(pid, crashed);
    let status = supervisor.wait_serving();
    assert_eq!(u64_of(&status, "child_pid"), u64::from(pid));
    assert!(u64_of(&status, "generation") >= 2);
    // Logged by the event thread, which may run a little behind status.
    supervisor.wait_log("generation exited outside a handoff", 0);
}

/// Log lines that cannot be written (standard error on a full disk, or a
/// pipe whose reader is gone) are lost, not the supervisor: it restarts a
/// crashed generation, upgrades, answers, and stops with exit 0.
#[test]
fn a_supervisor_whose_log_cannot_be_written_goes_on() {
    for sink in ["/dev/full", "a pipe without a reader"] {
        let supervisor = Supervisor::start_with(Start {
            wrap: Some(Box::new(move |mut command: std::process::Command| {
                if sink == "/dev/full" {
                    let full = std::fs::OpenOptions::new().write(true).open(sink);
                    command.stderr(full.expect("open /dev/full"));
                } else {
                    let (reader, writer) = std::io::pipe().expect("pipe");
                    drop(reader);
                    command.stderr(writer);
                }
                command
            })),
            ..Start::default()
        });
        let addr = supervisor.addr();
        let crashed = serving_pid(addr);
        handoff::os::signal(crashed, Sig::Kill).expect("kill the generation");
        let restarted = serving_pid(addr);
        assert_ne!(restarted, crashed, "{sink}: restarted");
        let upgraded = supervisor.ctl("upgrade", &[]);
        assert_eq!(upgraded.code, Some(0), "{sink}: {upgraded:?}");
        assert_ne!(serving_pid(addr), restarted, "{sink}: upgraded");
        let stopped = supervisor.ctl("stop", &[]);
        assert_eq!(stopped.code, Some(0), "{sink}: {stopped:?}");
        let mut supervisor = supervisor;
        assert_eq!(supervisor.wait_exit().code(), Some(0), "{sink}");
    }
}

#[test]
fn under_restart_never_the_supervisor_exits_with_its_generation() {
    let mut flags = Start::default().flags;
    flags.extend(["--restart", "never", "--log-format", "json"].map(String::from));
    let mut supervisor = Supervisor::start_with(Start {
        flags,
        ..Start::default()
    });
    let pid = u64_of(&supervisor.status(), "child_pid") as u32;
    handoff::os::signal(pid, Sig::Kill).expect("kill the generation");
    let exit = supervisor.wait_exit();
    assert_eq!(exit.code(), Some(1), "a killed generation is a failure");
    let log = supervisor.log();
    let first = log.lines().next().expect("a log line");
    let event: Value = serde_json::from_str(first).expect("--log-format json logs JSON lines");
    assert!(event["fields"]["message"].is_string(), "{event}");
    assert!(!supervisor.socket.exists());
}

/// Children of `parent` (from /proc; zombies included, they are reaped soon).
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// The fd numbers `pid` has open on `path` right now.
fn open_fds(pid: u32, path: &std::path::Path) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
        .filter_map(|fd| fd.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether `pid` has an fd open on `path` right now.
fn has_open(pid: u32, path: &std::path::Path) -> bool {
    !open_fds(pid, path).is_empty()
}

/// A deploy renames a new build over the running one; the old file is freed
/// when its last holder closes it. The supervisor holds each generation's
/// executable, so the old generation's exit does not free it (on a
/// journaling filesystem that work stalls the daemons' `fsync`s while a
/// handoff ends); the supervisor closes it once the generation is gone
/// and nothing is under way.
#[test]
fn a_replaced_build_is_freed_by_the_supervisor_after_its_generation_is_gone() {
    let dir = TempDir::new("images");
    let deployed = dir.path().join("daemon");
    another_build(&testd(), &deployed, "one");
    let supervisor = Supervisor::start_with(Start {
        program: Some(deployed.clone()),
        env: vec![(
            "HANDOFF_LOG".into(),
            "info,handoff::supervisor::driver=debug".into(),
        )],
        ..Start::default()
    });
    let old = u64_of(&supervisor.status(), "child_pid") as u32;
    let staged = dir.path().join("daemon.new");
    another_build(&testd(), &staged, "two");
    std::fs::rename(&staged, &deployed).expect("deploy the new build");
    let upgraded = supervisor.ctl("upgrade", &[]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    let replaced = std::path::PathBuf::from(format!("{} (deleted)", deployed.display()));
    let deadline = std::time::Instant::now() + WAIT;
    while has_open(supervisor.pid(), &replaced) {
        assert!(
            std::time::Instant::now() < deadline,
            "the supervisor never released the replaced build; log:\n{}",
            supervisor.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Released only after the old generation's exit was seen: the order
    // of the supervisor's own lines, whatever the machine's speed.
    let log = supervisor.log();
    let lines: Vec<&str> = log.lines().collect();
    let gone = lines.iter().position(|line| {
        line.contains("old generation gone") && line.contains(&format!(" pid={old} "))
    });
    let released = lines
        .iter()
        .position(|line| line.contains("released gone generations' executables"));
    assert!(
        matches!((gone, released), (Some(g), Some(r)) if g < r),
        "the old generation (pid {old}) is seen gone before its build is released; log:\n{log}"
    );
    let now_running = u64_of(&supervisor.status(), "child_pid") as u32;
    assert!(
        has_open(supervisor.pid(), &deployed),
        "the serving generation's build (pid {now_running}) stays held"
    );
}

/// `upgrade --binary LINK --sha256 H` where LINK is a symlink to testd,
/// swapped to `/bin/false` while the supervisor hashes what LINK named: the
/// successor runs testd (it answers INFO, the upgrade commits, its
/// `/proc/PID/exe` is testd), and a second upgrade through the swapped link
/// with the same hash is refused.
///
/// What this proves: the supervisor hashes an open file and executes that
/// file (`/proc/self/fd/N`), not the path, so a swap after the check cannot
/// change what runs; and every upgrade hashes the path afresh. The swap is
/// made once the supervisor has testd open (the hash of a debug testd takes
/// a while) and, checked right after, before it has forked the successor, so
/// the successor's exec comes after the swap. What it does not prove: that
/// no other window exists inside the supervisor between its check and its
/// exec (it cannot be reached from outside; `Pinned` in admin.rs is that
/// argument), nor anything about restarts after a crash, which go by path.
#[test]
fn a_symlink_swapped_after_the_hash_does_not_change_what_runs() {
    let dir = TempDir::new("swap");
    let link = dir.path().join("daemon");
    std::os::unix::fs::symlink(testd(), &link).expect("symlink to testd");
    let supervisor = allowing(&dir, &link);
    let incumbent = u64_of(&supervisor.status(), "child_pid") as u32;
    let hash = sha256_hex(&testd());
    let testd_path = std::fs::canonicalize(testd()).expect("testd path");

    let socket = supervisor.socket.display().to_string();
    let link_arg = link.display().to_string();
    let upgrade = {
        let (socket, link_arg, hash) = (socket.clone(), link_arg.clone(), hash.clone());
        std::thread::spawn(move || {
            crate::common::ctl(&[
                "upgrade", "--socket", &socket, "--binary", &link_arg, "--sha256", &hash, "--json",
            ])
        })
    };
    // The supervisor pins the file (an fd at PIN_FD_FLOOR or above; it holds
    // the serving generation's image below) to hash it; swap the link then.
    let pinned = |fds: Vec<i32>| fds.iter().any(|&fd| fd >= handoff::os::PIN_FD_FLOOR);
    let deadline = std::time::Instant::now() + crate::common::WAIT;
    while !pinned(open_fds(supervisor.pid(), &testd_path)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the supervisor never opened testd to hash it; log:\n{}",
            supervisor.log()
        );
        std::thread::yield_now();
    }
    let swapped = dir.path().join("daemon.new");
    std::os::unix::fs::symlink("/bin/false", &swapped).expect("symlink to /bin/false");
    std::fs::rename(&swapped, &link).expect("swap the link");
    assert_eq!(
        children_of(supervisor.pid()),
        [incumbent],
        "the swap came before the successor was forked (else this test proves less)"
    );

    let upgraded = upgrade.join().expect("upgrade thread");
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    let report: Value = serde_json::from_str(&upgraded.stdout).expect("one JSON object");
    assert_eq!(report["committed"], true, "{report}");
    let successor = u64_of(&report, "new_pid") as u32;
    let addr = supervisor.addr();
    let info = request(addr, "INFO").expect("INFO");
    assert!(
        info.contains(&format!("pid={successor} ")) && info.contains("build=testd"),
        "the successor is testd: {info}"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{successor}/exe")).expect("exe"),
        testd_path
    );
    let status = supervisor.status();
    assert_eq!(status["binary_sha256"], hash, "{status}");

    let refused = supervisor.ctl("upgrade", &["--binary", &link_arg, "--sha256", &hash]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.one_error_line().contains("sha256"),
        "refused for the hash: {refused:?}"
    );
    assert_eq!(serving_pid(addr), successor, "the successor still serves");
}

#[test]
fn a_restart_runs_a_pinned_binary_only_while_its_file_keeps_the_pinned_sha256() {
    let dir = TempDir::new("repin");
    let pinned = dir.path().join("daemon");
    std::fs::copy(testd(), &pinned).expect("copy testd");
    let hash = sha256_hex(&pinned);
    let supervisor = allowing(&dir, &pinned);
    let pinned_arg = pinned.display().to_string();
    let upgraded = supervisor.ctl("upgrade", &["--binary", &pinned_arg, "--sha256", &hash]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    let running = u64_of(&supervisor.status(), "child_pid") as u32;

    // The file changes under its path: a copy of testd with one more byte
    // (still a valid executable, so only the hash can stop it), renamed
    // over the pinned path as a deploy tool would.
    let other = dir.path().join("daemon.other");
    let mut bytes = std::fs::read(testd()).expect("read testd");
    bytes.push(0);
    std::fs::write(&other, &bytes).expect("write the other binary");
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let other_hash = sha256_hex(&other);
    std::fs::rename(&other, &pinned).expect("replace the pinned file");

    let mark = supervisor.log().len();
    handoff::os::signal(running, Sig::Kill).expect("kill the generation");
    let after = supervisor.wait_log("restart refused or failed", mark);
    let log = supervisor.log();
    assert!(
        log[mark..after + 300.min(log.len() - after)].contains(&other_hash),
        "the refusal names the file's sha256; log:\n{log}"
    );
    let status = supervisor.status();
    assert!(
        status["child_pid"].is_null() || u64_of(&status, "child_pid") as u32 == running,
        "nothing else was started: {status}"
    );

    // The original contents back under the path: the next restart, after
    // the backoff, runs it.
    let restored = dir.path().join("daemon.restored");
    std::fs::copy(testd(), &restored).expect("copy testd");
    std::fs::rename(&restored, &pinned).expect("restore the pinned file");
    let status = supervisor.wait_status("a restarted generation", |s| {
        s["state"] == "serving"
            && s["child_pid"]
                .as_u64()
                .is_some_and(|pid| pid != u64::from(running))
    });
    assert_eq!(status["binary_sha256"], hash, "{status}");
    assert_eq!(
        status["binary"], pinned_arg,
        "status names the path, not the pinned fd"
    );
    let pid = u64_of(&status, "child_pid") as u32;
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe"),
        pinned,
        "the restart runs the pinned path's file"
    );
}

#[test]
fn a_config_sha256_pins_generation_1() {
    let dir = TempDir::new("pin1");
    let binary = dir.path().join("daemon");
    std::fs::copy(testd(), &binary).expect("copy testd");
    let hash = sha256_hex(&binary);
    let config = dir.path().join("handoff.toml");
    std::fs::write(&config, format!("sha256 = \"{hash}\"\n")).expect("config");
    let mut flags = Start::default().flags;
    flags.extend(["--config".to_owned(), config.display().to_string()]);
    let supervisor = Supervisor::start_with(Start {
        flags,
        program: Some(binary.clone()),
        ..Start::default()
    });
    let status = supervisor.wait_serving();
    assert_eq!(status["binary"], binary.display().to_string(), "{status}");
    assert_eq!(status["binary_sha256"], hash, "{status}");
    // Started from the pinned open file: the child's exe is the file the
    // supervisor hashed, reached through its path.
    let pid = u64_of(&status, "child_pid") as u32;
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe"),
        binary
    );
}

#[test]
fn an_upgrade_deadline_bounds_the_default_drain_timeout() {
    // Neither flag at `run`: the drain timeout is the default (60 s), longer
    // than the deadline the upgrade asks for, as in an `ExecReload=` drop-in.
    let supervisor = Supervisor::start_with(Start {
        flags: vec!["--listen".into(), "main=127.0.0.1:0".into()],
        ..Start::default()
    });
    let ran = supervisor.ctl("upgrade", &["--deadline", "3s"]);
    assert_eq!(ran.code, Some(0), "the drain timeout follows down: {ran:?}");
    assert_eq!(supervisor.status()["generation"], 2);

    // Both given and in conflict: refused in the flags' own words.
    let conflict = supervisor.ctl("upgrade", &["--deadline", "3s", "--drain-timeout", "10s"]);
    assert_eq!(conflict.code, Some(2), "{conflict:?}");
    let line = conflict.one_error_line();
    assert!(
        line.contains("--drain-timeout 10s") && line.contains("--deadline 3s"),
        "{line}"
    );
    // Only a drain timeout, longer than the configured deadline (5 min).
    let long = supervisor.ctl("upgrade", &["--drain-timeout", "10m"]);
    assert_eq!(long.code, Some(2), "{long:?}");
    assert!(
        long.one_error_line().contains("the configured deadline 5m"),
        "{long:?}"
    );
    // A zero bound: refused as a usage error naming the flag.
    for flag in ["--deadline", "--drain-timeout"] {
        let zero = supervisor.ctl("upgrade", &[flag, "0s"]);
        assert_eq!(zero.code, Some(2), "{zero:?}");
        let line = zero.one_error_line();
        assert!(line.contains(&format!("{flag} 0s")), "{line}");
    }
    assert_eq!(supervisor.status()["generation"], 2, "nothing started");
}

#[test]
fn the_data_directory_reaches_the_daemon_through_handoff_data_dir() {
    let data = TempDir::new("assigned");
    let dir = data.path().join("state");
    // testd gets no --data-dir: begin(None) takes HANDOFF_DATA_DIR.
    let mut flags = Start::default().flags;
    flags.extend(["--data-dir".to_owned(), dir.display().to_string()]);
    let supervisor = Supervisor::start_with(Start {
        flags,
        ..Start::default()
    });
    let addr = supervisor.addr();
    assert!(request(addr, "PUT k v").expect("PUT").starts_with("OK "));
    assert!(
        dir.join("testd.log").is_file(),
        "the state lives in the assigned directory"
    );
    assert!(dir.join(".handoff.lock").is_file(), "and it is locked");
    assert_eq!(supervisor.ctl("upgrade", &[]).code, Some(0));
    assert_eq!(request(addr, "GET k").expect("GET"), "VALUE v");
}

#[test]
fn ready_off_the_main_thread_fails_the_handoff_instead_of_committing() {
    let dir = TempDir::new("off-main");
    let wrong = script(
        dir.path(),
        "ready-on-thread",
        &format!("exec {} --ready-on-thread \"$@\"", testd().display()),
    );
    let supervisor = allowing(&dir, &wrong);
    let before = serving_pid(supervisor.addr());
    let ran = supervisor.ctl("upgrade", &["--binary", wrong.to_str().expect("utf-8")]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let line = ran.one_error_line();
    assert!(line.contains("main thread"), "{line}");
    assert_eq!(serving_pid(supervisor.addr()), before);
}

#[test]
fn under_restart_never_a_generation_1_that_never_serves_is_a_failed_exit() {
    // testd asks for a listener named "main"; the supervisor offers "http".
    let mut supervisor = Supervisor::spawn(Start {
        flags: ["--listen", "http=127.0.0.1:0", "--restart", "never"]
            .map(String::from)
            .to_vec(),
        ..Start::default()
    });
    let exit = supervisor.wait_exit();
    assert_eq!(exit.code(), Some(1), "log:\n{}", supervisor.log());
}

#[test]
fn every_json_answer_is_json_busy_and_refusals_included() {
    let dir = TempDir::new("json");
    // A successor that never says hello keeps the first upgrade in flight.
    let silent = script(dir.path(), "silent", "exec sleep 60");
    let supervisor = allowing(&dir, &silent);
    let socket = supervisor.socket.clone();
    let silent_path = silent.display().to_string();
    let first = std::thread::spawn(move || {
        crate::common::ctl(&[
            "upgrade",
            "--socket",
            socket.to_str().expect("utf-8"),
            "--binary",
            &silent_path,
            "--deadline",
            "2s",
            "--drain-timeout",
            "1s",
        ])
    });
    supervisor.wait_status("a handoff in flight", |s| s["state"] == "handing_off");
    let busy = supervisor.ctl("upgrade", &["--json"]);
    assert_eq!(busy.code, Some(3), "{busy:?}");
    let answer: Value = serde_json::from_str(&busy.stdout).expect("JSON at exit 3");
    assert_eq!(answer["kind"], "busy");
    assert_eq!(answer["exit"], 3);
    assert_eq!(first.join().expect("first upgrade").code, Some(1));

    let refused = supervisor.ctl("upgrade", &["--binary", "/bin/true", "--json"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    let answer: Value = serde_json::from_str(&refused.stdout).expect("JSON at exit 2");
    assert_eq!(answer["kind"], "rejected");
    assert!(
        answer["message"]
            .as_str()
            .expect("message")
            .contains("allowed_binaries")
    );

    let nobody = crate::common::ctl(&["status", "--socket", "/nonexistent/handoff.sock", "--json"]);
    assert_eq!(nobody.code, Some(2), "{nobody:?}");
    let answer: Value = serde_json::from_str(&nobody.stdout).expect("JSON without a supervisor");
    assert!(
        answer["message"]
            .as_str()
            .expect("message")
            .contains("no supervisor")
    );
}
