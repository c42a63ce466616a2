//! Ansible's return conventions, `changed`, `failed` and `msg`, beside the
//! fields of every `--json` answer of a verb that may change the supervisor
//! (`upgrade`, `rollback`, `reexec`, `wait`): a
//! fleet engine that runs `handoffctl` on each host reads the outcome in
//! its own terms, and an Ansible module passes the object on as its result.
//!
//! | answer | `changed` | `failed` | exit |
//! |---|---|---|---|
//! | committed | true | false | 0 |
//! | rolled back, the old generation serves | false | true | 1 |
//! | rolled back, nobody serves | true | true | 4 ([`Exit::NobodyServes`]) |
//! | plan: unchanged (`--if-changed`) | false | false | 0 |
//! | plan: a dry run (`--check`) | what the upgrade would do | false | 0 |
//! | `wait`: served | false | false | 0 |
//! | `reexec`: the new image in charge, unchanged, the old one still | true, false, false | false, false, true | 0, 0, 1 |
//! | refused, bad input, no supervisor | false | true | 2 |
//! | busy | false | true | 3 |
//! | stopping, the handoff could not start, `wait` timed out | false | true | 1 |
//!
//! `changed` is true when the serving generation is not the one that
//! served before, or when nobody serves any more: a rollback that left the
//! old generation serving changed nothing.

use serde::Serialize;

use crate::admin::wire::{HandoffReport, PlanReport, ReexecReport};
use crate::error::{Exit, Failure};

/// The three fields, as Ansible names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Whether the host's state changed (or, in a dry run, would).
    pub changed: bool,
    /// Whether the step failed.
    pub failed: bool,
    /// One line for a human.
    pub msg: String,
}

/// A verdict and the answer it judges, as one JSON object.
#[derive(Serialize)]
struct Judged<'a, T: Serialize> {
    #[serde(flatten)]
    verdict: &'a Verdict,
    #[serde(flatten)]
    answer: &'a T,
}

impl Verdict {
    /// A handoff's.
    pub fn of_handoff(report: &HandoffReport) -> Verdict {
        Verdict {
            changed: report.committed || !report.serving,
            failed: !report.committed,
            msg: report.line(),
        }
    }

    /// A plan's: nothing was done, and nothing failed.
    pub fn of_plan(plan: &PlanReport) -> Verdict {
        Verdict {
            changed: plan.changes(),
            failed: false,
            msg: plan.line(),
        }
    }

    /// A re-exec's: changed only when the new image took charge. (The
    /// report's own `changed` says whether there was anything to do, true
    /// on a failed re-exec too; [`Verdict::over`] replaces it.)
    pub fn of_reexec(report: &ReexecReport) -> Verdict {
        Verdict {
            changed: report.changed && report.committed,
            failed: report.changed && !report.committed,
            msg: report.line(),
        }
    }

    /// A failure's: a refusal, or no answer at all (the client cannot tell
    /// whether anything changed then; `status` can).
    pub fn of_failure(failure: &Failure) -> Verdict {
        Verdict {
            changed: false,
            failed: true,
            msg: failure.message.clone(),
        }
    }

    /// `answer`'s JSON object with this verdict's fields first.
    pub fn beside<T: Serialize>(&self, answer: &T) -> Result<String, Failure> {
        serde_json::to_string(&Judged {
            verdict: self,
            answer,
        })
        .map_err(|e| Failure::failed(e.to_string()))
    }
}

impl Verdict {
    /// `answer`'s JSON object with this verdict's fields set, replacing
    /// any of the same names the answer has (keys in the object's order).
    pub fn over<T: Serialize>(&self, answer: &T) -> Result<String, Failure> {
        let broken = |e: serde_json::Error| Failure::failed(e.to_string());
        let mut value = serde_json::to_value(answer).map_err(broken)?;
        let serde_json::Value::Object(fields) = &mut value else {
            return Err(Failure::failed("an answer that is not a JSON object"));
        };
        fields.insert("changed".into(), self.changed.into());
        fields.insert("failed".into(), self.failed.into());
        fields.insert("msg".into(), self.msg.clone().into());
        serde_json::to_string(&value).map_err(broken)
    }
}

/// A handoff's exit code: 0 committed, [`Exit::Failed`] rolled back with
/// the old generation serving, [`Exit::NobodyServes`] rolled back with
/// nobody serving.
pub fn handoff_exit(report: &HandoffReport) -> Option<Exit> {
    match (report.committed, report.serving) {
        (true, _) => None,
        (false, true) => Some(Exit::Failed),
        (false, false) => Some(Exit::NobodyServes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(committed: bool, serving: bool) -> HandoffReport {
        HandoffReport {
            handoff_id: 2,
            committed,
            abort_reason: (!committed).then(|| "successor exited".to_owned()),
            old_pid: Some(10),
            new_pid: Some(11),
            generation: if committed { 2 } else { 1 },
            serving,
            incumbent_stopped: None,
            cancelled: false,
            phases_ms: Default::default(),
            total_ms: 3.0,
        }
    }

    #[test]
    fn handoffs_are_judged_in_ansible_terms() {
        let committed = Verdict::of_handoff(&report(true, true));
        assert!(committed.changed && !committed.failed, "{committed:?}");
        assert_eq!(handoff_exit(&report(true, true)), None);

        let rolled_back = Verdict::of_handoff(&report(false, true));
        assert!(!rolled_back.changed && rolled_back.failed);
        assert!(rolled_back.msg.contains("still serving"), "{rolled_back:?}");
        assert_eq!(handoff_exit(&report(false, true)), Some(Exit::Failed));

        let nobody = Verdict::of_handoff(&report(false, false));
        assert!(nobody.changed && nobody.failed);
        assert!(nobody.msg.contains("nobody serves"), "{nobody:?}");
        assert_eq!(
            handoff_exit(&report(false, false)),
            Some(Exit::NobodyServes)
        );

        // Cancelled by a stop: not replaced, and not said to serve on.
        let cancelled = HandoffReport {
            cancelled: true,
            ..report(false, true)
        };
        let verdict = Verdict::of_handoff(&cancelled);
        assert!(!verdict.changed && verdict.failed, "{verdict:?}");
        assert!(verdict.msg.starts_with("cancelled: "), "{verdict:?}");
        assert!(!verdict.msg.contains("still serving"), "{verdict:?}");
        assert!(cancelled.status_line().starts_with("stopping: "));
        assert_eq!(handoff_exit(&cancelled), Some(Exit::Failed));
    }

    #[test]
    fn a_reexec_is_judged_by_who_is_in_charge() {
        let image = |sha: &str| crate::admin::wire::ImageRecord {
            version: "0.1.0".into(),
            sha256: sha.repeat(64),
        };
        let report = |changed: bool, committed: bool| ReexecReport {
            changed,
            committed,
            reason: (changed && !committed).then(|| "self-check failed".to_owned()),
            pid: 7,
            from: image("a"),
            to: Some(image("b")),
            phases_ms: Default::default(),
            total_ms: 1.0,
        };
        for ((changed, committed), (want_changed, want_failed)) in [
            ((true, true), (true, false)),
            ((false, false), (false, false)),
            ((true, false), (false, true)),
        ] {
            let report = report(changed, committed);
            let json = Verdict::of_reexec(&report).over(&report).expect("json");
            let value: serde_json::Value = serde_json::from_str(&json).expect("one object");
            assert_eq!(value["changed"], want_changed, "{json}");
            assert_eq!(value["failed"], want_failed, "{json}");
            assert_eq!(value["msg"], report.line().as_str());
            assert_eq!(value["pid"], 7, "the report's fields stay: {json}");
        }
    }

    #[test]
    fn the_verdict_comes_first_in_one_object() {
        let report = report(true, true);
        let json = Verdict::of_handoff(&report).beside(&report).expect("json");
        assert!(
            json.starts_with(r#"{"changed":true,"failed":false,"msg":"committed: handoff 2"#),
            "{json}"
        );
        let value: serde_json::Value = serde_json::from_str(&json).expect("one object");
        assert_eq!(value["handoff_id"], 2);
        assert_eq!(value["serving"], true);
    }
}
