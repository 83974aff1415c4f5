//! The controller's messages and what they answer.

use super::*;

/// Sets (or changes) the configuration; creates the controller, running, if it is new.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Configure(pub ControllerSpec);

/// Starts a paused controller.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Start;

/// Pauses a controller: nothing is leased until it is started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Pause;

/// Returns to the initial batch and interval, closes the circuit and clears the window
/// (totals and the decision log stay).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Reset;

/// Deletes the controller and everything it keeps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Remove;

/// Asks for a batch to work on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lease {
    /// Who asks (shown among the leases out).
    pub worker: Option<String>,
}

/// A granted lease: do `batch_size` items and report before `deadline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Granted {
    /// The lease to report under.
    pub lease_id: String,
    /// How many items to do (at most).
    pub batch_size: u32,
    /// When the lease lapses: a batch not reported by then counts as failed.
    pub deadline: DateTime<Utc>,
    /// Whether this is the half-open circuit's probe (its outcome closes or reopens it).
    pub probe: bool,
}

/// Reports a leased batch's outcomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The lease.
    pub lease_id: String,
    /// One outcome per item done (at most the batch size; none if there was nothing to do).
    pub results: Vec<Sample>,
}

/// What a report led to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Reported {
    /// The setting after the decision.
    #[serde(flatten)]
    pub setting: Setting,
    /// The policy's reason (none for an empty report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The breaker's transition, if it moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Transition>,
}

/// Asks for the controller's state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Inspect;

/// Asks for a page of the decision log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Decisions(pub LogQuery);

/// Starts what batches are due for a processor attached in this process (sent by the
/// client when one is attached).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Drive;

/// A lease out, as [`ControllerState`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct LeaseOut {
    /// Its id.
    pub lease_id: String,
    /// Its batch size.
    pub batch_size: u32,
    /// When it was granted.
    pub granted_at: DateTime<Utc>,
    /// When it lapses.
    pub deadline: DateTime<Utc>,
    /// Whether it is the circuit's probe.
    pub probe: bool,
    /// Who holds it, if they said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// The rolling window's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct WindowStats {
    /// Outcomes held.
    pub samples: u32,
    /// Outcomes kept at most.
    pub capacity: u32,
    /// The share that succeeded (1 when empty).
    pub success_rate: f64,
    /// Their mean latency, in ms.
    pub mean_latency_ms: f64,
}

/// The circuit breaker, as shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct BreakerView {
    /// Consecutive failed batches (while closed).
    pub consecutive_failures: u32,
    /// When an open circuit lets a probe through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_until: Option<DateTime<Utc>>,
    /// The cool-down that opened it, in ms (while open or half-open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_ms: Option<u64>,
}

/// A controller's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct ControllerState {
    /// The status.
    pub status: Status,
    /// The policy.
    pub policy: String,
    /// Items per batch now.
    pub batch_size: u32,
    /// Time between batch starts now, in ms.
    pub interval_ms: u64,
    /// When the next batch may start (none while paused or open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch_at: Option<DateTime<Utc>>,
    /// The leases out.
    pub leases: Vec<LeaseOut>,
    /// The window.
    pub window: WindowStats,
    /// The breaker.
    pub breaker: BreakerView,
    /// Counts since creation.
    pub totals: Totals,
    /// The configuration, every default filled in.
    pub config: ControllerSpec,
    /// Decision-log entries written so far.
    pub decisions: u64,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}
