//! The unix socket files of the listeners this supervisor bound (or took
//! over from a dead supervisor that bound them), removed at a clean stop
//! as a daemon that binds its own socket removes it: the next start binds
//! afresh either way (a stale file is replaced), but a file left behind
//! answers every client with "connection refused" instead of "no such
//! file". Files systemd passed (a socket unit's, or its fd store's) are
//! systemd's. Each is removed only while the path still names the file
//! seen when it was taken, by device and inode: a socket another process
//! bound there since is left alone.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use handoff::ListenAddr;

/// One socket file: its path and its identity when it was taken.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SocketFile {
    /// The path.
    pub path: PathBuf,
    /// The file's device.
    pub dev: u64,
    /// The file's inode.
    pub ino: u64,
}

impl SocketFile {
    /// The configured unix listeners' files that systemd did not pass
    /// (`passed` names), as they are now.
    pub fn bound(listeners: &[(String, ListenAddr)], passed: &[String]) -> Vec<SocketFile> {
        listeners
            .iter()
            .filter(|(name, _)| !passed.contains(name))
            .filter_map(|(_, addr)| match addr {
                ListenAddr::Unix(path) => SocketFile::of(path),
                _ => None,
            })
            .collect()
    }

    /// `path` as it is now, if it is a socket file.
    fn of(path: &Path) -> Option<SocketFile> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        meta.file_type().is_socket().then(|| SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Removes the file if the path still names it; whether it did.
    pub fn remove(&self) -> bool {
        if SocketFile::of(&self.path).as_ref() != Some(self) {
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot remove a listener's socket file");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_file_is_removed_only_while_it_is_the_one_taken() {
        let dir = testkit::TempDir::new("socket-file");
        let ours = dir.path().join("ours.sock");
        let replaced = dir.path().join("replaced.sock");
        let passed = dir.path().join("passed.sock");
        let bind = |path: &Path| std::os::unix::net::UnixListener::bind(path).expect("bind");
        let _listeners = [bind(&ours), bind(&replaced), bind(&passed)];
        let unix = |name: &str, path: &Path| (name.to_owned(), ListenAddr::Unix(path.to_owned()));
        let configured = [
            unix("ours", &ours),
            unix("replaced", &replaced),
            unix("passed", &passed),
            (
                "tcp".to_owned(),
                ListenAddr::Tcp("127.0.0.1:1".parse().expect("addr")),
            ),
        ];
        let files = SocketFile::bound(&configured, &["passed".to_owned()]);
        let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        assert_eq!(paths, [ours.as_path(), replaced.as_path()]);
        // Another process removes one and binds its own there.
        std::fs::remove_file(&replaced).expect("unlink");
        let _theirs = bind(&replaced);
        assert!(files[0].remove(), "ours goes");
        assert!(!ours.exists());
        assert!(!files[1].remove(), "theirs stays");
        assert!(replaced.exists());
        assert!(passed.exists(), "systemd's stays");
    }
}
