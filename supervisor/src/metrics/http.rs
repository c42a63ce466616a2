//! The metrics endpoint: plain HTTP/1.x on a TCP listener of its own, never
//! the admin socket, served by one thread (`metrics-http`) that polls the
//! listener and its connections, all non-blocking. It only reads the page
//! the metrics thread published (an `Arc` copied under a lock held for
//! that), so a scrape never waits for the supervisor, and the supervisor
//! never waits for a scrape.
//!
//! Hazards handled, each bounded:
//! - A connection that never sends (or sends slowly, or never reads) is
//!   closed [`METRICS_CONNECTION`] after its accept, answered or not.
//! - Many connections at once: at most [`MAX_CONNECTIONS`] are open; past
//!   it, the oldest connection that has not sent its whole request is
//!   closed to make room (a real scraper sends its request at once, so it
//!   is the silent ones that go), or the new one if every open one is
//!   being answered; either is counted in
//!   `handoff_metrics_connections_dropped_total`. A connection costs an
//!   accept and a few non-blocking calls, no thread: a thousand at once
//!   take milliseconds of CPU, and the fds held stay below
//!   `MAX_CONNECTIONS + 1`.
//! - A request head is read up to [`MAX_HEAD`] bytes and in full before
//!   the answer; an over-long one is answered `431`, and the rest of its
//!   bytes are read and discarded until the client closes (closing with
//!   unread bytes would reset the connection and could destroy the answer
//!   in flight).
//! - `accept` failing (out of fds) backs off for a poll slice instead of
//!   spinning on a listener that stays readable.
//!
//! Every fd here is close-on-exec from its creation (std's `socket` and
//! `accept4`): no generation inherits one.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use handoff::os::{Interest, poll_ready};
use handoff::timeouts::{METRICS_CONNECTION, POLL_SLICE};

use super::text::CONTENT_TYPE;

/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Bound on a request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;

/// The page the metrics thread publishes and the endpoint serves.
#[derive(Debug, Clone, Default)]
pub struct Published(Arc<Mutex<Arc<str>>>);

impl Published {
    /// Replaces the page.
    pub fn publish(&self, page: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Arc::from(page);
    }

    /// The current page (a pointer copy under the lock).
    pub fn page(&self) -> Arc<str> {
        Arc::clone(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Binds `addr` (close-on-exec, as std creates every socket).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Starts the endpoint's thread; `dropped` counts the connections closed
/// unanswered to make room.
pub fn serve(
    listener: TcpListener,
    page: Published,
    dropped: Arc<AtomicU64>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut server = Server {
        listener,
        page,
        dropped,
        connections: Vec::with_capacity(MAX_CONNECTIONS),
    };
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || server.run())
        .map(drop)
}

/// Where a connection is.
#[derive(Debug)]
enum Stage {
    /// Reading the request head (these bytes so far).
    Reading(Vec<u8>),
    /// Writing the answer; `linger`: then read until the client closes.
    Writing {
        answer: Vec<u8>,
        written: usize,
        linger: bool,
    },
    /// Answered with bytes left unread: reading them until the client
    /// closes.
    Lingering,
}

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    /// Closed then, whatever its stage.
    deadline: Instant,
    stage: Stage,
}

impl Connection {
    fn interest(&self) -> Interest {
        match self.stage {
            Stage::Writing { .. } => Interest::Write,
            Stage::Reading(_) | Stage::Lingering => Interest::Read,
        }
    }

    /// Goes as far as the socket allows without blocking; false once the
    /// connection is done with (it is then closed).
    fn advance(&mut self, page: &Published) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match &mut self.stage {
                Stage::Reading(head) => {
                    let n = match (&self.stream).read(&mut chunk) {
                        Ok(0) => return false,
                        Ok(n) => n,
                        Err(error) => return still_open(&error),
                    };
                    head.extend_from_slice(&chunk[..n]);
                    if let Some(end) = end_of_head(head).filter(|end| *end <= MAX_HEAD) {
                        self.stage = Stage::Writing {
                            answer: answer(&head[..end], page),
                            written: 0,
                            linger: false,
                        };
                    } else if head.len() > MAX_HEAD {
                        self.stage = Stage::Writing {
                            answer: reply(431, "Request Header Fields Too Large", "", b""),
                            written: 0,
                            linger: true,
                        };
                    }
                }
                Stage::Writing {
                    answer,
                    written,
                    linger,
                } => {
                    match (&self.stream).write(&answer[*written..]) {
                        Ok(0) => return false,
                        Ok(n) => *written += n,
                        Err(error) => return still_open(&error),
                    }
                    if *written < answer.len() {
                        continue;
                    }
                    if !*linger {
                        return false;
                    }
                    let _ = self.stream.shutdown(Shutdown::Write);
                    self.stage = Stage::Lingering;
                }
                Stage::Lingering => match (&self.stream).read(&mut chunk) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(error) => return still_open(&error),
                },
            }
        }
    }
}

/// After a failed non-blocking call: whether to wait for readiness (true)
/// or give the connection up.
fn still_open(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

/// The endpoint's thread: the listener and the open connections.
struct Server {
    listener: TcpListener,
    page: Published,
    dropped: Arc<AtomicU64>,
    connections: Vec<Connection>,
}

impl Server {
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            // Past its bound, a connection is closed as it is.
            self.connections.retain(|c| c.deadline > now);
            let timeout = self
                .connections
                .iter()
                .map(|c| c.deadline)
                .min()
                .map(|deadline| deadline.saturating_duration_since(now));
            let Some(ready) = self.wait(timeout) else {
                continue;
            };
            let page = &self.page;
            let mut index = 0;
            self.connections.retain_mut(|connection| {
                index += 1;
                !ready[index] || connection.advance(page)
            });
            if ready[0] {
                self.accept_all();
            }
        }
    }

    /// Polls the listener and every connection; each one's readiness, the
    /// listener's first (`None` if poll failed).
    fn wait(&self, timeout: Option<Duration>) -> Option<Vec<bool>> {
        let mut fds = Vec::with_capacity(1 + self.connections.len());
        fds.push((self.listener.as_fd(), Interest::Read));
        for connection in &self.connections {
            fds.push((connection.stream.as_fd(), connection.interest()));
        }
        match poll_ready(&fds, timeout) {
            Ok(ready) => Some(ready),
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: poll failed");
                std::thread::sleep(POLL_SLICE);
                None
            }
        }
    }

    /// Accepts every connection waiting in the backlog.
    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::debug!(%error, "metrics accept failed");
                    // Out of fds, typically: the listener stays readable;
                    // back off rather than spin.
                    std::thread::sleep(POLL_SLICE);
                    return;
                }
            }
        }
    }

    /// Keeps `stream`, making room if needed.
    fn admit(&mut self, stream: TcpStream) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if self.connections.len() >= MAX_CONNECTIONS {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            // Oldest first: connections are kept in accept order.
            let silent = self
                .connections
                .iter()
                .position(|c| matches!(c.stage, Stage::Reading(_)));
            match silent {
                Some(index) => drop(self.connections.remove(index)),
                // Every open one is being answered: the new one waits no
                // better than they do.
                None => return,
            }
        }
        self.connections.push(Connection {
            stream,
            deadline: Instant::now() + METRICS_CONNECTION,
            stage: Stage::Reading(Vec::new()),
        });
    }
}

/// Where the head ends (after `\r\n\r\n`, or `\n\n` from a lenient client).
fn end_of_head(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|at| at + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The answer to a request head.
fn answer(head: &[u8], page: &Published) -> Vec<u8> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return reply(400, "Bad Request", "", b"");
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return reply(400, "Bad Request", "", b"");
    }
    let path = target.split('?').next().unwrap_or_default();
    let body_wanted = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return reply(405, "Method Not Allowed", "Allow: GET, HEAD\r\n", b""),
    };
    match path {
        "/metrics" => {
            let page = page.page();
            let mut answer = reply_head(200, "OK", CONTENT_TYPE, page.len());
            if body_wanted {
                answer.extend_from_slice(page.as_bytes());
            }
            answer
        }
        "/" => {
            let body: &[u8] = b"handoffctl: the metrics are at /metrics\n";
            let mut answer = reply_head(200, "OK", "text/plain; charset=utf-8", body.len());
            if body_wanted {
                answer.extend_from_slice(body);
            }
            answer
        }
        _ => reply(404, "Not Found", "", b""),
    }
}

fn reply_head(code: u16, reason: &str, content_type: &str, length: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

fn reply(code: u16, reason: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 {code} {reason}\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An endpoint on an ephemeral loopback port serving `page`.
    fn endpoint(page: &str) -> (SocketAddr, Arc<AtomicU64>) {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let published = Published::default();
        published.publish(page.to_owned());
        let dropped = Arc::new(AtomicU64::new(0));
        serve(listener, published, Arc::clone(&dropped)).expect("serve");
        (addr, dropped)
    }

    /// Sends `request` and reads the answer to EOF.
    fn ask(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(METRICS_CONNECTION * 2))
            .expect("timeout");
        stream.write_all(request).expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    }

    #[test]
    fn get_metrics_is_answered_with_the_page_and_other_requests_are_refused() {
        let (addr, _) = endpoint("m 1\n");
        let ok = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 4\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nm 1\n"), "{ok}");
        let query = ask(addr, b"GET /metrics?x=1 HTTP/1.0\n\n");
        assert!(query.ends_with("m 1\n"), "{query}");
        let head = ask(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(ask(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(ask(addr, b"GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(ask(addr, b"nonsense\r\n\r\n").starts_with("HTTP/1.1 400"));
        let long = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert!(ask(addr, long.as_bytes()).starts_with("HTTP/1.1 431"));
    }

    #[test]
    fn silent_connections_make_room_for_a_scraper() {
        let (addr, dropped) = endpoint("m 1\n");
        // More silent connections than are ever served at once.
        let silent: Vec<TcpStream> = (0..3 * MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        let started = Instant::now();
        let ok = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.ends_with("m 1\n"), "{ok}");
        assert!(
            started.elapsed() < METRICS_CONNECTION,
            "served before the silent ones timed out: {:?}",
            started.elapsed()
        );
        assert!(dropped.load(Ordering::Relaxed) >= (2 * MAX_CONNECTIONS + 1) as u64);
        drop(silent);
    }

    #[test]
    fn a_silent_connection_is_closed_at_the_bound() {
        let (addr, _) = endpoint("m 1\n");
        let mut silent = TcpStream::connect(addr).expect("connect");
        silent
            .set_read_timeout(Some(METRICS_CONNECTION + Duration::from_secs(5)))
            .expect("timeout");
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = silent.read_to_end(&mut rest);
        let waited = started.elapsed();
        assert!(matches!(read, Ok(0)), "closed without an answer: {read:?}");
        assert!(
            waited >= METRICS_CONNECTION - Duration::from_millis(100)
                && waited < METRICS_CONNECTION + Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[test]
    fn the_listener_and_its_connections_are_close_on_exec() {
        use std::os::fd::AsRawFd;
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let clone = accepted.try_clone().expect("clone");
        for fd in [
            listener.as_raw_fd(),
            accepted.as_raw_fd(),
            clone.as_raw_fd(),
        ] {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
            let flags = info
                .lines()
                .find_map(|line| line.strip_prefix("flags:"))
                .map(|octal| u32::from_str_radix(octal.trim(), 8).expect("octal"))
                .expect("flags");
            assert_ne!(flags & 0o2_000_000, 0, "fd {fd} lacks O_CLOEXEC: {info}");
        }
        drop(client);
    }

    #[test]
    fn a_head_ends_at_the_first_blank_line() {
        assert_eq!(end_of_head(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(end_of_head(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(end_of_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
