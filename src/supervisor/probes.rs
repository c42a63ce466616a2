//! The health probe on helper threads: network I/O only, never a spawn
//! (I11). Each run reports one verdict to the driver, tagged with what it
//! was for; the lifecycle machine decides what the verdict means.

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::probe::Probe;
use crate::protocol::{GenerationId, ProbePurpose};
use crate::timeouts::{PROBATION_PROBE_INTERVAL, Timeouts};

/// A probe's verdict.
pub(crate) struct Verdict {
    pub(crate) purpose: ProbePurpose,
    pub(crate) result: Result<(), String>,
}

/// The configured probe and the channel its verdicts come back on.
pub(crate) struct Probes {
    probe: Option<Probe>,
    timeouts: Timeouts,
    verdicts: Sender<Verdict>,
    pub(crate) receiver: Receiver<Verdict>,
}

impl Probes {
    pub(crate) fn new(probe: Option<Probe>, timeouts: Timeouts) -> Probes {
        let (verdicts, receiver) = crossbeam_channel::unbounded();
        Probes {
            probe,
            timeouts,
            verdicts,
            receiver,
        }
    }

    /// Probes until one attempt passes or `until`; one verdict.
    pub(crate) fn run(&self, purpose: ProbePurpose, until: Instant) {
        let Some(probe) = self.probe.clone() else {
            self.report(purpose, Err("no probe configured".to_owned()));
            return;
        };
        let verdicts = self.verdicts.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("handoff-probe-{}", name(purpose)))
            .spawn(move || {
                let result = probe.run_until(until);
                let _ = verdicts.send(Verdict { purpose, result });
            });
        if let Err(error) = spawned {
            self.report(
                purpose,
                Err(format!("cannot start the probe thread: {error}")),
            );
        }
    }

    /// During a probation (I14), probes generation `generation` until
    /// `until`: an attempt every `PROBATION_PROBE_INTERVAL`; a failed attempt
    /// is reported as suspect at once and retried for `Timeouts::probe`
    /// before it counts. Only failures and clearances are reported.
    pub(crate) fn watch_probation(&self, generation: GenerationId, until: Instant) {
        let Some(probe) = self.probe.clone() else {
            return;
        };
        let confirm = self.timeouts.probe;
        let verdicts = self.verdicts.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("handoff-probation{generation}"))
            .spawn(move || {
                while Instant::now() < until {
                    if let Err(first) = probe.attempt() {
                        let suspect = ProbePurpose::ProbationSuspect(generation);
                        let _ = verdicts.send(Verdict {
                            purpose: suspect,
                            result: Err(first),
                        });
                        let result = probe.run_until(Instant::now() + confirm);
                        let purpose = match result {
                            Ok(()) => ProbePurpose::ProbationCleared(generation),
                            Err(_) => ProbePurpose::ProbationFailed(generation),
                        };
                        let failed = result.is_err();
                        let _ = verdicts.send(Verdict { purpose, result });
                        if failed {
                            return;
                        }
                    }
                    // Pacing the attempts, not a synchronisation.
                    std::thread::sleep(
                        PROBATION_PROBE_INTERVAL
                            .min(until.saturating_duration_since(Instant::now())),
                    );
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the probation probe");
        }
    }

    fn report(&self, purpose: ProbePurpose, result: Result<(), String>) {
        let _ = self.verdicts.send(Verdict { purpose, result });
    }
}

/// A thread name's tail.
fn name(purpose: ProbePurpose) -> String {
    match purpose {
        ProbePurpose::Handoff(id) => format!("handoff{id}"),
        ProbePurpose::Resumed(generation) => format!("resumed{generation}"),
        ProbePurpose::ProbationSuspect(generation)
        | ProbePurpose::ProbationCleared(generation)
        | ProbePurpose::ProbationFailed(generation) => format!("probation{generation}"),
    }
}
