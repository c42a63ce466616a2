//! The signal thread of `handoffctl run`: SIGTERM, SIGINT and SIGHUP are
//! blocked before any thread starts and taken here with `sigwait`, so no
//! handler runs at an arbitrary point and no other thread receives them.
//! Generations start with an empty mask (`sys::spawn` empties it in the
//! child).

use std::sync::Arc;
use std::sync::mpsc;

use handoff::os::{Sig, SignalSet};

use crate::admin::upgrade::{Upgrade, upgrade};
use crate::admin::wire::Response;
use crate::admin::{AdminState, Control};

/// The signals `run` takes.
pub const TAKEN: [Sig; 3] = [Sig::Term, Sig::Int, Sig::Hup];

/// SIGHUP upgrades to the configured binary; SIGTERM and SIGINT stop.
pub fn signal_loop(signals: SignalSet, state: &Arc<AdminState>, control: &mpsc::Sender<Control>) {
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
            Ok(signal) => {
                tracing::info!(?signal, "stopping on a signal");
                let _ = control.send(Control::Stop(None));
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
