//! systemd's file-descriptor store (`sd_notify(3)`: `FDSTORE=1`,
//! `FDSTOREREMOVE=1`, `FDNAME=`, `FDPOLL=0`), sans-I/O: what a
//! notification stores, removes or refuses, what every later spawn of the
//! daemon gets back, and the bound. One store per supervisor, shared by all
//! its generations: a generation stores, any later one (an upgrade's
//! successor, a restart after a crash) takes back (I19 in ARCHITECTURE.md).
//!
//! Generic over the fd (`F`: the driver's `OwnedFd`; tokens in the tests),
//! so an entry this model drops is an fd the driver closes. The driver
//! (`supervisor/fdstore.rs`) receives the fds, describes each (its file
//! identity and kind, `sys`), checks stored fds for a hang-up before each
//! use, and logs every [`StoreNote`].
//!
//! As systemd does it (`sd_notify(3)`, `sd_listen_fds_with_names(3)`,
//! `FileDescriptorStoreMax=` in `systemd.service(5)`, its `service.c`):
//!
//! - `FDSTORE=1` stores the fds that came with the message, all under the
//!   message's `FDNAME=`, or under `stored` without one. A name is ASCII
//!   without control characters or `:`, at most 255 bytes (empty is
//!   allowed); an invalid one is ignored (the fds are stored as `stored`)
//!   with a note. Several fds may share a name; they accumulate.
//! - An fd for an object already stored (the same file: device and inode)
//!   is a duplicate and is not stored again (closed).
//! - At most `max` entries (`FileDescriptorStoreMax=`); the first fd past
//!   the bound and every one after it in that message are refused (closed),
//!   noted once. A bound of 0 turns the store off.
//! - `FDSTOREREMOVE=1` with `FDNAME=` removes every entry of that name; it
//!   wins over an `FDSTORE=1` in the same message. Without a valid name it
//!   is ignored with a note.
//! - `FDPOLL=0` exempts the message's fds from the hang-up check: without
//!   it an fd whose peer hung up (`POLLHUP`, `POLLERR`) is dropped.
//! - Fds that come without `FDSTORE=1`, from a pid other than the
//!   generation's own (systemd's `NotifyAccess=main`), or in a message
//!   whose control data the kernel truncated (`MSG_CTRUNC`) are refused.
//! - Each spawn gets every entry, in the order stored, after the
//!   listeners.
//!
//! Where this deviates: a duplicate is checked before the bound (systemd
//! checks the bound first; either way the fd is closed and the store
//! unchanged, only the log line differs); a duplicate is the same file
//! (`fstat`), where systemd compares open file descriptions when the kernel
//! lets it (the two differ only for one file opened twice); entries are
//! handed out oldest first (systemd's order is not documented; its code
//! hands out the newest first); a hang-up is found by a check before each
//! use of the store rather than at once (see `supervisor/fdstore.rs`).

/// The name of fds stored without a valid `FDNAME=`.
pub const DEFAULT_FDNAME: &str = "stored";

/// The longest `FDNAME=` systemd accepts, in bytes.
pub const FDNAME_MAX: usize = 255;

/// What a stored fd is, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredKind {
    /// A TCP socket.
    Tcp,
    /// A UDP socket.
    Udp,
    /// A Unix stream socket.
    Unix,
    /// A memory file (`memfd_create`).
    Memfd,
    /// A pipe or FIFO.
    Pipe,
    /// Anything else.
    Other,
}

impl StoredKind {
    /// Its name in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoredKind::Tcp => "tcp",
            StoredKind::Udp => "udp",
            StoredKind::Unix => "unix",
            StoredKind::Memfd => "memfd",
            StoredKind::Pipe => "pipe",
            StoredKind::Other => "other",
        }
    }
}

/// The object an fd refers to (`fstat`'s device and inode): two fds with
/// the same identity are duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    /// `st_dev`.
    pub device: u64,
    /// `st_ino`.
    pub inode: u64,
}

/// One fd that arrived with a notification, described by the driver.
#[derive(Debug)]
pub struct Arrived<F> {
    /// The fd.
    pub fd: F,
    /// What it refers to.
    pub file: FileId,
    /// What it is.
    pub kind: StoredKind,
}

/// A notification as the store sees it.
#[derive(Debug)]
pub struct Delivery<'a, F> {
    /// The pid of the generation whose notification socket it came on.
    pub generation_pid: u32,
    /// The sender's pid (`SCM_CREDENTIALS`; `None`: no credentials).
    pub sender: Option<u32>,
    /// The datagram (`KEY=VALUE` lines).
    pub text: &'a str,
    /// The fds that came with it (`SCM_RIGHTS`).
    pub fds: Vec<Arrived<F>>,
    /// The kernel truncated the control data (`MSG_CTRUNC`): fds were lost.
    pub truncated: bool,
}

/// One stored fd.
#[derive(Debug)]
pub struct Entry<F> {
    /// Its name (`FDNAME=`, or [`DEFAULT_FDNAME`]).
    pub name: String,
    /// Whether it is checked for a hang-up (not stored with `FDPOLL=0`).
    pub poll: bool,
    /// What it refers to.
    pub file: FileId,
    /// What it is.
    pub kind: StoredKind,
    /// The fd.
    pub fd: F,
}

/// Names an entry while the store holds it (for the hang-up check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId(u64);

/// What the store did, one log line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreNote {
    /// Fds were stored under `name`; the store holds `total` now.
    Stored {
        /// Their name.
        name: String,
        /// How many.
        count: usize,
        /// Entries in the store now.
        total: usize,
    },
    /// An fd for an object already stored was not stored again.
    Duplicate {
        /// The name it came with.
        name: String,
    },
    /// The store is full: `refused` fds were closed.
    Full {
        /// The name they came with.
        name: String,
        /// How many were closed.
        refused: usize,
        /// The bound.
        max: usize,
    },
    /// `FDNAME=` was invalid: the fds are stored as [`DEFAULT_FDNAME`].
    InvalidName {
        /// The name given.
        given: String,
    },
    /// `FDSTOREREMOVE=1` removed `count` entries named `name`.
    Removed {
        /// The name.
        name: String,
        /// How many entries (0: none had that name).
        count: usize,
    },
    /// `FDSTOREREMOVE=1` without a valid `FDNAME=`: ignored.
    RemoveWithoutName,
    /// Fds from a pid other than the generation's: closed.
    ForeignSender {
        /// The sender.
        sender: Option<u32>,
        /// The generation's pid.
        expected: u32,
        /// How many fds were closed.
        closed: usize,
    },
    /// The control data was truncated: the message's fds were closed.
    Truncated {
        /// How many had arrived.
        closed: usize,
    },
    /// Fds came without `FDSTORE=1` (or with `FDSTOREREMOVE=1`): closed.
    NotStored {
        /// How many.
        closed: usize,
    },
    /// A stored fd's peer hung up: it was dropped.
    HungUp {
        /// Its name.
        name: String,
        /// What it was.
        kind: StoredKind,
    },
}

/// What a notification's text asks of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRequest {
    /// `FDSTORE=1`: store the fds under `name` (`None`: no `FDNAME=`).
    Store {
        /// The first `FDNAME=`, as given.
        name: Option<String>,
        /// `false` with `FDPOLL=0`.
        poll: bool,
    },
    /// `FDSTOREREMOVE=1`, with the first `FDNAME=` as given.
    Remove {
        /// The name.
        name: Option<String>,
    },
    /// Nothing about the store.
    Nothing,
}

impl StoreRequest {
    /// Reads the lines of a datagram as systemd does: whole lines
    /// `FDSTORE=1`, `FDSTOREREMOVE=1`, `FDPOLL=0`, and the first line
    /// starting `FDNAME=`.
    pub fn parse(text: &str) -> StoreRequest {
        let has = |line: &str| text.split('\n').any(|l| l == line);
        let name = text
            .split('\n')
            .find_map(|l| l.strip_prefix("FDNAME="))
            .map(str::to_owned);
        if has("FDSTOREREMOVE=1") {
            StoreRequest::Remove { name }
        } else if has("FDSTORE=1") {
            StoreRequest::Store {
                name,
                poll: !has("FDPOLL=0"),
            }
        } else {
            StoreRequest::Nothing
        }
    }
}

/// Whether systemd accepts `name` as an fd name: ASCII without control
/// characters (DEL included) or `:`, at most [`FDNAME_MAX`] bytes.
pub fn fdname_is_valid(name: &str) -> bool {
    name.len() <= FDNAME_MAX
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b':')
}

/// One row of `status`: the entries sharing a name and a kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredGroup {
    /// The name.
    pub name: String,
    /// The kind.
    pub kind: StoredKind,
    /// How many entries.
    pub count: usize,
}

/// The store: at most `max` entries, oldest first.
#[derive(Debug)]
pub struct FdStore<F> {
    max: usize,
    entries: Vec<(EntryId, Entry<F>)>,
    next_id: u64,
}

impl<F> FdStore<F> {
    /// An empty store holding at most `max` fds (0: off).
    pub fn new(max: usize) -> FdStore<F> {
        FdStore {
            max,
            entries: Vec::new(),
            next_id: 0,
        }
    }

    /// A store holding `entries` again (after the supervisor replaced its
    /// image), all of them even past `max`.
    pub fn restore(max: usize, entries: Vec<Entry<F>>) -> FdStore<F> {
        let mut store = FdStore::new(max);
        for entry in entries {
            store.push(entry);
        }
        store
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many fds it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry<F>> {
        self.entries.iter().map(|(_, entry)| entry)
    }

    /// What a spawn gets after its listeners: every entry's name and fd,
    /// oldest first.
    pub fn handed_out(&self) -> impl Iterator<Item = (&str, &F)> {
        self.entries().map(|entry| (entry.name.as_str(), &entry.fd))
    }

    /// The entries to check for a hang-up (those not stored with
    /// `FDPOLL=0`).
    pub fn polled(&self) -> impl Iterator<Item = (EntryId, &F)> {
        self.entries
            .iter()
            .filter(|(_, entry)| entry.poll)
            .map(|(id, entry)| (*id, &entry.fd))
    }

    /// Drops the entries whose peer hung up (ids from [`FdStore::polled`]).
    pub fn hung_up(&mut self, ids: &[EntryId]) -> Vec<StoreNote> {
        let mut notes = Vec::new();
        self.entries.retain(|(id, entry)| {
            let gone = ids.contains(id);
            if gone {
                notes.push(StoreNote::HungUp {
                    name: entry.name.clone(),
                    kind: entry.kind,
                });
            }
            !gone
        });
        notes
    }

    /// The entries grouped by name and kind, in the order each group was
    /// first stored.
    pub fn groups(&self) -> Vec<StoredGroup> {
        let mut groups: Vec<StoredGroup> = Vec::new();
        for entry in self.entries() {
            match groups
                .iter_mut()
                .find(|group| group.name == entry.name && group.kind == entry.kind)
            {
                Some(group) => group.count += 1,
                None => groups.push(StoredGroup {
                    name: entry.name.clone(),
                    kind: entry.kind,
                    count: 1,
                }),
            }
        }
        groups
    }

    /// Takes one notification: stores, removes or refuses as its text
    /// says. Every fd it does not keep is dropped (closed).
    pub fn deliver(&mut self, delivery: Delivery<'_, F>) -> Vec<StoreNote> {
        let request = StoreRequest::parse(delivery.text);
        let concerned = !delivery.fds.is_empty() || request != StoreRequest::Nothing;
        let closed = delivery.fds.len();
        if !concerned {
            return Vec::new();
        }
        // Truncated first: the kernel puts the credentials first, so a
        // control buffer too small for them loses the sender too.
        if delivery.truncated {
            return vec![StoreNote::Truncated { closed }];
        }
        if delivery.sender != Some(delivery.generation_pid) {
            return vec![StoreNote::ForeignSender {
                sender: delivery.sender,
                expected: delivery.generation_pid,
                closed,
            }];
        }
        match request {
            StoreRequest::Store { name, poll } => self.store(name, poll, delivery.fds),
            StoreRequest::Remove { name } => {
                let mut notes = vec![self.remove(name)];
                if closed > 0 {
                    notes.push(StoreNote::NotStored { closed });
                }
                notes
            }
            StoreRequest::Nothing => vec![StoreNote::NotStored { closed }],
        }
    }

    fn store(&mut self, name: Option<String>, poll: bool, fds: Vec<Arrived<F>>) -> Vec<StoreNote> {
        let mut notes = Vec::new();
        let name = match name {
            Some(name) if fdname_is_valid(&name) => name,
            Some(given) => {
                notes.push(StoreNote::InvalidName { given });
                DEFAULT_FDNAME.to_owned()
            }
            None => DEFAULT_FDNAME.to_owned(),
        };
        let (mut stored, mut refused) = (0, 0);
        for arrived in fds {
            if self.entries().any(|entry| entry.file == arrived.file) {
                notes.push(StoreNote::Duplicate { name: name.clone() });
            } else if refused > 0 || self.entries.len() >= self.max {
                refused += 1;
            } else {
                self.push(Entry {
                    name: name.clone(),
                    poll,
                    file: arrived.file,
                    kind: arrived.kind,
                    fd: arrived.fd,
                });
                stored += 1;
            }
        }
        if stored > 0 {
            notes.push(StoreNote::Stored {
                name: name.clone(),
                count: stored,
                total: self.entries.len(),
            });
        }
        if refused > 0 {
            notes.push(StoreNote::Full {
                name,
                refused,
                max: self.max,
            });
        }
        notes
    }

    fn remove(&mut self, name: Option<String>) -> StoreNote {
        let Some(name) = name.filter(|name| fdname_is_valid(name)) else {
            return StoreNote::RemoveWithoutName;
        };
        let before = self.entries.len();
        self.entries.retain(|(_, entry)| entry.name != name);
        StoreNote::Removed {
            count: before - self.entries.len(),
            name,
        }
    }

    fn push(&mut self, entry: Entry<F>) {
        self.entries.push((EntryId(self.next_id), entry));
        self.next_id += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    /// An fd stand-in that counts itself open until dropped.
    #[derive(Debug)]
    struct Token {
        open: Rc<Cell<usize>>,
        number: u64,
    }

    impl Drop for Token {
        fn drop(&mut self) {
            self.open.set(self.open.get() - 1);
        }
    }

    struct Harness {
        open: Rc<Cell<usize>>,
        store: FdStore<Token>,
        next: u64,
    }

    const PID: u32 = 42;

    impl Harness {
        fn new(max: usize) -> Harness {
            Harness {
                open: Rc::new(Cell::new(0)),
                store: FdStore::new(max),
                next: 0,
            }
        }

        /// A new fd for a new object (inode = its number).
        fn fd(&mut self, kind: StoredKind) -> Arrived<Token> {
            self.next += 1;
            self.copy_of(self.next, kind)
        }

        /// Another fd for object `inode`.
        fn copy_of(&mut self, inode: u64, kind: StoredKind) -> Arrived<Token> {
            self.open.set(self.open.get() + 1);
            Arrived {
                fd: Token {
                    open: Rc::clone(&self.open),
                    number: inode,
                },
                file: FileId { device: 1, inode },
                kind,
            }
        }

        fn send(&mut self, text: &str, fds: Vec<Arrived<Token>>) -> Vec<StoreNote> {
            self.send_from(Some(PID), text, fds)
        }

        fn send_from(
            &mut self,
            sender: Option<u32>,
            text: &str,
            fds: Vec<Arrived<Token>>,
        ) -> Vec<StoreNote> {
            self.store.deliver(Delivery {
                generation_pid: PID,
                sender,
                text,
                fds,
                truncated: false,
            })
        }

        fn names(&self) -> Vec<&str> {
            self.store.handed_out().map(|(name, _)| name).collect()
        }
    }

    #[test]
    fn the_text_is_read_line_by_line_as_systemd_does() {
        assert_eq!(
            StoreRequest::parse("FDSTORE=1\nFDNAME=counter"),
            StoreRequest::Store {
                name: Some("counter".into()),
                poll: true
            }
        );
        assert_eq!(
            StoreRequest::parse("FDNAME=a\nFDSTORE=1\nFDPOLL=0\nFDNAME=b"),
            StoreRequest::Store {
                name: Some("a".into()),
                poll: false
            },
            "the first FDNAME= counts"
        );
        assert_eq!(
            StoreRequest::parse("FDSTORE=1\nFDSTOREREMOVE=1\nFDNAME=x"),
            StoreRequest::Remove {
                name: Some("x".into())
            },
            "a removal wins"
        );
        for nothing in [
            "READY=1",
            "FDSTORE=10",
            "STATUS=FDSTORE=1",
            " FDSTORE=1",
            "",
        ] {
            assert_eq!(
                StoreRequest::parse(nothing),
                StoreRequest::Nothing,
                "{nothing}"
            );
        }
    }

    #[test]
    fn names_follow_systemds_rules() {
        assert!(fdname_is_valid("counter"));
        assert!(fdname_is_valid(""), "systemd allows the empty name");
        assert!(fdname_is_valid("with space~"));
        assert!(fdname_is_valid(&"n".repeat(FDNAME_MAX)));
        assert!(!fdname_is_valid(&"n".repeat(FDNAME_MAX + 1)));
        assert!(!fdname_is_valid("a:b"), "':' separates LISTEN_FDNAMES");
        assert!(!fdname_is_valid("tab\there"));
        assert!(!fdname_is_valid("del\u{7f}"));
        assert!(!fdname_is_valid("é"));
    }

    #[test]
    fn fds_are_stored_under_their_name_or_stored_and_accumulate() {
        let mut h = Harness::new(16);
        let first = h.fd(StoredKind::Memfd);
        let notes = h.send("FDSTORE=1\nFDNAME=counter", vec![first]);
        assert_eq!(
            notes,
            vec![StoreNote::Stored {
                name: "counter".into(),
                count: 1,
                total: 1
            }]
        );
        let (a, b) = (h.fd(StoredKind::Tcp), h.fd(StoredKind::Unix));
        h.send("FDSTORE=1", vec![a, b]);
        let again = h.fd(StoredKind::Memfd);
        h.send("FDSTORE=1\nFDNAME=counter", vec![again]);
        assert_eq!(h.names(), ["counter", "stored", "stored", "counter"]);
        assert_eq!(h.open.get(), 4, "all four kept open");
        assert_eq!(
            h.store.groups(),
            vec![
                StoredGroup {
                    name: "counter".into(),
                    kind: StoredKind::Memfd,
                    count: 2
                },
                StoredGroup {
                    name: "stored".into(),
                    kind: StoredKind::Tcp,
                    count: 1
                },
                StoredGroup {
                    name: "stored".into(),
                    kind: StoredKind::Unix,
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn an_invalid_name_stores_the_fds_as_stored() {
        let mut h = Harness::new(16);
        let fd = h.fd(StoredKind::Pipe);
        let notes = h.send("FDSTORE=1\nFDNAME=a:b", vec![fd]);
        assert_eq!(
            notes[0],
            StoreNote::InvalidName {
                given: "a:b".into()
            }
        );
        assert_eq!(h.names(), ["stored"]);
    }

    #[test]
    fn a_duplicate_is_not_stored_twice() {
        let mut h = Harness::new(16);
        let fd = h.fd(StoredKind::Memfd);
        h.send("FDSTORE=1\nFDNAME=counter", vec![fd]);
        // The next generation got it back and stores it again.
        let copy = h.copy_of(1, StoredKind::Memfd);
        let notes = h.send("FDSTORE=1\nFDNAME=counter", vec![copy]);
        assert_eq!(
            notes,
            vec![StoreNote::Duplicate {
                name: "counter".into()
            }]
        );
        assert_eq!(h.store.len(), 1);
        assert_eq!(h.open.get(), 1, "the copy was closed");
    }

    #[test]
    fn the_bound_refuses_the_rest_of_the_message_and_closes_it() {
        let mut h = Harness::new(2);
        let fds = vec![
            h.fd(StoredKind::Memfd),
            h.fd(StoredKind::Memfd),
            h.fd(StoredKind::Memfd),
        ];
        let notes = h.send("FDSTORE=1\nFDNAME=x", fds);
        assert_eq!(
            notes,
            vec![
                StoreNote::Stored {
                    name: "x".into(),
                    count: 2,
                    total: 2
                },
                StoreNote::Full {
                    name: "x".into(),
                    refused: 1,
                    max: 2
                }
            ]
        );
        assert_eq!(h.open.get(), 2);
        let fd = h.fd(StoredKind::Tcp);
        let notes = h.send("FDSTORE=1", vec![fd]);
        assert_eq!(
            notes,
            vec![StoreNote::Full {
                name: "stored".into(),
                refused: 1,
                max: 2
            }]
        );
        assert_eq!(h.open.get(), 2);
    }

    #[test]
    fn a_bound_of_zero_is_off() {
        let mut h = Harness::new(0);
        let fd = h.fd(StoredKind::Memfd);
        let notes = h.send("FDSTORE=1", vec![fd]);
        assert_eq!(
            notes,
            vec![StoreNote::Full {
                name: "stored".into(),
                refused: 1,
                max: 0
            }]
        );
        assert!(h.store.is_empty());
        assert_eq!(h.open.get(), 0);
    }

    #[test]
    fn a_removal_drops_every_entry_of_the_name() {
        let mut h = Harness::new(16);
        for name in ["a", "b", "a"] {
            let fd = h.fd(StoredKind::Memfd);
            h.send(&format!("FDSTORE=1\nFDNAME={name}"), vec![fd]);
        }
        let notes = h.send("FDSTOREREMOVE=1\nFDNAME=a", Vec::new());
        assert_eq!(
            notes,
            vec![StoreNote::Removed {
                name: "a".into(),
                count: 2
            }]
        );
        assert_eq!(h.names(), ["b"]);
        assert_eq!(h.open.get(), 1, "both closed");
        let notes = h.send("FDSTOREREMOVE=1\nFDNAME=a", Vec::new());
        assert_eq!(
            notes,
            vec![StoreNote::Removed {
                name: "a".into(),
                count: 0
            }]
        );
        assert_eq!(
            h.send("FDSTOREREMOVE=1", Vec::new()),
            vec![StoreNote::RemoveWithoutName]
        );
        assert_eq!(
            h.send("FDSTOREREMOVE=1\nFDNAME=b:c", Vec::new()),
            vec![StoreNote::RemoveWithoutName]
        );
        let fd = h.fd(StoredKind::Memfd);
        let notes = h.send("FDSTOREREMOVE=1\nFDNAME=b", vec![fd]);
        assert_eq!(notes[1], StoreNote::NotStored { closed: 1 });
        assert!(h.store.is_empty());
        assert_eq!(h.open.get(), 0);
    }

    #[test]
    fn fds_from_another_pid_truncated_or_unasked_for_are_closed() {
        let mut h = Harness::new(16);
        let fd = h.fd(StoredKind::Memfd);
        let notes = h.send_from(Some(7), "FDSTORE=1", vec![fd]);
        assert_eq!(
            notes,
            vec![StoreNote::ForeignSender {
                sender: Some(7),
                expected: PID,
                closed: 1
            }]
        );
        let fd = h.fd(StoredKind::Memfd);
        assert_eq!(
            h.send_from(None, "FDSTORE=1", vec![fd])[0],
            StoreNote::ForeignSender {
                sender: None,
                expected: PID,
                closed: 1
            }
        );
        assert_eq!(
            h.send_from(Some(7), "FDSTOREREMOVE=1\nFDNAME=x", Vec::new())
                .len(),
            1,
            "a removal from another pid is refused too"
        );
        let fd = h.fd(StoredKind::Memfd);
        let notes = h.store.deliver(Delivery {
            generation_pid: PID,
            sender: Some(PID),
            text: "FDSTORE=1",
            fds: vec![fd],
            truncated: true,
        });
        assert_eq!(notes, vec![StoreNote::Truncated { closed: 1 }]);
        let fd = h.fd(StoredKind::Memfd);
        assert_eq!(
            h.send("READY=1", vec![fd]),
            vec![StoreNote::NotStored { closed: 1 }]
        );
        assert!(
            h.send("READY=1", Vec::new()).is_empty(),
            "not the store's business"
        );
        assert!(h.send_from(Some(7), "READY=1", Vec::new()).is_empty());
        assert!(h.store.is_empty());
        assert_eq!(h.open.get(), 0, "every refused fd was closed");
    }

    #[test]
    fn a_hung_up_fd_is_dropped_unless_stored_with_fdpoll_0() {
        let mut h = Harness::new(16);
        let (polled, kept) = (h.fd(StoredKind::Unix), h.fd(StoredKind::Unix));
        h.send("FDSTORE=1\nFDNAME=peer", vec![polled]);
        h.send("FDSTORE=1\nFDNAME=quiet\nFDPOLL=0", vec![kept]);
        let watched: Vec<(EntryId, u64)> = h
            .store
            .polled()
            .map(|(id, token)| (id, token.number))
            .collect();
        assert_eq!(watched.len(), 1, "FDPOLL=0 is not watched");
        assert_eq!(watched[0].1, 1);
        let notes = h.store.hung_up(&[watched[0].0]);
        assert_eq!(
            notes,
            vec![StoreNote::HungUp {
                name: "peer".into(),
                kind: StoredKind::Unix
            }]
        );
        assert_eq!(h.names(), ["quiet"]);
        assert_eq!(h.open.get(), 1);
    }

    #[test]
    fn a_restored_store_keeps_every_entry_in_order() {
        let mut h = Harness::new(1);
        let fd = h.fd(StoredKind::Memfd);
        h.send("FDSTORE=1\nFDNAME=one", vec![fd]);
        let entries: Vec<Entry<Token>> = std::mem::replace(&mut h.store, FdStore::new(1))
            .entries
            .into_iter()
            .map(|(_, entry)| entry)
            .collect();
        let extra = h.fd(StoredKind::Pipe);
        let mut all = entries;
        all.push(Entry {
            name: "two".into(),
            poll: false,
            file: extra.file,
            kind: extra.kind,
            fd: extra.fd,
        });
        h.store = FdStore::restore(1, all);
        assert_eq!(h.names(), ["one", "two"], "kept even past the bound");
        assert_eq!(h.store.max(), 1);
        assert_eq!(h.store.polled().count(), 1);
    }
}
