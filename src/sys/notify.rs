//! The systemd readiness protocol (`sd_notify`), without libsystemd.
//!
//! One datagram per message on a fresh unbound, close-on-exec `AF_UNIX`
//! datagram socket, to the address systemd put in `NOTIFY_SOCKET`: a path,
//! or a name in the abstract namespace written with a leading `@`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// Sends `message` (`"READY=1"`, `"STOPPING=1"`, `"MAINPID=…"`, several
/// separated by newlines) to the notification socket `socket`, the value of
/// `NOTIFY_SOCKET`. Retries `EINTR`.
pub fn notify(socket: &OsStr, message: &str) -> io::Result<()> {
    let address = match address(socket)? {
        Address::Abstract(name) => SocketAddr::from_abstract_name(name)?,
        Address::Path(path) => SocketAddr::from_pathname(path)?,
    };
    let sender = UnixDatagram::unbound()?;
    loop {
        match sender.send_to_addr(message.as_bytes(), &address) {
            Ok(sent) if sent == message.len() => return Ok(()),
            Ok(sent) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("sent {sent} of {} bytes", message.len()),
                ));
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

/// What `NOTIFY_SOCKET` names.
enum Address<'a> {
    /// `@name`: the abstract namespace.
    Abstract(&'a [u8]),
    /// An absolute path.
    Path(&'a Path),
}

fn address(socket: &OsStr) -> io::Result<Address<'_>> {
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'@') => Ok(Address::Abstract(&bytes[1..])),
        Some(b'/') => Ok(Address::Path(Path::new(socket))),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET must be an absolute path or an abstract name starting with '@'",
        )),
    }
}

/// [`notify`] with `fds` attached (`SCM_RIGHTS`): `FDSTORE=1` hands them
/// to systemd's file-descriptor store, which gives them back to the next
/// start of the unit (`LISTEN_FDS`, named by `FDNAME=`).
pub fn notify_with_fds(socket: &OsStr, message: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let address = match address(socket)? {
        Address::Abstract(name) => UnixAddr::new_abstract(name)?,
        Address::Path(path) => UnixAddr::new(path)?,
    };
    let sender = UnixDatagram::unbound()?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov = [io::IoSlice::new(message.as_bytes())];
    let control = [ControlMessage::ScmRights(&raw)];
    loop {
        match sendmsg(
            sender.as_raw_fd(),
            &iov,
            &control,
            MsgFlags::MSG_NOSIGNAL,
            Some(&address),
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds: the clock systemd expects in
/// `MONOTONIC_USEC=` next to `RELOADING=1`.
pub fn monotonic_usec() -> io::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let seconds = u64::try_from(now.tv_sec()).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec() / 1_000).unwrap_or(0);
    Ok(seconds.saturating_mul(1_000_000).saturating_add(micros))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock an exec keeps, so a
/// deadline written in it means the same in the next image.
pub fn monotonic_nanos() -> io::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let seconds = u64::try_from(now.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec()).unwrap_or(0);
    Ok(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;
    use crate::sys::test_support::{TEST_DEADLINE, TempDir};

    fn receive(receiver: &UnixDatagram) -> String {
        receiver
            .set_read_timeout(Some(TEST_DEADLINE))
            .expect("timeout");
        let mut buf = [0; 256];
        let len = receiver.recv(&mut buf).expect("recv");
        String::from_utf8(buf[..len].to_vec()).expect("utf-8")
    }

    #[test]
    fn notifies_a_path_socket() {
        let dir = TempDir::new("notify");
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        notify(path.as_os_str(), "READY=1").expect("notify");
        assert_eq!(receive(&receiver), "READY=1");
    }

    #[test]
    fn notifies_an_abstract_socket() {
        let name = format!("handoff-test-notify-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
        let receiver = UnixDatagram::bind_addr(&address).expect("bind");
        let socket = OsString::from(format!("@{name}"));
        notify(&socket, "READY=1\nSTATUS=serving").expect("notify");
        assert_eq!(receive(&receiver), "READY=1\nSTATUS=serving");
    }

    #[test]
    fn monotonic_usec_moves_forward() {
        let first = monotonic_usec().expect("clock");
        let second = monotonic_usec().expect("clock");
        assert!(first > 0 && second >= first);
    }

    #[test]
    fn refuses_other_addresses() {
        for socket in ["", "relative/path", "vsock:2:1234"] {
            let err = notify(OsStr::new(socket), "READY=1").expect_err(socket);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{socket}");
        }
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let dir = TempDir::new("notify-missing");
        let path = dir.path().join("nobody.sock");
        assert!(notify(path.as_os_str(), "READY=1").is_err());
    }
}
