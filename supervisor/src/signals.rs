//! The signal thread of `handoffctl run`: every signal an operator's
//! habits may send is blocked before any thread starts and taken here with
//! `sigwait`, so no handler runs at an arbitrary point, no other thread
//! receives them, and none ends the supervisor by its default action (a
//! logrotate `postrotate` with `kill -USR1` must not orphan the daemon).
//! Generations start with an empty mask (`sys::spawn` empties it in the
//! child).

use std::sync::Arc;

use handoff::os::{Sig, SignalSet};

use crate::admin::AdminState;
use crate::admin::upgrade::{Upgrade, upgrade};
use crate::admin::wire::Response;

/// The signals `run` takes.
pub const TAKEN: [Sig; 8] = [
    Sig::Term,
    Sig::Int,
    Sig::Hup,
    Sig::Usr2,
    Sig::Usr1,
    Sig::Winch,
    Sig::Alrm,
    Sig::Pipe,
];

/// SIGHUP upgrades to the configured binary; SIGUSR2 re-executes the
/// supervisor (as `reexec` with no flags); SIGTERM and SIGINT stop; the
/// rest are logged and ignored.
pub fn signal_loop(signals: SignalSet, state: &Arc<AdminState>) {
    loop {
        match signals.wait() {
            Ok(Sig::Hup) => {
                tracing::info!("SIGHUP: upgrading to the configured binary");
                let state = Arc::clone(state);
                let upgrading = std::thread::Builder::new()
                    .name("sighup-upgrade".into())
                    .spawn(move || log_sighup(&upgrade(&state, Upgrade::default())));
                if let Err(error) = upgrading {
                    tracing::warn!(%error, "cannot start the SIGHUP upgrade");
                }
            }
            Ok(Sig::Usr2) => {
                tracing::info!("SIGUSR2: re-executing the supervisor");
                let state = Arc::clone(state);
                let reexecuting = std::thread::Builder::new()
                    .name("sigusr2-reexec".into())
                    .spawn(move || {
                        crate::reexec::reexec(&state, crate::reexec::Reexec::default(), None)
                    });
                if let Err(error) = reexecuting {
                    tracing::warn!(%error, "cannot start the SIGUSR2 re-exec");
                }
            }
            Ok(signal @ (Sig::Term | Sig::Int)) => {
                tracing::info!(?signal, "stopping on a signal");
                let _ = state.request_stop(None);
            }
            Ok(signal) => {
                tracing::info!(
                    ?signal,
                    "signal ignored (HUP upgrades, USR2 re-executes, TERM and INT stop)"
                );
            }
            Err(error) => {
                tracing::error!(%error, "sigwait failed; signals are no longer handled");
                return;
            }
        }
    }
}

fn log_sighup(response: &Response) {
    match response {
        Response::Handoff(report) if report.committed => {
            tracing::info!(
                handoff_id = report.handoff_id,
                "SIGHUP upgrade: {}",
                report.line()
            )
        }
        Response::Handoff(report) => {
            tracing::warn!(
                handoff_id = report.handoff_id,
                "SIGHUP upgrade: {}",
                report.line()
            )
        }
        Response::Error { message, .. } => {
            tracing::warn!("SIGHUP upgrade not started: {message}")
        }
        _ => {}
    }
}
