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
//! use stead_counter::{CounterClient, CounterConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let rt = stead_core::Runtime::builder().sqlite(dir.path()).build().await?;
//! let counters = CounterClient::new(&rt, CounterConfig::default())?;
//! counters.increment("signups", 1, Some("user-17")).await?;
//! counters.increment("signups", 1, Some("user-17")).await?; // a retry: not counted
//! counters.increment("signups", -1, None).await?;
//! counters.increment("signups", 5, None).await?;
//! assert_eq!(counters.get("signups").await?.value, 5);
//! assert_eq!(counters.list("sign", None, 10).await?.counters, vec!["signups".to_string()]);
//! # rt.shutdown().await?;
//! # Ok::<(), stead_core::Error>(()) }).unwrap();
//! ```
//!
//! Over HTTP (see [`router`]): `POST /counters/{name}/increment` `{"by":1,
//! "idempotency_key":"…"}`, `GET /counters/{name}`, `POST /counters/{name}/reset`,
//! `GET /counters?prefix=…&limit=…&cursor=…`, and `PUT /counters/{name}` `{"shards":N}` to
//! fix a new counter's shard count.

mod client;
mod http;
mod object;

pub use client::{CounterClient, CounterPage, CounterValue, MAX_KEY_CHARS};
pub use http::openapi;
pub use object::{Applied, CounterConfig, CounterMeta, CounterShard, MAX_SHARDS};

/// The counter routes (under `/counters`) for a runtime, with the default configuration.
pub fn router(rt: &stead_core::Runtime) -> stead_core::Result<axum::Router> {
    router_with(rt, CounterConfig::default())
}

/// The counter routes with a configuration.
pub fn router_with(
    rt: &stead_core::Runtime,
    config: CounterConfig,
) -> stead_core::Result<axum::Router> {
    Ok(http::routes(CounterClient::new(rt, config)?))
}
