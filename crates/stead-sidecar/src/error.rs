//! What can go wrong with a sidecar, as a caller acts on it.

use serde::{Deserialize, Serialize};
use stead_core::InvalidInput;

/// Which quota a write would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    /// Total bytes of values, list items and step outputs.
    Bytes,
    /// The number of values and lists.
    Keys,
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quota::Bytes => "bytes",
            Quota::Keys => "keys",
        })
    }
}

/// Where a checkpointed step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started, or re-opened.
    Pending,
    /// Leased to a worker.
    Running,
    /// Completed, with its output.
    Done,
    /// Failed; `resume` re-opens it.
    Failed,
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
        })
    }
}

/// The sidecar's outcomes other than success. Each variant is one thing a caller can act
/// on; over HTTP each maps to one status and problem type (see the `http` room).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SidecarError {
    /// The key's version is not the one the write was conditioned on (or it exists where
    /// it should not, or is absent where it should be): read it again and retry.
    #[error("the condition on {key:?} does not hold: its version is {}", current.map_or("none (absent)".to_owned(), |v| v.to_string()))]
    PreconditionFailed {
        /// The key.
        key: String,
        /// Its version now (`None`: absent).
        current: Option<u64>,
    },
    /// The write would take the sidecar past a quota.
    #[error("the write would exceed the {quota} quota: {requested} requested, at most {limit}")]
    QuotaExceeded {
        /// Which quota.
        quota: Quota,
        /// The quota.
        limit: u64,
        /// What the sidecar would hold after the write.
        requested: u64,
    },
    /// A value, item or output larger than allowed.
    #[error("{size} bytes is too large: at most {max}")]
    TooLarge {
        /// Its size, in bytes of JSON text.
        size: u64,
        /// The most allowed.
        max: u64,
    },
    /// No step of that name is declared.
    #[error("no step {name:?} is declared")]
    StepNotFound {
        /// The name asked for.
        name: String,
    },
    /// Other steps are declared already.
    #[error("the sidecar's steps are declared already: {steps:?}")]
    StepsDeclared {
        /// The steps declared.
        steps: Vec<String>,
    },
    /// The step is not running under this token any more (its lease lapsed and it was
    /// leased again, or it was finished): drop the work.
    #[error("step {name:?} is {status} and not leased with token {token}")]
    StepLeaseLost {
        /// The step.
        name: String,
        /// Where it is now.
        status: StepStatus,
        /// The token given.
        token: u64,
        /// Its current (or last) lease's token.
        current: Option<u64>,
    },
    /// Only a failed step can be resumed.
    #[error("step {name:?} is {status}, not failed")]
    StepNotFailed {
        /// The step.
        name: String,
        /// Where it is.
        status: StepStatus,
    },
    /// An argument breaks a rule (an empty key, a value that is not JSON...).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}
