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
//! # Ok::<(), stead_core::Error>(()) }).unwrap();
//! ```
//!
//! Over HTTP (see [`router`]): `POST /leaders/{group}/campaign`, `/heartbeat`, `/resign`,
//! `GET /leaders/{group}` and `GET /leaders/{group}/watch?after_term=N&timeout_ms=…`.

mod client;
mod http;
mod object;

pub use client::{Elector, ElectorConfig, LeaderClient};
pub use http::openapi;
pub use object::{
    CampaignResult, Election, Leadership, MAX_CANDIDATE_CHARS, MAX_TTL_MS, MAX_WATCH_MS,
};

/// The leader-election routes (under `/leaders`) for a runtime.
pub fn router(rt: &stead_core::Runtime) -> stead_core::Result<axum::Router> {
    Ok(http::routes(LeaderClient::new(rt)?))
}
