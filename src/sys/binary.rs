//! A binary pinned by its content: opened once (close-on-exec), hashed from
//! the open file, and executed through `/proc/self/fd/N`, so that what runs
//! is the file that was hashed even if the path is replaced in between.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// An open binary and the sha256 of its contents when it was opened.
#[derive(Debug)]
pub struct PinnedBinary {
    file: File,
    path: PathBuf,
    sha256: String,
}

impl PinnedBinary {
    /// Opens `path` (std opens with `O_CLOEXEC`) and hashes it.
    pub(crate) fn open(path: &Path) -> io::Result<PinnedBinary> {
        let file = File::open(path)?;
        let sha256 = sha256_hex(&file)?;
        Ok(PinnedBinary {
            file,
            path: path.to_owned(),
            sha256,
        })
    }

    /// Lowercase hex sha256 of the contents.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path that executes exactly this open file while `self` lives (in
    /// this process and in a child forked from it: the fd is inherited by
    /// the fork and closed only by the exec, after the kernel opened it).
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// Lowercase hex sha256 of `file`'s contents from its current offset.
pub fn sha256_hex(mut file: &File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_file_is_hashed_and_executable_through_its_fd() {
        let dir = std::env::temp_dir().join(format!("handoff-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("abc");
        std::fs::write(&path, b"abc").expect("write");
        let pinned = PinnedBinary::open(&path).expect("open");
        // The sha256 of "abc" (FIPS 180-2, appendix B.1).
        assert_eq!(
            pinned.sha256(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Replacing the path does not change what the pin reads.
        std::fs::remove_file(&path).expect("unlink");
        std::fs::write(&path, b"something else").expect("rewrite");
        let through_fd = std::fs::read(pinned.exec_path()).expect("read through /proc/self/fd");
        assert_eq!(through_fd, b"abc");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
