//! A fleet on one machine, rolled by a real Ansible with the shipped
//! collection and playbook (`contrib/ansible/`): N supervisors, each with
//! its own admin socket, port and data directory, kvd on half of them and
//! echod on the other half, as N inventory hosts with a local connection,
//! under an open-loop load against all N ports that reads back every
//! acknowledged write at the end.
//!
//! The plays, in order:
//! 1. the rolling play takes every host to build 2, batch by batch (each
//!    batch starts no sooner than the gate after the previous one);
//! 2. the same play again: `changed=0` on every host, nothing replaced;
//! 3. the play for build 3 in check mode: nothing changes anywhere;
//! 4. the play for build 3, where one kvd host of the second batch gets a
//!    binary that exits at start (allowed on that host only): that host
//!    rolls back and serves build 2, the rollout stops after that batch,
//!    later batches keep build 2 untouched, the recap shows the failure;
//! 5. the resumed play (the host's build fixed): everyone on build 3, the
//!    hosts already there unchanged.
//!
//! Throughout: 0 failed requests and 0 lost acknowledged writes.
//!
//! `ansible-core` comes from PyPI into a virtualenv under the target
//! directory (`.ci/run` makes it; the test makes it too when missing, or
//! takes `HANDOFF_ANSIBLE_VENV`). Without it and without
//! `HANDOFF_REQUIRE_ANSIBLE=1` (which CI sets) the test says SKIPPED.
//!
//! CI runs the 20-instance fleet (about a minute on 2 cores); a 6-instance
//! one, quicker for development, is ignored:
//! `cargo nextest run -p handoffctl --run-ignored only -E 'test(fleet::)'`.
//! Every process is bounded in time and stopped on drop: the supervisors
//! (SIGTERM, then SIGKILL), each playbook run's process group, the load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::run_group_bounded;

use crate::common::{
    Start, Supervisor, TempDir, another_build, example, handoffctl, http, sha256_hex, u64_of,
};
use crate::load::{Load, Report};

/// The gate between batches, as the playbook's `handoff_gate`.
const GATE: Duration = Duration::from_secs(2);
/// Requests per second and instance.
const RATE_PER_INSTANCE: u32 = 10;
/// Requests in flight at most (a handoff stalls its instance's requests).
const LOAD_WORKERS: usize = 32;
/// Bound on one playbook run.
const PLAY_BOUND: Duration = Duration::from_secs(10 * 60);
/// Bound on making the virtualenv (a download from PyPI).
const INSTALL_BOUND: Duration = Duration::from_secs(10 * 60);
/// The ansible-core series the collection is tested with (the last one
/// that runs on Python 3.11, the CI image's).
const ANSIBLE_CORE: &str = "ansible-core==2.19.*";

#[test]
fn a_rolling_upgrade_of_20_instances_with_ansible_stops_at_the_first_rollback() {
    fleet(20, &[1, 3, 6, 10]);
}

#[test]
#[ignore = "a quicker fleet for development (about 30 s against 60 s); CI runs the 20"]
fn a_rolling_upgrade_of_6_instances_with_ansible_stops_at_the_first_rollback() {
    fleet(6, &[1, 2, 3]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Daemon {
    Kvd,
    Echod,
}

impl Daemon {
    fn name(self) -> &'static str {
        match self {
            Daemon::Kvd => "kvd",
            Daemon::Echod => "echod",
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Daemon::Kvd => "exclusive",
            Daemon::Echod => "overlap",
        }
    }
}

/// A build on disk and its sha256.
#[derive(Debug, Clone)]
struct Build {
    path: PathBuf,
    sha256: String,
}

/// Builds 1 to 3 of each daemon: copies of the example, three sha256s.
fn builds(dir: &Path) -> BTreeMap<(Daemon, u8), Build> {
    let mut builds = BTreeMap::new();
    for daemon in [Daemon::Kvd, Daemon::Echod] {
        for version in 1..=3 {
            let path = dir.join(format!("{}-v{version}", daemon.name()));
            let sha256 = another_build(&example(daemon.name()), &path, &format!("v{version}"));
            builds.insert((daemon, version), Build { path, sha256 });
        }
    }
    builds
}

/// One host of the fleet: a supervisor and its daemon.
struct Instance {
    host: String,
    daemon: Daemon,
    supervisor: Supervisor,
    addr: SocketAddr,
    _data: Option<TempDir>,
}

impl Instance {
    fn sha256(&self) -> String {
        self.supervisor.status()["binary_sha256"]
            .as_str()
            .expect("binary_sha256")
            .to_owned()
    }

    /// `(generation, pid)` of the serving generation.
    fn serving(&self) -> (u64, u64) {
        let status = self.supervisor.status();
        (u64_of(&status, "generation"), u64_of(&status, "child_pid"))
    }

    /// The last handoff in `history`.
    fn last_history(&self) -> Value {
        let ran = self.supervisor.ctl("history", &["--json"]);
        let entries: Value = serde_json::from_str(&ran.stdout).expect("history JSON");
        entries
            .as_array()
            .and_then(|entries| entries.last().cloned())
            .expect("a history entry")
    }
}

/// Starts `count` supervisors on build 1 (kvd on even indices, echod on
/// odd ones), each allowed builds 2 and 3, and `broken` on host `broken_on`.
fn start_fleet(
    count: usize,
    builds: &BTreeMap<(Daemon, u8), Build>,
    broken: &Path,
    broken_on: usize,
) -> Vec<Instance> {
    let spawned: Vec<(String, Daemon, Supervisor, Option<TempDir>)> = (0..count)
        .map(|index| {
            let daemon = if index % 2 == 0 {
                Daemon::Kvd
            } else {
                Daemon::Echod
            };
            let mut flags: Vec<String> = [
                "--listen",
                "http=127.0.0.1:0",
                "--mode",
                daemon.mode(),
                "--deadline",
                "30s",
                "--drain-timeout",
                "5s",
            ]
            .map(String::from)
            .to_vec();
            for version in [2, 3] {
                flags.push("--allow-binary".into());
                flags.push(builds[&(daemon, version)].path.display().to_string());
            }
            if index == broken_on {
                flags.push("--allow-binary".into());
                flags.push(broken.display().to_string());
            }
            let data = (daemon == Daemon::Kvd).then(|| TempDir::new("fleet-data"));
            if let Some(data) = &data {
                flags.push("--data-dir".into());
                flags.push(data.path().display().to_string());
            }
            let supervisor = Supervisor::spawn(Start {
                flags,
                daemon: Some(vec![builds[&(daemon, 1)].path.display().to_string()]),
                ..Start::default()
            });
            (format!("h{:02}", index + 1), daemon, supervisor, data)
        })
        .collect();
    spawned
        .into_iter()
        .map(|(host, daemon, supervisor, data)| {
            supervisor.wait_serving();
            let addr = supervisor.addr_of("http");
            Instance {
                host,
                daemon,
                supervisor,
                addr,
                _data: data,
            }
        })
        .collect()
}

/// What the load acknowledged, per instance: kvd keys and their values.
type Acked = Arc<Mutex<Vec<(usize, String, String)>>>;

/// Open-loop load on every instance in turn: kvd gets `PUT /kv/KEY`
/// (acknowledged writes are remembered), echod gets a body to echo.
fn start_load(fleet: &[Instance], acked: &Acked) -> Load {
    let targets: Vec<(Daemon, SocketAddr, String)> = fleet
        .iter()
        .map(|instance| (instance.daemon, instance.addr, instance.host.clone()))
        .collect();
    let next = AtomicU64::new(0);
    let acked = Arc::clone(acked);
    let rate = RATE_PER_INSTANCE * u32::try_from(fleet.len()).expect("fleet size");
    Load::start_with(
        rate,
        LOAD_WORKERS,
        PLAY_BOUND * 6,
        Arc::new(move || {
            let n = next.fetch_add(1, Ordering::SeqCst);
            let index = usize::try_from(n).expect("count") % targets.len();
            let (daemon, addr, host) = &targets[index];
            let value = format!("{host}-{n}");
            match daemon {
                Daemon::Kvd => {
                    let key = format!("k{n}");
                    match http(*addr, "PUT", &format!("/kv/{key}"), &value) {
                        Ok((200, _)) => {
                            acked.lock().expect("acked").push((index, key, value));
                            Ok(())
                        }
                        Ok((code, body)) => Err(format!("{host}: PUT {code} {body:?}")),
                        Err(error) => Err(format!("{host}: PUT {error}")),
                    }
                }
                Daemon::Echod => match http(*addr, "POST", "/echo", &value) {
                    Ok((200, body)) if body == value => Ok(()),
                    Ok((code, body)) => Err(format!("{host}: POST {code} {body:?}")),
                    Err(error) => Err(format!("{host}: POST {error}")),
                },
            }
        }),
    )
}

/// A virtualenv with ansible-core, made if missing; `None` (skip) when it
/// cannot be made and CI does not require it.
fn ansible_venv() -> Option<PathBuf> {
    let venv = std::env::var_os("HANDOFF_ANSIBLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current_exe");
            // target/PROFILE/deps/cli-HASH
            exe.ancestors()
                .nth(3)
                .expect("target dir layout")
                .join("ansible-venv")
        });
    if venv.join("bin/ansible-playbook").exists() {
        return Some(venv);
    }
    let required = std::env::var_os("HANDOFF_REQUIRE_ANSIBLE").is_some_and(|v| v == "1");
    let made = (|| {
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        match run_group_bounded(create, INSTALL_BOUND)? {
            status if status.success() => {}
            status => return Err(format!("python3 -m venv: {status}")),
        }
        let mut install = Command::new(venv.join("bin/pip"));
        install.args(["install", "--quiet", ANSIBLE_CORE]);
        match run_group_bounded(install, INSTALL_BOUND)? {
            status if status.success() => Ok(()),
            status => Err(format!("pip install {ANSIBLE_CORE}: {status}")),
        }
    })();
    match made {
        Ok(()) => Some(venv),
        Err(error) if required => {
            panic!("HANDOFF_REQUIRE_ANSIBLE=1 but no ansible-core: {error}")
        }
        Err(error) => {
            eprintln!(
                "SKIPPED: no ansible-core in {} ({error}); .ci/run installs it",
                venv.display()
            );
            None
        }
    }
}

/// A host's line in the play recap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Recap {
    ok: u32,
    changed: u32,
    failed: u32,
}

/// One run of `ansible-playbook`.
#[derive(Debug)]
struct Play {
    code: Option<i32>,
    output: String,
    /// When it started, and how long it ran.
    began: Instant,
    took: Duration,
    recap: BTreeMap<String, Recap>,
}

impl Play {
    fn recap_of(&self, host: &str) -> Recap {
        self.recap
            .get(host)
            .copied()
            .unwrap_or_else(|| panic!("{host} is not in the recap:\n{}", self.output))
    }
}

/// The recap's lines: `host : ok=3 changed=1 unreachable=0 failed=0 ...`.
fn parse_recap(output: &str) -> BTreeMap<String, Recap> {
    let Some((_, recap)) = output.rsplit_once("PLAY RECAP") else {
        return BTreeMap::new();
    };
    recap
        .lines()
        .filter_map(|line| {
            let (host, counts) = line.split_once(" : ")?;
            let count = |name: &str| {
                counts
                    .split_whitespace()
                    .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
                    .and_then(|n| n.parse().ok())
            };
            Some((
                host.trim().to_owned(),
                Recap {
                    ok: count("ok")?,
                    changed: count("changed")?,
                    failed: count("failed")?,
                },
            ))
        })
        .collect()
}

/// Runs the shipped rolling playbook on `inventory`.
struct Ansible {
    venv: PathBuf,
    dir: TempDir,
    batches: String,
    forks: usize,
}

impl Ansible {
    fn play(&self, name: &str, inventory: &str, extra: &[&str]) -> Play {
        let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/ansible");
        let inventory_path = self.dir.path().join(format!("{name}.ini"));
        std::fs::write(&inventory_path, inventory).expect("inventory");
        let log = self.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let mut command = Command::new(self.venv.join("bin/ansible-playbook"));
        command
            .arg("-i")
            .arg(&inventory_path)
            .arg(contrib.join("rolling-upgrade.yml"))
            .args(["-e", &format!("{{\"handoff_batches\": {}}}", self.batches)])
            .args(extra)
            .current_dir(self.dir.path())
            .env("ANSIBLE_CONFIG", contrib.join("ansible.cfg"))
            .env("ANSIBLE_COLLECTIONS_PATH", &contrib)
            .env("ANSIBLE_HOME", self.dir.path().join("home"))
            .env("ANSIBLE_LOCAL_TEMP", self.dir.path().join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", self.dir.path().join("remote"))
            .env("ANSIBLE_FORKS", self.forks.to_string())
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            // cryptography's deprecation notices, not ours.
            .env("PYTHONWARNINGS", "ignore")
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        let started = Instant::now();
        let status = run_group_bounded(command, PLAY_BOUND).unwrap_or_else(|e| panic!("{e}"));
        let took = started.elapsed();
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        let recap = parse_recap(&output);
        eprintln!(
            "fleet: play {name}: exit {:?} in {:.1} s",
            status.code(),
            took.as_secs_f64()
        );
        Play {
            code: status.code(),
            output,
            began: started,
            took,
            recap,
        }
    }
}

/// The inventory: every host local, its supervisor and its target build.
fn inventory(fleet: &[Instance], venv: &Path, target: impl Fn(&Instance) -> Build) -> String {
    let mut out = String::from("[handoff_fleet]\n");
    for instance in fleet {
        let build = target(instance);
        out.push_str(&format!(
            "{} ansible_connection=local ansible_python_interpreter={} handoff_socket={} \
             handoff_binary={} handoff_sha256={}\n",
            instance.host,
            venv.join("bin/python3").display(),
            instance.supervisor.socket.display(),
            build.path.display(),
            build.sha256,
        ));
    }
    out.push_str(&format!(
        "\n[handoff_fleet:vars]\nhandoffctl={}\nhandoff_gate={}ms\nhandoff_gate_timeout=60s\n\
         handoff_deadline=30s\n",
        handoffctl().display(),
        GATE.as_millis()
    ));
    out
}

/// The batches as host index ranges, in inventory order.
fn batch_ranges(count: usize, batches: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut sizes = batches
        .iter()
        .copied()
        .chain(std::iter::repeat(*batches.last().expect("a batch")));
    while start < count {
        let end = (start + sizes.next().expect("repeats")).min(count);
        ranges.push(start..end);
        start = end;
    }
    ranges
}

fn fleet(count: usize, batches: &[usize]) {
    let Some(venv) = ansible_venv() else {
        return;
    };
    let fleet = Fleet::start(count, batches, venv);
    let acked: Acked = Arc::new(Mutex::new(Vec::new()));
    let load = start_load(&fleet.instances, &acked);
    load.wait_answered(u64::try_from(count * 5).expect("count"));
    let started = Instant::now();
    let (rollout, after_rollout) = fleet.rollout();
    let again = fleet.again(&after_rollout);
    let check = fleet.check(&after_rollout);
    let failing = fleet.failing(&after_rollout);
    let resume = fleet.resume();
    let all_plays = started.elapsed();
    let plays = [
        ("rollout", &rollout),
        ("again", &again),
        ("check", &check),
        ("failing", &failing),
        ("resume", &resume),
    ];
    load.wait_answered(u64::try_from(count * 5).expect("count"));
    let (report, read_back) = fleet.check_load(load, &acked, started, &plays);
    let took: Vec<String> = plays
        .iter()
        .map(|(name, play)| format!("{name} {:.1} s", play.took.as_secs_f64()))
        .collect();
    let daemons = |daemon| {
        fleet
            .instances
            .iter()
            .filter(|i| i.daemon == daemon)
            .count()
    };
    eprintln!(
        "fleet: {count} instances ({} kvd, {} echod), batches {batches:?}; plays: {}, {:.1} s in \
         all; load {}; {read_back} acknowledged writes read back, 0 lost; load average {}",
        daemons(Daemon::Kvd),
        daemons(Daemon::Echod),
        took.join(", "),
        all_plays.as_secs_f64(),
        report.summary(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
    );
}

/// The instances, their builds and the plays run on them.
struct Fleet {
    instances: Vec<Instance>,
    builds: BTreeMap<(Daemon, u8), Build>,
    /// The batches, as host index ranges.
    ranges: Vec<std::ops::Range<usize>>,
    /// The host whose build 3 exits at start, and that build.
    broken_on: usize,
    broken_build: Build,
    ansible: Ansible,
    venv: PathBuf,
    /// The builds' directory, removed last.
    _dir: TempDir,
}

impl Fleet {
    fn start(count: usize, batches: &[usize], venv: PathBuf) -> Fleet {
        let dir = TempDir::new("fleet");
        let builds = builds(dir.path());
        let ranges = batch_ranges(count, batches);
        assert!(ranges.len() >= 3, "a first, a second and later batches");
        // The host whose build 3 exits at start: the first kvd host of the
        // second batch.
        let broken_on = ranges[1]
            .clone()
            .find(|index| index % 2 == 0)
            .expect("a kvd host in the second batch");
        // A real executable that exits at once (an ELF: a pinned upgrade
        // runs the hashed file through /proc/self/fd, which a script cannot
        // be).
        let broken = dir.path().join("exits-at-start");
        std::fs::copy("/bin/false", &broken).expect("copy /bin/false");
        let broken_build = Build {
            sha256: sha256_hex(&broken),
            path: broken.clone(),
        };
        Fleet {
            instances: start_fleet(count, &builds, &broken, broken_on),
            builds,
            ranges,
            broken_on,
            broken_build,
            ansible: Ansible {
                venv: venv.clone(),
                dir: TempDir::new("fleet-ansible"),
                batches: format!("{batches:?}"),
                forks: count,
            },
            venv,
            _dir: dir,
        }
    }

    /// The inventory with every host's target `version`.
    fn inventory_for(&self, version: u8) -> String {
        inventory(&self.instances, &self.venv, |instance| {
            self.builds[&(instance.daemon, version)].clone()
        })
    }

    fn sha256_of(&self, instance: &Instance, version: u8) -> &str {
        &self.builds[&(instance.daemon, version)].sha256
    }

    /// Play 1, the rollout of build 2: batch after batch, each one after the
    /// previous one passed its gate; who serves on each host after it.
    fn rollout(&self) -> (Play, Vec<(u64, u64)>) {
        let rollout = self.ansible.play("rollout", &self.inventory_for(2), &[]);
        assert_eq!(rollout.code, Some(0), "{}", rollout.output);
        for instance in &self.instances {
            let recap = rollout.recap_of(&instance.host);
            let host = &instance.host;
            assert!(recap.changed >= 1 && recap.failed == 0, "{host}: {recap:?}");
            assert_eq!(
                instance.sha256(),
                self.sha256_of(instance, 2),
                "{host} runs build 2"
            );
            assert_eq!(instance.serving().0, 2, "{host}");
        }
        // A batch's first handoff began no sooner than the gate after the
        // previous batch's last one.
        let started_ms =
            |index: usize| u64_of(&self.instances[index].last_history(), "started_unix_ms");
        for pair in self.ranges.windows(2) {
            let previous_last = pair[0].clone().map(started_ms).max().expect("hosts");
            let next_first = pair[1].clone().map(started_ms).min().expect("hosts");
            assert!(
                next_first >= previous_last + u64::try_from(GATE.as_millis()).expect("ms"),
                "batch {:?} started {} ms after batch {:?}: the gate is {GATE:?}",
                pair[1],
                next_first.saturating_sub(previous_last),
                pair[0]
            );
        }
        let serving = self.instances.iter().map(Instance::serving).collect();
        (rollout, serving)
    }

    /// Play 2, the same again: nothing to do anywhere.
    fn again(&self, after_rollout: &[(u64, u64)]) -> Play {
        let again = self.ansible.play("again", &self.inventory_for(2), &[]);
        assert_eq!(again.code, Some(0), "{}", again.output);
        for (instance, before) in self.instances.iter().zip(after_rollout) {
            let recap = again.recap_of(&instance.host);
            let host = &instance.host;
            assert_eq!((recap.changed, recap.failed), (0, 0), "{host}: {recap:?}");
            assert_eq!(instance.serving(), *before, "{host} untouched");
        }
        again
    }

    /// Play 3, build 3 in check mode: a dry run on every host, nothing changed.
    fn check(&self, after_rollout: &[(u64, u64)]) -> Play {
        let check = self
            .ansible
            .play("check", &self.inventory_for(3), &["--check"]);
        assert_eq!(check.code, Some(0), "{}", check.output);
        for (instance, before) in self.instances.iter().zip(after_rollout) {
            let recap = check.recap_of(&instance.host);
            let host = &instance.host;
            assert_eq!(recap.failed, 0, "{host}: {recap:?}");
            assert_eq!(
                recap.changed, 1,
                "{host}: the dry run says it would change: {recap:?}"
            );
            assert_eq!(instance.serving(), *before, "{host} untouched");
            assert_eq!(instance.sha256(), self.sha256_of(instance, 2));
        }
        check
    }

    /// Play 4, build 3 broken on one host of the second batch: that host rolls
    /// back and serves build 2, the rollout stops after its batch.
    fn failing(&self, after_rollout: &[(u64, u64)]) -> Play {
        let broken_host = &self.instances[self.broken_on].host;
        let inventory = inventory(&self.instances, &self.venv, |instance| {
            if &instance.host == broken_host {
                self.broken_build.clone()
            } else {
                self.builds[&(instance.daemon, 3)].clone()
            }
        });
        let failing = self.ansible.play("failing", &inventory, &[]);
        assert_ne!(failing.code, Some(0), "{}", failing.output);
        let failed_host = &self.instances[self.broken_on];
        assert_eq!(
            failing.recap_of(&failed_host.host).failed,
            1,
            "the recap shows the failure:\n{}",
            failing.output
        );
        let told = failing
            .output
            .find("fatal: [")
            .map_or("", |at| &failing.output[at..]);
        eprintln!("fleet: what the failing play shows:\n{told}");
        // That host rolled back and serves build 2, the same generation.
        assert_eq!(failed_host.serving(), after_rollout[self.broken_on]);
        assert_eq!(
            failed_host.sha256(),
            self.sha256_of(failed_host, 2),
            "the failed host serves the old build"
        );
        let rolled_back = failed_host.supervisor.status()["last_handoff"].clone();
        assert_eq!(rolled_back["committed"], false, "{rolled_back}");
        assert_eq!(rolled_back["serving"], true, "{rolled_back}");
        self.check_others_after_failure(&failing, after_rollout);
        failing
    }

    /// After the failing play: the first two batches run build 3, later
    /// batches never started (build 2, the same generation, not in the
    /// recap's counts).
    fn check_others_after_failure(&self, failing: &Play, after_rollout: &[(u64, u64)]) {
        for (index, instance) in self.instances.iter().enumerate() {
            let host = &instance.host;
            if index == self.broken_on {
                continue;
            }
            if index < self.ranges[2].start {
                let build_3 = self.sha256_of(instance, 3);
                assert_eq!(
                    instance.sha256(),
                    build_3,
                    "{host} of batch 1 or 2 runs build 3"
                );
                continue;
            }
            assert_eq!(instance.serving(), after_rollout[index], "{host} untouched");
            assert_eq!(instance.sha256(), self.sha256_of(instance, 2));
            let recap = failing.recap.get(host);
            assert!(
                recap.is_none_or(|recap| recap.ok == 0 && recap.changed == 0),
                "{host} did not run: {recap:?}"
            );
        }
    }

    /// Play 5, resumed with the host's build fixed: everyone on build 3, the
    /// hosts that have it already unchanged.
    fn resume(&self) -> Play {
        let resume = self.ansible.play("resume", &self.inventory_for(3), &[]);
        assert_eq!(resume.code, Some(0), "{}", resume.output);
        for (index, instance) in self.instances.iter().enumerate() {
            let recap = resume.recap_of(&instance.host);
            let already = index < self.ranges[2].start && index != self.broken_on;
            let host = &instance.host;
            assert_eq!(recap.changed, u32::from(!already), "{host}: {recap:?}");
            assert_eq!(instance.sha256(), self.sha256_of(instance, 3));
        }
        resume
    }

    /// The load: nothing failed (each failure said with its send time and
    /// the play then running), and every acknowledged write is there; the
    /// report and how many writes were read back.
    fn check_load(
        &self,
        load: Load,
        acked: &Acked,
        started: Instant,
        plays: &[(&str, &Play)],
    ) -> (Report, usize) {
        let report: Report = load.finish();
        let when: Vec<String> = report
            .failed_at
            .iter()
            .take(10)
            .map(|at| during(*at, started, plays))
            .collect();
        assert_eq!(
            report.failed(),
            0,
            "failed requests: {:?}, sent at {when:?}",
            &report.failures[..report.failures.len().min(10)]
        );
        let acked = std::mem::take(&mut *acked.lock().expect("acked"));
        let lost: Vec<String> = acked
            .iter()
            .filter_map(|(index, key, value)| {
                let instance = &self.instances[*index];
                match http(instance.addr, "GET", &format!("/kv/{key}"), "") {
                    Ok((200, body)) if body == *value => None,
                    other => Some(format!("{}: {key}: {other:?}", instance.host)),
                }
            })
            .collect();
        assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
        (report, acked.len())
    }
}

#[test]
fn batches_follow_ansibles_serial_list() {
    assert_eq!(batch_ranges(6, &[1, 2, 3]), vec![0..1, 1..3, 3..6]);
    assert_eq!(
        batch_ranges(20, &[1, 3, 6, 10]),
        vec![0..1, 1..4, 4..10, 10..20]
    );
    // The last size repeats, as Ansible's serial does.
    assert_eq!(batch_ranges(5, &[1, 2]), vec![0..1, 1..3, 3..5]);
}

#[test]
fn the_recap_is_read_per_host() {
    let output = "PLAY RECAP *****\n\
        h01                        : ok=3    changed=1    unreachable=0    failed=0    skipped=0\n\
        h02                        : ok=1    changed=0    unreachable=0    failed=1    skipped=0\n";
    let recap = parse_recap(output);
    assert_eq!(
        recap["h01"],
        Recap {
            ok: 3,
            changed: 1,
            failed: 0
        }
    );
    assert_eq!(recap["h02"].failed, 1);
}

/// When a request due at `at` was sent: seconds after `started`, and the
/// play then running, if any.
fn during(at: Instant, started: Instant, plays: &[(&str, &Play)]) -> String {
    let play = plays
        .iter()
        .find(|(_, play)| play.began <= at && at <= play.began + play.took)
        .map_or("between plays", |(name, _)| name);
    let after = at.saturating_duration_since(started).as_secs_f64();
    format!("+{after:.2} s ({play})")
}
