//! `handoffctl history` and `handoffctl rollback` (issue 7, part 3): the
//! binaries each handoff ran, recorded by path and sha256, and an upgrade
//! back to the one before the last commit.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{Start, Supervisor, TempDir, serving_pid, testd, u64_of, wait_gone};

fn sha256_hex(path: &Path) -> String {
    use std::fmt::Write as _;
    let bytes = std::fs::read(path).expect("read binary");
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    digest.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// Two copies of testd (distinct paths, same bytes); v1 runs, v2 allowed.
fn two_versions(dir: &TempDir) -> (PathBuf, PathBuf, Supervisor) {
    let v1 = dir.path().join("testd-v1");
    let v2 = dir.path().join("testd-v2");
    std::fs::copy(testd(), &v1).expect("copy v1");
    std::fs::copy(testd(), &v2).expect("copy v2");
    let config = dir.path().join("handoff.toml");
    std::fs::write(
        &config,
        format!("allowed_binaries = [\"{}\"]\n", v2.display()),
    )
    .expect("config");
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
    assert!(ran.one_error_line().contains("sha256"), "{ran:?}");
    assert_eq!(serving_pid(addr), on_v2, "nothing was started");
}
