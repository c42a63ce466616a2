//! A minimal HTTP/1.1 client that tells failures apart.
//!
//! Written by hand rather than taken from a client library so that every
//! failure keeps its class (a refused connect, a reset, a timeout, a 5xx)
//! and so that the one failure a well-behaved client retries on its own —
//! a request sent on a kept-alive connection that the server closed at
//! that moment, before any byte of a response — is counted apart.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// The connect was refused: nothing listened.
    Refused,
    /// The connection was reset (or the pipe broke).
    Reset,
    /// No complete answer within the request timeout (for a client that
    /// asked to close, the connection's end is part of the answer).
    Timeout,
    /// A 5xx status.
    Http5xx,
    /// Anything else: the connection closed before a full response, a
    /// malformed response, an unexpected status or body.
    Other,
}

impl Failure {
    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Http5xx => "http_5xx",
            Failure::Other => "other",
        }
    }

    fn of(error: &std::io::Error) -> Failure {
        use std::io::ErrorKind;
        match error.kind() {
            ErrorKind::ConnectionRefused => Failure::Refused,
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
                Failure::Reset
            }
            ErrorKind::TimedOut => Failure::Timeout,
            _ => Failure::Other,
        }
    }
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Whether the server closes the connection after this response:
    /// `Connection: close`, or an HTTP/1.0 response without
    /// `Connection: keep-alive` (RFC 9112, 9.3).
    pub close: bool,
    /// The body.
    pub body: Vec<u8>,
    /// From the connect's completion (new connections) or the request's
    /// start (reused ones) to the status line.
    pub first_byte: Duration,
}

/// A failed exchange, and whether any byte of a response had arrived.
#[derive(Debug)]
pub struct Failed {
    /// The class.
    pub failure: Failure,
    /// Whether the failure came before any response byte (so the request
    /// may not have been read by the server).
    pub before_response: bool,
}

/// One client connection.
pub struct Connection {
    stream: BufReader<TcpStream>,
    connected_at: Instant,
    used: bool,
}

impl Connection {
    /// Connects to `addr`.
    pub async fn open(addr: std::net::SocketAddr) -> Result<Connection, Failed> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|error| Failed::of(&error, true))?;
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream: BufReader::new(stream),
            connected_at: Instant::now(),
            used: false,
        })
    }

    /// Whether a request went over this connection already.
    pub fn is_reused(&self) -> bool {
        self.used
    }

    /// Whether the server closed this idle connection (what a pooling client
    /// checks before reusing one).
    pub fn closed_by_peer(&self) -> bool {
        if !self.stream.buffer().is_empty() {
            return true; // unsolicited bytes: not reusable
        }
        let mut probe = [0u8; 1];
        !matches!(
            self.stream.get_ref().try_read(&mut probe),
            Err(ref error) if error.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Sends one request and reads the response.
    pub async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        keep_alive: bool,
    ) -> Result<Response, Failed> {
        let started = if self.used {
            Instant::now()
        } else {
            self.connected_at
        };
        self.used = true;
        let request = request_bytes(method, path, body, keep_alive);
        let before = |error: std::io::Error| Failed::of(&error, true);
        self.stream
            .get_mut()
            .write_all(&request)
            .await
            .map_err(before)?;
        let mut line = String::new();
        if self.stream.read_line(&mut line).await.map_err(before)? == 0 {
            return Err(Failed::malformed(true));
        }
        let first_byte = started.elapsed();
        let status: u16 = match line.split(' ').nth(1).and_then(|s| s.parse().ok()) {
            Some(status) => status,
            None => return Err(Failed::malformed(false)),
        };
        let (length, close) = self.read_headers(line.starts_with("HTTP/1.0 ")).await?;
        let mut body = vec![0u8; length];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|error| Failed::of(&error, false))?;
        Ok(Response {
            status,
            close,
            body,
            first_byte,
        })
    }

    /// Waits for the end of a connection whose last response said it
    /// closes: a client that reads to the end (HTTP/1.0 style) would wait
    /// for ever on a server that answered and kept the socket open. Any
    /// byte is unsolicited (a malformed answer); a reset is one too.
    pub async fn wait_end(&mut self) -> Result<(), Failed> {
        if !self.stream.buffer().is_empty() {
            return Err(Failed::malformed(false));
        }
        let mut probe = [0u8; 1];
        match self.stream.get_mut().read(&mut probe).await {
            Ok(0) => Ok(()),
            Ok(_) => Err(Failed::malformed(false)),
            Err(error) => Err(Failed::of(&error, false)),
        }
    }

    /// Reads the headers after the status line: the body's length, and
    /// whether the server closes the connection after it (`http_10`: the
    /// response is HTTP/1.0, which closes unless it says `keep-alive`).
    async fn read_headers(&mut self, http_10: bool) -> Result<(usize, bool), Failed> {
        let (mut length, mut close) = (0usize, http_10);
        let mut line = String::new();
        loop {
            line.clear();
            let read = self.stream.read_line(&mut line).await;
            if read.map_err(|error| Failed::of(&error, false))? == 0 {
                return Err(Failed::malformed(false));
            }
            let header = line.trim_end();
            if header.is_empty() {
                return Ok((length, close));
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| Failed::malformed(false))?;
            } else if name.eq_ignore_ascii_case("connection") {
                if value.eq_ignore_ascii_case("close") {
                    close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
}

/// The bytes of one request.
fn request_bytes(method: &str, path: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let close = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n{close}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

impl Failed {
    /// An I/O failure, before or after the first byte of a response.
    fn of(error: &std::io::Error, before_response: bool) -> Failed {
        Failed {
            failure: Failure::of(error),
            before_response,
        }
    }

    /// A connection closed before a full response, or a malformed one.
    fn malformed(before_response: bool) -> Failed {
        Failed {
            failure: Failure::Other,
            before_response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A server on a thread that reads one request, writes `answer`, and
    /// then closes the connection (`close`) or holds it until `release`
    /// says a word or is dropped.
    fn serve_once(
        answer: Vec<u8>,
        close: bool,
    ) -> (
        std::net::SocketAddr,
        std::thread::JoinHandle<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (release, held) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).expect("read");
            stream.write_all(&answer).expect("write");
            if !close {
                let _ = held.recv();
            }
        });
        (addr, server, release)
    }

    /// Answers one request with `response` and returns what `exchange`
    /// made of it.
    fn answered_with(response: &'static str) -> Response {
        let (addr, server, _release) = serve_once(response.as_bytes().to_vec(), true);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let answer = runtime.block_on(async {
            let mut connection = Connection::open(addr).await.expect("connect");
            connection.exchange("GET", "/", &[], true).await
        });
        server.join().expect("server");
        answer.expect("a response")
    }

    #[test]
    fn an_http_1_0_answer_closes_unless_it_says_keep_alive() {
        let plain = answered_with("HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\npid=12");
        assert!(plain.close);
        assert_eq!((plain.status, &plain.body[..]), (200, &b"pid=12"[..]));
        let kept =
            answered_with("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(!kept.close);
    }

    /// How `wait_end` judges a server that answered `Connection: close`
    /// and then does `after` with the connection (the server holds its
    /// socket until the client's verdict).
    fn end_after(after: &'static [u8], close: bool, bound: Duration) -> Result<(), Failure> {
        let mut answer =
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec();
        answer.extend_from_slice(after);
        let (addr, server, release) = serve_once(answer, close);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let verdict = runtime.block_on(async {
            let mut connection = Connection::open(addr).await.expect("connect");
            let response = connection.exchange("GET", "/", &[], false).await;
            assert!(response.expect("a response").close);
            // The bound stands in for the load's request timeout.
            match tokio::time::timeout(bound, connection.wait_end()).await {
                Ok(ended) => ended.map_err(|failed| failed.failure),
                Err(_) => Err(Failure::Timeout),
            }
        });
        let _ = release.send(());
        server.join().expect("server");
        verdict
    }

    #[test]
    fn an_answer_that_closes_is_whole_only_once_the_connection_ends() {
        // Generous where the end comes, short where it never does.
        let (comes, never) = (Duration::from_secs(10), Duration::from_millis(300));
        assert_eq!(end_after(b"", true, comes), Ok(()));
        assert_eq!(end_after(b"", false, never), Err(Failure::Timeout));
        assert_eq!(
            end_after(b"HTTP/1.1 200 OK\r\n", true, comes),
            Err(Failure::Other)
        );
    }

    #[test]
    fn an_http_1_1_answer_stays_open_unless_it_says_close() {
        let kept = answered_with("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!kept.close);
        let closed =
            answered_with("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(closed.close);
    }
}
