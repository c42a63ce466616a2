//! Bytes and fds over a Unix socket (`SCM_RIGHTS`): a control connection's
//! stream, and the datagrams of a foreign daemon's notification socket
//! (with the sender's `SCM_CREDENTIALS`).
//!
//! A frame's fds ride on its first byte: [`send_frame`] attaches them to the
//! first `sendmsg` and sends whatever the kernel did not take with plain
//! sends. On the receiving side the kernel never merges the bytes of two
//! fd-carrying sends into one read, so the fds arrive with the chunk that
//! starts at the frame's first byte; the decoder pairs them with the frame.
//! [`recv_chunk`] owns every fd it receives, including those that came with a
//! truncated control message; [`recv_datagram`] is the same receive, and
//! reads the sender's pid when `SO_PASSCRED` is on.
#![allow(
    unsafe_code,
    reason = "recvmsg is called by hand: nix's RecvMsg::cmsgs() refuses to walk the \
              control data when MSG_CTRUNC is set, which would leak the fds that did \
              arrive; received fd numbers must be adopted with OwnedFd::from_raw_fd, and \
              the sender's credentials read from the control data"
)]

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{ControlMessage, MsgFlags, cmsg_space, sendmsg};

use crate::wire::MAX_FDS_PER_FRAME;

/// The most fds one `sendmsg` may carry (the kernel's `SCM_MAX_FD`).
const MAX_FDS: usize = MAX_FDS_PER_FRAME as usize;

/// Bytes of control buffer needed for one `SCM_RIGHTS` message of `MAX_FDS`
/// and, on a socket with `SO_PASSCRED`, the `SCM_CREDENTIALS` the kernel
/// puts first.
const CONTROL_LEN: usize = cmsg_space::<[RawFd; MAX_FDS]>() + cmsg_space::<libc::ucred>();

/// A control buffer aligned for `cmsghdr`, big enough for `MAX_FDS` fds and
/// the sender's credentials.
#[repr(C, align(8))]
struct ControlBuffer([MaybeUninit<u8>; CONTROL_LEN]);

/// What one [`recv_chunk`] delivered.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes written to the start of the caller's buffer; 0 means EOF.
    pub len: usize,
    /// The fds that arrived with these bytes, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The kernel truncated the control data (`MSG_CTRUNC`): some fds were
    /// dropped. `fds` still holds those that arrived, so they get closed.
    pub truncated: bool,
    /// The sender's pid, from `SCM_CREDENTIALS` (only on a socket with
    /// `SO_PASSCRED`).
    pub pid: Option<u32>,
}

/// Sends all of `bytes`, with `fds` attached to the first byte.
///
/// The first `sendmsg` carries the fds in `SCM_RIGHTS`; if the kernel takes
/// only part of the bytes, the rest goes out with plain sends. Always uses
/// `MSG_NOSIGNAL` (a gone peer is `EPIPE`, not a `SIGPIPE`). Retries
/// `EINTR`. An error after part of the bytes went out leaves the stream in the
/// middle of a frame: the connection is unusable afterwards.
///
/// Fails with `InvalidInput` for more than 253 fds, or for fds with no bytes
/// (a zero-byte `sendmsg` on a stream socket silently sends no fds).
pub(crate) fn send_frame(sock: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} fds in one frame; the kernel passes at most {MAX_FDS} per sendmsg",
                fds.len()
            ),
        ));
    }
    if bytes.is_empty() && !fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fds cannot travel without bytes on a stream socket",
        ));
    }
    let sock = sock.as_fd().as_raw_fd();
    let flags = MsgFlags::MSG_NOSIGNAL;
    let mut sent = 0;
    if !fds.is_empty() {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        // EINTR means nothing was transferred, fds included: retry them.
        sent = loop {
            match sendmsg::<()>(sock, &[io::IoSlice::new(bytes)], &rights, flags, None) {
                Err(Errno::EINTR) => continue,
                result => break result?,
            }
        };
    }
    while sent < bytes.len() {
        match nix::sys::socket::send(sock, &bytes[sent..], flags) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

/// One `recvmsg` into `buf`, with room for 253 fds of control data.
///
/// Received fds are close-on-exec (`MSG_CMSG_CLOEXEC`). `len == 0` is EOF.
/// Retries `EINTR`; a receive timeout (`SO_RCVTIMEO`) surfaces as
/// `WouldBlock`. `buf` must not be empty (a zero-length read is
/// indistinguishable from EOF).
pub(crate) fn recv_chunk(sock: impl AsFd, buf: &mut [u8]) -> io::Result<Received> {
    recv_chunk_with_control(sock.as_fd(), buf, CONTROL_LEN)
}

/// One datagram into `buf` (bytes past its length are lost), as
/// [`recv_chunk`]: its fds close-on-exec, `MSG_CTRUNC` reported, and the
/// sender's pid when the socket has `SO_PASSCRED`. `control_len` below the
/// full size is for tests provoking `MSG_CTRUNC`.
pub(crate) fn recv_datagram(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    control_len: Option<usize>,
) -> io::Result<Received> {
    recv_chunk_with_control(sock, buf, control_len.unwrap_or(CONTROL_LEN))
}

/// [`recv_chunk`] with only `control_len` bytes of control buffer offered to
/// the kernel (at most the full size), so tests can provoke `MSG_CTRUNC`
/// without lowering the process-wide fd limit.
fn recv_chunk_with_control(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    control_len: usize,
) -> io::Result<Received> {
    if buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "recv_chunk needs a non-empty buffer",
        ));
    }
    let mut control = ControlBuffer([MaybeUninit::uninit(); CONTROL_LEN]);
    let control_len = control_len.min(CONTROL_LEN);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: msghdr is a plain C struct for which all-zero is a valid
        // value (null pointers, zero lengths).
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.0.as_mut_ptr().cast();
        header.msg_controllen = control_len as _;
        // SAFETY: `header` points at one iovec describing `buf` (valid for
        // writes of buf.len() bytes) and at `control` (valid for writes of
        // control_len <= CONTROL_LEN bytes, aligned for cmsghdr); both outlive
        // the call. `sock` is a live fd borrowed for the duration.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // Adopt the fds before anything else can fail, so none leaks.
        // SAFETY: the kernel filled `header` and the control bytes it
        // describes by the successful recvmsg above.
        let (fds, pid) = unsafe { adopt_control(&header) };
        return Ok(Received {
            len: n as usize,
            fds,
            truncated: header.msg_flags & libc::MSG_CTRUNC != 0,
            pid,
        });
    }
}

/// Takes ownership of every fd in the `SCM_RIGHTS` messages of `header`,
/// and reads the sender's pid from its `SCM_CREDENTIALS`, if any.
///
/// # Safety
///
/// `header` must have been filled by a successful `recvmsg`, and its control
/// buffer must still be alive and unmodified.
unsafe fn adopt_control(header: &libc::msghdr) -> (Vec<OwnedFd>, Option<u32>) {
    let mut fds = Vec::new();
    let mut pid = None;
    // SAFETY: per this function's contract, `header` describes control data
    // written by the kernel; CMSG_FIRSTHDR only reads msg_control/controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(header) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return either null or a pointer
        // to a complete, aligned cmsghdr inside the control buffer.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is pure arithmetic.
            let data_offset = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(data_offset) / size_of::<RawFd>();
            // SAFETY: `cmsg` is a valid cmsghdr; CMSG_DATA points just past it.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for index in 0..count {
                // SAFETY: the kernel wrote `count` ints after the header
                // (cmsg_len covers them, and it never exceeds the buffer, even
                // under MSG_CTRUNC); they may be unaligned, hence
                // read_unaligned.
                let raw = unsafe { data.add(index).read_unaligned() };
                // SAFETY: SCM_RIGHTS installed `raw` in our fd table for us
                // alone: nothing else owns it yet.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        } else if hdr.cmsg_level == libc::SOL_SOCKET
            && hdr.cmsg_type == libc::SCM_CREDENTIALS
            // SAFETY: CMSG_LEN is pure arithmetic.
            && hdr.cmsg_len as usize >= unsafe { libc::CMSG_LEN(size_of::<libc::ucred>() as u32) } as usize
        {
            // SAFETY: the kernel wrote a whole ucred after the header
            // (checked against cmsg_len above); read unaligned as above.
            let credentials =
                unsafe { libc::CMSG_DATA(cmsg).cast::<libc::ucred>().read_unaligned() };
            pid = u32::try_from(credentials.pid).ok();
        }
        // SAFETY: `header` and `cmsg` are valid as above; CMSG_NXTHDR checks
        // the next header against msg_controllen and returns null past it.
        cmsg = unsafe { libc::CMSG_NXTHDR(header, cmsg) };
    }
    (fds, pid)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

    use super::*;
    use crate::sys::socket::{control_pair, is_cloexec, set_read_timeout, set_write_timeout};
    use crate::sys::test_support::{TEST_DEADLINE, TempDir, no_fork_while_held};

    /// A receive buffer for tests.
    const CHUNK: usize = 4096;
    /// How long a send or receive blocks before the kernel gives up, where a
    /// test wants it to give up. The outcome does not depend on its length.
    const SHORT_TIMEOUT: Duration = Duration::from_millis(50);

    /// (device, inode) of the open file behind `fd`.
    fn identity(fd: impl AsFd) -> (u64, u64) {
        let meta = File::from(fd.as_fd().try_clone_to_owned().expect("dup"))
            .metadata()
            .expect("fstat");
        (meta.dev(), meta.ino())
    }

    /// Distinct open files: a regular file, a pipe end and a socket.
    fn three_files(dir: &TempDir) -> Vec<OwnedFd> {
        let mut file = File::create(dir.path().join("payload")).expect("create");
        file.write_all(b"x").expect("write");
        let (reader, _writer) = std::io::pipe().expect("pipe");
        let (socket, _peer) = control_pair().expect("pair");
        vec![file.into(), reader.into(), socket]
    }

    fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
        fds.iter().map(AsFd::as_fd).collect()
    }

    fn receiver() -> (OwnedFd, OwnedFd) {
        let (ours, theirs) = control_pair().expect("pair");
        set_read_timeout(&theirs, Some(TEST_DEADLINE)).expect("timeout");
        (ours, theirs)
    }

    fn round_trip(fds: &[OwnedFd]) {
        let (sender, receiver) = receiver();
        send_frame(&sender, b"hello", &borrow_all(fds)).expect("send");
        let mut buf = [0; CHUNK];
        let got = recv_chunk(&receiver, &mut buf).expect("recv");
        assert_eq!(&buf[..got.len], b"hello");
        assert!(!got.truncated);
        assert_eq!(got.fds.len(), fds.len());
        for (sent, received) in fds.iter().zip(&got.fds) {
            assert!(
                is_cloexec(received).expect("fcntl"),
                "received fd not CLOEXEC"
            );
            assert_eq!(identity(sent), identity(received));
        }
    }

    #[test]
    fn passes_one_fd() {
        let dir = TempDir::new("fd1");
        let files = three_files(&dir);
        round_trip(&files[..1]);
    }

    #[test]
    fn passes_three_distinct_fds() {
        let dir = TempDir::new("fd3");
        round_trip(&three_files(&dir));
    }

    #[test]
    fn passes_the_maximum_of_253_fds() {
        let dir = TempDir::new("fd253");
        let files = three_files(&dir);
        let many: Vec<OwnedFd> = (0..MAX_FDS)
            .map(|i| files[i % files.len()].try_clone().expect("dup"))
            .collect();
        round_trip(&many);
    }

    #[test]
    fn refuses_more_than_253_fds() {
        let (sender, _receiver) = control_pair().expect("pair");
        let fds = vec![sender.as_fd(); MAX_FDS + 1];
        let err = send_frame(&sender, b"x", &fds).expect_err("254 fds");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn refuses_fds_without_bytes() {
        let (sender, _receiver) = control_pair().expect("pair");
        let err = send_frame(&sender, b"", &[sender.as_fd()]).expect_err("no bytes");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn fds_arrive_once_with_the_first_chunk_of_a_large_frame() {
        const PAYLOAD: usize = 4 << 20;
        let dir = TempDir::new("large");
        let files = three_files(&dir);
        let (sender, receiver) = receiver();
        set_write_timeout(&sender, TEST_DEADLINE).expect("timeout");
        let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
        let received = std::thread::scope(|scope| {
            let writer = scope.spawn(|| send_frame(&sender, &payload, &borrow_all(&files)));
            let mut received = Vec::with_capacity(PAYLOAD);
            let mut first = true;
            let mut buf = [0; CHUNK];
            while received.len() < PAYLOAD {
                let got = recv_chunk(&receiver, &mut buf).expect("recv");
                assert_ne!(got.len, 0, "EOF in the middle of the frame");
                if first {
                    assert_eq!(got.fds.len(), files.len(), "fds with the first chunk");
                } else {
                    assert!(got.fds.is_empty(), "fds delivered twice");
                }
                first = false;
                received.extend_from_slice(&buf[..got.len]);
            }
            writer.join().expect("writer panicked").expect("send");
            received
        });
        assert!(received == payload, "payload corrupted");
    }

    #[test]
    fn a_partial_send_keeps_the_fds_on_the_first_bytes() {
        // Nobody reads, so the first sendmsg fills the socket buffer, times
        // out with part of the bytes sent and returns that count; the plain
        // send of the rest then times out too.
        const PAYLOAD: usize = 16 << 20;
        let _quiet = no_fork_while_held();
        let dir = TempDir::new("partial");
        let files = three_files(&dir);
        let (sender, receiver) = receiver();
        set_write_timeout(&sender, SHORT_TIMEOUT).expect("timeout");
        let payload = vec![7; PAYLOAD];
        let err = send_frame(&sender, &payload, &borrow_all(&files)).expect_err("partial");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(sender);
        let mut buf = [0; CHUNK];
        let first = recv_chunk(&receiver, &mut buf).expect("recv");
        assert!(first.len > 0);
        assert_eq!(first.fds.len(), files.len());
        let mut total = first.len;
        loop {
            let got = recv_chunk(&receiver, &mut buf).expect("recv");
            assert!(got.fds.is_empty());
            if got.len == 0 {
                break;
            }
            total += got.len;
        }
        assert!(total > 0 && total < PAYLOAD, "sent {total} of {PAYLOAD}");
    }

    #[test]
    fn eof_is_a_zero_length_chunk() {
        let _quiet = no_fork_while_held();
        let (sender, receiver) = receiver();
        send_frame(&sender, b"last", &[]).expect("send");
        drop(sender);
        let mut buf = [0; CHUNK];
        assert_eq!(recv_chunk(&receiver, &mut buf).expect("recv").len, 4);
        let eof = recv_chunk(&receiver, &mut buf).expect("recv");
        assert_eq!(eof.len, 0);
        assert!(eof.fds.is_empty());
    }

    #[test]
    fn an_empty_buffer_is_refused() {
        let (_sender, receiver) = receiver();
        let err = recv_chunk(&receiver, &mut []).expect_err("empty buffer");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_receive_timeout_is_would_block() {
        let (_sender, receiver) = control_pair().expect("pair");
        set_read_timeout(&receiver, Some(SHORT_TIMEOUT)).expect("timeout");
        let err = recv_chunk(&receiver, &mut [0; CHUNK]).expect_err("timeout");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    thread_local! {
        /// Set by the test handler when SIGPIPE hits this thread.
        static GOT_SIGPIPE: Cell<bool> = const { Cell::new(false) };
    }

    extern "C" fn note_sigpipe(_: nix::libc::c_int) {
        GOT_SIGPIPE.with(|got| got.set(true));
    }

    /// Restores the previous SIGPIPE disposition on drop.
    struct SigpipeProbe(SigAction);

    impl SigpipeProbe {
        /// Rust ignores SIGPIPE in every binary, test binaries included, so
        /// a missing MSG_NOSIGNAL would go unnoticed. A recording handler
        /// makes the signal observable without letting it kill the process;
        /// it is thread-directed, so the flag is per thread.
        fn install() -> SigpipeProbe {
            let action = SigAction::new(
                SigHandler::Handler(note_sigpipe),
                SaFlags::SA_RESTART,
                SigSet::empty(),
            );
            // SAFETY: the handler only sets a const-initialised thread-local
            // Cell, which is async-signal-safe.
            let previous = unsafe { sigaction(Signal::SIGPIPE, &action) }.expect("sigaction");
            SigpipeProbe(previous)
        }
    }

    impl Drop for SigpipeProbe {
        fn drop(&mut self) {
            // SAFETY: restores the disposition saved by install().
            let _ = unsafe { sigaction(Signal::SIGPIPE, &self.0) };
        }
    }

    #[test]
    fn sending_to_a_closed_peer_is_epipe_without_sigpipe() {
        let _quiet = no_fork_while_held();
        let (sender, receiver) = control_pair().expect("pair");
        drop(receiver);
        let probe = SigpipeProbe::install();
        let err = send_frame(&sender, b"anyone?", &[sender.as_fd()]).expect_err("EPIPE");
        let err_plain = send_frame(&sender, b"anyone?", &[]).expect_err("EPIPE");
        drop(probe);
        assert_eq!(err.raw_os_error(), Some(nix::libc::EPIPE));
        assert_eq!(err_plain.raw_os_error(), Some(nix::libc::EPIPE));
        assert!(!GOT_SIGPIPE.with(Cell::get), "SIGPIPE was raised");
    }

    #[test]
    fn a_small_control_buffer_reports_truncation_and_closes_nothing_it_got() {
        let dir = TempDir::new("ctrunc");
        let files = three_files(&dir);
        for (control_len, expect_some) in [(0, false), (cmsg_space::<RawFd>(), true)] {
            let (sender, receiver) = receiver();
            send_frame(&sender, b"x", &borrow_all(&files)).expect("send");
            let mut buf = [0; CHUNK];
            let got =
                recv_chunk_with_control(receiver.as_fd(), &mut buf, control_len).expect("recv");
            assert_eq!(got.len, 1);
            assert!(
                got.truncated,
                "control_len {control_len}: MSG_CTRUNC not seen"
            );
            assert!(got.fds.len() < files.len());
            assert_eq!(!got.fds.is_empty(), expect_some, "{:?}", got.fds);
            for fd in &got.fds {
                assert!(is_cloexec(fd).expect("fcntl"));
            }
        }
    }
}
