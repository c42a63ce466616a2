//! The unix socket files of the listeners this supervisor bound (or took
//! over from a dead supervisor that bound them), removed at a clean stop
//! as a daemon that binds its own socket removes it: the next start binds
//! afresh either way (a stale file is replaced), but a file left behind
//! answers every client with "connection refused" instead of "no such
//! file". Under systemd none is removed: a socket unit's files are its
//! own, and its fd store may hand the sockets back to a later start
//! (`FileDescriptorStorePreserve=`), which must not find them unlinked.
//! Each is removed only while the path still names the file seen when it
//! was taken, by device and inode: a socket another process bound there
//! since is left alone.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use handoff::supervisor::NamedListener;

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
    /// The files of the unix listeners held (by the address each socket
    /// is bound to, not the configuration's) that systemd did not pass
    /// (`passed` names), as they are now.
    pub fn held(listeners: &[NamedListener], passed: &[String]) -> Vec<SocketFile> {
        listeners
            .iter()
            .filter(|listener| !passed.contains(&listener.name))
            .filter_map(|listener| listener.address.strip_prefix("unix:"))
            .filter_map(|path| SocketFile::of(Path::new(path)))
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
        // Held as the supervisor holds them: each address read from its
        // socket.
        let held =
            |name: &str, fd: std::os::fd::OwnedFd| NamedListener::adopt(name, fd).expect("adopt");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let listeners = [
            held("ours", bind(&ours).into()),
            held("replaced", bind(&replaced).into()),
            held("passed", bind(&passed).into()),
            held("tcp", tcp.into()),
        ];
        let files = SocketFile::held(&listeners, &["passed".to_owned()]);
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
