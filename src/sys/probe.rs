//! Health probe attempts: one TCP connect, or one HTTP/1.1 GET whose status
//! line is read. Each attempt is bounded as a whole by its `timeout` (connect,
//! write and read each get what is left), so a successor that accepts and
//! never answers cannot hold the gate open.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The addresses `address` (`HOST:PORT`) resolves to, or an error naming it.
fn resolve(address: &str) -> io::Result<Vec<SocketAddr>> {
    let found: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{address} resolves to no address"),
        ));
    }
    Ok(found)
}

fn connect(address: &str, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in resolve(address)? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
}

fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "probe attempt timed out",
        ));
    }
    Ok(left)
}

/// Connects to `address` and closes the connection at once.
pub(crate) fn tcp_connect(address: &str, timeout: Duration) -> io::Result<()> {
    connect(address, Instant::now() + timeout).map(drop)
}

/// `GET path` on `address` with `Connection: close`; the response's status
/// code. Only the status line is read.
pub(crate) fn http_status(address: &str, path: &str, timeout: Duration) -> io::Result<u16> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(address, deadline)?;
    stream.set_write_timeout(Some(left(deadline)?))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: handoff-probe\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        stream.set_read_timeout(Some(left(deadline)?))?;
        let got = match stream.read(&mut buf) {
            Ok(got) => got,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if got == 0 {
            break;
        }
        head.extend_from_slice(&buf[..got]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_ascii_whitespace();
    match (
        words.next(),
        words.next().and_then(|code| code.parse().ok()),
    ) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP status line: {:?}", line.trim_end()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::sys::test_support::TEST_DEADLINE;

    /// Serves one connection with `reply` after reading the request head.
    fn serve_once(reply: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(TEST_DEADLINE))
                .expect("timeout");
            let mut request = Vec::new();
            let mut buf = [0; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let got = stream.read(&mut buf).expect("read");
                assert!(got > 0, "request ended early");
                request.extend_from_slice(&buf[..got]);
            }
            stream.write_all(reply.as_bytes()).expect("reply");
            String::from_utf8(request).expect("utf-8")
        });
        (address, server)
    }

    #[test]
    fn http_status_reads_the_status_line() {
        let (address, server) = serve_once("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        let code = http_status(&address, "/healthz", TEST_DEADLINE).expect("probe");
        assert_eq!(code, 204);
        let request = server.join().expect("server");
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[test]
    fn garbage_is_not_a_status() {
        let (address, server) = serve_once("SSH-2.0-nope\r\n");
        let error = http_status(&address, "/", TEST_DEADLINE).expect_err("garbage");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        server.join().expect("server");
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        // Accepted by the kernel (backlog), never answered.
        let started = Instant::now();
        let error = http_status(&address, "/", Duration::from_millis(200)).expect_err("silent");
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{error:?}"
        );
        assert!(started.elapsed() < TEST_DEADLINE);
    }

    #[test]
    fn tcp_connect_sees_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        tcp_connect(&address, TEST_DEADLINE).expect("listening");
        drop(listener);
        let error = tcp_connect(&address, TEST_DEADLINE).expect_err("closed");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    }
}
