//! What the registry reports: outcomes of swaps and removals, and
//! statistics. Plain data, serialisable for an admin API.

use serde::Serialize;

use super::lifecycle::EndpointState;

/// What [`super::HandlerRegistry::swap`] and
/// [`super::HandlerRegistry::swap_graceful`] report. They return at once;
/// the old handler drains in the background.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwapOutcome {
    /// The endpoint.
    pub endpoint: String,
    /// The version now serving.
    pub new_version: u64,
    /// The version replaced.
    pub old_version: u64,
    /// Requests still running on the old version when the swap returned.
    pub pending_on_old: usize,
    /// Whether the old version is still draining (it had pending requests).
    /// When false it has already been dropped.
    pub draining: bool,
}

/// What [`super::HandlerRegistry::remove`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoveOutcome {
    /// The endpoint.
    pub endpoint: String,
    /// The version removed.
    pub version: u64,
    /// Whether its requests all finished before the timeout.
    pub drained: bool,
    /// Requests still running at the timeout; the handler is unloaded when
    /// the last one returns.
    pub still_active: usize,
}

/// A snapshot of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryStats {
    /// Endpoints with a handler taking requests.
    pub loaded: usize,
    /// Handler versions draining: replaced ones still alive, and endpoints
    /// being removed or drained.
    pub draining: usize,
    /// Requests running on handlers that take requests.
    pub active_requests: usize,
    /// Requests running on draining handlers.
    pub draining_requests: usize,
    /// Drains that reached their timeout with requests still running.
    pub drain_timeouts: u64,
    /// Handler versions dropped (libraries unloaded) so far.
    pub unloaded: u64,
    /// The current handler of each endpoint, by id.
    pub endpoints: Vec<EndpointStats>,
    /// Replaced or removed handler versions not yet unloaded.
    pub retired: Vec<DrainingStats>,
}

/// The current handler of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointStats {
    /// The endpoint.
    pub id: String,
    /// [`EndpointState::Loaded`], or [`EndpointState::Draining`] while it is
    /// removed or the registry is drained.
    pub state: EndpointState,
    /// The version serving.
    pub version: u64,
    /// Requests running on it.
    pub active_requests: usize,
    /// Where it was loaded from: a library path, or `in-process`.
    pub origin: String,
}

/// A replaced or removed handler version that is still loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainingStats {
    /// The endpoint.
    pub endpoint: String,
    /// The version.
    pub version: u64,
    /// Requests still running on it.
    pub active_requests: usize,
    /// Whether the registry let go of it (immediate swap, or drain timeout
    /// passed): its last request unloads it.
    pub released: bool,
    /// Time since it stopped taking requests, in milliseconds.
    pub draining_for_ms: u64,
}
