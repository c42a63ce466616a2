//! A socket read through the bytes a previous owner read from it and did
//! not parse: how a connection handed over by another generation is served
//! (shared by `kvd`, `echod` and the gateway).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::TcpStream;

/// A socket read through `unread` first: the bytes a previous owner read
/// and did not parse.
pub struct Prefixed {
    /// Served first.
    pub unread: Bytes,
    /// Then the socket.
    pub stream: TcpStream,
}

impl Prefixed {
    /// A connection handed to this generation, its `unread` bytes first
    /// (needs the runtime's context). The socket is non-blocking already:
    /// its flags are the sender's, which set them.
    pub fn from_fd(fd: std::os::fd::OwnedFd, unread: Vec<u8>) -> std::io::Result<Prefixed> {
        let stream = std::net::TcpStream::from(fd);
        stream.set_nonblocking(true)?;
        Ok(Prefixed {
            unread: unread.into(),
            stream: TcpStream::from_std(stream)?,
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
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.unread.len().min(buf.remaining());
        let head = self.unread.split_to(n);
        buf.put_slice(&head);
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
