//! The metrics endpoint: plain HTTP/1.x on a TCP listener of its own, never
//! the admin socket. It only reads the page the metrics thread published
//! (an `Arc` swapped under a lock held for a pointer copy), so a scrape
//! never waits for the supervisor, and the supervisor never waits for a
//! scrape.
//!
//! Hazards handled, each bounded:
//! - A connection that never sends (or sends slowly) is served by a thread
//!   of its own, at most [`METRICS_CONNECTION`] from its accept to its last
//!   byte written (the read and write timeouts are set to what is left).
//! - Many connections at once: at most [`MAX_SERVED`] are served; past it,
//!   the oldest connection that has not sent its request yet is shut down
//!   to make room (a real scraper sends its request at once, so it is the
//!   silent ones that go; counted in
//!   `handoff_metrics_connections_dropped_total`), and past [`MAX_THREADS`]
//!   (shut-down connections whose threads are still ending) the accept
//!   thread waits for one to end, which every thread does within the bound:
//!   the rest wait in the kernel's backlog. The fds this endpoint holds are
//!   bounded by `2 * MAX_THREADS + 1`.
//! - A request head is read up to [`MAX_HEAD`] bytes and in full before
//!   the answer (closing a socket with unread bytes would reset it and
//!   could destroy the answer in flight); the answer is one write of head
//!   and body, so no small write waits for a delayed ACK.
//!
//! Every fd here is close-on-exec from its creation (std's `socket`,
//! `accept4` and `F_DUPFD_CLOEXEC`): no generation inherits them.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use handoff::timeouts::METRICS_CONNECTION;

use super::text::CONTENT_TYPE;

/// Connections served at once before the silent ones make room.
pub const MAX_SERVED: usize = 8;
/// Threads serving connections at most (evicted ones may still be ending).
pub const MAX_THREADS: usize = 2 * MAX_SERVED;
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

/// A connection that has not sent its whole request yet, kept to be shut
/// down if room is needed.
#[derive(Debug)]
struct Reader {
    id: u64,
    stream: TcpStream,
}

/// What the accept thread and the connection threads share.
#[derive(Debug, Default)]
struct Shared {
    page: Published,
    /// Connection threads alive, and a wake-up when one ends.
    threads: Mutex<usize>,
    ended: Condvar,
    /// Oldest first.
    readers: Mutex<Vec<Reader>>,
    /// Shut down unanswered to make room.
    dropped: Arc<AtomicU64>,
}

impl Shared {
    fn readers(&self) -> MutexGuard<'_, Vec<Reader>> {
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn threads(&self) -> MutexGuard<'_, usize> {
        self.threads.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Binds `addr` (close-on-exec, as std creates every socket).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Starts the accept thread; `dropped` counts the connections shut down
/// unanswered to make room.
pub fn serve(
    listener: TcpListener,
    page: Published,
    dropped: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        page,
        dropped,
        ..Shared::default()
    });
    std::thread::Builder::new()
        .name("metrics-accept".into())
        .spawn(move || {
            let mut next_id = 0u64;
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        next_id += 1;
                        admit(stream, next_id, &shared);
                    }
                    Err(error) => {
                        tracing::debug!(%error, "metrics accept failed");
                        // Out of fds, typically: back off rather than spin.
                        std::thread::sleep(handoff::timeouts::POLL_SLICE);
                    }
                }
            }
        })
        .map(drop)
}

/// A connection thread alive; the count drops with it.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.threads() -= 1;
        self.0.ended.notify_one();
    }
}

/// Serves `stream` on a thread of its own, making room from the silent
/// connections if needed.
fn admit(stream: TcpStream, id: u64, shared: &Arc<Shared>) {
    let mut threads = shared.threads();
    if *threads >= MAX_SERVED {
        let oldest = {
            let mut readers = shared.readers();
            (!readers.is_empty()).then(|| readers.remove(0))
        };
        if let Some(reader) = oldest {
            let _ = reader.stream.shutdown(Shutdown::Both);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Every thread ends within METRICS_CONNECTION, a shut-down one at once.
    while *threads >= MAX_THREADS {
        threads = shared
            .ended
            .wait(threads)
            .unwrap_or_else(PoisonError::into_inner);
    }
    *threads += 1;
    drop(threads);
    let slot = Slot(Arc::clone(shared));
    match stream.try_clone() {
        Ok(clone) => shared.readers().push(Reader { id, stream: clone }),
        Err(error) => {
            tracing::debug!(%error, "metrics connection not served");
            return;
        }
    }
    let spawned = std::thread::Builder::new()
        .name("metrics-conn".into())
        .spawn(move || {
            let shared = &slot.0;
            serve_one(&stream, &shared.page, || {
                shared.readers().retain(|r| r.id != id);
            });
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start a metrics connection thread");
        shared.readers().retain(|r| r.id != id);
    }
}

/// Reads one request within [`METRICS_CONNECTION`] and answers it; `read`
/// is called once the request is in (the connection stops being a
/// reader that may be shut down to make room).
fn serve_one(stream: &TcpStream, page: &Published, read: impl FnOnce()) {
    let deadline = Instant::now() + METRICS_CONNECTION;
    let head = read_head(stream, deadline);
    read();
    let (answer, unread) = match head {
        Ok(head) => (answer(&head, page), false),
        Err(HeadError::TooLong) => (reply(431, "Request Header Fields Too Large", "", b""), true),
        Err(HeadError::Gone) => return,
    };
    if let Err(error) = write_by(stream, &answer, deadline) {
        tracing::debug!(%error, "metrics answer not delivered");
        return;
    }
    if unread {
        // Closing with unread bytes would reset the connection, and the
        // client could lose the answer: finish sending, then read what is
        // left until the client closes (or the bound).
        let _ = stream.shutdown(Shutdown::Write);
        let mut sink = [0u8; 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match (&*stream).read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// Why no request head was read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// More than [`MAX_HEAD`] bytes without the end of the head.
    TooLong,
    /// Closed, shut down, failed, or the deadline passed.
    Gone,
}

/// Reads until the blank line that ends a request head.
fn read_head(mut stream: &TcpStream, deadline: Instant) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Gone);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Gone),
        }
        if let Some(end) = end_of_head(&head).filter(|end| *end <= MAX_HEAD) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLong);
        }
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

/// Writes all of `bytes` before `deadline` (each write bounded by what is
/// left, so a reader that trickles cannot stretch it).
fn write_by(mut stream: &TcpStream, mut bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
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
        let silent: Vec<TcpStream> = (0..3 * MAX_THREADS)
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
        assert!(dropped.load(Ordering::Relaxed) >= (3 * MAX_THREADS - MAX_SERVED) as u64);
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
