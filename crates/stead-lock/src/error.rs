//! What can go wrong with a lock, as a caller acts on it.

use std::time::Duration;

use stead_core::InvalidInput;

/// The lock's outcomes other than success. Each variant is one thing a caller can act on;
/// over HTTP each maps to one status and problem type (see the `http` room).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum LockError {
    /// The lock is taken (and the wait, if any, ran out): retry after `retry_after`, when
    /// the earliest lease lapses unless renewed.
    #[error("the lock is held by {}; retry after {retry_after:?}", holder.as_deref().unwrap_or("another holder"))]
    Held {
        /// A current holder.
        holder: Option<String>,
        /// How long until the earliest lease lapses.
        retry_after: Duration,
    },
    /// The lock is held as a semaphore of another size: acquire it with `permits`.
    #[error("the lock is held with {permits} permits; acquire it with the same count")]
    PermitMismatch {
        /// The permit count of the current holders.
        permits: u32,
    },
    /// The holder holds the lock, with a newer token than the one given: the lease behind
    /// this token is gone. Stop writing with it.
    #[error("token {token} is stale: {holder} holds token {current}")]
    StaleToken {
        /// The holder named.
        holder: String,
        /// The token given.
        token: u64,
        /// The token the holder holds now.
        current: u64,
    },
    /// The holder does not hold the lock (the lease expired, or was never granted): the
    /// lease is lost. Stop writing with its token.
    #[error("{holder} does not hold the lock with token {token} (it expired or was never granted)")]
    NotHolder {
        /// The holder named.
        holder: String,
        /// The token given.
        token: u64,
    },
    /// An argument breaks a rule (an empty holder, a TTL out of range...).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}

impl LockError {
    /// Whether the lease a call was made with is gone ([`StaleToken`](Self::StaleToken) or
    /// [`NotHolder`](Self::NotHolder)): the holder must stop using its token.
    pub fn is_lease_lost(&self) -> bool {
        matches!(
            self,
            LockError::StaleToken { .. } | LockError::NotHolder { .. }
        )
    }
}
