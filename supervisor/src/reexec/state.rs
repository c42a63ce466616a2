//! What crosses the supervisor's exec, and what each image says about
//! itself: the carried state's schema (versioned; unknown keys ignored, a
//! must-understand list refused when a key in it is unknown) and the
//! `self-check` a target runs before anything changes. Pure data and pure
//! decisions, tested here; the I/O is in `reexec` and `restore`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::admin::wire::ImageRecord;
use crate::history::History;

/// The schema this build writes.
pub const STATE_SCHEMA: u32 = 1;
/// The oldest schema this build reads.
pub const STATE_SCHEMA_MIN: u32 = 1;

/// Every key of [`Carried`]: what this build understands.
const KNOWN: &[&str] = &[
    "schema",
    "must_understand",
    "from",
    "to",
    "start_path",
    "run_args",
    "config",
    "listeners",
    "admin_fd",
    "lock_fd",
    "library",
    "library_fds",
    "history",
    "caller_fd",
    "image_fd",
    "requested_ns",
    "exec_ns",
    "phases_ms",
    "events",
    "reexecs",
    "metrics",
    "identities",
    "socket_files",
];

/// The keys without which a reader would run wrong: one that does not
/// know any of them refuses the state.
const MUST_UNDERSTAND: &[&str] = &[
    "schema",
    "run_args",
    "listeners",
    "admin_fd",
    "lock_fd",
    "library",
    "library_fds",
    "image_fd",
];

/// The supervisor as it crosses an exec. Fds are numbers: the exec keeps
/// them where they were.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    /// [`STATE_SCHEMA`] of the writer.
    pub schema: u32,
    /// Keys the reader must know.
    pub must_understand: Vec<String>,
    /// The image that wrote this.
    pub from: ImageRecord,
    /// The image it execs (absent in an exec back).
    pub to: Option<ImageRecord>,
    /// The path the supervisor was first started from: a re-exec's default
    /// target.
    pub start_path: PathBuf,
    /// The arguments `run` was first started with (after `run`).
    pub run_args: Vec<String>,
    /// The config file as it was read at the first start: a re-exec does
    /// not re-read it.
    pub config: Option<CarriedConfig>,
    /// The listeners by name.
    pub listeners: Vec<CarriedListener>,
    /// The admin socket's listener.
    pub admin_fd: i32,
    /// The supervisor's lock (the open file whose `flock` it holds).
    pub lock_fd: Option<i32>,
    /// The library's frozen supervisor, as it wrote it.
    pub library: serde_json::Value,
    /// The library's fds, in its order.
    pub library_fds: Vec<i32>,
    /// The history.
    pub history: History,
    /// The admin connection that asked, to be answered by whichever image
    /// ends up in charge.
    pub caller_fd: Option<i32>,
    /// The image to exec back to.
    pub image_fd: i32,
    /// When the re-exec was asked (`CLOCK_MONOTONIC`, nanoseconds).
    pub requested_ns: u64,
    /// When the exec was called.
    pub exec_ns: u64,
    /// The steps done before the exec.
    pub phases_ms: BTreeMap<String, f64>,
    /// The event fan-out's memory.
    pub events: EventsCarried,
    /// Re-execs committed by this supervisor so far.
    pub reexecs: u64,
    /// The binaries hashed so far, by file identity: the next image need
    /// not hash them again (the builds a re-exec alternates, its own).
    #[serde(default)]
    pub identities: Vec<(crate::identity::Key, String)>,
    /// The Prometheus metrics' counters (`--metrics`); absent from a
    /// writer without them, which the reader then starts from zero.
    #[serde(default)]
    pub metrics: Option<crate::metrics::Counters>,
    /// The listeners' socket files to remove at a clean stop; absent from
    /// a writer without them (nothing is removed then).
    #[serde(default)]
    pub socket_files: Vec<crate::socket_file::SocketFile>,
}

/// A config file's path and text.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CarriedConfig {
    /// Where it was read.
    pub path: PathBuf,
    /// What it said.
    pub text: String,
}

/// One listener.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct CarriedListener {
    /// Its name.
    pub name: String,
    /// Its fd.
    pub fd: i32,
}

/// What the event fan-out remembers between events.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct EventsCarried {
    /// systemd heard READY=1.
    pub ready: bool,
    /// The last generation to end ended cleanly.
    pub clean: bool,
}

impl Carried {
    /// The must-understand list this build writes.
    pub fn must_understand() -> Vec<String> {
        MUST_UNDERSTAND.iter().map(|&key| key.to_owned()).collect()
    }

    /// The JSON written into the memfd.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|error| format!("writing the state: {error}"))
    }

    /// Reads a state: its schema must be one this build reads, and every
    /// key it says must be understood must be one this build knows.
    pub fn from_bytes(bytes: &[u8]) -> Result<Carried, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|error| format!("the state is not JSON: {error}"))?;
        let schema = value
            .get("schema")
            .and_then(serde_json::Value::as_u64)
            .ok_or("the state has no schema number")?;
        if !(u64::from(STATE_SCHEMA_MIN)..=u64::from(STATE_SCHEMA)).contains(&schema) {
            return Err(format!(
                "the state has schema {schema}; this build reads {STATE_SCHEMA_MIN} to {STATE_SCHEMA}"
            ));
        }
        let unknown: Vec<&str> = value
            .get("must_understand")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .filter(|key| !KNOWN.contains(key))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "the state needs keys this build does not know: {}",
                unknown.join(", ")
            ));
        }
        serde_json::from_value(value).map_err(|error| format!("the state does not parse: {error}"))
    }
}

/// What `handoffctl self-check` prints: what this build is and what it
/// can take over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SelfCheck {
    /// The package version.
    pub version: String,
    /// The carried state's schemas it reads.
    pub state_schema: Range,
    /// The library's frozen-state version (private to a library build:
    /// must be equal).
    pub frozen_state: u32,
    /// The control protocol versions it speaks with generations.
    pub wire: Range,
}

/// An inclusive range of versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Range {
    /// Lowest.
    pub min: u32,
    /// Highest.
    pub max: u32,
}

impl SelfCheck {
    /// This build's.
    pub fn ours() -> SelfCheck {
        let wire = handoff::wire::PROTOCOL_VERSIONS;
        SelfCheck {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            state_schema: Range {
                min: STATE_SCHEMA_MIN,
                max: STATE_SCHEMA,
            },
            frozen_state: handoff::supervisor::FROZEN_VERSION,
            wire: Range {
                min: u32::from(wire.min),
                max: u32::from(wire.max),
            },
        }
    }

    /// Whether the build that printed `self` can take over from `ours`:
    /// it reads the schema `ours` writes, the same frozen state, and every
    /// protocol version `ours` may be speaking with a generation.
    pub fn can_take_over_from(&self, ours: &SelfCheck) -> Result<(), String> {
        let schema = ours.state_schema.max;
        if !(self.state_schema.min..=self.state_schema.max).contains(&schema) {
            return Err(format!(
                "it reads state schemas {} to {}, this supervisor writes {schema}",
                self.state_schema.min, self.state_schema.max
            ));
        }
        if self.frozen_state != ours.frozen_state {
            return Err(format!(
                "its library reads frozen-state version {}, this supervisor writes {}",
                self.frozen_state, ours.frozen_state
            ));
        }
        if self.wire.min > ours.wire.min || self.wire.max < ours.wire.max {
            return Err(format!(
                "it speaks protocol versions {} to {}, generations here may speak {} to {}",
                self.wire.min, self.wire.max, ours.wire.min, ours.wire.max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried() -> Carried {
        Carried {
            schema: STATE_SCHEMA,
            must_understand: Carried::must_understand(),
            from: ImageRecord {
                version: "1.0.0".into(),
                sha256: "aa".into(),
            },
            to: None,
            start_path: "/usr/bin/handoffctl".into(),
            run_args: vec!["--listen".into(), "http=127.0.0.1:0".into()],
            config: None,
            listeners: vec![CarriedListener {
                name: "http".into(),
                fd: 7,
            }],
            admin_fd: 5,
            lock_fd: Some(6),
            library: serde_json::json!({"version": 1}),
            library_fds: vec![9, 10],
            history: History::default(),
            caller_fd: Some(12),
            image_fd: 4,
            requested_ns: 1,
            exec_ns: 2,
            phases_ms: BTreeMap::new(),
            events: EventsCarried::default(),
            reexecs: 0,
            metrics: None,
            identities: Vec::new(),
            socket_files: vec![crate::socket_file::SocketFile {
                path: "/run/app.sock".into(),
                dev: 1,
                ino: 2,
            }],
        }
    }

    #[test]
    fn a_state_reads_back() {
        let state = carried();
        let back = Carried::from_bytes(&state.to_bytes().expect("write")).expect("read");
        assert_eq!(back.run_args, state.run_args);
        assert_eq!(back.library_fds, state.library_fds);
        assert_eq!(back.socket_files, state.socket_files);
        assert_eq!(back.caller_fd, state.caller_fd);
    }

    #[test]
    fn the_metrics_counters_cross_and_a_state_without_them_still_reads() {
        let mut state = carried();
        let counters = crate::metrics::Counters {
            probation_rollbacks: 3,
            ..Default::default()
        };
        state.metrics = Some(counters.clone());
        let back = Carried::from_bytes(&state.to_bytes().expect("write")).expect("read");
        assert_eq!(back.metrics, Some(counters));
        let mut older = serde_json::to_value(carried()).expect("value");
        older.as_object_mut().expect("an object").remove("metrics");
        let bytes = serde_json::to_vec(&older).expect("bytes");
        assert_eq!(Carried::from_bytes(&bytes).expect("read").metrics, None);
    }

    #[test]
    fn unknown_optional_keys_are_ignored() {
        let mut value = serde_json::to_value(carried()).expect("value");
        value["a_later_key"] = serde_json::json!({"anything": true});
        let bytes = serde_json::to_vec(&value).expect("bytes");
        assert!(Carried::from_bytes(&bytes).is_ok());
    }

    #[test]
    fn an_unknown_must_understand_key_is_refused() {
        let mut value = serde_json::to_value(carried()).expect("value");
        value["must_understand"]
            .as_array_mut()
            .expect("array")
            .push("quorum".into());
        let bytes = serde_json::to_vec(&value).expect("bytes");
        let error = Carried::from_bytes(&bytes).expect_err("refused");
        assert!(error.contains("quorum"), "{error}");
    }

    #[test]
    fn a_schema_out_of_range_is_refused() {
        let mut value = serde_json::to_value(carried()).expect("value");
        value["schema"] = (STATE_SCHEMA + 1).into();
        let error =
            Carried::from_bytes(&serde_json::to_vec(&value).expect("bytes")).expect_err("refused");
        assert!(error.contains("schema"), "{error}");
        assert!(Carried::from_bytes(b"not json").is_err());
    }

    #[test]
    fn every_must_understand_key_is_known() {
        for key in MUST_UNDERSTAND {
            assert!(KNOWN.contains(key), "{key}");
        }
        // And KNOWN is exactly the struct's keys.
        let value = serde_json::to_value(carried()).expect("value");
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut known = KNOWN.to_vec();
        known.sort_unstable();
        assert_eq!(keys, known);
    }

    #[test]
    fn a_target_takes_over_only_what_it_reads() {
        let ours = SelfCheck::ours();
        assert_eq!(ours.can_take_over_from(&ours), Ok(()));
        let mut older = ours.clone();
        older.state_schema = Range {
            min: STATE_SCHEMA + 1,
            max: STATE_SCHEMA + 2,
        };
        assert!(older.can_take_over_from(&ours).is_err());
        let mut other_library = ours.clone();
        other_library.frozen_state += 1;
        assert!(other_library.can_take_over_from(&ours).is_err());
        let mut narrow = ours.clone();
        narrow.wire.max = narrow.wire.min.saturating_sub(1);
        assert!(narrow.can_take_over_from(&ours).is_err());
    }
}
