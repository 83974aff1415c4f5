//! The one error type of the runtime.

use std::time::Duration;

/// A boxed error from a storage backend, kept as the `source` of [`Error::Storage`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong when talking to a durable object.
///
/// Each variant is something a caller can act on; over HTTP (the `http` feature) every
/// variant maps to one status code and an RFC 9457 problem body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object's mailbox is full: back off and retry after `retry_after`.
    #[error("object of class {class} is overloaded; retry after {retry_after:?}")]
    Overloaded {
        /// The class of the overloaded object.
        class: &'static str,
        /// A hint for when to retry.
        retry_after: Duration,
    },
    /// The object was reset (a commit failed, or a handler panicked) before this request's
    /// effects became durable; nothing it did is claimed to have happened.
    #[error("the object was reset before the request's writes became durable")]
    Reset,
    /// The handler panicked; its writes were discarded and the object was reset.
    #[error("the handler panicked: {message}")]
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// A storage key is empty, too long, or uses the reserved prefix.
    #[error("invalid storage key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: &'static str,
    },
    /// A value is larger than the configured maximum.
    #[error("value of {size} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// The encoded size of the value.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A value could not be encoded or decoded.
    #[error("value could not be encoded or decoded")]
    Codec(#[source] serde_json::Error),
    /// The storage backend failed.
    #[error("storage backend failed")]
    Storage(#[source] BoxError),
    /// An operation did not finish in time.
    #[error("timed out")]
    Timeout,
    /// Something that was asked for does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was not found.
        what: String,
    },
    /// The request was malformed; `detail` says how.
    #[error("bad request: {detail}")]
    BadRequest {
        /// A precise, human-readable description of the problem.
        detail: String,
    },
    /// The request conflicts with the object's current state (a stale token, a wrong holder).
    #[error("conflict: {detail}")]
    Conflict {
        /// A precise, human-readable description of the conflict.
        detail: String,
    },
    /// The runtime is shutting down and accepts no new work.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// An object id string is not 64 hex characters.
    #[error("invalid object id: expected 64 hex characters")]
    InvalidId,
    /// A class name is registered twice with different object types.
    #[error("class {class} is already registered with another type")]
    ClassConflict {
        /// The class name.
        class: &'static str,
    },
    /// `Context::defer` was asked for a reply type other than the current message's.
    #[error("defer was called with a reply type that does not match the message's")]
    WrongReplyType,
    /// A cron expression or schedule is invalid.
    #[error("invalid schedule: {detail}")]
    InvalidSchedule {
        /// What is wrong with it.
        detail: String,
    },
}

impl Error {
    /// Wraps a backend error.
    pub fn storage(err: impl Into<BoxError>) -> Self {
        Error::Storage(err.into())
    }

    /// A [`Error::BadRequest`] with the given detail.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Error::BadRequest {
            detail: detail.into(),
        }
    }

    /// A [`Error::Conflict`] with the given detail.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Error::Conflict {
            detail: detail.into(),
        }
    }

    /// A [`Error::NotFound`] for the given thing.
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }
}

/// The result type of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;
