//! The per-host step of a rolling upgrade, as a fleet engine runs it:
//! `upgrade --if-changed` (idempotence), `upgrade --check` (a dry run that
//! meets every refusal the upgrade would, and changes nothing), Ansible's
//! `changed`/`failed`/`msg` in every `--json` answer, and `wait` (the gate
//! between batches: served for a while, no restart, no rollback).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use handoff::os::Sig;
use serde_json::Value;

use crate::common::{
    Ran, Start, Supervisor, TempDir, another_build, ctl, script, serving_pid, sha256_hex, testd,
    u64_of, wait_gone,
};

/// Another build of testd, with a sha256 of its own.
fn build(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    another_build(&testd(), &path, name);
    path
}

/// testd, allowed to upgrade to `others`, with `extra` flags.
fn supervise(others: &[&Path], extra: &[&str]) -> Supervisor {
    let mut flags = Start::default().flags;
    for other in others {
        flags.extend(["--allow-binary".to_owned(), other.display().to_string()]);
    }
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    Supervisor::start_with(Start {
        flags,
        ..Start::default()
    })
}

/// The one JSON object a `--json` run printed.
fn json(ran: &Ran) -> Value {
    serde_json::from_str(ran.stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {ran:?}"))
}

/// Ansible's three fields.
fn verdict(answer: &Value) -> (bool, bool, String) {
    (
        answer["changed"].as_bool().expect("changed"),
        answer["failed"].as_bool().expect("failed"),
        answer["msg"].as_str().expect("msg").to_owned(),
    )
}

/// `wait --json --serving-for SERVING_FOR [--sha256 SHA] --timeout TIMEOUT`
/// and its answer.
fn wait_json(
    supervisor: &Supervisor,
    serving_for: &str,
    sha256: Option<&str>,
    timeout: &str,
) -> (Ran, Value) {
    let mut args = vec!["--serving-for", serving_for, "--timeout", timeout, "--json"];
    if let Some(sha256) = sha256 {
        args.extend(["--sha256", sha256]);
    }
    let ran = supervisor.ctl("wait", &args);
    let answer = json(&ran);
    (ran, answer)
}

/// `wait ARGS` on a thread of its own, for a test that acts meanwhile.
fn wait_in_background(supervisor: &Supervisor, args: &[&str]) -> std::thread::JoinHandle<Ran> {
    let socket = supervisor.socket.display().to_string();
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    std::thread::spawn(move || {
        let mut all = vec!["wait", "--socket", &socket];
        all.extend(args.iter().map(String::as_str));
        ctl(&all)
    })
}

#[test]
fn an_upgrade_if_changed_does_nothing_when_the_build_already_serves() {
    let dir = TempDir::new("if-changed");
    let next = build(dir.path(), "testd-next");
    let supervisor = supervise(&[&next], &[]);
    let addr = supervisor.addr();
    let first = serving_pid(addr);
    let testd_sha = sha256_hex(&testd());

    let unchanged = supervisor.ctl("upgrade", &["--if-changed", "--json"]);
    assert_eq!(unchanged.code, Some(0), "{unchanged:?}");
    let answer = json(&unchanged);
    let (changed, failed, msg) = verdict(&answer);
    assert!(!changed && !failed, "{answer}");
    assert!(msg.starts_with("unchanged: generation 1"), "{msg}");
    assert_eq!(answer["action"], "none");
    assert_eq!(answer["check"], false);
    assert_eq!(answer["current"]["sha256"], testd_sha.as_str());
    assert_eq!(answer["target"]["sha256"], testd_sha.as_str());
    assert_eq!(serving_pid(addr), first, "nothing was replaced");
    let status = supervisor.status();
    assert_eq!(u64_of(&status, "generation"), 1);
    assert_eq!(
        status["last_handoff"]["handoff_id"], 1,
        "no handoff: {status}"
    );
    // Pinned, in text: the same.
    let pinned = supervisor.ctl("upgrade", &["--if-changed", "--sha256", &testd_sha]);
    assert_eq!(pinned.code, Some(0), "{pinned:?}");
    assert!(pinned.stdout.starts_with("unchanged:"), "{pinned:?}");

    // Without the flag, the same build still replaces the generation (a
    // configuration reload).
    let reload = supervisor.ctl("upgrade", &["--json"]);
    assert_eq!(reload.code, Some(0), "{reload:?}");
    let answer = json(&reload);
    let (changed, failed, msg) = verdict(&answer);
    assert!(changed && !failed, "{answer}");
    assert!(msg.starts_with("committed: handoff 2"), "{msg}");
    assert_eq!(answer["committed"], true);
    assert_ne!(serving_pid(addr), first);

    // Another build: changed, then unchanged.
    let next_sha = sha256_hex(&next);
    let next_arg = next.display().to_string();
    let args = [
        "--binary",
        &next_arg,
        "--sha256",
        &next_sha,
        "--if-changed",
        "--json",
    ];
    let upgraded = supervisor.ctl("upgrade", &args);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    assert!(verdict(&json(&upgraded)).0);
    let status = supervisor.status();
    assert_eq!(status["binary_sha256"], next_sha.as_str());
    let again = supervisor.ctl("upgrade", &args);
    assert_eq!(again.code, Some(0), "{again:?}");
    let answer = json(&again);
    assert!(!verdict(&answer).0, "{answer}");
    assert_eq!(
        u64_of(&supervisor.status(), "generation"),
        u64_of(&status, "generation")
    );
    // The other build, as it served before: changed again.
    let back = supervisor.ctl("upgrade", &["--if-changed", "--json"]);
    assert_eq!(back.code, Some(0), "{back:?}");
    assert!(verdict(&json(&back)).0);
    assert_eq!(supervisor.status()["binary_sha256"], testd_sha.as_str());
}

/// The check's setup: builds allowed beside `testd` (another build, one
/// not executable, one that never begins), under a supervisor.
struct CheckSetup {
    next: PathBuf,
    plain: PathBuf,
    silent: PathBuf,
    supervisor: Supervisor,
    _dir: TempDir,
}

fn check_setup() -> CheckSetup {
    let dir = TempDir::new("check");
    let next = build(dir.path(), "testd-next");
    let plain = dir.path().join("not-executable");
    std::fs::copy(testd(), &plain).expect("copy");
    let silent = script(dir.path(), "silent", "exec sleep 60");
    let supervisor = supervise(&[&next, &plain, &silent], &[]);
    CheckSetup {
        next,
        plain,
        silent,
        supervisor,
        _dir: dir,
    }
}

/// Nothing changed: the first generation serves, no handoff was tried.
fn check_untouched(supervisor: &Supervisor, first: u32) {
    assert_eq!(serving_pid(supervisor.addr()), first);
    let status = supervisor.status();
    assert_eq!(u64_of(&status, "generation"), 1);
    assert_eq!(status["last_handoff"]["handoff_id"], 1, "{status}");
    let history = supervisor.ctl("history", &["--json"]);
    let entries: Value = serde_json::from_str(&history.stdout).expect("history");
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{entries}");
}

#[test]
fn a_check_says_what_the_upgrade_would_do_and_changes_nothing() {
    let setup = check_setup();
    let (supervisor, next) = (&setup.supervisor, &setup.next);
    let first = serving_pid(supervisor.addr());
    let next_sha = sha256_hex(next);
    let next_arg = next.display().to_string();
    let check = supervisor.ctl(
        "upgrade",
        &[
            "--check", "--binary", &next_arg, "--sha256", &next_sha, "--json",
        ],
    );
    assert_eq!(check.code, Some(0), "{check:?}");
    let answer = json(&check);
    let (changed, failed, msg) = verdict(&answer);
    assert!(
        changed && !failed,
        "a dry run says what would change: {answer}"
    );
    assert!(
        msg.starts_with("check: would replace generation 1"),
        "{msg}"
    );
    assert_eq!(answer["action"], "upgrade");
    assert_eq!(answer["check"], true);
    assert_eq!(answer["sha256_verified"], true);
    assert_eq!(answer["target"]["sha256"], next_sha.as_str());
    assert_eq!(u64_of(&answer, "deadline_ms"), 20_000);
    assert_eq!(u64_of(&answer, "drain_timeout_ms"), 5_000);
    // The text form, unpinned: the target is hashed all the same.
    let text = supervisor.ctl("upgrade", &["--check", "--binary", &next_arg]);
    assert_eq!(text.code, Some(0), "{text:?}");
    assert!(
        text.stdout.contains(&next_sha[..12]) && text.stdout.starts_with("check: would replace"),
        "{text:?}"
    );
    // With --if-changed, against the build that serves: nothing to do.
    let same = supervisor.ctl("upgrade", &["--check", "--if-changed", "--json"]);
    assert_eq!(same.code, Some(0), "{same:?}");
    let answer = json(&same);
    assert_eq!(answer["action"], "none");
    assert!(!verdict(&answer).0);
    check_untouched(supervisor, first);
}

#[test]
fn a_check_refuses_what_the_upgrade_would() {
    let setup = check_setup();
    let (supervisor, next, plain) = (&setup.supervisor, &setup.next, &setup.plain);
    let first = serving_pid(supervisor.addr());
    let next_arg = next.display().to_string();
    // Refusals, as the real upgrade's: exit 2, one JSON object.
    let wrong = "0".repeat(64);
    let refusals: [(&str, Vec<&str>, &str); 4] = [
        (
            "sha256 mismatch",
            vec!["--binary", &next_arg, "--sha256", &wrong],
            "sha256",
        ),
        (
            "not allowed",
            vec!["--binary", "/bin/true"],
            "allowed_binaries",
        ),
        (
            "not executable",
            vec!["--binary", plain.to_str().expect("utf-8")],
            "not executable",
        ),
        (
            "missing",
            vec!["--binary", "/nonexistent/d"],
            "/nonexistent/d",
        ),
    ];
    std::fs::set_permissions(plain, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    for (what, args, said) in &refusals {
        let mut args = args.clone();
        args.extend(["--check", "--json"]);
        let ran = supervisor.ctl("upgrade", &args);
        assert_eq!(ran.code, Some(2), "{what}: {ran:?}");
        let answer = json(&ran);
        let (changed, failed, msg) = verdict(&answer);
        assert!(!changed && failed, "{what}: {answer}");
        assert!(msg.contains(said), "{what}: {msg}");
    }
    // A malformed sha256 never reaches the supervisor.
    let malformed = supervisor.ctl("upgrade", &["--check", "--sha256", "xyz", "--json"]);
    assert_eq!(malformed.code, Some(2), "{malformed:?}");
    assert!(verdict(&json(&malformed)).2.contains("64 hexadecimal"));
    check_untouched(supervisor, first);
}

#[test]
fn a_check_against_a_busy_supervisor_exits_3_as_the_upgrade() {
    let setup = check_setup();
    let (supervisor, silent) = (&setup.supervisor, &setup.silent);
    let first = serving_pid(supervisor.addr());
    let socket = supervisor.socket.clone();
    let silent_arg = silent.display().to_string();
    let in_flight = std::thread::spawn(move || {
        ctl(&[
            "upgrade",
            "--socket",
            socket.to_str().expect("utf-8"),
            "--binary",
            &silent_arg,
            "--deadline",
            "3s",
            "--drain-timeout",
            "1s",
        ])
    });
    supervisor.wait_status("a handoff in flight", |s| s["state"] == "handing_off");
    let busy = supervisor.ctl("upgrade", &["--check", "--json"]);
    assert_eq!(busy.code, Some(3), "{busy:?}");
    let answer = json(&busy);
    assert_eq!(answer["kind"], "busy");
    let (changed, failed, msg) = verdict(&answer);
    assert!(!changed && failed && msg.contains("in flight"), "{answer}");
    assert_eq!(in_flight.join().expect("upgrade").code, Some(1));
    assert_eq!(serving_pid(supervisor.addr()), first);
}

#[test]
fn every_handoff_answer_says_changed_failed_and_msg() {
    let dir = TempDir::new("verdict");
    let next = build(dir.path(), "testd-next");
    let supervisor = supervise(&[&next, Path::new("/bin/false")], &[]);
    let addr = supervisor.addr();

    let next_arg = next.display().to_string();
    let upgraded = supervisor.ctl("upgrade", &["--binary", &next_arg, "--json"]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    let answer = json(&upgraded);
    assert!(verdict(&answer).0);
    assert!(!verdict(&answer).1);
    assert_eq!(answer["committed"], true);
    assert_eq!(answer["serving"], true);
    assert!(answer["total_ms"].is_number() && answer["phases_ms"].is_object());

    // Rolled back, the old generation serves: failed, not changed, exit 1.
    let serving = serving_pid(addr);
    let rolled_back = supervisor.ctl("upgrade", &["--binary", "/bin/false", "--json"]);
    assert_eq!(rolled_back.code, Some(1), "{rolled_back:?}");
    let answer = json(&rolled_back);
    let (changed, failed, msg) = verdict(&answer);
    assert!(!changed && failed, "{answer}");
    assert!(msg.contains("still serving"), "{msg}");
    assert_eq!(answer["serving"], true);
    assert_eq!(serving_pid(addr), serving);

    // `rollback`: back to testd, committed.
    let rollback = supervisor.ctl("rollback", &["--json"]);
    assert_eq!(rollback.code, Some(0), "{rollback:?}");
    let answer = json(&rollback);
    let (changed, failed, msg) = verdict(&answer);
    assert!(
        changed && !failed && msg.starts_with("committed"),
        "{answer}"
    );
    assert_eq!(
        supervisor.status()["binary_sha256"],
        sha256_hex(&testd()).as_str()
    );
}

#[test]
fn wait_passes_once_the_build_has_served_for_the_duration() {
    let dir = TempDir::new("wait");
    let next = build(dir.path(), "testd-next");
    let supervisor = supervise(&[&next], &[]);
    let next_sha = sha256_hex(&next);
    let testd_sha = sha256_hex(&testd());

    let (served, answer) = wait_json(&supervisor, "300ms", None, "20s");
    assert_eq!(served.code, Some(0), "{served:?}");
    let (changed, failed, msg) = verdict(&answer);
    assert!(!changed && !failed, "{answer}");
    assert!(msg.starts_with("generation 1 "), "{msg}");
    assert_eq!(answer["served"], true);
    assert!(
        answer["reason"].is_null(),
        "passed: no reason left {answer}"
    );
    assert!(u64_of(&answer, "serving_for_ms") >= 300, "{answer}");
    assert_eq!(answer["sha256"], testd_sha.as_str());

    // The gate after an upgrade: it passes no sooner than the duration
    // after the commit, on the new build.
    let next_arg = next.display().to_string();
    let upgraded = supervisor.ctl("upgrade", &["--binary", &next_arg, "--sha256", &next_sha]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    let committed = Instant::now();
    let gate = supervisor.ctl(
        "wait",
        &[
            "--serving-for",
            "1s",
            "--sha256",
            &next_sha,
            "--timeout",
            "20s",
        ],
    );
    assert_eq!(gate.code, Some(0), "{gate:?}");
    assert!(
        committed.elapsed() >= Duration::from_millis(900),
        "passed after {:?}",
        committed.elapsed()
    );
    assert!(gate.stdout.starts_with("generation 2 "), "{gate:?}");

    // A wait that times out: exit 1 and the reason.
    let started = Instant::now();
    let long = supervisor.ctl("wait", &["--serving-for", "1h", "--timeout", "500ms"]);
    assert_eq!(long.code, Some(1), "{long:?}");
    let line = long.one_error_line();
    assert!(
        line.contains("not served for 1h within 500ms") && line.contains("has served for"),
        "{line}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
    // The wrong build serves: the reason names both.
    let (wrong, answer) = wait_json(&supervisor, "100ms", Some(&testd_sha), "600ms");
    assert_eq!(wrong.code, Some(1), "{wrong:?}");
    let (changed, failed, _) = verdict(&answer);
    assert!(!changed && failed, "{answer}");
    assert_eq!(answer["served"], false);
    let reason = answer["reason"].as_str().expect("reason");
    assert!(
        reason.contains(&next_sha) && reason.contains(&testd_sha),
        "{reason}"
    );
}

#[test]
fn wait_refuses_bad_input_at_once_and_waits_out_a_missing_supervisor() {
    let supervisor = supervise(&[], &[]);
    // Bad input: exit 2 at once.
    for args in [
        vec!["--serving-for", "1s", "--sha256", "xyz"],
        vec!["--serving-for", "soon"],
        vec!["--serving-for", "1s", "--timeout", "forever"],
    ] {
        let started = Instant::now();
        let ran = supervisor.ctl("wait", &args);
        assert_eq!(ran.code, Some(2), "{args:?}: {ran:?}");
        ran.one_error_line();
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?}");
    }
    // No supervisor: not yet, until the timeout.
    let nowhere = ctl(&[
        "wait",
        "--socket",
        "/nonexistent/handoff.sock",
        "--serving-for",
        "1s",
        "--timeout",
        "300ms",
    ]);
    assert_eq!(nowhere.code, Some(1), "{nowhere:?}");
    assert!(nowhere.one_error_line().contains("no supervisor"));
}

#[test]
fn a_restart_starts_the_wait_again() {
    let supervisor = supervise(&[], &[]);
    let started = Instant::now();
    let gate = wait_in_background(
        &supervisor,
        &["--serving-for", "2s", "--timeout", "20s", "--json"],
    );
    // Generation 1 dies before its two seconds: the restarted one must
    // serve two seconds of its own.
    std::thread::sleep(Duration::from_millis(500));
    let victim = u64_of(&supervisor.status(), "child_pid") as u32;
    handoff::os::signal(victim, Sig::Kill).expect("kill the generation");
    wait_gone(victim);
    let restarted = supervisor.wait_serving();
    let gate = gate.join().expect("wait");
    assert_eq!(gate.code, Some(0), "{gate:?}");
    let answer = json(&gate);
    assert_eq!(
        answer["generation"], restarted["generation"],
        "the restarted generation passed: {answer}"
    );
    assert_ne!(answer["generation"], 1);
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "passed after {:?}",
        started.elapsed()
    );
    let seen = answer["generations_seen"].as_array().expect("seen");
    assert!(seen.len() >= 2, "{answer}");
}

#[test]
fn a_probation_holds_the_gate_and_its_rollback_fails_it() {
    let dir = TempDir::new("wait-probation");
    let next = build(dir.path(), "testd-next");
    let supervisor = supervise(&[&next], &["--mode", "overlap", "--probation", "30s"]);
    let next_sha = sha256_hex(&next);
    let next_arg = next.display().to_string();
    let upgraded = supervisor.ctl("upgrade", &["--binary", &next_arg, "--json"]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    let new_pid = u64_of(&json(&upgraded), "new_pid") as u32;

    // In probation: served long enough, but not passed.
    let (held, answer) = wait_json(&supervisor, "100ms", Some(&next_sha), "1s");
    assert_eq!(held.code, Some(1), "{held:?}");
    assert!(
        answer["reason"]
            .as_str()
            .expect("reason")
            .contains("in probation"),
        "{answer}"
    );

    // The new build crashes in probation: the old one is resumed, and the
    // gate on the new build fails with that reason.
    handoff::os::signal(new_pid, Sig::Kill).expect("kill the new generation");
    supervisor.wait_status("the automatic rollback", |s| {
        s["last_probation_rollback"].is_object() && s["state"] == "serving"
    });
    let (failed, _) = wait_json(&supervisor, "100ms", Some(&next_sha), "1s");
    assert_eq!(failed.code, Some(1), "{failed:?}");
    let line = failed.one_error_line();
    assert!(
        line.contains(&format!("not the expected {next_sha}")),
        "{line}"
    );
    assert!(line.contains(&sha256_hex(&testd())), "{line}");
}

#[test]
fn a_supervisor_that_stops_answering_fails_the_gate_with_its_last_answer() {
    let supervisor = supervise(&[], &[]);
    let started = Instant::now();
    let gate = wait_in_background(&supervisor, &["--serving-for", "1h", "--timeout", "2s"]);
    // Looks answered, then a supervisor that no longer answers (stopped:
    // its socket still accepts into the backlog, nobody reads).
    std::thread::sleep(Duration::from_millis(700));
    supervisor.signal(Sig::Stop);
    let gate = gate.join().expect("wait");
    supervisor.signal(Sig::Cont);
    assert_eq!(gate.code, Some(1), "{gate:?}");
    let line = gate.one_error_line();
    assert!(
        line.contains("its last answer: generation 1") && line.contains("has served for"),
        "{line}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        started.elapsed()
    );
    supervisor.wait_serving();
}
