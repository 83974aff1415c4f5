//! # stead-ratelimit: exact rate limiting per key, durable when you want it
//!
//! Each (policy, key) pair is one durable object, so its decisions are exact under any
//! concurrency: 64 callers hammering one key get exactly `limit` admissions, never more.
//! Four algorithms, chosen per policy:
//!
//! | algorithm | state | behaviour | trade-off |
//! |---|---|---|---|
//! | `gcra` (default) | one timestamp | smooth: a burst of `burst`, then one every `period/limit` | none worth naming; the best default |
//! | `token_bucket` | level + time | the same decisions as GCRA, shown as a bucket level | two numbers instead of one |
//! | `sliding_window` | every admission in the window | never more than `limit` in any window of `period`, wherever it starts | state grows with the limit (at most 10,000) |
//! | `fixed_window` | a counter | at most `limit` per calendar window | up to twice the limit across a window boundary |
//!
//! `burst` (GCRA's burst, the bucket's capacity) defaults to `limit`: "5 per minute" admits
//! 5 at once, then one every 12 seconds, as governor's quotas do.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use stead_ratelimit::{Algorithm, Limit, Policy, RateLimitClient};
//! let rt = stead_core::Runtime::builder().memory().build().await?;
//! let limits = RateLimitClient::new(&rt)?;
//! let hourly = Limit::inline(Policy::per_hour(3).algorithm(Algorithm::SlidingWindow))?;
//! for _ in 0..3 {
//!     assert!(limits.check("203.0.113.9", &hourly, 1).await?.allowed);
//! }
//! let refused = limits.check("203.0.113.9", &hourly, 1).await?;
//! assert!(!refused.allowed);
//! // The first of the three leaves the window an hour after it came (less the time since).
//! assert!(refused.retry_after_ms.unwrap() > 3_500_000);
//! # rt.shutdown().await?;
//! # Ok::<(), stead_ratelimit::RateLimitError>(()) }).unwrap();
//! ```
//!
//! As middleware, see `layer`; over HTTP (see `router`; both need the `http` feature, on
//! by default):
//! `POST /ratelimit/{key}/check`, `GET /ratelimit/{key}?policy=…` (peek),
//! `DELETE /ratelimit/{key}` (reset) and `GET /ratelimit` (the configured policies).
//! Responses carry the `RateLimit-Policy` and `RateLimit` header fields of
//! draft-ietf-httpapi-ratelimit-headers-10.
//!
//! State is kept in memory unless configured otherwise ([`RateLimitConfig`]), as an
//! in-process limiter keeps it: the fastest choice, and a restart forgives the limits in
//! force. With durability `ProcessCrashSafe` every limit is exact across a restart or a crash
//! of the process (a write per admitted request, no fsync); with `Fsync`, across power loss.
//! A key's state is deleted by alarm a minute after it has become the same as a fresh key's,
//! so memory and storage hold only keys being limited now or lately.

mod client;
mod error;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
mod layer;
mod object;
mod policy;

pub use client::{Limit, Policies, RateLimitClient, RateLimitConfig};
pub use error::RateLimitError;
#[cfg(feature = "http")]
pub use http::{RATELIMIT, RATELIMIT_POLICY, RateLimitPattern, insert_headers};
#[cfg(feature = "http")]
pub use layer::{NO_KEY, OnFailure, RateLimitLayer, RateLimitService, layer};
pub use object::{Check, FORGET_AFTER_IDLE_MS, Peek, RateLimiter, Reset};
pub use policy::{
    Algorithm, Decision, MAX_LIMIT, MAX_PERIOD_MS, MAX_POLICY_NAME_BYTES, MAX_REFILL_MS,
    MAX_SLIDING_WINDOW_LIMIT, Policy,
};

/// The rate-limit routes, without a prefix (the umbrella crate mounts them under
/// `/ratelimit`), in any app state, with the policies the runtime's rate limiter was
/// configured with ([`RateLimitClient::with_config`]), or none.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`].
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <RateLimitPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <RateLimitPattern as stead_core::http::Pattern>::openapi()
}
