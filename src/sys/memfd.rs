//! Sealed memory files: bytes that travel as an fd (across an exec, or to
//! another process) and that nobody can change once written.
//!
//! The hazard: an fd to a memfd can be written by anyone holding it. A
//! reader that trusts the contents must check the seals itself, not the
//! writer's word: [`read_sealed`] refuses a memfd without all four
//! (`F_SEAL_WRITE`, `F_SEAL_GROW`, `F_SEAL_SHRINK`, `F_SEAL_SEAL`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

/// Every seal a sealed memfd must carry.
fn all_seals() -> SealFlag {
    SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL
}

/// A close-on-exec memfd named `name` holding `bytes`, sealed for good.
pub(crate) fn sealed(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    fcntl(&file, FcntlArg::F_ADD_SEALS(all_seals()))?;
    Ok(OwnedFd::from(file))
}

/// The contents of a sealed memfd, from its start; an error if any seal is
/// missing (someone could still change it).
pub(crate) fn read_sealed(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let seals = SealFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GET_SEALS)?);
    if !seals.contains(all_seals()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the memfd is not sealed (write, grow, shrink and seal seals required)",
        ));
    }
    let mut file = File::from(fd.try_clone_to_owned()?);
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Whether `fd` carries every seal and holds exactly `len` bytes: the
/// cheap part of a blob's checks (the reader also hashes it).
pub(crate) fn check_sealed(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let seals = SealFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GET_SEALS)?);
    if !seals.contains(all_seals()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the memfd is not sealed (write, grow, shrink and seal seals required)",
        ));
    }
    let size = nix::sys::stat::fstat(fd)?.st_size;
    if u64::try_from(size).ok() != Some(len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the memfd holds {size} bytes, {len} were announced"),
        ));
    }
    Ok(())
}

/// A close-on-exec memfd holding `bytes`, with no seal: memory a daemon
/// changes in place (a cache) and keeps across generations.
pub(crate) fn unsealed(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC)?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    Ok(OwnedFd::from(file))
}

/// Whether `fd` is a memfd with every seal.
#[cfg(test)]
pub(crate) fn is_sealed(fd: impl std::os::fd::AsFd) -> bool {
    fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS)
        .map(|bits| SealFlag::from_bits_truncate(bits).contains(all_seals()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_sealed_memfd_reads_back_and_cannot_change() {
        let fd = sealed("test", b"state").expect("memfd");
        assert!(crate::sys::is_cloexec(&fd).expect("flags"));
        assert!(is_sealed(&fd));
        assert_eq!(read_sealed(fd.as_fd()).expect("read"), b"state");
        // Twice: reading does not consume.
        assert_eq!(read_sealed(fd.as_fd()).expect("read again"), b"state");
        let mut file = File::from(fd.try_clone().expect("dup"));
        assert!(file.write_all(b"x").is_err(), "the write seal holds");
        assert!(file.set_len(1).is_err(), "the shrink seal holds");
    }

    #[test]
    fn an_unsealed_memfd_is_close_on_exec_and_fails_the_cheap_check() {
        let fd = unsealed("cache", b"12345678").expect("memfd");
        assert!(crate::sys::is_cloexec(&fd).expect("flags"));
        assert!(check_sealed(fd.as_fd(), 8).is_err());
        let sealed = sealed("state", b"1234").expect("memfd");
        assert!(check_sealed(sealed.as_fd(), 4).is_ok());
        assert!(check_sealed(sealed.as_fd(), 5).is_err(), "another length");
    }

    #[test]
    fn an_unsealed_memfd_is_refused() {
        let fd = memfd_create("loose", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .expect("memfd");
        let error = read_sealed(fd.as_fd()).expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(!is_sealed(&fd));
    }
}
