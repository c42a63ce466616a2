//! Sans-I/O protocol state machines: one per role, no sockets, no clocks.
//!
//! Each machine takes one input and the current monotonic time and returns
//! the actions its driver must perform (`step(input, now) -> Vec<Action>`).
//! Drivers (`supervisor/driver.rs`, `successor.rs`, `incumbent.rs`) do the I/O.
//! Every decision of the protocol lives here, so every ordering and abort
//! path is a unit test (`tests/`: `handoff.rs`, `handoff_rules.rs`,
//! `generation.rs`, `retire.rs`, `props.rs`; the lifecycle's in
//! `lifecycle/tests.rs`, the fd store's in `fdstore.rs`), and the state
//! diagrams in ARCHITECTURE.md describe exactly these enums. The fd store
//! (`fdstore.rs`, systemd's `FDSTORE=1`) is a model rather than a machine:
//! what is stored, what each spawn gets, the bound.

mod fdstore;
mod foreign;
mod generation;
mod handoff;
mod lifecycle;
pub mod mono;
mod names;
mod outcome;
mod retire;

#[cfg(test)]
mod tests;

pub use fdstore::{
    Arrived, DEFAULT_FDNAME, Delivery, Entry, EntryId, FDNAME_MAX, FdStore, FileId, StoreNote,
    StoreRequest, StoredGroup, StoredKind, fdname_is_valid,
};
pub use foreign::{
    ForeignAction, ForeignConfig, ForeignHandoffMachine, ForeignInput, ForeignState, ReadySignal,
};
pub use generation::{
    Ending, GenerationAction, GenerationInput, GenerationMachine, GenerationState, HookCall,
    HookOutcome, UserCall,
};
pub use handoff::{
    HandoffAction, HandoffConfig, HandoffInput, HandoffMachine, HandoffState, Phases, ReadySeen,
    Verdict,
};
pub use lifecycle::{
    Build, DaemonKind, Generation, GenerationId, GenerationSignal, LifecycleAction,
    LifecycleConfig, LifecycleInput, LifecycleMachine, LifecycleSnapshot, LifecycleState, Note,
    Orphaned, ProbePurpose, Refusal, Spawned, Ticket,
};
pub use outcome::{
    ExitStatus, Outcome, ProbationRollback, RestartPolicy, ResumeCheck, SupervisorEvent,
};
pub use retire::{ForeignProbation, RetireAction, RetireInput, RetireMachine, RetireState};

/// One of the two generations a supervisor talks to during a handoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The generation serving when the handoff started.
    Incumbent,
    /// The generation being started.
    Successor,
}

impl Side {
    /// The matching error-side peer.
    pub fn peer(self) -> crate::error::Peer {
        match self {
            Side::Incumbent => crate::error::Peer::Incumbent,
            Side::Successor => crate::error::Peer::Successor,
        }
    }
}

/// Which signal a driver must send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Polite: finish and exit.
    Term,
    /// Not negotiable.
    Kill,
}
