//! The supervisor replacing its own image (`handoffctl reexec`, SIGUSR2)
//! with real builds of handoffctl: the pid, the generation and every
//! request survive; a target that cannot take over is refused before
//! anything changes; a new image that crashes or stalls after the exec
//! hands back to the old one; and no signal an operator may send ends the
//! supervisor.

use std::path::{Path, PathBuf};

use handoff::os::Sig;
use serde_json::Value;

use crate::common::{
    Ran, Start, Supervisor, TempDir, another_build, handoffctl, script, serving_pid, sha256_hex,
    testd, u64_of,
};
use crate::load::Load;
#[cfg(feature = "fault-injection")]
use crate::load::Writes;

/// A second build of handoffctl, with a sha256 of its own.
fn other_build(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    another_build(&handoffctl(), &path, name);
    path
}

/// A supervisor of testd allowed to re-exec into `builds`.
fn supervise(builds: &[&Path], env: Vec<(String, String)>) -> Supervisor {
    supervise_with(builds, env, Vec::new())
}

/// [`supervise`], testd writing its log into `data` (for [`Writes`]).
#[cfg(feature = "fault-injection")]
fn supervise_writing(builds: &[&Path], env: Vec<(String, String)>, data: &TempDir) -> Supervisor {
    let testd_args = vec!["--data-dir".to_owned(), data.path().display().to_string()];
    supervise_with(builds, env, testd_args)
}

fn supervise_with(
    builds: &[&Path],
    env: Vec<(String, String)>,
    testd_args: Vec<String>,
) -> Supervisor {
    let mut flags: Vec<String> = Start::default().flags;
    for build in builds {
        flags.extend([
            "--allow-supervisor-binary".to_owned(),
            build.display().to_string(),
        ]);
    }
    Supervisor::start_with(Start {
        flags,
        env,
        testd_args,
        ..Start::default()
    })
}

/// `reexec --json ARGS`: the exit code and the report.
fn reexec(supervisor: &Supervisor, args: &[&str]) -> (Option<i32>, Value, Ran) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let ran = supervisor.ctl("reexec", &all);
    let report = serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|error| {
        panic!(
            "reexec printed no JSON ({error}): {ran:?}; log:\n{}",
            supervisor.log()
        )
    });
    (ran.code, report, ran)
}

/// The fds open in process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

#[test]
fn reexec_keeps_the_pid_the_generation_and_every_request() {
    let dir = TempDir::new("reexec-builds");
    let a = other_build(dir.path(), "handoffctl-a");
    let b = other_build(dir.path(), "handoffctl-b");
    std::fs::write(&b, [std::fs::read(&b).expect("b"), b"\n".to_vec()].concat()).expect("b");
    let supervisor = supervise(&[&a, &b], Vec::new());
    let addr = supervisor.addr();
    let generation_pid = serving_pid(addr);
    let load = Load::testd_info(addr, 300);
    load.wait_answered(100);
    // Counted after the first re-exec: the first image may hold fds its
    // starter leaked into it, which the next image does not keep.
    let mut fds_after_first = None;
    for round in 0..6 {
        let build = if round % 2 == 0 { &a } else { &b };
        let (code, report, ran) =
            reexec(&supervisor, &["--binary", build.to_str().expect("utf-8")]);
        assert_eq!(
            code,
            Some(0),
            "round {round}: {ran:?}; log:\n{}",
            supervisor.log()
        );
        assert_eq!(report["committed"], true, "{report}");
        assert_eq!(report["pid"], supervisor.pid(), "{report}");
        assert_eq!(report["to"]["sha256"], sha256_hex(build), "{report}");
        assert!(
            report["total_ms"].as_f64().expect("total") > 0.0,
            "{report}"
        );
        for phase in ["preflight", "freeze", "exec", "restore", "readopt"] {
            assert!(report["phases_ms"][phase].is_f64(), "{phase} in {report}");
        }
        let status = supervisor.status();
        assert_eq!(status["child_pid"], generation_pid, "{status}");
        load.wait_answered(50);
        // Counted once the admin connections just answered had time to
        // close (they close right after their answer).
        let pid = supervisor.pid();
        let expected = *fds_after_first.get_or_insert_with(|| open_fds(pid));
        testkit::eventually(&format!("{expected} fds after re-exec {round}"), || {
            open_fds(pid) == expected
        });
    }
    // The running image again: nothing to do.
    let (code, report, _) = reexec(
        &supervisor,
        &["--binary", b.to_str().expect("utf-8"), "--if-changed"],
    );
    assert_eq!(
        (code, &report["changed"], &report["failed"]),
        (Some(0), &Value::Bool(false), &Value::Bool(false)),
        "{report}"
    );
    assert!(
        report["msg"]
            .as_str()
            .is_some_and(|msg| msg.starts_with("unchanged"))
    );
    assert_eq!(report["to"], report["from"], "the same build: {report}");
    assert!(
        report["to"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    // Still a supervisor that upgrades.
    let upgraded = supervisor.ctl("upgrade", &["--json"]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    load.wait_answered(50);
    let report = load.finish();
    assert_eq!(
        report.failed(),
        0,
        "{}: {:?}",
        report.summary(),
        report.failures
    );
    assert!(supervisor.log().contains("re-exec committed"));
}

#[test]
fn a_target_that_cannot_take_over_is_refused_before_anything_changes() {
    let dir = TempDir::new("reexec-refused");
    let not_executable = dir.path().join("not-executable");
    std::fs::copy(handoffctl(), &not_executable).expect("copy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    // A program that is not handoffctl: its `self-check` fails.
    let wrong = dir.path().join("false");
    std::fs::copy("/bin/false", &wrong).expect("copy /bin/false");
    let unlisted = other_build(dir.path(), "unlisted");
    let supervisor = supervise(&[&not_executable, &wrong], Vec::new());
    let generation_pid = serving_pid(supervisor.addr());

    let ran = supervisor.ctl("reexec", &["--binary", unlisted.to_str().expect("utf-8")]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(
        ran.one_error_line().contains("--allow-supervisor-binary"),
        "{ran:?}"
    );

    let ran = supervisor.ctl(
        "reexec",
        &["--binary", not_executable.to_str().expect("utf-8")],
    );
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.one_error_line().contains("not executable"), "{ran:?}");

    let (code, report, _) = reexec(&supervisor, &["--binary", wrong.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["committed"], false);
    // Ansible's terms: the old image is still in charge, nothing changed.
    assert_eq!(
        (&report["changed"], &report["failed"]),
        (&Value::Bool(false), &Value::Bool(true)),
        "{report}"
    );
    let reason = report["reason"].as_str().expect("reason");
    assert!(reason.contains("self-check failed"), "{reason}");

    let ran = supervisor.ctl("reexec", &["--sha256", &"0".repeat(64)]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.one_error_line().contains("--sha256"), "{ran:?}");

    // Nothing changed: the same image answers, the same generation serves.
    let status = supervisor.status();
    assert_eq!(status["child_pid"], generation_pid);
    assert!(
        !supervisor
            .log()
            .contains("replacing the supervisor's image")
    );
}

/// A new image that crashes (or stalls) after the exec: the old image
/// comes back, answers 1 with the reason, and serves the admin socket; no
/// request fails meanwhile.
#[cfg(feature = "fault-injection")]
fn hands_back(fault: &str, reason: &str) {
    let dir = TempDir::new("reexec-back");
    let data = TempDir::new("reexec-back-data");
    let next = other_build(dir.path(), "next");
    let supervisor = supervise_writing(
        &[&next],
        vec![("HANDOFF_FAULT".into(), format!("supervisor:{fault}"))],
        &data,
    );
    let addr = supervisor.addr();
    let generation_pid = serving_pid(addr);
    let writes = Writes::start(addr);
    let load = &writes.load;
    let asked = std::time::Instant::now();
    let (code, report, _) = reexec(&supervisor, &["--binary", next.to_str().expect("utf-8")]);
    let took = asked.elapsed();
    assert_eq!(code, Some(1), "{report}; log:\n{}", supervisor.log());
    assert_eq!(report["committed"], false);
    assert_eq!(report["pid"], supervisor.pid());
    let said = report["reason"].as_str().expect("reason");
    assert!(said.contains(reason), "{said}");
    assert!(
        took < std::time::Duration::from_secs(30),
        "answered after {took:?}, past the take-over bound"
    );
    // The old image is in charge: it answers and upgrades.
    let status = supervisor.status();
    assert_eq!(status["child_pid"], generation_pid);
    load.wait_answered(50);
    // The exec back dropped the fault: the same target now takes over.
    let (code, report, _) = reexec(&supervisor, &["--binary", next.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "{report}");
    load.wait_answered(50);
    // Every acknowledged write reads back (checked by `finish`).
    let report = writes.finish(addr);
    assert_eq!(
        report.failed(),
        0,
        "{}: {:?}",
        report.summary(),
        report.failures
    );
    assert_eq!(serving_pid(addr), generation_pid);
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_new_image_that_crashes_after_the_exec_hands_back_to_the_old() {
    hands_back("reexec_readopted:crash", "crashed before it took over");
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_new_image_that_hangs_after_the_exec_hands_back_to_the_old() {
    hands_back("reexec_after_exec:hang", "did not take over within");
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_new_image_that_panics_after_the_exec_hands_back_to_the_old() {
    hands_back("reexec_restored:panic", "panicked before it took over");
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_new_image_that_refuses_after_the_exec_hands_back_to_the_old() {
    hands_back("reexec_restored:error", "injected fault");
}

#[test]
fn reexec_while_a_handoff_runs_is_busy() {
    let dir = TempDir::new("reexec-busy");
    // A successor that takes its time to start.
    let slow = script(
        dir.path(),
        "slow-testd",
        &format!("sleep 3; exec {} \"$@\"", testd().display()),
    );
    let mut flags = Start::default().flags;
    flags.extend(["--allow-binary".to_owned(), slow.display().to_string()]);
    let supervisor = Supervisor::start_with(Start {
        flags,
        ..Start::default()
    });
    let socket = supervisor.socket.clone();
    let upgrading = std::thread::spawn(move || {
        let ran = crate::common::ctl(&[
            "upgrade",
            "--socket",
            socket.to_str().expect("utf-8"),
            "--binary",
            slow.to_str().expect("utf-8"),
        ]);
        ran.code
    });
    supervisor.wait_status("a handoff in flight", |s| s["state"] == "handing_off");
    let ran = supervisor.ctl("reexec", &[]);
    assert_eq!(ran.code, Some(3), "{ran:?}");
    assert!(ran.one_error_line().contains("in flight"), "{ran:?}");
    assert_eq!(upgrading.join().expect("upgrade thread"), Some(0));
    // Once it is over, the re-exec goes through.
    let ran = supervisor.ctl("reexec", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}; log:\n{}", supervisor.log());
}

#[test]
fn no_signal_an_operator_may_send_ends_the_supervisor() {
    let supervisor = supervise(&[], Vec::new());
    let generation_pid = serving_pid(supervisor.addr());
    let mut from = 0;
    for signal in [Sig::Usr1, Sig::Winch, Sig::Alrm, Sig::Pipe] {
        supervisor.signal(signal);
        from = supervisor.wait_log("signal ignored", from);
    }
    supervisor.assert_running();
    // SIGUSR2 re-executes (the start path, as `reexec` with no flags).
    supervisor.signal(Sig::Usr2);
    supervisor.wait_log("re-exec committed", from);
    let status = supervisor.status();
    assert_eq!(status["child_pid"], generation_pid);
    assert_eq!(
        u64_of(&status, "supervisor_pid"),
        u64::from(supervisor.pid())
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_fault_just_before_the_exec_leaves_the_old_image_in_charge() {
    let dir = TempDir::new("reexec-before");
    let next = other_build(dir.path(), "next");
    let supervisor = supervise(
        &[&next],
        vec![(
            "HANDOFF_FAULT".into(),
            "supervisor:reexec_before_exec:error".into(),
        )],
    );
    let generation_pid = serving_pid(supervisor.addr());
    let (code, report, _) = reexec(&supervisor, &["--binary", next.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "{report}");
    let reason = report["reason"].as_str().expect("reason");
    assert!(reason.contains("before the exec"), "{reason}");
    // The gate reopened and the supervisor thawed in place.
    let status = supervisor.status();
    assert_eq!(status["child_pid"], generation_pid);
    let upgraded = supervisor.ctl("upgrade", &[]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
}

/// A supervisor that dies in the middle of its re-exec (its old image at
/// the exec, its new image before it restored anything): the generation
/// keeps serving, and the supervisor started again adopts it.
#[cfg(feature = "fault-injection")]
#[test]
fn a_supervisor_that_dies_during_its_reexec_is_replaced_by_one_that_adopts() {
    for fault in ["reexec_before_exec:crash", "reexec_after_exec:exit"] {
        let dir = TempDir::new("reexec-dies");
        let data = TempDir::new("reexec-dies-data");
        let next = other_build(dir.path(), "next");
        let socket = dir.path().join("admin.sock");
        let start = |env: Vec<(String, String)>| {
            let mut flags = Start::default().flags;
            flags.extend([
                "--allow-supervisor-binary".to_owned(),
                next.display().to_string(),
            ]);
            Supervisor::start_with(Start {
                flags,
                env,
                socket: Some(socket.clone()),
                testd_args: vec!["--data-dir".into(), data.path().display().to_string()],
                ..Start::default()
            })
        };
        let mut dying = start(vec![(
            "HANDOFF_FAULT".into(),
            format!("supervisor:{fault}"),
        )]);
        let addr = dying.addr();
        let generation_pid = serving_pid(addr);
        let _generation = crate::common::KillOnDrop(generation_pid);
        let writes = Writes::start(addr);
        let load = &writes.load;
        let ran = dying.ctl("reexec", &["--binary", next.to_str().expect("utf-8")]);
        assert_eq!(
            ran.code,
            Some(1),
            "{fault}: the caller's connection ends, the outcome unknown: {ran:?}"
        );
        let status = dying.wait_exit();
        assert!(!status.success(), "{fault}: {status:?}");
        load.wait_answered(50);
        let adopter = start(Vec::new());
        assert_eq!(
            adopter.status()["child_pid"],
            generation_pid,
            "{fault}: log:\n{}",
            adopter.log()
        );
        load.wait_answered(50);
        // Every acknowledged write reads back (checked by `finish`).
        let report = writes.finish(addr);
        assert_eq!(
            report.failed(),
            0,
            "{fault}: {}: {:?}",
            report.summary(),
            report.failures
        );
    }
}

/// The daemon's binary removed from disk after the start (an old release
/// directory cleaned up after an upgrade to another path): the new image
/// takes the settings over as they were checked at the start, not as the
/// disk has them now.
#[test]
fn a_reexec_does_not_check_the_daemon_binary_again() {
    let dir = TempDir::new("reexec-gone");
    let daemon = dir.path().join("testd-old");
    std::fs::copy(testd(), &daemon).expect("copy testd");
    let supervisor = Supervisor::start_with(Start {
        program: Some(daemon.clone()),
        ..Start::default()
    });
    let generation_pid = serving_pid(supervisor.addr());
    std::fs::remove_file(&daemon).expect("remove the binary");
    let (code, report, ran) = reexec(&supervisor, &[]);
    assert_eq!(
        code,
        Some(0),
        "{report}; {ran:?}; log:\n{}",
        supervisor.log()
    );
    assert_eq!(supervisor.status()["child_pid"], generation_pid);
}

/// A re-exec asked while the event thread is still busy with a handoff's
/// events (it asks for the status after each one, and a frozen supervisor
/// answers it): the freeze does not wait for the thaw.
#[test]
fn a_reexec_right_after_an_upgrade_goes_through_at_once() {
    let supervisor = supervise(&[], Vec::new());
    for round in 0..4 {
        let upgraded = supervisor.ctl("upgrade", &[]);
        assert_eq!(upgraded.code, Some(0), "round {round}: {upgraded:?}");
        let (code, report, ran) = reexec(&supervisor, &[]);
        assert_eq!(code, Some(0), "round {round}: {report}; {ran:?}");
        let freeze = report["phases_ms"]["freeze"].as_f64().expect("freeze");
        assert!(
            freeze < 2_000.0,
            "round {round}: the freeze waited {freeze} ms for the event thread"
        );
    }
}
