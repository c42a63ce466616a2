//! A private network namespace with the loopback interface up: for tools
//! that want the kernel's TCP counters (`/proc/net/snmp`, `/proc/net/netstat`)
//! to count their own traffic alone, such as the load benchmark.
//!
//! The hazard: a network namespace belongs to a *thread*. `unshare` moves
//! the calling thread only; threads and processes it creates afterwards
//! inherit the new namespace, threads that already exist keep the old one.
//! Call it first thing in `main`, before any thread starts.
#![allow(
    unsafe_code,
    reason = "SIOCGIFFLAGS/SIOCSIFFLAGS take a struct ifreq, for which nix has no safe wrapper"
)]

use std::io;
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sched::{CloneFlags, unshare};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Moves the calling thread into a new network namespace and brings its
/// loopback interface up. Needs `CAP_SYS_ADMIN` (root, or a user
/// namespace); `EPERM` otherwise.
pub fn enter_private_network() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNET)?;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is a plain C struct (a name array and a union of
    // integers, arrays and a pointer) for which all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `sock` is a live socket; SIOCGIFFLAGS reads the NUL-terminated
    // name in `request` and writes ifru_flags, both inside the struct,
    // which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so ifru_flags is the member the
    // kernel wrote.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads the struct.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_namespace_has_its_own_loopback_or_a_clear_refusal() {
        // In a thread of its own: the namespace stays with this thread,
        // which ends with the test.
        let outcome = std::thread::spawn(|| {
            let outside = std::fs::read_link("/proc/thread-self/ns/net")?;
            enter_private_network()?;
            let inside = std::fs::read_link("/proc/thread-self/ns/net")?;
            // The loopback works: a listener and a connect to it.
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let stream = std::net::TcpStream::connect(listener.local_addr()?)?;
            drop(stream);
            Ok::<_, io::Error>((outside, inside))
        })
        .join()
        .expect("thread");
        match outcome {
            Ok((outside, inside)) => assert_ne!(outside, inside),
            // Without CAP_SYS_ADMIN the kernel refuses, and says so.
            Err(error) => assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}"),
        }
    }
}
