//! Frame header and the one resumable decoder (house style habit 5).
//!
//! ```text
//! offset  size  field
//!      0     4  magic "HNDF"
//!      4     2  wire format version, u16 LE (1)
//!      6     4  payload length, u32 LE (at most MAX_PAYLOAD)
//!     10     2  fd count, u16 LE (at most MAX_FDS_PER_FRAME)
//!     12     n  payload: postcard(Envelope)
//! ```
//!
//! The decoder owns partial bytes and the fds that arrived with them, and
//! hands fds out only with the frame that declared them. Which frame is that?
//! A sender writes each frame with one `sendmsg`, the fds attached. On a Unix
//! stream socket, Linux's `recvmsg` may glue bytes of earlier, fd-less writes
//! in front of a write that carries fds, but stops right after the first
//! write whose fds it delivered. So the fds of one `recvmsg` belong to the
//! frame that holds the *last* byte of that chunk. A frame that ends with
//! fewer or more fds than it declared is an error, never a silent leak (the
//! surplus fds are closed when the decoder is dropped).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::message::Envelope;
use crate::error::FrameError;

/// The magic that opens every frame.
pub const MAGIC: [u8; 4] = *b"HNDF";
/// The wire format (framing) version this build reads and writes.
pub const WIRE_VERSION: u16 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 12;
/// The payload cap: a larger declared length is rejected before allocating.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// At most this many fds travel with one frame (Linux caps SCM_RIGHTS at 253).
pub const MAX_FDS_PER_FRAME: u16 = 253;

/// A decoded frame: the envelope and exactly the fds it declared.
#[derive(Debug)]
pub struct Frame {
    /// The message and its handoff id.
    pub envelope: Envelope,
    /// The fds that travelled with it, in order.
    pub fds: Vec<OwnedFd>,
}

/// Encodes `envelope` into one frame (header and payload) declaring
/// `envelope.message.fd_count()` fds.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, FrameError> {
    let fd_count = envelope.message.fd_count();
    if fd_count > usize::from(MAX_FDS_PER_FRAME) {
        return Err(FrameError::TooManyFds {
            declared: u16::try_from(fd_count).unwrap_or(u16::MAX),
            max: MAX_FDS_PER_FRAME,
        });
    }
    let payload = postcard::to_stdvec(envelope).map_err(|source| FrameError::Payload {
        len: 0,
        source: Box::new(source),
    })?;
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge {
            len: payload.len() as u64,
            max: MAX_PAYLOAD as u64,
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    // Both casts are bounded by the checks above.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&(fd_count as u16).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    payload_len: usize,
    fd_count: u16,
}

fn parse_header(bytes: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
    let [m0, m1, m2, m3, v0, v1, l0, l1, l2, l3, f0, f1] = *bytes;
    let magic = [m0, m1, m2, m3];
    if magic != MAGIC {
        return Err(FrameError::BadMagic {
            expected: MAGIC,
            got: magic,
        });
    }
    let version = u16::from_le_bytes([v0, v1]);
    if version != WIRE_VERSION {
        return Err(FrameError::UnsupportedWireVersion {
            got: version,
            supported: WIRE_VERSION,
        });
    }
    let payload_len = u32::from_le_bytes([l0, l1, l2, l3]);
    if payload_len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLarge {
            len: u64::from(payload_len),
            max: MAX_PAYLOAD as u64,
        });
    }
    let fd_count = u16::from_le_bytes([f0, f1]);
    if fd_count > MAX_FDS_PER_FRAME {
        return Err(FrameError::TooManyFds {
            declared: fd_count,
            max: MAX_FDS_PER_FRAME,
        });
    }
    Ok(Header {
        payload_len: payload_len as usize,
        fd_count,
    })
}

/// The resumable frame decoder. Feed it what each `recvmsg` returned with
/// [`Decoder::push`]; take frames with [`Decoder::next_frame`].
///
/// After an error the decoder is poisoned: the stream has lost framing and
/// the connection must be closed.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Received fds with the stream offset (relative to `buf[0]`) of the
    /// last byte that arrived with them.
    fds: VecDeque<(usize, OwnedFd)>,
    eof: bool,
    poisoned: bool,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Adds bytes and the fds that arrived with them (from one `recvmsg`).
    /// Fds that arrive with no bytes, or after EOF, poison the stream.
    pub fn push(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) -> Result<(), FrameError> {
        if self.eof && (!bytes.is_empty() || !fds.is_empty()) {
            self.poisoned = true;
            return Err(FrameError::AfterEof);
        }
        if bytes.is_empty() && !fds.is_empty() {
            self.poisoned = true;
            return Err(FrameError::FdCountMismatch {
                declared: 0,
                received: fds.len(),
            });
        }
        // The fds belong to the frame holding the chunk's last byte.
        let offset = self.buf.len() + bytes.len().saturating_sub(1);
        for fd in fds {
            self.fds.push_back((offset, fd));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Marks the end of the stream. A partial frame left over is an error.
    pub fn push_eof(&mut self) -> Result<(), FrameError> {
        self.eof = true;
        if !self.buf.is_empty() || !self.fds.is_empty() {
            self.poisoned = true;
            return Err(FrameError::TruncatedAtEof {
                buffered: self.buf.len(),
            });
        }
        Ok(())
    }

    /// What was received and not yet taken as a frame: the bytes, and each
    /// fd with the offset (into those bytes) of the last byte it came with.
    /// A reader that hands its connection over (a supervisor replacing its
    /// image) carries this with the socket.
    pub fn residual(&self) -> (&[u8], impl Iterator<Item = (usize, BorrowedFd<'_>)>) {
        let fds = self.fds.iter().map(|(offset, fd)| (*offset, fd.as_fd()));
        (&self.buf, fds)
    }

    /// A decoder that goes on from what [`Decoder::residual`] showed.
    pub fn from_residual(bytes: Vec<u8>, fds: Vec<(usize, OwnedFd)>) -> Decoder {
        Decoder {
            buf: bytes,
            fds: fds.into(),
            eof: false,
            poisoned: false,
        }
    }

    /// True once the stream ended cleanly and every frame was taken.
    pub fn is_finished(&self) -> bool {
        self.eof && self.buf.is_empty()
    }

    /// Bytes of an incomplete frame held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.poisoned {
            return Err(FrameError::AfterEof);
        }
        let result = self.try_next();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn try_next(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(head) = self.buf.first_chunk::<HEADER_LEN>() else {
            // A header that cannot start right is rejected before it is whole.
            let have = self.buf.len().min(MAGIC.len());
            if self.buf[..have] != MAGIC[..have] {
                let mut got = [0u8; 4];
                got[..have].copy_from_slice(&self.buf[..have]);
                return Err(FrameError::BadMagic {
                    expected: MAGIC,
                    got,
                });
            }
            return Ok(None);
        };
        let header = parse_header(head)?;
        let frame_len = HEADER_LEN + header.payload_len;
        if self.buf.len() < frame_len {
            return Ok(None);
        }
        // Fds that arrived with bytes of this frame belong to it.
        let mut fds = Vec::with_capacity(usize::from(header.fd_count));
        while let Some((offset, _)) = self.fds.front() {
            if *offset >= frame_len {
                break;
            }
            if let Some((_, fd)) = self.fds.pop_front() {
                fds.push(fd);
            }
        }
        if fds.len() != usize::from(header.fd_count) {
            return Err(FrameError::FdCountMismatch {
                declared: usize::from(header.fd_count),
                received: fds.len(),
            });
        }
        let payload = &self.buf[HEADER_LEN..frame_len];
        let envelope: Envelope =
            postcard::from_bytes(payload).map_err(|source| FrameError::Payload {
                len: payload.len(),
                source: Box::new(source),
            })?;
        if envelope.message.fd_count() != fds.len() {
            return Err(FrameError::FdCountMismatch {
                declared: envelope.message.fd_count(),
                received: fds.len(),
            });
        }
        self.buf.drain(..frame_len);
        for (offset, _) in self.fds.iter_mut() {
            *offset -= frame_len;
        }
        Ok(Some(Frame { envelope, fds }))
    }
}

/// Splits `items` into runs that each fit one frame: at most
/// [`MAX_FDS_PER_FRAME`] (one fd per item) and `size` bytes summed well
/// under [`MAX_PAYLOAD`] (half of it, for the encoding's overhead). An
/// item larger than that still goes, alone.
pub(crate) fn per_frame<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, item) in items.iter().enumerate() {
        let item_size = size(item);
        let full = index - start == usize::from(MAX_FDS_PER_FRAME);
        if index > start && (full || bytes + item_size > MAX_PAYLOAD / 2) {
            runs.push(&items[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += item_size;
    }
    if start < items.len() {
        runs.push(&items[start..]);
    }
    runs
}
