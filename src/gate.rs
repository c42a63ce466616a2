//! The accept gate: what a daemon on threads needs for a drain that loses
//! no connection. It counts every connection from the instant it is
//! accepted, closes the accept loops for a drain, and waits until the
//! connections already accepted are done.
//!
//! The hazard it handles: a connection accepted just as a drain starts
//! but not yet counted is invisible to the drain; the drain reports
//! "none open", the incumbent seals and exits, and that connection's
//! request is lost. Here the accept and the count happen together under
//! the gate's lock, and no accept happens once the gate is closed, so the
//! count a drain reads is complete. Acceptors blocked in `poll` are woken
//! by a level-triggered pipe and park until the gate opens again (an
//! aborted handoff).
//!
//! The gate accepts without blocking, so it makes the listener
//! non-blocking; the flag is shared by every process holding the listener
//! (see `sys`, "Shared file status flags"): every generation of a daemon
//! that uses the gate accepts this way.

use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::drain::DrainReport;
use crate::error::{Error, Result};
use crate::sys;

/// A listener the gate can accept on.
pub trait Listener: AsFd {
    /// What an accept returns.
    type Stream;
    /// Makes the listener non-blocking (see the module's hazard).
    fn set_nonblocking_accept(&self) -> io::Result<()>;
    /// One non-blocking accept.
    fn accept_stream(&self) -> io::Result<Self::Stream>;
}

impl Listener for std::net::TcpListener {
    type Stream = std::net::TcpStream;
    fn set_nonblocking_accept(&self) -> io::Result<()> {
        self.set_nonblocking(true)
    }
    fn accept_stream(&self) -> io::Result<Self::Stream> {
        // The accepted socket is blocking, whatever the listener is.
        let (stream, _) = self.accept()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

impl Listener for std::os::unix::net::UnixListener {
    type Stream = std::os::unix::net::UnixStream;
    fn set_nonblocking_accept(&self) -> io::Result<()> {
        self.set_nonblocking(true)
    }
    fn accept_stream(&self) -> io::Result<Self::Stream> {
        let (stream, _) = self.accept()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

/// Counts a daemon's connections and closes its accept loops for a drain.
/// Cheap to clone: every clone is the same gate.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # fn handle(_: &std::net::TcpStream) {}
/// let gate = handoff::AcceptGate::new()?;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let acceptor = gate.clone();
/// std::thread::spawn(move || loop {
///     // Blocks while the gate is closed; counted until `connection` drops.
///     match acceptor.accept(&listener) {
///         Ok(connection) => {
///             std::thread::spawn(move || handle(&connection));
///         }
///         Err(error) => eprintln!("accept: {error}"),
///     }
/// });
/// // In `Drainable::drain`: close, and wait for what was accepted.
/// let report = gate.drain(std::time::Instant::now() + std::time::Duration::from_secs(5));
/// // In `Drainable::resume_after_abort`: accept again.
/// gate.reopen();
/// # let _ = report; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AcceptGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Notified when a connection ends and when the gate opens.
    changed: Condvar,
    /// Set while the gate is closed: wakes acceptors blocked in `poll`.
    closed: sys::Waker,
}

#[derive(Debug)]
struct State {
    open: bool,
    connections: u32,
}

/// A connection the gate let in; counted until it is dropped.
#[derive(Debug)]
pub struct Admitted<S> {
    stream: S,
    _counted: Counted,
}

/// One count on the gate, given back on drop.
#[derive(Debug)]
struct Counted {
    gate: Arc<Inner>,
}

impl<S> std::ops::Deref for Admitted<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.stream
    }
}

impl<S> std::ops::DerefMut for Admitted<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

impl<S> Admitted<S> {
    /// The connection, no longer counted: for one that outlives what the
    /// gate waits for (handed to another process or image).
    pub fn into_inner(self) -> S {
        self.stream
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.connections = state.connections.saturating_sub(1);
        drop(state);
        self.gate.changed.notify_all();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AcceptGate {
    /// An open gate.
    pub fn new() -> Result<AcceptGate> {
        let closed =
            sys::Waker::new().map_err(|source| Error::io("creating the gate's waker", source))?;
        Ok(AcceptGate {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    open: true,
                    connections: 0,
                }),
                changed: Condvar::new(),
                closed,
            }),
        })
    }

    /// The next connection on `listener`, counted from this instant. Blocks
    /// while no connection waits, and while the gate is closed. Any number
    /// of threads and listeners may share one gate.
    pub fn accept<L: Listener>(&self, listener: &L) -> Result<Admitted<L::Stream>> {
        let failed = |source| Error::io("accepting a connection", source);
        listener.set_nonblocking_accept().map_err(failed)?;
        let inner = &self.inner;
        loop {
            let mut state = inner.lock();
            while !state.open {
                state = inner
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            drop(state);
            let (ready, _closing) =
                sys::poll_either(listener.as_fd(), inner.closed.as_fd(), None).map_err(failed)?;
            if !ready {
                continue;
            }
            // Accepted and counted under the lock that closing takes: no
            // accept after a close, none uncounted before it.
            let mut state = inner.lock();
            if !state.open {
                continue;
            }
            match listener.accept_stream() {
                Ok(stream) => {
                    state.connections += 1;
                    return Ok(Admitted {
                        stream,
                        _counted: Counted {
                            gate: Arc::clone(inner),
                        },
                    });
                }
                // Another process (or thread) took it.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(failed(error)),
            }
        }
    }

    /// Stops every accept; connections already accepted go on.
    pub fn close(&self) {
        let mut state = self.inner.lock();
        state.open = false;
        if let Err(error) = self.inner.closed.set() {
            // Acceptors then notice at their next connection, still before
            // accepting it.
            tracing::warn!(%error, "waking the acceptors failed");
        }
        drop(state);
    }

    /// Accepts again (after an aborted handoff).
    pub fn reopen(&self) {
        let mut state = self.inner.lock();
        state.open = true;
        if let Err(error) = self.inner.closed.clear() {
            tracing::warn!(%error, "clearing the gate's waker failed");
        }
        drop(state);
        self.inner.changed.notify_all();
    }

    /// Connections accepted and not yet dropped.
    pub fn open_connections(&self) -> u32 {
        self.inner.lock().connections
    }

    /// Waits until no connection is open, or `deadline`; true if none is.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        let mut state = self.inner.lock();
        while state.connections > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .inner
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// The drain: close, then wait (until `deadline`) for the connections
    /// already accepted to end. Call it from [`crate::Drainable::drain`],
    /// and from a graceful stop.
    pub fn drain(&self, deadline: Instant) -> DrainReport {
        self.close();
        self.wait_idle(deadline);
        DrainReport {
            open_connections: self.open_connections(),
            accept_closed: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    const BOUND: Duration = Duration::from_secs(5);

    /// An acceptor thread that hands each admitted connection over.
    fn acceptor(
        gate: &AcceptGate,
        listener: TcpListener,
    ) -> crossbeam_channel::Receiver<Admitted<TcpStream>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let gate = gate.clone();
        std::thread::spawn(move || {
            while let Ok(connection) = gate.accept(&listener) {
                if tx.send(connection).is_err() {
                    return;
                }
            }
        });
        rx
    }

    #[test]
    fn a_connection_counts_from_its_accept_until_it_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gate = AcceptGate::new().expect("gate");
        let admitted = acceptor(&gate, listener);
        let _client = TcpStream::connect(addr).expect("connect");
        let connection = admitted.recv_timeout(BOUND).expect("admitted");
        assert_eq!(gate.open_connections(), 1);
        // The drain waits for it...
        let report = gate.drain(Instant::now() + Duration::from_millis(50));
        assert_eq!(report.open_connections, 1);
        // ...and is done once it ends.
        drop(connection);
        assert!(gate.wait_idle(Instant::now() + BOUND));
        assert_eq!(gate.drain(Instant::now() + BOUND).open_connections, 0);
    }

    #[test]
    fn a_closed_gate_leaves_new_connections_in_the_backlog_until_it_reopens() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gate = AcceptGate::new().expect("gate");
        let admitted = acceptor(&gate, listener);
        // The acceptor is blocked in poll when the gate closes.
        gate.close();
        let mut client = TcpStream::connect(addr).expect("connect: the backlog takes it");
        client.write_all(b"waiting\n").expect("write");
        assert!(
            admitted.recv_timeout(Duration::from_millis(200)).is_err(),
            "accepted while closed"
        );
        assert_eq!(gate.open_connections(), 0);
        gate.reopen();
        let mut connection = admitted.recv_timeout(BOUND).expect("accepted after reopen");
        let mut line = [0u8; 8];
        connection
            .read_exact(&mut line)
            .expect("its bytes waited too");
        assert_eq!(&line, b"waiting\n");
    }

    #[test]
    fn accepts_from_many_threads_are_all_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gate = AcceptGate::new().expect("gate");
        let (tx, rx) = crossbeam_channel::unbounded();
        for _ in 0..4 {
            let (gate, listener, tx) = (
                gate.clone(),
                listener.try_clone().expect("clone"),
                tx.clone(),
            );
            std::thread::spawn(move || {
                while let Ok(connection) = gate.accept(&listener) {
                    if tx.send(connection).is_err() {
                        return;
                    }
                }
            });
        }
        let clients: Vec<_> = (0..50)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        let held: Vec<_> = (0..50)
            .map(|_| rx.recv_timeout(BOUND).expect("admitted"))
            .collect();
        assert_eq!(gate.open_connections(), 50);
        drop(held);
        assert!(gate.wait_idle(Instant::now() + BOUND));
        drop(clients);
    }
}
