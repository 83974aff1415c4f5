//! # stead-counter: exact, durable, idempotent counters
//!
//! A counter is spread over S shard objects (16 by default, fixed at first use) so that
//! many writers never queue behind one object. An increment goes to one shard: the shard
//! its idempotency key hashes to, or a random one. A read adds up every shard: exact, not
//! an estimate. The first read of a counter asks the shards; after that each shard
//! publishes its value once its write is durable, and reads add the published values
//! without a call. Every acknowledged increment is durable (it went through the
//! output gate), and an increment retried with the same idempotency key within the dedup
//! window (24 h by default) counts once. Old keys are purged by a schedule, so storage
//! stays bounded.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use stead_counter::CounterClient;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let rt = stead_core::Runtime::builder().sqlite(dir.path()).build().await?;
//! let counters = CounterClient::new(&rt)?;
//! counters.increment("signups", 1, Some("user-17")).await?;
//! counters.increment("signups", 1, Some("user-17")).await?; // a retry: not counted
//! counters.increment("signups", -1, None).await?;
//! counters.increment("signups", 5, None).await?;
//! assert_eq!(counters.get("signups").await?.value, 5);
//! assert_eq!(counters.list("sign", None, 10).await?.counters, vec!["signups".to_string()]);
//! # rt.shutdown().await?;
//! # Ok::<(), stead_counter::CounterError>(()) }).unwrap();
//! ```
//!
//! Over HTTP (see `router`, feature `http`, on by default): `POST /counters/{name}/increment` `{"by":1,
//! "idempotency_key":"…"}`, `GET /counters/{name}`, `POST /counters/{name}/reset`,
//! `GET /counters?prefix=…&limit=…&cursor=…`, and `PUT /counters/{name}` `{"shards":N}` to
//! fix a new counter's shard count.

mod client;
mod error;
#[cfg(feature = "http")]
mod http;
mod object;

pub use client::{CounterClient, CounterPage, CounterValue, MAX_KEY_CHARS, MAX_PAGE};
pub use error::CounterError;
#[cfg(feature = "http")]
pub use http::CounterPattern;
pub use object::{
    Applied, Apply, Clear, CounterConfig, CounterMeta, CounterShard, Inspect, MAX_SHARDS, Open,
    RememberedKeys, ShardEnv, Shards,
};

/// The counter routes, without a prefix (the umbrella crate mounts them under
/// `/counters`), in any app state. Configure the counters first
/// ([`CounterClient::with_config`]) to serve them with other settings.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`].
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <CounterPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <CounterPattern as stead_core::http::Pattern>::openapi()
}
