//! Items kept across generations (I21), with testd `--items N` under
//! `handoffctl run`: a sealed state blob and a memfd hit counter survive
//! ten upgrades and a kill -9 restart; a successor that cannot read the
//! incumbent's blob schema is refused before the incumbent drains; a
//! removed item reaches no later generation (and stays with a peer of
//! protocol version 2, which cannot remove); in overlap mode, a blob put
//! in the drain reaches the generation already serving.

use handoff::os::Sig;

use crate::common::{Start, Supervisor, TempDir, request, script, serving_pid, testd};
use testkit::{eventually_within, testd_hit as hit, testd_items as items};

fn with_items(data: &TempDir, version: &str) -> Supervisor {
    testd_with_items(data, version, &[])
}

/// testd `--items 1` speaking only the protocol versions `range`, its
/// library's warnings logged.
fn speaking(data: &TempDir, range: &str) -> Supervisor {
    testd_with_items(data, "1", &["--protocol", range])
}

/// testd `--items VERSION` and `more` flags, its library's warnings logged.
fn testd_with_items(data: &TempDir, version: &str, more: &[&str]) -> Supervisor {
    let mut testd_args = vec![
        "--data-dir".to_owned(),
        data.path().display().to_string(),
        "--items".into(),
        version.into(),
    ];
    testd_args.extend(more.iter().map(|flag| (*flag).to_owned()));
    Supervisor::start_with(Start {
        testd_args,
        env: vec![("RUST_LOG".into(), "handoff=warn".into())],
        ..Start::default()
    })
}

#[test]
fn a_blob_and_a_memfd_cache_survive_ten_upgrades_and_a_kill_9_restart() {
    let data = TempDir::new("items-data");
    let supervisor = with_items(&data, "1");
    let addr = supervisor.addr();
    // Generation 1 started cold: no blob, a new cache.
    assert_eq!(items(addr), ("-".to_owned(), 0));
    let mut hits = 0;
    for upgrade in 1..=10 {
        for _ in 0..3 {
            hits += 1;
            assert_eq!(hit(addr), hits, "upgrade {upgrade}");
        }
        request(addr, &format!("PUT k{upgrade} v")).expect("PUT");
        let sealing = serving_pid(addr);
        let ran = supervisor.ctl("upgrade", &[]);
        assert_eq!(ran.code, Some(0), "{ran:?}");
        let (blob, now) = items(addr);
        // The blob the incumbent sealed, and the same counter, in place.
        assert_eq!(blob, format!("revisions={upgrade} by={sealing}"));
        assert_eq!(now, hits, "upgrade {upgrade}");
    }
    // `status` shows the store: the cache of generation 1, the last blob.
    let status = supervisor.status();
    let names: Vec<&str> = status["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["name"].as_str())
        .collect();
    assert_eq!(names, ["begun", "cache", "state"], "{status}");
    assert_eq!(status["items"][1]["writer"], 1, "{status}");
    assert_eq!(
        status["items"][2]["blob"]["schema"], "testd-state",
        "{status}"
    );
    let text = supervisor.ctl("status", &[]);
    assert!(
        text.stdout.contains("cache (fd, from generation 1)"),
        "{text:?}"
    );
    // A crash: the restart reads the store too (the last sealed blob: the
    // inherited item, else what is on disk).
    let crashed = serving_pid(addr);
    let (blob, _) = items(addr);
    handoff::os::signal(crashed, Sig::Kill).expect("kill -9");
    let restarted = serving_pid(addr);
    assert_ne!(restarted, crashed);
    assert_eq!(items(addr), (blob, hits));
    assert_eq!(hit(addr), hits + 1);
}

#[test]
fn a_successor_that_cannot_read_the_incumbents_blob_is_refused_before_the_drain() {
    let data = TempDir::new("items-data");
    // Generation 1 writes testd-state version 2; the new build reads only
    // version 1.
    let dir = TempDir::new("items-build");
    let reads_v1 = script(
        dir.path(),
        "testd-v1",
        &format!("exec {} \"$@\" --items 1\n", testd().display()),
    );
    let config = dir.path().join("handoff.toml");
    let allow = format!("allowed_binaries = [\"{}\"]\n", reads_v1.display());
    std::fs::write(&config, allow).expect("config");
    let mut flags = Start::default().flags;
    flags.extend(["--config".to_owned(), config.display().to_string()]);
    let supervisor = Supervisor::start_with(Start {
        flags,
        testd_args: vec![
            "--data-dir".into(),
            data.path().display().to_string(),
            "--items".into(),
            "2".into(),
        ],
        ..Start::default()
    });
    let addr = supervisor.addr();
    let incumbent = serving_pid(addr);
    let from = supervisor.log().len();
    let ran = supervisor.ctl(
        "upgrade",
        &["--binary", reads_v1.to_str().expect("utf-8"), "--json"],
    );
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(
        ran.stdout.contains(
            "the successor cannot read the incumbent's state: the incumbent writes \
             testd-state version 2, the successor reads 1..=1"
        ),
        "{ran:?}"
    );
    // The incumbent was never asked to drain, and serves and writes on.
    let log = supervisor.log();
    assert!(!log[from..].contains("phase=\"draining\""), "{log}");
    assert_eq!(serving_pid(addr), incumbent);
    let put = request(addr, "PUT after refusal").expect("PUT");
    assert!(put.starts_with("OK"), "{put}");
}

#[test]
fn a_generation_speaking_protocol_version_1_keeps_no_item_and_still_upgrades() {
    let data = TempDir::new("items-v1");
    let supervisor = speaking(&data, "1..1");
    let addr = supervisor.addr();
    assert_eq!(hit(addr), 1);
    let ran = supervisor.ctl("upgrade", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    // Version 1 has neither Schemas nor Items: a new cache, no blob.
    assert_eq!(items(addr), ("-".to_owned(), 0));
    supervisor.wait_log("keeps no item", 0);
}

/// The names `status` lists in the item store.
fn stored(supervisor: &Supervisor) -> Vec<String> {
    supervisor.status()["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| Some(item["name"].as_str()?.to_owned()))
        .collect()
}

#[test]
fn a_removed_item_leaves_the_store_and_reaches_no_later_generation() {
    let data = TempDir::new("items-remove");
    let supervisor = with_items(&data, "1");
    let addr = supervisor.addr();
    assert_eq!(hit(addr), 1);
    assert!(stored(&supervisor).contains(&"cache".to_owned()));
    assert_eq!(request(addr, "FORGET cache").expect("FORGET"), "FORGOTTEN");
    testkit::eventually("the cache gone from the store", || {
        !stored(&supervisor).contains(&"cache".to_owned())
    });
    let ran = supervisor.ctl("upgrade", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    // No cache came: the successor made a new one, counting from zero, and
    // keeps it (generation 2 put it).
    assert_eq!(items(addr).1, 0);
    assert_eq!(hit(addr), 1);
    let status = supervisor.status();
    let cache = status["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["name"] == "cache")
        .cloned()
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(cache["writer"], 2, "{status}");
}

#[test]
fn a_generation_speaking_protocol_version_2_cannot_remove_an_item_and_keeps_it() {
    let data = TempDir::new("items-v2");
    let supervisor = speaking(&data, "1..2");
    let addr = supervisor.addr();
    assert_eq!(hit(addr), 1);
    assert_eq!(request(addr, "FORGET cache").expect("FORGET"), "FORGOTTEN");
    supervisor.wait_log("cannot remove items", 0);
    let ran = supervisor.ctl("upgrade", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    // Still carried: the same counter.
    assert_eq!(hit(addr), 2);
}

#[test]
fn a_blob_an_overlap_generation_puts_in_its_drain_reaches_the_generation_serving() {
    let mut flags = Start::default().flags;
    flags.extend(["--mode", "overlap"].map(String::from));
    let supervisor = Supervisor::start_with(Start {
        flags,
        testd_args: vec!["--items".into(), "1".into()],
        env: vec![("RUST_LOG".into(), "handoff=warn".into())],
        ..Start::default()
    });
    let addr = supervisor.addr();
    assert_eq!(request(addr, "HANDED").expect("HANDED"), "-");
    for upgrade in 1..=5 {
        let draining = serving_pid(addr);
        let ran = supervisor.ctl("upgrade", &[]);
        assert_eq!(ran.code, Some(0), "{ran:?}");
        // The old generation drains after the commit, while the new one
        // serves: the blob arrives then, and only the new one can have it
        // (without a data directory testd keeps no revisions).
        let expected = format!("revisions=0 by={draining}");
        let mut last = String::new();
        eventually_within(testkit::WAIT, "the drained blob", || {
            last = request(addr, "HANDED").expect("HANDED");
            last == expected
        });
        assert_ne!(serving_pid(addr), draining, "upgrade {upgrade}: {last}");
    }
    // It is in the store too, for the generations after.
    let names = stored(&supervisor);
    assert!(names.iter().any(|name| name == "state"), "{names:?}");
}
