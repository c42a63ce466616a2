//! A supervisor killed with SIGKILL under load, then started again with
//! the same configuration: the new one adopts the generation the dead one
//! left serving (its listeners come back without being closed), nothing is
//! refused or fails in the gap, every acknowledged write is still there,
//! and the adopted generation can be re-executed over and upgraded. For a
//! library daemon (kvd) and a foreign one (httpd.py under `--protocol
//! systemd`); two supervisors started at once adopt it exactly once; the
//! adoption's fault points leave the orphan serving for the next start;
//! an adopted kvd hands its kept-alive connections over at its upgrade,
//! and an adopted testd gives the new supervisor its items again; an
//! adopted foreign daemon's notifications reach the new supervisor; an old
//! generation the dead supervisor was retiring is stopped, not left serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::{IO, KillOnDrop, Start, Supervisor, TempDir, alive, example, u64_of};
use crate::load::Load;

/// One HTTP/1.0 request on a fresh connection: the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, IO).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(IO))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e:?}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {response:?}"))?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok((status, body.trim().to_owned()))
}

/// How to start the supervisor again and again: the same flags, daemon
/// and admin socket each time.
struct Setup {
    dir: TempDir,
    flags: Vec<String>,
    daemon: Vec<String>,
}

impl Setup {
    fn kvd() -> Setup {
        let dir = TempDir::new("adopt-kvd");
        let data = dir.path().join("data");
        let flags = [
            "--listen",
            "http=127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--allow-supervisor-binary",
            crate::common::handoffctl().to_str().expect("utf-8"),
        ]
        .map(String::from)
        .to_vec();
        Setup {
            dir,
            flags,
            daemon: vec![example("kvd").display().to_string()],
        }
    }

    /// testd keeping a memfd hit counter and a state blob (`--items 1`).
    fn testd_items() -> Setup {
        let dir = TempDir::new("adopt-items");
        let data = dir.path().join("data");
        let flags = ["--listen", "main=127.0.0.1:0"].map(String::from).to_vec();
        let daemon = [
            crate::common::testd().display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--items".into(),
            "1".into(),
        ]
        .to_vec();
        Setup { dir, flags, daemon }
    }

    /// testd in overlap mode, an old generation kept 60 s in probation.
    fn in_probation(name: &str) -> Setup {
        let flags = ["--listen", "main=127.0.0.1:0", "--mode", "overlap"];
        Setup {
            dir: TempDir::new(name),
            flags: flags
                .into_iter()
                .chain(["--probation", "60s"])
                .map(String::from)
                .collect(),
            daemon: vec![crate::common::testd().display().to_string()],
        }
    }

    fn httpd() -> Setup {
        let dir = TempDir::new("adopt-httpd");
        let flags = ["--listen", "http=127.0.0.1:0", "--protocol", "systemd"]
            .map(String::from)
            .to_vec();
        Setup {
            dir,
            flags,
            daemon: vec![
                crate::foreign::python(),
                crate::foreign::httpd().display().to_string(),
            ],
        }
    }

    /// The first supervisor, its serving generation's pid, and a guard
    /// that kills that generation if the test leaves it behind.
    fn first(&self) -> (Supervisor, u32, KillOnDrop) {
        let first = self.spawn(Vec::new());
        let pid = serving_pid(&first);
        (first, pid, KillOnDrop(pid))
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    fn spawn(&self, env: Vec<(String, String)>) -> Supervisor {
        Supervisor::spawn(Start {
            flags: self.flags.clone(),
            daemon: Some(self.daemon.clone()),
            socket: Some(self.socket()),
            env,
            ..Start::default()
        })
    }
}

/// Upgrades under `supervisor`, whose generation `old` stays in probation:
/// the new generation's pid, once the record names `old` as retiring.
fn upgraded_with_a_retiree(supervisor: &Supervisor, old: u32) -> u32 {
    let upgrade = supervisor.ctl("upgrade", &[]);
    assert_eq!(upgrade.code, Some(0), "{upgrade:?}");
    let live = serving_pid(supervisor);
    let mut record = supervisor.socket.clone().into_os_string();
    record.push(".generation.json");
    testkit::eventually("the record names the old generation", || {
        std::fs::read(&record)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|record| record["retirees"][0]["pid"] == old)
    });
    live
}

/// SIGKILL to the supervisor, reaped.
fn kill_9(supervisor: &mut Supervisor) {
    let mut child = supervisor.child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

/// kvd writes at `rate`: unique keys, each acknowledged one remembered.
fn writes(addr: SocketAddr, rate: u32, acked: Arc<Mutex<Vec<u64>>>) -> Load {
    let next = Arc::new(AtomicU64::new(0));
    Load::start(
        rate,
        Arc::new(move || {
            let n = next.fetch_add(1, Ordering::SeqCst);
            match http(addr, "PUT", &format!("/kv/w{n}"), &format!("v{n}")) {
                Ok((200, _)) => {
                    acked.lock().expect("acked").push(n);
                    Ok(())
                }
                Ok((status, body)) => Err(format!("PUT {status}: {body}")),
                Err(error) => Err(error),
            }
        }),
    )
}

/// The pid of the generation serving under `supervisor`, once its record
/// (what an adopting supervisor reads) names it: the event thread writes it
/// a moment after the commit.
fn serving_pid(supervisor: &Supervisor) -> u32 {
    let status = supervisor.wait_serving();
    let pid = u64_of(&status, "child_pid");
    let mut record = supervisor.socket.clone().into_os_string();
    record.push(".generation.json");
    testkit::eventually("the generation record names the serving pid", || {
        std::fs::read(&record)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|record| record["live"]["pid"] == pid)
    });
    pid as u32
}

#[test]
fn a_supervisor_killed_under_load_is_replaced_by_one_that_adopts_kvd() {
    let setup = Setup::kvd();
    let (mut first, orphan, _cleanup) = setup.first();
    let addr = first.addr();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load = writes(addr, 200, Arc::clone(&acked));
    load.wait_answered(100);
    kill_9(&mut first);
    load.wait_answered(50);
    let second = setup.spawn(Vec::new());
    assert_eq!(serving_pid(&second), orphan, "log:\n{}", second.log());
    assert!(second.log().contains("adopting it"), "{}", second.log());
    assert_eq!(second.addr(), addr);
    load.wait_answered(100);
    // The adopted generation crosses a re-exec (its pidfd is carried) and
    // is upgraded away like any other.
    let reexec = second.ctl("reexec", &[]);
    assert_eq!(reexec.code, Some(0), "{reexec:?}; log:\n{}", second.log());
    assert_eq!(serving_pid(&second), orphan);
    let upgrade = second.ctl("upgrade", &[]);
    assert_eq!(upgrade.code, Some(0), "{upgrade:?}; log:\n{}", second.log());
    assert_ne!(serving_pid(&second), orphan);
    load.wait_answered(100);
    let report = load.finish();
    assert_eq!(
        report.failed(),
        0,
        "{}: {:?}",
        report.summary(),
        report.failures
    );
    let acked = acked.lock().expect("acked").clone();
    assert!(acked.len() > 300, "{} writes", acked.len());
    for n in acked {
        assert_eq!(
            http(addr, "GET", &format!("/kv/w{n}"), ""),
            Ok((200, format!("v{n}"))),
            "acknowledged write w{n}"
        );
    }
    crate::common::wait_gone(orphan);
}

/// The adopted generation sends its Hello again, so the supervisor that
/// adopted it knows it hands connections over: its kept-alive clients
/// cross the upgrade on their own sockets, as without the crash.
#[test]
fn an_adopted_kvd_hands_its_kept_alive_connections_to_its_successor() {
    use crate::transit::{KeepAlive, handed_over_to};
    let setup = Setup::kvd();
    let (mut first, orphan, _cleanup) = setup.first();
    let addr = first.addr();
    let mut clients: Vec<_> = (0..4).map(|_| KeepAlive::open(addr)).collect();
    for client in &mut clients {
        assert_eq!(client.pid(), u64::from(orphan));
    }
    kill_9(&mut first);
    let second = setup.spawn(Vec::new());
    assert_eq!(serving_pid(&second), orphan, "log:\n{}", second.log());
    let upgrade = second.ctl("upgrade", &["--json"]);
    assert_eq!(upgrade.code, Some(0), "{upgrade:?}; log:\n{}", second.log());
    let report: serde_json::Value = serde_json::from_str(&upgrade.stdout).expect("json");
    let (new_pid, generation) = (u64_of(&report, "new_pid"), u64_of(&report, "generation"));
    crate::common::wait_gone(orphan);
    for client in &mut clients {
        assert_eq!(
            client.pid(),
            new_pid,
            "the same socket, served by the successor"
        );
    }
    assert_eq!(
        handed_over_to(&second.log(), generation),
        4,
        "log:\n{}",
        second.log()
    );
}

/// The item store died with the supervisor that kept it; the adopted
/// generation gives the new one its copy, so the memfd counter and the
/// blob it seals reach its successor as without the crash.
#[test]
fn an_adopted_generation_gives_the_new_supervisor_its_items_again() {
    use testkit::{testd_hit as hit, testd_items as items};
    let setup = Setup::testd_items();
    let (mut first, orphan, _cleanup) = setup.first();
    let addr = first.addr();
    for hits in 1..=3 {
        assert_eq!(hit(addr), hits);
    }
    kill_9(&mut first);
    let second = setup.spawn(Vec::new());
    assert_eq!(serving_pid(&second), orphan, "log:\n{}", second.log());
    // The store is back (status lists it) before anything else happens.
    testkit::eventually("the cache back in the new supervisor's store", || {
        second.status()["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|item| item["name"] == "cache"))
    });
    let upgrade = second.ctl("upgrade", &[]);
    assert_eq!(upgrade.code, Some(0), "{upgrade:?}; log:\n{}", second.log());
    crate::common::wait_gone(orphan);
    let (blob, hits) = items(addr);
    assert_eq!(hits, 3, "the same memfd counter");
    assert_eq!(
        blob,
        format!("revisions=0 by={orphan}"),
        "the blob it sealed"
    );
    assert_eq!(hit(addr), 4);
}

/// A supervisor upgraded once with its old generation kept for a
/// probation, then killed with SIGKILL; `before` gets the old generation's
/// pid, then a supervisor with `extra` flags adopts. Returns guards for
/// both generations and the setup (its directory holds the admin socket),
/// both dropped after the supervisor, then it, the old and the live pid.
fn adopted_beside_a_retiree(
    name: &str,
    extra: &[&str],
    before: impl FnOnce(u32),
) -> ([KillOnDrop; 2], Setup, Supervisor, u32, u32) {
    let mut setup = Setup::in_probation(name);
    let (mut first, old, old_guard) = setup.first();
    let live = upgraded_with_a_retiree(&first, old);
    let live_guard = KillOnDrop(live);
    kill_9(&mut first);
    before(old);
    setup
        .flags
        .extend(extra.iter().map(|flag| flag.to_string()));
    let second = setup.spawn(Vec::new());
    assert_eq!(serving_pid(&second), live, "log:\n{}", second.log());
    ([old_guard, live_guard], setup, second, old, live)
}

/// The old generation is gone, as `logged` says, and the live one serves.
fn stopped_by_the_adopter(second: &Supervisor, old: u32, live: u32, logged: &str) {
    crate::common::wait_gone(old);
    assert!(second.log().contains(logged), "{}", second.log());
    assert!(alive(live));
    assert_eq!(crate::common::serving_pid(second.addr()), live);
}

/// Overlap mode with a probation: the old generation is kept resumable
/// when the supervisor dies. Unsupervised it would serve on beside the
/// adopted one; the record names it, and the adopter stops it.
#[test]
fn an_old_generation_in_probation_when_the_supervisor_died_is_stopped_by_the_adopter() {
    let (_guards, _setup, second, old, live) =
        adopted_beside_a_retiree("adopt-retiree", &[], |_| {});
    stopped_by_the_adopter(&second, old, live, "an old generation it was retiring");
}

/// The same with an old generation that does not act on its SIGTERM (it
/// is stopped): the adopter kills it once a drain and the kill grace have
/// passed, as the supervisor that died would have.
#[test]
fn an_old_generation_that_outlives_its_stop_is_killed_by_the_adopter() {
    let stop =
        |old| handoff::os::signal(old, handoff::os::Sig::Stop).expect("SIGSTOP the old generation");
    let (_guards, _setup, second, old, live) =
        adopted_beside_a_retiree("adopt-retiree-stuck", &["--drain-timeout", "1s"], stop);
    stopped_by_the_adopter(&second, old, live, "outlived its stop: killing it");
}

/// After an adoption the history knows what the adopted generation runs:
/// the next upgrade records it as replaced, and a rollback goes back to
/// it, not to the configured binary.
#[test]
fn a_rollback_after_an_adoption_returns_to_the_adopted_build() {
    let dir = TempDir::new("adopt-rollback");
    let [one, two, three] = ["one", "two", "three"].map(|tag| {
        let path = dir.path().join(format!("testd-{tag}"));
        crate::common::another_build(&crate::common::testd(), &path, tag);
        path
    });
    let mut flags: Vec<String> = ["--listen", "main=127.0.0.1:0", "--mode", "overlap"]
        .map(String::from)
        .to_vec();
    for allowed in [&two, &three] {
        flags.extend(["--allow-binary".to_owned(), allowed.display().to_string()]);
    }
    let setup = Setup {
        dir,
        flags,
        daemon: vec![one.display().to_string()],
    };
    let (mut first, _, _first_generation) = setup.first();
    let to_two = first.ctl("upgrade", &["--binary", two.to_str().expect("utf-8")]);
    assert_eq!(to_two.code, Some(0), "{to_two:?}");
    let adopted = serving_pid(&first);
    let _adopted = KillOnDrop(adopted);
    kill_9(&mut first);
    let second = setup.spawn(Vec::new());
    assert_eq!(serving_pid(&second), adopted, "log:\n{}", second.log());
    let to_three = second.ctl("upgrade", &["--binary", three.to_str().expect("utf-8")]);
    assert_eq!(to_three.code, Some(0), "{to_three:?}");
    let _third = KillOnDrop(serving_pid(&second));
    let back = second.ctl("rollback", &[]);
    assert_eq!(back.code, Some(0), "{back:?}");
    let _back = KillOnDrop(serving_pid(&second));
    let binary = second.status()["binary"].clone();
    assert_eq!(binary, two.display().to_string(), "{}", second.status());
}

/// The same, but the live generation died with the supervisor: nothing to
/// adopt, and the old generation holds the listeners a fresh start binds.
/// It is stopped first, and the fresh start serves.
#[test]
fn an_old_generation_left_alone_is_stopped_before_a_fresh_start() {
    let setup = Setup::in_probation("adopt-retiree-alone");
    let (mut first, old, _old) = setup.first();
    let live = upgraded_with_a_retiree(&first, old);
    let _live = KillOnDrop(live);
    kill_9(&mut first);
    handoff::os::signal(live, handoff::os::Sig::Kill).expect("kill the live generation");
    crate::common::wait_gone(live);
    let second = setup.spawn(Vec::new());
    let fresh = serving_pid(&second);
    let _fresh = KillOnDrop(fresh);
    assert!(fresh != old && fresh != live, "log:\n{}", second.log());
    crate::common::wait_gone(old);
    assert!(
        second.log().contains("an old generation it was retiring"),
        "{}",
        second.log()
    );
}

#[test]
fn a_supervisor_killed_under_load_is_replaced_by_one_that_adopts_a_foreign_daemon() {
    let setup = Setup::httpd();
    let (mut first, orphan, _cleanup) = setup.first();
    let addr = first.addr();
    let load = Load::start(
        200,
        Arc::new(move || crate::foreign::get(addr, "/").map(drop)),
    );
    load.wait_answered(100);
    kill_9(&mut first);
    load.wait_answered(50);
    let second = setup.spawn(Vec::new());
    assert_eq!(serving_pid(&second), orphan, "log:\n{}", second.log());
    load.wait_answered(100);
    let upgrade = second.ctl("upgrade", &[]);
    assert_eq!(upgrade.code, Some(0), "{upgrade:?}; log:\n{}", second.log());
    load.wait_answered(100);
    let report = load.finish();
    assert_eq!(
        report.failed(),
        0,
        "{}: {:?}",
        report.summary(),
        report.failures
    );
    // The orphan was not our child: it was retired through its pidfd.
    crate::common::wait_gone(orphan);
}

/// httpd.py with a counter in the fd store: it notifies on demand.
#[test]
fn an_adopted_foreign_daemon_notifies_its_new_supervisor() {
    let mut setup = Setup::httpd();
    setup.daemon.extend(["--fd-store".into(), "counter".into()]);
    let (mut first, orphan, _cleanup) = setup.first();
    let addr = first.addr();
    let mut home = setup.socket().into_os_string();
    home.push(".adopt.notify");
    let home = PathBuf::from(home);
    assert!(
        home.join("gen1.sock").exists(),
        "the notification socket lives beside the admin socket"
    );
    kill_9(&mut first);
    let mut second = setup.spawn(Vec::new());
    assert_eq!(serving_pid(&second), orphan, "log:\n{}", second.log());
    // The store died with the first supervisor; what the orphan stores now
    // reaches the second one, through the socket it bound again.
    let answer = crate::foreign::get(addr, "/store?name=after");
    assert_eq!(
        answer.as_deref(),
        Ok("sent after"),
        "log:\n{}",
        second.log()
    );
    second.wait_status("the adopter's fd store holding the orphan's fd", |status| {
        status["fd_store"]["entries"]
            .as_array()
            .is_some_and(|entries| entries.iter().any(|entry| entry["name"] == "after"))
    });
    let stop = second.ctl("stop", &[]);
    assert_eq!(stop.code, Some(0), "{stop:?}");
    second.wait_exit();
    crate::common::wait_gone(orphan);
    assert!(
        !home.exists(),
        "a clean stop removes the notification directory"
    );
}

#[test]
fn two_supervisors_started_at_once_adopt_an_orphan_once() {
    let setup = Setup::kvd();
    let (mut first, orphan, _cleanup) = setup.first();
    kill_9(&mut first);
    let mut a = setup.spawn(Vec::new());
    let mut b = setup.spawn(Vec::new());
    // One of them exits at once (the lock is taken); wait for it.
    let deadline = std::time::Instant::now() + crate::common::WAIT;
    let exited = |s: &mut Supervisor| {
        s.child
            .as_mut()
            .and_then(|child| child.try_wait().ok())
            .flatten()
            .is_some()
    };
    let (mut winner, mut loser) = loop {
        if exited(&mut a) {
            break (b, a);
        }
        if exited(&mut b) {
            break (a, b);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither supervisor gave way; logs:\n{}\n{}",
            a.log(),
            b.log()
        );
        // Both are starting; each check is a syscall on our own children.
        std::thread::sleep(handoff::timeouts::POLL_SLICE);
    };
    let status = loser.wait_exit();
    assert_eq!(status.code(), Some(1), "log:\n{}", loser.log());
    assert!(
        loser.log().contains("another supervisor"),
        "log:\n{}",
        loser.log()
    );
    assert_eq!(serving_pid(&winner), orphan, "log:\n{}", winner.log());
    winner.assert_running();
    let stop = winner.ctl("stop", &[]);
    assert_eq!(stop.code, Some(0), "{stop:?}");
    winner.wait_exit();
    crate::common::wait_gone(orphan);
    let mut record = setup.socket().into_os_string();
    record.push(".generation.json");
    assert!(
        !Path::new(&record).exists(),
        "a clean stop leaves no record to adopt"
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_fault_while_adopting_leaves_the_orphan_serving_for_the_next_start() {
    let setup = Setup::kvd();
    let (mut first, orphan, _cleanup) = setup.first();
    let addr = first.addr();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load = writes(addr, 100, Arc::clone(&acked));
    load.wait_answered(50);
    kill_9(&mut first);
    for fault in [
        "supervisor:adopt_before_listeners:crash",
        "supervisor:adopt_after_listeners:crash",
        "supervisor:adopt_after_listeners:error",
    ] {
        let mut faulty = setup.spawn(vec![("HANDOFF_FAULT".into(), fault.into())]);
        let status = faulty.wait_exit();
        assert!(
            !status.success(),
            "{fault}: {status:?}; log:\n{}",
            faulty.log()
        );
        assert!(alive(orphan), "{fault}: the orphan died");
        load.wait_answered(30);
    }
    let last = setup.spawn(Vec::new());
    assert_eq!(serving_pid(&last), orphan, "log:\n{}", last.log());
    load.wait_answered(50);
    let report = load.finish();
    assert_eq!(
        report.failed(),
        0,
        "{}: {:?}",
        report.summary(),
        report.failures
    );
    for n in acked.lock().expect("acked").iter() {
        assert_eq!(
            http(addr, "GET", &format!("/kv/w{n}"), ""),
            Ok((200, format!("v{n}")))
        );
    }
}
