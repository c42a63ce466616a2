//! `handoffctl history` and `handoffctl rollback`: the binaries each
//! handoff ran, recorded by path and sha256 (a build that lands at the
//! program's path hashed as it lands), and an upgrade back to the one
//! before the last commit.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{
    Start, Supervisor, TempDir, another_build, serving_pid, sha256_hex, testd, u64_of, wait_gone,
};

/// Two copies of testd (distinct paths, same bytes) and a config that
/// allows both.
fn copies(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let v1 = dir.path().join("testd-v1");
    let v2 = dir.path().join("testd-v2");
    std::fs::copy(testd(), &v1).expect("copy v1");
    std::fs::copy(testd(), &v2).expect("copy v2");
    let config = dir.path().join("handoff.toml");
    std::fs::write(
        &config,
        format!(
            "allowed_binaries = [\"{}\", \"{}\"]\n",
            v1.display(),
            v2.display()
        ),
    )
    .expect("config");
    (v1, v2, config)
}

/// [`copies`], with v1 running.
fn two_versions(dir: &TempDir) -> (PathBuf, PathBuf, Supervisor) {
    let (v1, v2, config) = copies(dir);
    let mut flags = Start::default().flags;
    flags.extend(["--config".to_owned(), config.display().to_string()]);
    let supervisor = Supervisor::start_with(Start {
        flags,
        daemon: Some(vec![v1.display().to_string()]),
        ..Start::default()
    });
    (v1, v2, supervisor)
}

fn history(supervisor: &Supervisor) -> Vec<Value> {
    let ran = supervisor.ctl("history", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    serde_json::from_str::<Vec<Value>>(&ran.stdout).expect("history json")
}

fn binary(entry: &Value, which: &str) -> (String, String) {
    (
        entry[which]["path"].as_str().unwrap_or("-").to_owned(),
        entry[which]["sha256"].as_str().unwrap_or("-").to_owned(),
    )
}

#[test]
fn history_records_binaries_and_rollback_returns_to_the_previous_one() {
    let dir = TempDir::new("history");
    let (v1, v2, supervisor) = two_versions(&dir);
    let addr = supervisor.addr();
    let sha = sha256_hex(&v1);

    let entries = history(&supervisor);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["committed"], true);
    assert!(entries[0]["old_binary"].is_null());
    assert_eq!(
        binary(&entries[0], "new_binary"),
        (v1.display().to_string(), sha.clone())
    );
    assert!(entries[0]["started_unix_ms"].as_u64().expect("start") > 0);

    let ran = supervisor.ctl("rollback", &[]);
    assert_eq!(ran.code, Some(2), "nothing to roll back to: {ran:?}");
    assert!(
        ran.one_error_line().contains("nothing to roll back"),
        "{ran:?}"
    );

    let v2_text = v2.display().to_string();
    let ran = supervisor.ctl("upgrade", &["--binary", &v2_text]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let entries = history(&supervisor);
    assert_eq!(entries.len(), 2);
    assert_eq!(
        binary(&entries[1], "old_binary"),
        (v1.display().to_string(), sha.clone())
    );
    assert_eq!(
        binary(&entries[1], "new_binary"),
        (v2_text.clone(), sha.clone())
    );
    assert!(entries[1]["phases_ms"]["spawn"].is_f64(), "{}", entries[1]);
    let on_v2 = serving_pid(addr);

    let ran = supervisor.ctl("rollback", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let report: Value = serde_json::from_str(&ran.stdout).expect("report");
    assert_eq!(report["committed"], true);
    wait_gone(on_v2);
    assert_eq!(serving_pid(addr), u64_of(&report, "new_pid") as u32);
    let entries = history(&supervisor);
    assert_eq!(entries.len(), 3);
    assert_eq!(
        binary(&entries[2], "old_binary"),
        (v2_text.clone(), sha.clone())
    );
    assert_eq!(
        binary(&entries[2], "new_binary"),
        (v1.display().to_string(), sha.clone())
    );
    let status = supervisor.status();
    assert_eq!(status["binary"], v1.display().to_string(), "{status}");

    // The text form: one line per handoff.
    let ran = supervisor.ctl("history", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(ran.stdout.lines().count(), 3, "{}", ran.stdout);
    assert!(ran.stdout.contains(&v2_text), "{}", ran.stdout);
}

#[test]
fn rollback_refuses_a_binary_whose_file_changed() {
    let dir = TempDir::new("history-changed");
    let (v1, v2, supervisor) = two_versions(&dir);
    let addr = supervisor.addr();
    let ran = supervisor.ctl("upgrade", &["--binary", &v2.display().to_string()]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let on_v2 = serving_pid(addr);
    // Someone replaces v1's file: the recorded sha256 no longer matches.
    let replacement = dir.path().join("replacement");
    std::fs::copy("/bin/true", &replacement).expect("copy");
    std::fs::rename(&replacement, &v1).expect("rename over v1");
    let ran = supervisor.ctl("rollback", &[]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    let line = ran.one_error_line();
    assert!(line.contains("the previous build"), "{line}");
    assert!(line.contains(&v1.display().to_string()), "{line}");
    assert!(line.contains("a path of its own"), "what to do: {line}");
    assert_eq!(serving_pid(addr), on_v2, "nothing was started");
    // Gone altogether: said the same way.
    std::fs::remove_file(&v1).expect("remove v1");
    let ran = supervisor.ctl("rollback", &[]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.one_error_line().contains("was removed"), "{ran:?}");
    assert_eq!(serving_pid(addr), on_v2, "nothing was started");
}

/// Starts `handoffctl run` on `binary` with the admin socket at `socket`
/// (the history file's default place is next to it) and `flags`.
fn start_at(socket: &Path, config: &Path, binary: &Path, flags: &[&str]) -> Supervisor {
    let mut all = Start::default().flags;
    all.extend(["--config".to_owned(), config.display().to_string()]);
    all.extend(flags.iter().map(|f| f.to_string()));
    Supervisor::start_with(Start {
        flags: all,
        daemon: Some(vec![binary.display().to_string()]),
        socket: Some(socket.to_owned()),
        ..Start::default()
    })
}

/// Stops a supervisor through its admin socket and waits for its exit.
fn stop(mut supervisor: Supervisor) {
    let ran = supervisor.ctl("stop", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(supervisor.wait_exit().success());
}

/// The history survives a restart of the supervisor process (its file is
/// next to the admin socket by default), and `rollback` in the new process
/// returns to the binary recorded before the restart, pinned by its sha256.
#[test]
fn history_survives_a_supervisor_restart_and_rollback_uses_it() {
    let dir = TempDir::new("history-restart");
    let (v1, v2, config) = copies(&dir);
    let socket = dir.path().join("admin.sock");
    let file = dir.path().join("admin.history.json");
    let sha = sha256_hex(&v1);

    let first = start_at(&socket, &config, &v1, &[]);
    let ran = first.ctl("upgrade", &["--binary", &v2.display().to_string()]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let before = history(&first);
    assert_eq!(before.len(), 2, "{before:?}");
    let first_pid = first.pid();
    stop(first);
    assert!(file.exists(), "the history file next to the admin socket");

    // A new process, started on v2 (the binary that was live).
    let second = start_at(&socket, &config, &v2, &[]);
    assert_ne!(second.pid(), first_pid);
    let entries = history(&second);
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(
        entries[..2],
        before[..],
        "the record from before the restart"
    );
    assert!(entries[2]["old_binary"].is_null(), "a cold start");
    let ids: Vec<&Value> = entries.iter().map(|entry| &entry["handoff_id"]).collect();
    assert_eq!(ids, [1, 2, 3], "ids go on past the first supervisor's");
    assert_eq!(
        binary(&entries[2], "new_binary").0,
        v2.display().to_string()
    );
    assert!(second.log().contains("history loaded"), "{}", second.log());

    let on_v2 = serving_pid(second.addr());
    let ran = second.ctl("rollback", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}; log:\n{}", second.log());
    let report: Value = serde_json::from_str(&ran.stdout).expect("report");
    wait_gone(on_v2);
    assert_eq!(
        serving_pid(second.addr()),
        u64_of(&report, "new_pid") as u32
    );
    let entries = history(&second);
    assert_eq!(entries.len(), 4);
    assert_eq!(
        binary(&entries[3], "new_binary"),
        (v1.display().to_string(), sha.clone())
    );
    assert_eq!(
        binary(&entries[3], "old_binary").0,
        v2.display().to_string()
    );
    assert_eq!(second.status()["binary"], v1.display().to_string());
    assert!(
        second.log().contains(&format!("sha256={sha}")),
        "the rollback was pinned by the recorded sha256: {}",
        second.log()
    );
    // The file on disk has every entry, whole.
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("history file")).expect("json");
    assert_eq!(on_disk["version"], 1);
    assert_eq!(on_disk["entries"].as_array().map(Vec::len), Some(4));
}

/// Daemons deployed as wrapper scripts (`#!/bin/sh`, `exec` the real
/// binary): the history, `status` and `--if-changed` know each generation
/// by the script it was started from, not by the shell or the program the
/// script went on to run, so a rollback runs the previous script again.
#[test]
fn a_wrapper_script_is_what_history_records_and_rollback_runs() {
    let dir = TempDir::new("history-wrapper");
    let body = |build: &str| format!("exec {} --build {build} \"$@\"", testd().display());
    let w1 = crate::common::script(dir.path(), "wrapper-1", &body("w1"));
    let w2 = crate::common::script(dir.path(), "wrapper-2", &body("w2"));
    let config = dir.path().join("handoff.toml");
    let allowed = format!(
        "allowed_binaries = [\"{}\", \"{}\"]\n",
        w1.display(),
        w2.display()
    );
    std::fs::write(&config, allowed).expect("config");
    let socket = dir.path().join("admin.sock");
    let supervisor = start_at(&socket, &config, &w1, &[]);
    let sha = |path: &Path| sha256_hex(path);
    let w1_pid = serving_pid(supervisor.addr());
    let ran = supervisor.ctl("upgrade", &["--binary", &w2.display().to_string()]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    wait_gone(w1_pid);
    let entries = history(&supervisor);
    let scripts = |entry: &Value| (binary(entry, "old_binary"), binary(entry, "new_binary"));
    let as_record = |path: &Path| (path.display().to_string(), sha(path));
    assert_eq!(
        scripts(&entries[1]),
        (as_record(&w1), as_record(&w2)),
        "{entries:?}"
    );
    assert_eq!(supervisor.status()["binary_sha256"], sha(&w2));
    // `upgrade --binary w2 --if-changed --json` and `flags`: its plan.
    let plan_for_w2 = |flags: &[&str]| {
        let w2 = w2.display().to_string();
        let mut args = vec!["--binary", &w2, "--if-changed", "--json"];
        args.extend_from_slice(flags);
        let ran = supervisor.ctl("upgrade", &args);
        assert_eq!(ran.code, Some(0), "{ran:?}");
        serde_json::from_str::<Value>(&ran.stdout).expect("plan")
    };
    let plan = plan_for_w2(&[]);
    assert_eq!(plan["changed"], false, "{plan}");
    // A deploy renames a new script over w2: the serving generation is
    // still known by the one it started from, so there is work to do.
    let deployed = dir.path().join("wrapper-2.new");
    std::fs::copy(&w2, &deployed).expect("copy");
    let mut text = std::fs::read_to_string(&deployed).expect("read");
    text.push_str("# a new release\n");
    std::fs::write(&deployed, text).expect("write");
    std::fs::rename(&deployed, &w2).expect("rename over w2");
    assert_ne!(supervisor.status()["binary_sha256"], sha(&w2));
    let plan = plan_for_w2(&["--check"]);
    assert_eq!(plan["action"], "upgrade", "{plan}");
    let ran = supervisor.ctl("rollback", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}; log:\n{}", supervisor.log());
    assert_eq!(supervisor.status()["binary"], w1.display().to_string());
    let info = crate::common::request(supervisor.addr(), "INFO").expect("INFO");
    assert!(
        info.contains("build=w1"),
        "the first script's build serves: {info}"
    );
}

/// A corrupt history file is reported, moved aside, and replaced by a
/// fresh history; the supervisor starts and serves.
#[test]
fn a_corrupt_history_file_is_reported_and_tolerated() {
    let dir = TempDir::new("history-corrupt");
    let file = dir.path().join("history.json");
    std::fs::write(&file, b"{\"version\":1,\"entries\":[{\"handoff_id\":").expect("write");
    let file_text = file.display().to_string();
    let mut flags = Start::default().flags;
    flags.extend(["--history-file".to_owned(), file_text.clone()]);
    let supervisor = Supervisor::start_with(Start {
        flags,
        ..Start::default()
    });
    let log = supervisor.log();
    assert!(
        log.contains(&format!("history file {file_text} is corrupt"))
            && log.contains("starting with an empty history"),
        "{log}"
    );
    assert!(dir.path().join("history.json.corrupt").exists());
    let entries = history(&supervisor);
    assert_eq!(entries.len(), 1, "only this run's cold start: {entries:?}");
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("history file")).expect("json");
    assert_eq!(on_disk["entries"].as_array().map(Vec::len), Some(1));
    let ran = supervisor.ctl("upgrade", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
}

/// A history file that cannot be read (a directory is in its place): a
/// warning, saving is off for the run (never write over what could not be
/// read), and the history is kept in memory.
#[test]
fn an_unusable_history_file_is_reported_and_the_history_kept_in_memory() {
    let dir = TempDir::new("history-unusable");
    let file = dir.path().join("history.json");
    std::fs::create_dir(&file).expect("a directory in the way");
    let mut flags = Start::default().flags;
    flags.extend(["--history-file".to_owned(), file.display().to_string()]);
    let supervisor = Supervisor::start_with(Start {
        flags,
        ..Start::default()
    });
    assert!(
        supervisor.log().contains("cannot be read"),
        "{}",
        supervisor.log()
    );
    let ran = supervisor.ctl("upgrade", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(history(&supervisor).len(), 2);
    assert!(
        supervisor.log().contains("not writing the history file"),
        "{}",
        supervisor.log()
    );
    assert!(file.is_dir(), "left alone");
}

#[test]
fn a_build_renamed_over_the_program_is_hashed_as_it_lands_and_its_upgrade_records_it() {
    let dir = TempDir::new("landing");
    let program = dir.path().join("daemon");
    another_build(&testd(), &program, "1");
    let supervisor = Supervisor::start_with(Start {
        daemon: Some(vec![program.display().to_string()]),
        ..Start::default()
    });
    supervisor.wait_serving();
    let from = supervisor.log().len();
    // A deploy: the next build written beside it, then renamed over it.
    let staged = dir.path().join(".daemon.new");
    let sha = another_build(&testd(), &staged, "2");
    std::fs::rename(&staged, &program).expect("deploy");
    let landed = format!(
        "hashed ahead of its upgrade program={} sha256={sha}",
        program.display()
    );
    supervisor.wait_log(&landed, from);
    assert_eq!(history(&supervisor).len(), 1, "before any upgrade");
    let ran = supervisor.ctl("upgrade", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let entries = history(&supervisor);
    assert_eq!(binary(&entries[1], "new_binary").1, sha, "{entries:?}");
}
