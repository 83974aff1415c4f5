//! # stead-lock: locks and semaphores with fencing tokens
//!
//! A lock is a durable object that hands out leases. Every lease carries a *fencing token*
//! that is greater than every token issued before it, across expiries and restarts: a
//! resource that refuses tokens lower than the highest it has seen can never be written by a
//! client that paused, lost its lease and came back late. Leases expire by alarm; callers
//! can wait in a fair FIFO line (a long-poll, no polling); with `permits` above one the lock
//! is a counting semaphore.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use stead_lock::{AcquireOptions, LockClient};
//!
//! let rt = stead_core::Runtime::builder().memory().build().await?;
//! let locks = LockClient::new(&rt)?;
//! let a = locks.acquire("report", AcquireOptions::new("a", Duration::from_secs(10))).await?;
//! // Taken: a second holder is refused at once...
//! assert!(locks.acquire("report", AcquireOptions::new("b", Duration::from_secs(10))).await.is_err());
//! let token_a = a.token();
//! a.release().await?;
//! // ...and gets a greater token once it is free.
//! let b = locks.acquire("report", AcquireOptions::new("b", Duration::from_secs(10))).await?;
//! assert!(b.token() > token_a);
//! # b.release().await?;
//! # rt.shutdown().await?;
//! # Ok::<(), stead_lock::LockError>(()) }).unwrap();
//! ```
//!
//! Over HTTP (see `router`, feature `http`, on by default): `POST /locks/{name}/acquire`,
//! `/renew`, `/release`, `/validate`, and `GET /locks/{name}`. A refusal is a 409 problem
//! whose type says which [`LockError`] it was.

mod client;
mod error;
#[cfg(feature = "http")]
mod http;
mod object;

pub use client::{AcquireOptions, LockClient, LockConfig, LockGuard};
pub use error::LockError;
#[cfg(feature = "http")]
pub use http::LockPattern;
pub use object::{
    Acquire, AcquireReply, Inspect, Lease, Lock, LockState, MAX_HOLDER_CHARS, MAX_PERMITS,
    MAX_TTL_MS, MAX_WAIT_MS, Release, Renew, Validate, Validity,
};

/// The lock routes, without a prefix (the umbrella crate mounts them under `/locks`), in
/// any app state: `.nest("/my/locks", stead_lock::router(&rt)?.bearer(tokens)?)` inside your own
/// router.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`].
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <LockPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <LockPattern as stead_core::http::Pattern>::openapi()
}
