//! The lifecycle of an endpoint whose handler is built from source: a pure
//! transition function, no I/O.
//!
//! ```text
//! main path:  (new) ─put source─► Created ─build ok─► Compiled ─load ok─► Loaded ─remove─► Draining
//!
//! failures:   any state ─build failed─► the same state (the previous library stays)
//!             Created, Compiled, Error ─load failed─► Error
//!             Loaded ─put source / build ok / build failed / load ok / load failed─► Loaded
//! recovery:   Error ─put source─► Created   Error ─build ok─► Compiled   Error ─load ok─► Loaded
//! ```
//!
//! A failed build leaves the endpoint in its previous state, and a failed
//! build or load never takes a serving endpoint out of `Loaded`: the
//! previous library keeps serving. `Error` marks an endpoint that has
//! nothing serving because its last load failed.

use serde::Serialize;

/// Where an endpoint is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Source stored, nothing built.
    Created,
    /// A library is built and not loaded yet.
    Compiled,
    /// A handler is serving.
    Loaded,
    /// Being removed: requests get 503 until the running ones finish.
    Draining,
    /// Nothing serving, and the last load failed.
    Error,
}

/// What happens to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// New source was stored.
    SourcePut,
    /// A build produced a library.
    BuildSucceeded,
    /// A build failed.
    BuildFailed,
    /// A library was loaded (first load or swap).
    LoadSucceeded,
    /// Loading a library failed.
    LoadFailed,
    /// Removal started.
    RemoveStarted,
}

impl EndpointState {
    /// The state after `event`, or `None` when the event is not allowed in
    /// this state (an endpoint being removed takes nothing more; one that
    /// has never loaded cannot be removed from the registry).
    ///
    /// ```
    /// use handoff::registry::{EndpointState, LifecycleEvent};
    /// let state = EndpointState::Loaded;
    /// assert_eq!(state.on(LifecycleEvent::BuildFailed), Some(EndpointState::Loaded));
    /// assert_eq!(EndpointState::Created.on(LifecycleEvent::BuildFailed), Some(EndpointState::Created));
    /// assert_eq!(EndpointState::Compiled.on(LifecycleEvent::LoadFailed), Some(EndpointState::Error));
    /// assert_eq!(EndpointState::Draining.on(LifecycleEvent::SourcePut), None);
    /// ```
    pub fn on(self, event: LifecycleEvent) -> Option<EndpointState> {
        use EndpointState::*;
        use LifecycleEvent::*;
        match (self, event) {
            (Draining, _) => None,
            (Loaded, RemoveStarted) => Some(Draining),
            (_, RemoveStarted) => None,
            (Loaded, SourcePut | BuildSucceeded | BuildFailed | LoadSucceeded | LoadFailed) => {
                Some(Loaded)
            }
            (_, LoadSucceeded) => Some(Loaded),
            (_, SourcePut) => Some(Created),
            (_, BuildSucceeded) => Some(Compiled),
            (state, BuildFailed) => Some(state),
            (_, LoadFailed) => Some(Error),
        }
    }

    /// The state's name, as in the statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Created => "created",
            EndpointState::Compiled => "compiled",
            EndpointState::Loaded => "loaded",
            EndpointState::Draining => "draining",
            EndpointState::Error => "error",
        }
    }
}

impl std::fmt::Display for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::EndpointState::{self, *};
    use super::LifecycleEvent::{self, *};

    const STATES: [EndpointState; 5] = [Created, Compiled, Loaded, Draining, Error];
    const EVENTS: [LifecycleEvent; 6] = [
        SourcePut,
        BuildSucceeded,
        BuildFailed,
        LoadSucceeded,
        LoadFailed,
        RemoveStarted,
    ];

    #[test]
    fn the_full_table() {
        // Rows: states in STATES order; columns: events in EVENTS order.
        let table: [[Option<EndpointState>; 6]; 5] = [
            [
                Some(Created),
                Some(Compiled),
                Some(Created),
                Some(Loaded),
                Some(Error),
                None,
            ],
            [
                Some(Created),
                Some(Compiled),
                Some(Compiled),
                Some(Loaded),
                Some(Error),
                None,
            ],
            [
                Some(Loaded),
                Some(Loaded),
                Some(Loaded),
                Some(Loaded),
                Some(Loaded),
                Some(Draining),
            ],
            [None, None, None, None, None, None],
            [
                Some(Created),
                Some(Compiled),
                Some(Error),
                Some(Loaded),
                Some(Error),
                None,
            ],
        ];
        for (state, row) in STATES.iter().zip(table) {
            for (event, expected) in EVENTS.iter().zip(row) {
                assert_eq!(state.on(*event), expected, "{state} on {event:?}");
            }
        }
    }

    #[test]
    fn a_failed_build_leaves_every_state_as_it_was() {
        for state in [Created, Compiled, Loaded, Error] {
            assert_eq!(state.on(BuildFailed), Some(state));
        }
        assert_eq!(Loaded.on(LoadFailed), Some(Loaded));
    }
}
