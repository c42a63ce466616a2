//! A socket read through the bytes a previous owner read from it and did
//! not parse: how a connection handed over by another generation is served;
//! and which connections stopped between two requests may be handed over
//! (shared by `kvd`, `echod` and the gateway).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as _, Incoming};
use tokio::net::TcpStream;

/// A socket read through `unread` first: the bytes a previous owner read
/// and did not parse.
pub struct Prefixed {
    /// Served first.
    pub unread: Bytes,
    /// Then the socket.
    pub stream: TcpStream,
    /// Set once any byte was read (a request has begun).
    pub read_any: Arc<AtomicBool>,
}

impl Prefixed {
    /// A connection accepted here.
    pub fn accepted(stream: TcpStream) -> Prefixed {
        Prefixed {
            unread: Bytes::new(),
            stream,
            read_any: Arc::default(),
        }
    }

    /// A connection handed to this generation, its `unread` bytes first
    /// (needs the runtime's context). The socket is non-blocking already:
    /// its flags are the sender's, which set them.
    pub fn from_fd(fd: std::os::fd::OwnedFd, unread: Vec<u8>) -> std::io::Result<Prefixed> {
        let stream = std::net::TcpStream::from(fd);
        stream.set_nonblocking(true)?;
        Ok(Prefixed {
            unread: unread.into(),
            stream: TcpStream::from_std(stream)?,
            read_any: Arc::default(),
        })
    }

    /// The socket, and what a server stopped between two requests leaves
    /// unread: `read_buf` (what hyper read and did not parse), then what
    /// it never read of an earlier owner's bytes.
    pub fn leftover(self, read_buf: &[u8]) -> (TcpStream, Vec<u8>) {
        let mut bytes = read_buf.to_vec();
        bytes.extend_from_slice(&self.unread);
        (self.stream, bytes)
    }
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.unread.is_empty() {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
            if buf.filled().len() > before {
                self.read_any.store(true, Ordering::SeqCst);
            }
            return polled;
        }
        let n = self.unread.len().min(buf.remaining());
        let head = self.unread.split_to(n);
        buf.put_slice(&head);
        self.read_any.store(true, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Whether a connection hyper stopped between two requests may still be
/// handed over: not once an exchange ended it in HTTP's terms. hyper stops
/// at the boundary in both cases and cannot say which; a spent connection
/// handed over would be held open by its new owner while its client waits
/// for the end it was promised. An exchange ends the connection when the
/// client asked to close (`Connection: close`, or HTTP/1.0 without
/// `keep-alive`), when the response said `Connection: close` or switched
/// protocols, or when a request was read after the server asked hyper to
/// stop (hyper serves it, then closes). `Reuse` sees each message before
/// hyper writes it, so it misses what hyper decides alone: a request
/// framed by both `Transfer-Encoding` and `Content-Length` (hyper strips
/// one header and closes after the answer) and a `CONNECT`; both are rare,
/// and only an answer still being written when the drain starts is at
/// risk.
///
/// An answer given before its request's body was read to the end says
/// `Connection: close` (the rest of the body would otherwise be read as
/// the next request, here or by the connection's next owner): the request
/// body a handler gets is a [`Tracked`] that tells.
#[derive(Debug, Default)]
pub struct Reuse {
    stopping: AtomicBool,
    ended: AtomicBool,
    /// Whether the body of the request being served was read to its end.
    body_read: Mutex<Option<Arc<AtomicBool>>>,
}

impl Reuse {
    /// A request arrived (called before it is served): its body, tracked.
    pub fn request(&self, request: hyper::Request<Incoming>) -> hyper::Request<Tracked> {
        if self.stopping.load(Ordering::SeqCst) || closes(request.version(), request.headers()) {
            self.ended.store(true, Ordering::SeqCst);
        }
        let (parts, inner) = request.into_parts();
        let read = Arc::new(AtomicBool::new(inner.is_end_stream()));
        *self.body_read.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&read));
        hyper::Request::from_parts(parts, Tracked { inner, read })
    }

    /// A response leaves: it says `Connection: close` if its request's body
    /// was not read to the end, and ends the connection if it closes.
    pub fn response<B>(&self, response: &mut hyper::Response<B>) {
        let unread = self
            .body_read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|read| !read.load(Ordering::SeqCst));
        if unread {
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
        }
        if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS
            || closes(response.version(), response.headers())
        {
            self.ended.store(true, Ordering::SeqCst);
        }
    }

    /// The server asks hyper to stop at the next request boundary (call
    /// before `graceful_shutdown`).
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether the connection, stopped, may go on with another owner.
    pub fn reusable(&self) -> bool {
        !self.ended.load(Ordering::SeqCst)
    }
}

/// A request body (hyper's, unchanged) that records when it was read to
/// its end, for its connection's [`Reuse`].
pub struct Tracked {
    inner: Incoming,
    read: Arc<AtomicBool>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an HTTP/1 message's `Connection` header and version end the
/// connection after it (RFC 9112, 9.3; as hyper decides).
fn closes(version: hyper::Version, headers: &hyper::HeaderMap) -> bool {
    let tokens = || {
        headers
            .get_all(hyper::header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
    };
    let has = |token: &str| tokens().any(|t| t.eq_ignore_ascii_case(token));
    match version {
        hyper::Version::HTTP_10 => has("close") || !has("keep-alive"),
        hyper::Version::HTTP_09 => true,
        // HTTP/1.1, and a response a handler labelled otherwise (hyper
        // writes it as 1.1).
        _ => has("close"),
    }
}
