//! What can go wrong with a controller, as a caller acts on it.

use std::time::Duration;

use stead_core::InvalidInput;

/// The controller's outcomes other than success. Each variant is one thing a caller can act
/// on; over HTTP each maps to one status and problem type (see the `http` room).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ControllerError {
    /// No controller of this name is configured: `PUT` its configuration first.
    #[error("no controller of this name is configured")]
    NotFound,
    /// The controller is paused: nothing is leased until it is started.
    #[error("the controller is paused")]
    Paused,
    /// The circuit is open (or its one probe is out): nothing is leased before
    /// `retry_after`.
    #[error("the circuit is open; retry after {retry_after:?}")]
    CircuitOpen {
        /// When a lease may be granted.
        retry_after: Duration,
    },
    /// Every lease the controller's concurrency allows is out.
    #[error("every lease is out; retry after {retry_after:?}")]
    Busy {
        /// When to ask again.
        retry_after: Duration,
    },
    /// The next batch is not due yet (the interval since the last one has not passed).
    #[error("the next batch is due in {retry_after:?}")]
    NotDue {
        /// When it is due.
        retry_after: Duration,
    },
    /// The lease is unknown, already reported, or expired (and counted as a failed batch):
    /// the report changed nothing.
    #[error("lease {lease_id} is unknown, already reported or expired")]
    UnknownLease {
        /// The lease named.
        lease_id: String,
    },
    /// An argument breaks a rule (a configuration field out of range, a report longer than
    /// its lease...).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}

impl ControllerError {
    /// How long to wait before asking for a lease again, when the refusal says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ControllerError::CircuitOpen { retry_after }
            | ControllerError::Busy { retry_after }
            | ControllerError::NotDue { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}
