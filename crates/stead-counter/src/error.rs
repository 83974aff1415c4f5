//! What can go wrong with a counter, as a caller acts on it.

use stead_core::InvalidInput;

/// The counters' outcomes other than success. Serde, so that it comes back from the node
/// of a cluster that owns the counter.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum CounterError {
    /// The counter exists with another shard count, which never changes once set.
    #[error("counter {name:?} has {shards} shards; it cannot be changed to {wanted}")]
    ShardsFixed {
        /// The counter.
        name: String,
        /// Its shard count.
        shards: u32,
        /// The count asked for.
        wanted: u32,
    },
    /// Adding `by` would take the counter beyond what a signed 64-bit sum of its shards can
    /// hold; nothing was added.
    #[error(
        "adding {by} would overflow the counter: each of its {shards} shards holds a value between {min} and {max}, so that their sum fits a signed 64-bit integer"
    )]
    Overflow {
        /// The amount refused.
        by: i64,
        /// The counter's shard count.
        shards: u32,
        /// The least value one shard may hold.
        min: i64,
        /// The greatest value one shard may hold.
        max: i64,
    },
    /// The shard remembers `max_keys` idempotency keys and none is older than the dedup
    /// window: forgetting a young one would let its retry count twice, so nothing was
    /// added; send it again after `retry_after_ms`.
    #[error("idempotency keys: {0}")]
    Remembering(stead_core::Remembering),
    /// An argument breaks a rule (an empty name, a shard count out of range...).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}
