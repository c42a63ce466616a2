//! systemd's readiness protocol, from the supervisor's side: the datagrams
//! `handoffctl run` sends to its own `NOTIFY_SOCKET` (`sd_notify(3)`).
//!
//! Order is the contract: for an upgrade, `RELOADING=1` (with
//! `MONOTONIC_USEC`, which systemd 253 and later require) goes out before
//! the handoff starts and `READY=1` (with the new `STATUS=`) before the
//! admin client gets its answer, so an `ExecReload=handoffctl upgrade` exits
//! only after systemd saw both. Both are sent from the thread that carries
//! the upgrade out, never from the event thread, which runs behind it.

use std::ffi::OsString;

use crate::error::chain;

/// systemd's notification socket, if `NOTIFY_SOCKET` was set.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// From the supervisor's environment.
    pub fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
        }
    }

    /// A reload begins now.
    pub fn reloading(&self, status: &str) {
        if self.socket.is_none() {
            return;
        }
        let usec = handoff::os::monotonic_usec().unwrap_or(0);
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={status}"
        ));
    }

    /// Serving (first start, or the end of a reload).
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A status line only.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// The supervisor is stopping.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// Hands the listeners to systemd's file-descriptor store, each under
    /// its name: if the supervisor dies, systemd keeps them open (new
    /// connections wait in the backlog) and passes them to the restarted
    /// supervisor by socket activation. Effective with
    /// `FileDescriptorStoreMax=` in the unit; systemd keeps one copy of a
    /// socket however often it is stored.
    /// Whether it talks to systemd (`NOTIFY_SOCKET` was set).
    pub fn is_active(&self) -> bool {
        self.socket.is_some()
    }

    pub fn store_listeners(&self, listeners: &[(String, std::os::fd::OwnedFd)]) {
        let Some(socket) = &self.socket else {
            return;
        };
        for (name, fd) in listeners {
            let message = format!("FDSTORE=1\nFDNAME={name}");
            let fds = [std::os::fd::AsFd::as_fd(fd)];
            if let Err(error) = handoff::os::notify_with_fds(socket, &message, &fds) {
                tracing::warn!(listener = %name, error = %chain(&error), "storing a listener with systemd failed");
            }
        }
    }

    fn send(&self, message: &str) {
        if let Some(socket) = &self.socket
            && let Err(error) = handoff::os::notify(socket, message)
        {
            tracing::warn!(error = %chain(&error), "systemd notification failed");
        }
    }
}
