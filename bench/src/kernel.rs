//! The kernel's own TCP counters as a third witness, beside the clients'
//! logs and the supervisor's event log: a connection the kernel refused,
//! reset or dropped from a full accept queue is counted in `/proc/net/snmp`
//! and `/proc/net/netstat` whether or not a client noticed it.
//!
//! The counters belong to a network namespace. With `--netns` the benchmark
//! makes one of its own ([`enter_private_network`]), the deltas of a run
//! are the run's alone, and the verdict requires them at 0 for supervised
//! runs and above 0 for the naive-restart control; in a shared namespace,
//! any other traffic on the machine adds to them, and they are only
//! reported ([`Netns`]).

use std::cell::Cell;
use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The counters the witness reads, by `/proc` table and column name.
pub const WATCHED: [(&str, &str); 8] = [
    // Connections dropped because the accept queue was full, or dropped
    // on their way in for any reason (includes the overflows).
    ("TcpExt", "ListenOverflows"),
    ("TcpExt", "ListenDrops"),
    // SYNs dropped because the SYN queue was full.
    ("TcpExt", "TCPReqQFullDrop"),
    // A socket closed with unread data, or with data still arriving:
    // the kernel answers with a reset.
    ("TcpExt", "TCPAbortOnClose"),
    ("TcpExt", "TCPAbortOnData"),
    // Connects that failed (refused: nothing listening), established
    // connections ended by a reset, resets sent.
    ("Tcp", "AttemptFails"),
    ("Tcp", "EstabResets"),
    ("Tcp", "OutRsts"),
];

/// One reading of the watched counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counters(BTreeMap<&'static str, u64>);

impl Counters {
    /// Reads `snmp` and `netstat` of the calling thread's network
    /// namespace (`/proc/thread-self/net`; `/proc/net` would be the main
    /// thread's).
    pub fn read() -> Result<Counters, String> {
        let mut text = String::new();
        for path in [
            "/proc/thread-self/net/snmp",
            "/proc/thread-self/net/netstat",
        ] {
            text += &std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        }
        Counters::parse(&text)
    }

    /// Parses the `/proc/net` layout: per table, a line of names and then
    /// a line of values, both starting `Table:`.
    pub fn parse(text: &str) -> Result<Counters, String> {
        let mut all: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut lines = text.lines();
        while let Some(names) = lines.next() {
            let Some((table, names)) = names.split_once(':') else {
                continue;
            };
            let Some(values) = lines.next() else {
                return Err(format!("{table}: a line of names without values"));
            };
            let Some((again, values)) = values.split_once(':') else {
                return Err(format!("{table}: the values line has no table name"));
            };
            if again != table {
                return Err(format!("{table}: names followed by values of {again}"));
            }
            let names: Vec<&str> = names.split_whitespace().collect();
            let values: Vec<&str> = values.split_whitespace().collect();
            if names.len() != values.len() {
                return Err(format!(
                    "{table}: {} names but {} values",
                    names.len(),
                    values.len()
                ));
            }
            for (name, value) in names.into_iter().zip(values) {
                // Tcp MaxConn is -1; the watched counters are unsigned.
                if let Ok(value) = value.parse::<u64>() {
                    all.insert((table.to_owned(), name.to_owned()), value);
                }
            }
        }
        let mut counters = BTreeMap::new();
        for (table, name) in WATCHED {
            let value = all
                .get(&(table.to_owned(), name.to_owned()))
                .ok_or_else(|| format!("/proc/net has no {table} {name}"))?;
            counters.insert(name, *value);
        }
        Ok(Counters(counters))
    }

    /// What rose from `before` to `self` (a counter never falls; if one
    /// did, it counts as 0).
    pub fn since(&self, before: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(name, after)| {
                    let was = before.0.get(name).copied().unwrap_or(0);
                    (*name, after.saturating_sub(was))
                })
                .collect(),
        )
    }

    /// One counter by column name (0 if not watched).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Connections the kernel dropped before any process saw them:
    /// accept-queue overflows and drops, SYN-queue drops.
    pub fn dropped_on_the_way_in(&self) -> u64 {
        self.get("ListenDrops").max(self.get("ListenOverflows")) + self.get("TCPReqQFullDrop")
    }

    /// Connects refused and established connections reset.
    pub fn refused_or_reset(&self) -> u64 {
        self.get("AttemptFails") + self.get("EstabResets")
    }

    /// The sum of the watched counters: 0 when the kernel refused, reset
    /// and dropped nothing.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// The counters that moved, `Name N`, comma-separated ("" when
    /// none did): what a human reads to tell a full accept queue from a
    /// reset.
    pub fn moved(&self) -> String {
        self.0
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// As JSON, one field per counter.
    pub fn to_json(&self) -> Value {
        json!(self.0)
    }
}

/// Whether the counters are this benchmark's alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Netns {
    /// A namespace the benchmark made for itself ([`enter_private_network`]):
    /// only its clients, supervisor and daemons count.
    Private,
    /// The namespace it was started in: other traffic counts too.
    Shared,
}

thread_local! {
    /// Whether this thread entered a namespace of its own. Per thread, as
    /// namespaces are: threads it starts afterwards are inside too but say
    /// `Shared`, which errs on the safe side (their counts are only
    /// reported).
    static PRIVATE: Cell<bool> = const { Cell::new(false) };
}

/// Moves the calling thread into a network namespace of its own (loopback
/// up), so that the counters' deltas are its traffic alone: the load's
/// threads and the processes it starts from now on are inside too. Call it
/// first in `main` (or first in a test): threads that already exist stay
/// outside. Needs `CAP_SYS_ADMIN`.
pub fn enter_private_network() -> Result<(), String> {
    handoff::os::enter_private_network().map_err(|error| {
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        format!("{error}: {}", cause.unwrap_or_default())
    })?;
    PRIVATE.with(|private| private.set(true));
    Ok(())
}

impl Netns {
    /// Where the calling thread runs.
    pub fn current() -> Netns {
        if PRIVATE.with(Cell::get) {
            Netns::Private
        } else {
            Netns::Shared
        }
    }

    /// As the report writes it.
    pub fn name(self) -> &'static str {
        match self {
            Netns::Private => "private",
            Netns::Shared => "shared",
        }
    }
}

/// A run's kernel counters: the deltas and whose they are.
#[derive(Debug, Clone)]
pub struct Witness {
    /// What rose during the run.
    pub delta: Counters,
    /// Whether other traffic can be in `delta`.
    pub netns: Netns,
}

impl Witness {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "netns": self.netns.name(),
            "delta": self.delta.to_json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm MaxConn ActiveOpens AttemptFails EstabResets OutRsts
Tcp: 1 -1 10 2 3 4
";
    const NETSTAT: &str = "\
TcpExt: ListenOverflows ListenDrops TCPReqQFullDrop TCPAbortOnClose TCPAbortOnData
TcpExt: 5 6 7 8 9
IpExt: InNoRoutes
IpExt: 0
";

    fn sample(text: &str) -> Counters {
        Counters::parse(text).expect("parse")
    }

    #[test]
    fn the_watched_counters_are_read_by_name() {
        let counters = sample(&format!("{SNMP}{NETSTAT}"));
        assert_eq!(counters.get("AttemptFails"), 2);
        assert_eq!(counters.get("EstabResets"), 3);
        assert_eq!(counters.get("OutRsts"), 4);
        assert_eq!(counters.get("ListenOverflows"), 5);
        assert_eq!(counters.get("ListenDrops"), 6);
        assert_eq!(counters.get("TCPReqQFullDrop"), 7);
        assert_eq!(counters.get("TCPAbortOnClose"), 8);
        assert_eq!(counters.get("TCPAbortOnData"), 9);
        assert_eq!(counters.dropped_on_the_way_in(), 6 + 7);
        assert_eq!(counters.refused_or_reset(), 2 + 3);
    }

    #[test]
    fn deltas_subtract_and_never_go_negative() {
        let before = sample(&format!("{SNMP}{NETSTAT}"));
        let after = sample(&format!(
            "{}{NETSTAT}",
            SNMP.replace("1 -1 10 2 3 4", "1 -1 12 7 3 1")
        ));
        let delta = after.since(&before);
        assert_eq!(delta.get("AttemptFails"), 5);
        assert_eq!(delta.get("EstabResets"), 0);
        assert_eq!(delta.get("OutRsts"), 0, "a counter that fell counts as 0");
        assert_eq!(delta.moved(), "AttemptFails 5");
        assert_eq!(before.since(&before).moved(), "");
    }

    #[test]
    fn a_missing_counter_or_a_torn_table_is_an_error() {
        let error = Counters::parse(SNMP).expect_err("no TcpExt");
        assert!(error.contains("TcpExt ListenOverflows"), "{error}");
        let error = Counters::parse("Tcp: A B\nTcp: 1\n").expect_err("torn");
        assert!(error.contains("2 names but 1 values"), "{error}");
        let error = Counters::parse("Tcp: A B\n").expect_err("no values");
        assert!(error.contains("without values"), "{error}");
        let error = Counters::parse("Tcp: A\nUdp: 1\n").expect_err("mismatch");
        assert!(error.contains("values of Udp"), "{error}");
    }

    #[test]
    fn this_machine_has_the_counters() {
        let counters = Counters::read().expect("/proc/net");
        assert_eq!(counters.to_json().as_object().map(|o| o.len()), Some(8));
    }

    #[test]
    fn a_refused_connect_is_counted_by_the_kernel() {
        // In a thread of its own, which enters a private namespace where it
        // may (the namespace ends with the thread): there the count is
        // exact; in a shared one other traffic can only add to it.
        let (private, delta) = std::thread::spawn(|| {
            let private = handoff::os::enter_private_network().is_ok();
            // A port that was bound and released: nothing listens there.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind");
            let before = Counters::read().expect("before");
            let refused = std::net::TcpStream::connect(port);
            let after = Counters::read().expect("after");
            assert!(refused.is_err(), "something listens on {port}");
            (private, after.since(&before))
        })
        .join()
        .expect("thread");
        if private {
            assert_eq!(delta.get("AttemptFails"), 1, "{delta:?}");
            // The refusal is a reset sent by the kernel for the closed port.
            assert_eq!(delta.get("OutRsts"), 1, "{delta:?}");
            assert_eq!(delta.total(), 2, "{delta:?}");
        } else {
            assert!(delta.get("AttemptFails") >= 1, "{delta:?}");
        }
    }
}
