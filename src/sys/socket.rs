//! Sockets: the control pair, listener addresses, binding, inspecting an
//! inherited fd, socket timeouts, peer credentials, and fd-table checks.
//!
//! Hazards handled here (see the module header of `sys` for the why): the
//! 108-byte `sun_path` limit, stale Unix socket files, and a socket file
//! mode that must be right from the instant the file exists.
#![allow(
    unsafe_code,
    reason = "getsockopt for plain ints (nix has no SO_DOMAIN/SO_PROTOCOL, and its \
              SO_TYPE refuses unknown types), and listen() with a backlog above the \
              SOMAXCONN of some libc headers (nix validates against it; the kernel clamps)"
)]

use std::fmt;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::libc;
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrStorage, UnixAddr, sockopt,
};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::sys::time::TimeVal;

use crate::wire::FdKind;

/// The `listen` backlog of every stream listener we create. The kernel
/// silently caps it at `net.core.somaxconn`.
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// Bytes in `sockaddr_un.sun_path` (108 on Linux), terminating NUL included.
pub(crate) const SUN_PATH_CAPACITY: usize =
    size_of::<libc::sockaddr_un>() - size_of::<libc::sa_family_t>();

/// The mode of the admin socket file: owner read and write only.
const ADMIN_SOCKET_MODE: u32 = 0o600;

/// An address a daemon listens on: a TCP or UDP socket address, or the path
/// of a Unix stream socket.
///
/// The text form, accepted by [`FromStr`] and produced by [`Display`]
/// (they round-trip):
///
/// | text                | meaning                                          |
/// |---------------------|--------------------------------------------------|
/// | `HOST:PORT`         | TCP listener                                     |
/// | `udp:HOST:PORT`     | bound UDP socket                                 |
/// | `unix:PATH`         | Unix stream listener at `PATH` (under 108 bytes) |
///
/// `HOST` is an IPv4 address, an IPv6 address in brackets, or `localhost`,
/// which always means `127.0.0.1` (no resolver is consulted, so parsing never
/// blocks and never depends on `/etc/hosts`). Port 0 asks the kernel for a
/// free port.
///
/// ```
/// use handoff::ListenAddr;
/// use std::net::SocketAddr;
///
/// let http: ListenAddr = "[::1]:8080".parse()?;
/// assert_eq!(http, ListenAddr::Tcp("[::1]:8080".parse::<SocketAddr>()?));
///
/// let dns: ListenAddr = "udp:localhost:5353".parse()?;
/// assert_eq!(dns.to_string(), "udp:127.0.0.1:5353");
///
/// let admin: ListenAddr = "unix:/run/app/admin.sock".parse()?;
/// assert_eq!(admin.to_string(), "unix:/run/app/admin.sock");
///
/// assert!("example.com:80".parse::<ListenAddr>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`Display`]: std::fmt::Display
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP listener.
    Tcp(SocketAddr),
    /// A Unix stream listener at this path.
    Unix(PathBuf),
    /// A bound UDP socket.
    Udp(SocketAddr),
}

impl ListenAddr {
    /// The kind of fd this address is bound as.
    pub fn kind(&self) -> FdKind {
        match self {
            ListenAddr::Tcp(_) => FdKind::Tcp,
            ListenAddr::Unix(_) => FdKind::Unix,
            ListenAddr::Udp(_) => FdKind::Udp,
        }
    }
}

impl FromStr for ListenAddr {
    type Err = crate::Error;

    fn from_str(input: &str) -> Result<ListenAddr, crate::Error> {
        let bad = |reason| crate::Error::BadAddress {
            input: input.to_owned(),
            reason,
        };
        if let Some(path) = input.strip_prefix("unix:") {
            return parse_unix_path(path).map(ListenAddr::Unix).map_err(bad);
        }
        if let Some(host_port) = input.strip_prefix("udp:") {
            return parse_host_port(host_port).map(ListenAddr::Udp).map_err(bad);
        }
        parse_host_port(input).map(ListenAddr::Tcp).map_err(bad)
    }
}

fn parse_unix_path(path: &str) -> Result<PathBuf, &'static str> {
    if path.is_empty() {
        return Err("the unix socket path is empty");
    }
    if path.contains('\0') {
        return Err("the unix socket path contains a NUL byte");
    }
    if path.len() >= SUN_PATH_CAPACITY {
        return Err("the unix socket path must be shorter than 108 bytes (sockaddr_un limit)");
    }
    Ok(PathBuf::from(path))
}

fn parse_host_port(text: &str) -> Result<SocketAddr, &'static str> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("expected HOST:PORT, udp:HOST:PORT or unix:PATH");
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port is not a number");
    }
    let Ok(port) = port.parse::<u16>() else {
        return Err("the port is out of range (0 to 65535)");
    };
    if host == "localhost" {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    Err(if host.is_empty() {
        "the host is empty (use 0.0.0.0 or [::] for every interface)"
    } else if host.starts_with('[') {
        "the host is not a valid bracketed IPv6 address"
    } else if host.contains(':') {
        "an IPv6 host must be in brackets, like [::1]:80"
    } else {
        "the host must be an IP address or localhost"
    })
}

impl fmt::Display for ListenAddr {
    /// The text form [`FromStr`] accepts. A Unix path that is not UTF-8 is
    /// shown lossily and does not round-trip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Udp(addr) => write!(f, "udp:{addr}"),
        }
    }
}

/// What [`inspect`] found behind an fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// `None` if the fd is not a socket; `Some(FdKind::Other)` for a socket
    /// that is not TCP, UDP or Unix stream.
    pub kind: Option<FdKind>,
    /// A stream socket on which `listen` was called.
    pub listening: bool,
    /// The bound address; `None` for an unbound, unnamed or abstract socket,
    /// or a socket of another kind.
    pub local: Option<ListenAddr>,
}

/// The credentials of the process at the other end of a Unix socket, as the
/// kernel recorded them at `connect`/`socketpair` time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// A connected pair of Unix stream sockets, both close-on-exec: the control
/// connection between the supervisor and a generation.
pub(crate) fn control_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Binds (and for stream sockets, listens on) `addr`; the fd is
/// close-on-exec.
///
/// TCP sets `SO_REUSEADDR` (so a restart is not refused while old
/// connections sit in `TIME_WAIT`) and listens with [`LISTEN_BACKLOG`]. UDP
/// does *not* set it: on Linux it would let a second socket bind the very
/// same UDP address and silently steal datagrams, where we want `AddrInUse`.
/// A Unix path of 108 bytes or more is refused (`InvalidInput`); an existing
/// socket file nobody listens on is replaced; a live one, or a file that is
/// not a socket, is `AddrInUse`.
pub(crate) fn bind(addr: &ListenAddr) -> io::Result<OwnedFd> {
    match addr {
        ListenAddr::Tcp(addr) => {
            let fd = inet_socket(addr, SockType::Stream)?;
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(*addr))?;
            listen(fd.as_fd())?;
            Ok(fd)
        }
        ListenAddr::Udp(addr) => {
            let fd = inet_socket(addr, SockType::Datagram)?;
            socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(*addr))?;
            Ok(fd)
        }
        ListenAddr::Unix(path) => bind_unix(path, None),
    }
}

/// A Unix stream listener for the admin interface whose socket file has mode
/// 0600 from the instant it exists. Same stale-file rule as [`bind`].
///
/// Race-free by construction: Linux creates the socket file at `bind` with
/// the mode of the socket's own inode (masked by the umask, which can only
/// remove bits), so we `fchmod` the fd to 0600 *before* `bind`. There is no
/// moment at which the file exists with a wider mode, and we never touch the
/// process-wide umask. The mode is checked after `bind` and before `listen`;
/// should a kernel ignore the `fchmod`, the file is removed before anyone can
/// connect and the call fails.
pub(crate) fn bind_admin_socket(path: &Path) -> io::Result<OwnedFd> {
    bind_unix(path, Some(ADMIN_SOCKET_MODE))
}

fn inet_socket(addr: &SocketAddr, ty: SockType) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    Ok(socket::socket(family, ty, SockFlag::SOCK_CLOEXEC, None)?)
}

fn listen(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: listen takes an fd and an int; `fd` is live for the call.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), LISTEN_BACKLOG) };
    Errno::result(rc)?;
    Ok(())
}

fn bind_unix(path: &Path, mode: Option<u32>) -> io::Result<OwnedFd> {
    let len = path.as_os_str().len();
    if len >= SUN_PATH_CAPACITY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unix socket path is {len} bytes; sockaddr_un holds at most {} plus the NUL \
                 ({SUN_PATH_CAPACITY} in all)",
                SUN_PATH_CAPACITY - 1
            ),
        ));
    }
    let addr = UnixAddr::new(path)?;
    remove_if_stale(path, &addr)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Some(mode) = mode {
        fchmod(&fd, Mode::from_bits_truncate(mode))?;
    }
    socket::bind(fd.as_raw_fd(), &addr)?;
    if let Some(mode) = mode {
        let actual = std::fs::symlink_metadata(path)?.permissions().mode() & 0o777;
        if actual & !mode != 0 {
            // Nobody can have connected: we do not listen yet.
            let _ = std::fs::remove_file(path);
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("socket file was created with mode {actual:o}, not {mode:o}"),
            ));
        }
    }
    listen(fd.as_fd())?;
    Ok(fd)
}

/// Removes `path` if it is a socket file nobody listens on. A live listener
/// or a file that is not a socket is `AddrInUse` and stays.
fn remove_if_stale(path: &Path, addr: &UnixAddr) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the path exists and is not a socket",
        ));
    }
    // Our own fresh probe socket: non-blocking so that a live listener with a
    // full backlog answers EAGAIN instead of blocking us.
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    match socket::connect(probe.as_raw_fd(), addr) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a live socket is listening on the path",
        )),
        Err(Errno::ECONNREFUSED) => match std::fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        },
        // Removed between our stat and our connect.
        Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// What is behind `fd`: a socket of which kind, listening or not, bound to
/// which address.
pub(crate) fn inspect(fd: impl AsFd) -> io::Result<SocketInfo> {
    let fd = fd.as_fd();
    let stat = fstat(fd)?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Ok(SocketInfo {
            kind: None,
            listening: false,
            local: None,
        });
    }
    let domain = getsockopt_int(fd, libc::SO_DOMAIN)?;
    let ty = getsockopt_int(fd, libc::SO_TYPE)?;
    let protocol = getsockopt_int(fd, libc::SO_PROTOCOL)?;
    let listening = getsockopt_int(fd, libc::SO_ACCEPTCONN)? != 0;
    let inet = domain == libc::AF_INET || domain == libc::AF_INET6;
    let kind = if inet && ty == libc::SOCK_STREAM && protocol == libc::IPPROTO_TCP {
        FdKind::Tcp
    } else if inet && ty == libc::SOCK_DGRAM && protocol == libc::IPPROTO_UDP {
        FdKind::Udp
    } else if domain == libc::AF_UNIX && ty == libc::SOCK_STREAM {
        FdKind::Unix
    } else {
        FdKind::Other
    };
    let local = match kind {
        FdKind::Other => None,
        _ => local_address(fd, kind)?,
    };
    Ok(SocketInfo {
        kind: Some(kind),
        listening,
        local,
    })
}

fn local_address(fd: BorrowedFd<'_>, kind: FdKind) -> io::Result<Option<ListenAddr>> {
    let addr: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    let inet = if let Some(v4) = addr.as_sockaddr_in() {
        Some(SocketAddr::V4(SocketAddrV4::from(*v4)))
    } else {
        addr.as_sockaddr_in6()
            .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
    };
    Ok(match kind {
        FdKind::Tcp => inet.map(ListenAddr::Tcp),
        FdKind::Udp => inet.map(ListenAddr::Udp),
        FdKind::Unix => addr
            .as_unix_addr()
            .and_then(UnixAddr::path)
            .map(|path| ListenAddr::Unix(path.to_owned())),
        FdKind::Other => None,
    })
}

/// An int-valued `SOL_SOCKET` option.
fn getsockopt_int(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and describe an int
    // buffer; `fd` is live for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    Errno::result(rc)?;
    Ok(value)
}

/// Bounds each blocking write on `fd` (`SO_SNDTIMEO`); a write that times out
/// fails with `WouldBlock`. Zero is refused (`InvalidInput`): to the kernel it
/// means "no timeout".
pub(crate) fn set_write_timeout(fd: impl AsFd, timeout: Duration) -> io::Result<()> {
    socket::setsockopt(&fd.as_fd(), sockopt::SendTimeout, &timeval(Some(timeout))?)?;
    Ok(())
}

/// Bounds each blocking read on `fd` (`SO_RCVTIMEO`), or removes the bound
/// with `None`. A read that times out fails with `WouldBlock`. `Some(zero)` is
/// refused (`InvalidInput`). The library reads a control socket on a thread
/// of its own, until EOF; only the first frame of a rendezvous connection
/// (from a peer not yet known to be a supervisor) is read with a bound.
pub(crate) fn set_read_timeout(fd: impl AsFd, timeout: Option<Duration>) -> io::Result<()> {
    socket::setsockopt(&fd.as_fd(), sockopt::ReceiveTimeout, &timeval(timeout)?)?;
    Ok(())
}

/// A socket timeout as a `timeval`, rounded up to the microsecond so that a
/// tiny duration does not become zero ("forever").
fn timeval(timeout: Option<Duration>) -> io::Result<TimeVal> {
    let Some(timeout) = timeout else {
        return Ok(TimeVal::new(0, 0));
    };
    if timeout.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a zero socket timeout would mean no timeout at all",
        ));
    }
    let mut seconds = timeout.as_secs();
    let mut micros = timeout.subsec_nanos().div_ceil(1000);
    if micros == 1_000_000 {
        seconds = seconds.saturating_add(1);
        micros = 0;
    }
    let seconds = libc::time_t::try_from(seconds).unwrap_or(libc::time_t::MAX);
    Ok(TimeVal::new(seconds, libc::suseconds_t::from(micros)))
}

/// The credentials of the peer of a connected Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_credentials(fd: impl AsFd) -> io::Result<PeerCred> {
    let cred = socket::getsockopt(&fd.as_fd(), sockopt::PeerCredentials)?;
    Ok(PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// Whether `fd` is close-on-exec (`FD_CLOEXEC`).
pub fn is_cloexec(fd: impl AsFd) -> io::Result<bool> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFD)?;
    Ok(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC))
}

/// The fd numbers open in this process, ascending, from `/proc/self/fd`
/// (without the directory fd used to read it). Other threads may open and
/// close fds meanwhile: this is a snapshot for tests and diagnostics.
pub fn open_fds() -> io::Result<Vec<i32>> {
    let mut dir = Dir::open(
        "/proc/self/fd",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let own = dir.as_raw_fd();
    let mut fds = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        if let Ok(name) = entry.file_name().to_str()
            && let Ok(fd) = name.parse::<i32>()
            && fd != own
        {
            fds.push(fd);
        }
    }
    fds.sort_unstable();
    Ok(fds)
}

/// Accepts one connection on a Unix stream listener (blocking; retries
/// `EINTR`), close-on-exec.
pub(crate) fn accept_unix(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        match socket::accept4(listener.as_raw_fd(), socket::SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => {
                // SAFETY: accept4 just created `raw`; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(raw) });
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Connects a Unix stream socket to `path` (close-on-exec).
pub(crate) fn connect_unix(path: &Path) -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::os::unix::net::UnixStream::connect(
        path,
    )?))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::net::{TcpStream, UdpSocket};
    use std::os::unix::net::UnixDatagram;

    use super::*;
    use crate::sys::test_support::{TEST_DEADLINE, TempDir, no_fork_while_held};

    fn addr(text: &str) -> ListenAddr {
        text.parse().expect("parse")
    }

    /// Binds `text` and checks what inspect() says about it.
    fn bind_and_inspect(text: &str) -> (OwnedFd, SocketInfo) {
        let fd = bind(&addr(text)).expect("bind");
        assert!(is_cloexec(&fd).expect("fcntl"), "listener not CLOEXEC");
        let info = inspect(&fd).expect("inspect");
        (fd, info)
    }

    fn port_of(local: &Option<ListenAddr>) -> u16 {
        match local {
            Some(ListenAddr::Tcp(addr) | ListenAddr::Udp(addr)) => addr.port(),
            other => panic!("not an inet address: {other:?}"),
        }
    }

    #[test]
    fn tcp_v4_listener() {
        let (_fd, info) = bind_and_inspect("127.0.0.1:0");
        assert_eq!(info.kind, Some(FdKind::Tcp));
        assert!(info.listening);
        let port = port_of(&info.local);
        assert_ne!(port, 0);
        assert_eq!(
            info.local,
            Some(ListenAddr::Tcp(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                port
            ))))
        );
    }

    #[test]
    fn tcp_v6_listener() {
        let fd = match bind(&addr("[::1]:0")) {
            Ok(fd) => fd,
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                ) =>
            {
                eprintln!("skipping tcp_v6_listener: IPv6 loopback unavailable here ({err})");
                return;
            }
            Err(err) => panic!("bind [::1]:0: {err}"),
        };
        let info = inspect(&fd).expect("inspect");
        assert_eq!(info.kind, Some(FdKind::Tcp));
        assert!(info.listening);
        match info.local {
            Some(ListenAddr::Tcp(SocketAddr::V6(local))) => {
                assert!(local.ip().is_loopback());
                assert_ne!(local.port(), 0);
            }
            other => panic!("unexpected local address {other:?}"),
        }
    }

    #[test]
    fn udp_socket_and_no_double_bind() {
        let (_fd, info) = bind_and_inspect("udp:127.0.0.1:0");
        assert_eq!(info.kind, Some(FdKind::Udp));
        assert!(!info.listening);
        let port = port_of(&info.local);
        assert_ne!(port, 0);
        let again = bind(&ListenAddr::Udp(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            port,
        ))))
        .expect_err("second UDP bind of the same address");
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn unix_listener() {
        let dir = TempDir::new("unix");
        let path = dir.path().join("l.sock");
        let (_fd, info) = bind_and_inspect(&format!("unix:{}", path.display()));
        assert_eq!(info.kind, Some(FdKind::Unix));
        assert!(info.listening);
        assert_eq!(info.local, Some(ListenAddr::Unix(path)));
    }

    #[test]
    fn inspects_what_is_not_a_listener() {
        let dir = TempDir::new("inspect");
        let file = File::create(dir.path().join("regular")).expect("create");
        assert_eq!(
            inspect(&file).expect("inspect"),
            SocketInfo {
                kind: None,
                listening: false,
                local: None
            }
        );

        let (listener, info) = bind_and_inspect("127.0.0.1:0");
        let port = port_of(&info.local);
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        let info = inspect(&client).expect("inspect");
        assert_eq!(info.kind, Some(FdKind::Tcp));
        assert!(!info.listening);
        assert!(matches!(info.local, Some(ListenAddr::Tcp(_))));
        drop(listener);

        let (one, _other) = control_pair().expect("pair");
        let info = inspect(&one).expect("inspect");
        assert_eq!(info.kind, Some(FdKind::Unix));
        assert!(!info.listening);
        assert_eq!(info.local, None, "socketpair ends are unnamed");

        let datagram = UnixDatagram::unbound().expect("socket");
        assert_eq!(
            inspect(&datagram).expect("inspect").kind,
            Some(FdKind::Other)
        );

        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let info = inspect(&udp).expect("inspect");
        assert_eq!(info.kind, Some(FdKind::Udp));
    }

    #[test]
    fn a_unix_path_of_108_bytes_is_refused_clearly() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(SUN_PATH_CAPACITY - 5)));
        assert_eq!(long.as_os_str().len(), 108);
        for result in [
            bind(&ListenAddr::Unix(long.clone())),
            bind_admin_socket(&long),
        ] {
            let err = result.expect_err("too long");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains("108"), "{err}");
        }
        let just_fits = PathBuf::from(format!("/tmp/{}", "x".repeat(SUN_PATH_CAPACITY - 6)));
        assert!(UnixAddr::new(&just_fits).is_ok());
    }

    #[test]
    fn a_stale_unix_socket_file_is_replaced() {
        let dir = TempDir::new("stale");
        let path = dir.path().join("s.sock");
        // Bound but never listening, then closed: connect is refused, even if
        // a concurrent fork elsewhere still holds a copy of the fd.
        let dead = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        socket::bind(dead.as_raw_fd(), &UnixAddr::new(&path).expect("addr")).expect("bind");
        drop(dead);
        assert!(path.exists());
        let fd = bind(&ListenAddr::Unix(path.clone())).expect("rebind over a stale file");
        assert!(inspect(&fd).expect("inspect").listening);

        // A listener that was closed: held from bind to rebind, so that no
        // concurrent fork can keep a copy of it listening.
        let _quiet = no_fork_while_held();
        let admin = dir.path().join("a.sock");
        drop(bind(&ListenAddr::Unix(admin.clone())).expect("bind"));
        bind_admin_socket(&admin).expect("admin rebind over a stale file");
    }

    #[test]
    fn a_live_unix_socket_or_other_file_is_addr_in_use() {
        let dir = TempDir::new("live");
        let path = dir.path().join("l.sock");
        let _live = bind(&ListenAddr::Unix(path.clone())).expect("bind");
        let err = bind(&ListenAddr::Unix(path.clone())).expect_err("live");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let err = bind_admin_socket(&path).expect_err("live");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(path.exists());

        let regular = dir.path().join("regular");
        std::fs::write(&regular, b"keep me").expect("write");
        let err = bind(&ListenAddr::Unix(regular.clone())).expect_err("not a socket");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(std::fs::read(&regular).expect("read"), b"keep me");
    }

    #[test]
    fn the_admin_socket_is_0600() {
        let dir = TempDir::new("admin");
        let path = dir.path().join("admin.sock");
        let fd = bind_admin_socket(&path).expect("bind");
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let info = inspect(&fd).expect("inspect");
        assert!(info.listening);
        assert_eq!(info.local, Some(ListenAddr::Unix(path)));
        assert!(is_cloexec(&fd).expect("fcntl"));
    }

    #[test]
    fn peer_credentials_of_a_control_pair_are_ours() {
        let (one, _other) = control_pair().expect("pair");
        let cred = peer_credentials(&one).expect("SO_PEERCRED");
        assert_eq!(cred.pid, nix::unistd::getpid().as_raw());
        assert_eq!(cred.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(cred.gid, nix::unistd::getegid().as_raw());
    }

    #[test]
    fn control_pair_is_cloexec_and_listed() {
        let (one, other) = control_pair().expect("pair");
        assert!(is_cloexec(&one).expect("fcntl"));
        assert!(is_cloexec(&other).expect("fcntl"));
        let fds = open_fds().expect("list");
        for fd in [0, 1, 2, one.as_raw_fd(), other.as_raw_fd()] {
            assert!(fds.contains(&fd), "{fd} missing from {fds:?}");
        }
    }

    #[test]
    fn is_cloexec_sees_a_cleared_flag() {
        // An fd without CLOEXEC would leak into a concurrent spawn.
        let _quiet = no_fork_while_held();
        let (one, _other) = control_pair().expect("pair");
        fcntl(&one, FcntlArg::F_SETFD(FdFlag::empty())).expect("clear");
        assert!(!is_cloexec(&one).expect("fcntl"));
    }

    #[test]
    fn socket_timeouts() {
        let (one, _other) = control_pair().expect("pair");
        set_write_timeout(&one, TEST_DEADLINE).expect("set");
        let got = socket::getsockopt(&one, sockopt::SendTimeout).expect("get");
        assert_eq!(
            got,
            TimeVal::new(TEST_DEADLINE.as_secs() as libc::time_t, 0)
        );

        // The kernel keeps socket timeouts in jiffies and rounds up again, so
        // 1ns reads back as one tick; what matters is that it is not zero,
        // which would mean "forever".
        set_read_timeout(&one, Some(Duration::from_nanos(1))).expect("set");
        let got = socket::getsockopt(&one, sockopt::ReceiveTimeout).expect("get");
        assert!(got > TimeVal::new(0, 0), "rounded down to 'forever'");
        assert!(got < TimeVal::new(1, 0), "{got:?}");

        set_read_timeout(&one, None).expect("clear");
        let got = socket::getsockopt(&one, sockopt::ReceiveTimeout).expect("get");
        assert_eq!(got, TimeVal::new(0, 0));

        for err in [
            set_write_timeout(&one, Duration::ZERO).expect_err("zero"),
            set_read_timeout(&one, Some(Duration::ZERO)).expect_err("zero"),
        ] {
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn listen_addr_parses_and_round_trips() {
        let cases = [
            (
                "127.0.0.1:8080",
                ListenAddr::Tcp("127.0.0.1:8080".parse().expect("v4")),
            ),
            (
                "0.0.0.0:0",
                ListenAddr::Tcp("0.0.0.0:0".parse().expect("v4")),
            ),
            (
                "[::1]:443",
                ListenAddr::Tcp("[::1]:443".parse().expect("v6")),
            ),
            ("[::]:80", ListenAddr::Tcp("[::]:80".parse().expect("v6"))),
            (
                "udp:0.0.0.0:53",
                ListenAddr::Udp("0.0.0.0:53".parse().expect("v4")),
            ),
            (
                "udp:[::1]:5353",
                ListenAddr::Udp("[::1]:5353".parse().expect("v6")),
            ),
            (
                "unix:/run/app.sock",
                ListenAddr::Unix("/run/app.sock".into()),
            ),
            (
                "unix:relative/app.sock",
                ListenAddr::Unix("relative/app.sock".into()),
            ),
        ];
        for (text, expected) in cases {
            let parsed = addr(text);
            assert_eq!(parsed, expected, "{text}");
            assert_eq!(parsed.to_string(), text);
            assert_eq!(addr(&parsed.to_string()), parsed);
        }
        assert_eq!(addr("localhost:80"), addr("127.0.0.1:80"));
        assert_eq!(addr("udp:localhost:80"), addr("udp:127.0.0.1:80"));
        assert_eq!(addr("unix:/x").kind(), FdKind::Unix);
    }

    #[test]
    fn listen_addr_errors_say_why() {
        let cases = [
            ("", "expected HOST:PORT"),
            ("8080", "expected HOST:PORT"),
            ("127.0.0.1", "expected HOST:PORT"),
            ("127.0.0.1:", "not a number"),
            ("127.0.0.1:http", "not a number"),
            ("127.0.0.1:+80", "not a number"),
            ("127.0.0.1:65536", "out of range"),
            (":80", "host is empty"),
            ("example.com:80", "IP address or localhost"),
            ("::1:80", "brackets"),
            ("[::1:80", "bracketed"),
            ("udp:", "expected HOST:PORT"),
            ("udp:unix:/x", "not a number"),
            ("unix:", "empty"),
            ("unix:/a\0b", "NUL"),
        ];
        for (input, why) in cases {
            match input.parse::<ListenAddr>() {
                Err(crate::Error::BadAddress { input: got, reason }) => {
                    assert_eq!(got, input);
                    assert!(reason.contains(why), "{input:?}: {reason:?} lacks {why:?}");
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
        let long = format!("unix:/{}", "x".repeat(SUN_PATH_CAPACITY));
        let err = long.parse::<ListenAddr>().expect_err("too long");
        assert!(err.to_string().contains("108"), "{err}");
    }
}
