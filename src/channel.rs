//! A control connection: frames plus fds over a Unix stream socket.
//!
//! The socket is shared by a [`Sender`] (any thread; a mutex keeps each
//! frame's bytes contiguous, because a frame and its fds must leave in one
//! `sendmsg`) and one [`Receiver`] (a reader thread). Writes are bounded by
//! `SO_SNDTIMEO` (`Timeouts::socket_write`), so a peer that stops reading
//! cannot stall its writer for ever (invariant I2); SIGPIPE is never raised
//! (MSG_NOSIGNAL), a dead peer is an EPIPE error.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use crate::error::{Error, FrameError, Peer, Result};
use crate::sys;
use crate::wire::{Decoder, Envelope, Frame, Message, encode};

/// Bytes read per `recvmsg`.
const READ_CHUNK: usize = 64 * 1024;

/// The writing half of a control connection.
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    inner: Arc<SenderInner>,
}

#[derive(Debug)]
struct SenderInner {
    socket: Arc<OwnedFd>,
    write: Mutex<()>,
    peer: Peer,
}

impl Sender {
    /// Sends one message with the handoff id and the fds it declares.
    pub(crate) fn send(
        &self,
        handoff_id: u64,
        message: Message,
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        let envelope = Envelope {
            handoff_id,
            message,
        };
        let bytes = encode(&envelope).map_err(|source| Error::Frame {
            peer: self.inner.peer,
            source,
        })?;
        let _guard = self
            .inner
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sys::send_frame(self.inner.socket.as_fd(), &bytes, fds)
            .map_err(|source| Error::io("sending on a control connection", source))
    }

    /// Shuts the connection down both ways: the peer sees EOF and our
    /// reader thread wakes up with EOF too.
    pub(crate) fn shutdown(&self) {
        // Already shut down or closed by the peer: nothing to do.
        let _ = sys::shutdown(self.inner.socket.as_fd());
    }
}

/// The reading half of a control connection.
#[derive(Debug)]
pub(crate) struct Receiver {
    socket: Arc<OwnedFd>,
    decoder: Decoder,
    buf: Vec<u8>,
    peer: Peer,
}

/// What one step of a reader saw.
enum Step {
    Frame(Frame),
    Eof,
    /// The pause waker was set: nothing more was read.
    Paused,
}

impl Receiver {
    /// The next frame; `Ok(None)` on a clean EOF at a frame boundary.
    pub(crate) fn recv(&mut self) -> Result<Option<Frame>> {
        match self.step(None)? {
            Step::Frame(frame) => Ok(Some(frame)),
            Step::Eof | Step::Paused => Ok(None),
        }
    }

    /// The socket.
    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The next frame, unless `pause` is set first: a paused receiver has
    /// read nothing it has not decoded, so its socket and its residue
    /// ([`Receiver::into_parts`]) carry the stream on exactly.
    fn step(&mut self, pause: Option<&sys::Waker>) -> Result<Step> {
        loop {
            let frame = self
                .decoder
                .next_frame()
                .map_err(|source| self.frame_error(source))?;
            if let Some(frame) = frame {
                return Ok(Step::Frame(frame));
            }
            if let Some(pause) = pause {
                let (_, paused) = sys::poll_either(self.socket.as_fd(), pause.as_fd(), None)
                    .map_err(|source| Error::io("waiting on a control connection", source))?;
                if paused {
                    return Ok(Step::Paused);
                }
            }
            let received = sys::recv_chunk(self.socket.as_fd(), &mut self.buf)
                .map_err(|source| Error::io("receiving on a control connection", source))?;
            if received.truncated {
                return Err(self.frame_error(FrameError::ControlTruncated));
            }
            if received.len == 0 {
                if !received.fds.is_empty() {
                    return Err(self.frame_error(FrameError::AfterEof));
                }
                self.decoder
                    .push_eof()
                    .map_err(|source| self.frame_error(source))?;
                return Ok(Step::Eof);
            }
            self.decoder
                .push(&self.buf[..received.len], received.fds)
                .map_err(|source| self.frame_error(source))?;
        }
    }

    /// Duplicates (close-on-exec) of the socket and of what was received
    /// on it and not yet decoded: the stream as it goes on, for another
    /// image of this process.
    pub(crate) fn export(&self) -> Result<(OwnedFd, Residue)> {
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|source| Error::io("duplicating a control socket's fds", source))
        };
        let socket = dup(self.socket.as_fd())?;
        let (bytes, fds) = self.decoder.residual();
        let fds = fds
            .map(|(offset, fd)| Ok((offset, dup(fd)?)))
            .collect::<Result<_>>()?;
        Ok((
            socket,
            Residue {
                bytes: bytes.to_vec(),
                fds,
            },
        ))
    }

    fn frame_error(&self, source: FrameError) -> Error {
        Error::Frame {
            peer: self.peer,
            source,
        }
    }
}

/// Received and not yet decoded: the bytes, and each fd with the offset of
/// the last byte it came with.
#[derive(Debug, Default)]
pub(crate) struct Residue {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<(usize, OwnedFd)>,
}

/// Wraps a connected control socket; sets the write timeout.
pub(crate) fn split(
    socket: OwnedFd,
    peer: Peer,
    write_timeout: std::time::Duration,
) -> Result<(Sender, Receiver)> {
    split_with(socket, Residue::default(), peer, write_timeout)
}

/// [`split`], going on from what an earlier receiver left undecoded.
pub(crate) fn split_with(
    socket: OwnedFd,
    residue: Residue,
    peer: Peer,
    write_timeout: std::time::Duration,
) -> Result<(Sender, Receiver)> {
    sys::set_write_timeout(socket.as_fd(), write_timeout)
        .map_err(|source| Error::io("setting a control socket's write timeout", source))?;
    let socket = Arc::new(socket);
    Ok((
        Sender {
            inner: Arc::new(SenderInner {
                socket: Arc::clone(&socket),
                write: Mutex::new(()),
                peer,
            }),
        },
        Receiver {
            socket,
            decoder: Decoder::from_residual(residue.bytes, residue.fds),
            buf: vec![0; READ_CHUNK],
            peer,
        },
    ))
}

/// What a reader thread reports.
#[derive(Debug)]
pub(crate) enum Received {
    /// A frame.
    Frame(Frame),
    /// The connection ended: `None` for a clean EOF, else the error.
    Closed(Option<Error>),
}

/// Runs `receiver` on a thread of its own, sending every frame (and finally
/// the close) through `deliver`. The thread ends at EOF or error, or when
/// `deliver` returns false (the consumer is gone) — or, given a `pause`
/// waker, when it is set: the thread then returns the receiver, having
/// read nothing it did not deliver or keep in its residue.
pub(crate) fn spawn_reader(
    name: String,
    mut receiver: Receiver,
    pause: Option<Arc<sys::Waker>>,
    deliver: impl Fn(Received) -> bool + Send + 'static,
) -> Result<std::thread::JoinHandle<Option<Receiver>>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            loop {
                match receiver.step(pause.as_deref()) {
                    Ok(Step::Frame(frame)) => {
                        if !deliver(Received::Frame(frame)) {
                            return None;
                        }
                    }
                    Ok(Step::Paused) => return Some(receiver),
                    Ok(Step::Eof) => {
                        deliver(Received::Closed(None));
                        return None;
                    }
                    Err(error) => {
                        deliver(Received::Closed(Some(error)));
                        return None;
                    }
                }
            }
        })
        .map_err(|source| Error::io("starting a reader thread", source))
}
