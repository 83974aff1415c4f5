//! What can go wrong with a session, as a caller acts on it.

use stead_core::InvalidInput;

/// The sessions' outcomes other than success. Each variant is one thing a caller can act
/// on; over HTTP each maps to one status and problem type (see the `http` room). No
/// variant's message carries a session id: ids are secrets and never reach a log.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SessionError {
    /// A session with this id exists already (an id collision: draw another id).
    #[error("a session with this id exists already")]
    Exists,
    /// No live session has this id (never created, expired, or revoked).
    #[error("no such session (unknown, expired or revoked)")]
    NotFound,
    /// The session's data is larger than allowed.
    #[error("session data of {size} bytes is too large: at most {max}")]
    TooLarge {
        /// Its size, in bytes of JSON.
        size: usize,
        /// The most allowed.
        max: usize,
    },
    /// An argument breaks a rule (a malformed id, a TTL out of range...).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}
