//! # stead-leader: leader election with terms that only grow
//!
//! One election object per group elects at most one leader per term. Terms strictly
//! increase, across expiries and restarts, so a leader can stamp its work with its term and
//! followers can refuse work from an old one. A leader that stops sending heartbeats is
//! replaced once its lease lapses (by alarm); watchers long-poll until the term moves.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use stead_leader::LeaderClient;
//!
//! let rt = stead_core::Runtime::builder().memory().build().await?;
//! let leaders = LeaderClient::new(&rt)?;
//! let n1 = leaders.campaign("jobs", "n1", Duration::from_secs(10)).await?;
//! assert!(n1.elected);
//! leaders.heartbeat("jobs", "n1", n1.term).await?;
//! leaders.resign("jobs", "n1", n1.term).await?;
//! let n2 = leaders.campaign("jobs", "n2", Duration::from_secs(10)).await?;
//! assert!(n2.elected && n2.term > n1.term);
//! # rt.shutdown().await?;
//! # Ok::<(), stead_leader::LeaderError>(()) }).unwrap();
//! ```
//!
//! Over HTTP (see `router`, feature `http`, on by default): `POST /leaders/{group}/campaign`, `/heartbeat`, `/resign`,
//! `GET /leaders/{group}` and `GET /leaders/{group}/watch?after_term=N&timeout_ms=…`.

mod client;
mod error;
#[cfg(feature = "http")]
mod http;
mod object;

pub use client::{Elector, ElectorConfig, LeaderClient, LeaderConfig};
pub use error::LeaderError;
#[cfg(feature = "http")]
pub use http::LeaderPattern;
pub use object::{
    Campaign, CampaignResult, Election, Heartbeat, Inspect, Leadership, MAX_CANDIDATE_CHARS,
    MAX_TTL_MS, MAX_WATCH_MS, Resign, Watch,
};

/// The leader-election routes, without a prefix (the umbrella crate mounts them under
/// `/leaders`), in any app state.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`].
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <LeaderPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <LeaderPattern as stead_core::http::Pattern>::openapi()
}
