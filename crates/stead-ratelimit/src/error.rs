//! What can go wrong with a rate limit, as a caller acts on it.

use stead_core::InvalidInput;

use crate::policy::Decision;

/// The rate limiter's outcomes other than an admission.
///
/// A refusal is not an error of [`check`](crate::RateLimitClient::check), which answers a
/// [`Decision`] either way; [`Limited`](Self::Limited) is how the routes and the layer
/// report one (a 429 problem carrying the decision).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The request was refused by the limit: retry after `decision.retry_after_ms`.
    #[error("rate limit {policy:?} ({limit} per {period_ms} ms) exceeded; retry after {} ms", decision.retry_after_ms.unwrap_or(0))]
    Limited {
        /// The policy's name.
        policy: String,
        /// Its limit per period.
        limit: u64,
        /// Its period, in ms.
        period_ms: u64,
        /// The decision, with what is left and when to retry.
        decision: Decision,
    },
    /// No policy of that name is configured.
    #[error("unknown policy {name:?}: {}", if known.is_empty() {
        "no policies are configured; pass one inline".to_owned()
    } else {
        format!("configured: {}", known.join(", "))
    })]
    UnknownPolicy {
        /// The name asked for.
        name: String,
        /// The names that are configured.
        known: Vec<String>,
    },
    /// An argument breaks a rule (a policy field out of range, a bad key, a cost above the
    /// burst...).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}
