//! The runtime's vital signs, as read by [`super::Runtime::vitals`].

/// The runtime's vital signs at one instant (see [`Runtime::vitals`](crate::Runtime::vitals)).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Vitals {
    /// When they were read (the runtime's clock).
    pub at: chrono::DateTime<chrono::Utc>,
    /// Turns run since the runtime started, over every class.
    pub turns: u64,
    /// Objects in memory.
    pub active_objects: usize,
    /// Alarms the runtime holds in memory (due soon, or not yet durable).
    pub pending_alarms: usize,
    /// WebSockets the runtime holds open for objects.
    pub open_websockets: usize,
    /// Commits timed since the runtime started (a sample: at most one in flight per object
    /// is timed, from its submission to its acknowledgement)...
    pub commits_timed: u64,
    /// ...and their latencies summed, in seconds: the difference of two readings divided by
    /// the difference of their `commits_timed` is the mean commit latency between them.
    pub commit_seconds: f64,
    /// Per class.
    pub classes: Vec<ClassVitals>,
}

/// One class's vital signs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ClassVitals {
    /// The class.
    pub class: String,
    /// Its objects in memory.
    pub active_objects: usize,
    /// Turns its objects ran since the runtime started.
    pub turns: u64,
    /// WebSockets its objects hold open.
    pub open_websockets: usize,
    /// Commits of its objects timed (see [`Vitals::commits_timed`]).
    pub commits_timed: u64,
    /// Their latencies summed, in seconds.
    pub commit_seconds: f64,
}
