//! The binary's one error: a line for stderr and the exit code that goes
//! with it (a contract, see `Exit`).

use std::fmt;

use crate::admin::wire::ErrorKind;

/// Exit codes; scripts, units and fleet engines depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The handoff rolled back (the old generation still serves), the
    /// supervisor failed, or `wait` timed out.
    Failed = 1,
    /// Usage error, invalid input, a refused request, or no supervisor to
    /// talk to.
    Usage = 2,
    /// Another handoff is in flight.
    Busy = 3,
    /// The handoff rolled back and nobody serves: the old generation was
    /// gone or could not resume (`"serving": false`); the restart policy
    /// decides what starts next. Worse than 1: the host is down.
    NobodyServes = 4,
}

/// What kind of failure, for a `--json` caller's `kind`: the supervisor's
/// refusal, or what went wrong on this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Kind {
    /// The supervisor refused (its own kinds).
    Refused(ErrorKind),
    /// This side.
    Local(LocalKind),
}

/// What went wrong on this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalKind {
    /// A flag, argument or file this command was given (exit 2).
    Usage,
    /// No supervisor answers at the admin socket (exit 2: nothing started).
    Unreachable,
    /// The request was delivered and no answer, or none this command can
    /// read, came: whether it took effect is not known (exit 1).
    OutcomeUnknown,
    /// Anything else (exit 1, or a handoff's verdict).
    Error,
}

/// What went wrong, said once.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// One line, without the program name.
    pub message: String,
    /// Its kind.
    pub kind: Kind,
    /// Whether the answer was printed on stdout already (a rolled-back
    /// handoff's report): `--json` then prints nothing more.
    pub printed: bool,
}

impl Failure {
    /// A usage or input error (exit 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::with(Exit::Usage, message)
    }

    /// A runtime failure (exit 1).
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure::with(Exit::Failed, message)
    }

    /// No supervisor to talk to (exit 2).
    pub fn unreachable(message: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::Local(LocalKind::Unreachable),
            ..Failure::usage(message)
        }
    }

    /// A request delivered and not answered, or answered in a way this
    /// command cannot read (exit 1).
    pub fn outcome_unknown(message: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::Local(LocalKind::OutcomeUnknown),
            ..Failure::failed(message)
        }
    }

    /// A refusal by the supervisor; its exit code follows from its kind.
    pub fn refused(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::Refused(kind),
            ..Failure::with(Exit::from(kind), message)
        }
    }

    pub(crate) fn with(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
            kind: Kind::Local(match exit {
                Exit::Usage => LocalKind::Usage,
                Exit::Failed | Exit::Busy | Exit::NobodyServes => LocalKind::Error,
            }),
            printed: false,
        }
    }

    /// The failure as one JSON object, for `--json` callers, with
    /// Ansible's fields (see `verdict`).
    pub fn to_json(&self) -> String {
        let answer = serde_json::json!({
            "result": "error",
            "kind": self.kind,
            "message": self.message,
            "exit": self.exit as u8,
        });
        crate::verdict::Verdict::of_failure(self)
            .beside(&answer)
            .unwrap_or_else(|_| answer.to_string())
    }
}

impl From<ErrorKind> for Exit {
    fn from(kind: ErrorKind) -> Exit {
        match kind {
            ErrorKind::BadRequest | ErrorKind::Rejected | ErrorKind::PermissionDenied => {
                Exit::Usage
            }
            ErrorKind::Busy | ErrorKind::Overloaded => Exit::Busy,
            ErrorKind::Stopping | ErrorKind::Failed => Exit::Failed,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub use handoff::error::chain;
