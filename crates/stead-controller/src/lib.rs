//! # stead-controller: an adaptive batch controller
//!
//! A controller is a durable object that decides how much work runs and how often: it
//! hands out batches, measures what each did (success and latency per item), and resizes
//! the next one with its policy. The work itself runs outside the object, so a slow
//! downstream never blocks it:
//!
//! - **pull over HTTP**, from workers in any language: `lease` a batch, do it, `report` the
//!   outcomes; a lease not reported by its deadline counts as a failed batch, so a dead
//!   worker is seen;
//! - **in process**: attach a [`BatchProcessor`] and the controller runs each batch when it
//!   is due, on a task of its own.
//!
//! Policies ([`policy`]): `thresholds` (the seed's table, exactly), `aimd` and `gradient`
//! (latency-based, after Gradient2), each a pure function of (shape, window) → decision.
//! A circuit breaker ([`breaker`]) opens after consecutive failed batches and lets one
//! probe through after a cool-down that doubles while probes fail: it is never stuck.
//! Every change of batch size, interval or status is written to a bounded decision log
//! with its reason and the numbers behind it.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use stead_controller::{ControllerClient, ControllerError, ControllerSpec, Sample};
//! use stead_core::LogQuery;
//!
//! let rt = stead_core::Runtime::builder().memory().build().await?;
//! let controllers = ControllerClient::new(&rt)?;
//! controllers.configure("enrich", ControllerSpec::default()).await?;
//!
//! let lease = controllers.lease("enrich", Some("worker-1")).await?;
//! // ... do lease.batch_size items, timing each ...
//! let results = vec![Sample { ok: true, latency_ms: 12 }; lease.batch_size as usize];
//! let after = controllers.report("enrich", &lease.lease_id, results).await?;
//! assert_eq!(after.setting.batch_size, 15);
//!
//! // The next batch is due a minute later (the interval).
//! let early = controllers.lease("enrich", None).await.unwrap_err();
//! assert!(matches!(early, ControllerError::NotDue { .. }));
//! let log = controllers.decisions("enrich", LogQuery::newest(10)).await?;
//! assert_eq!(log.entries[0].after.batch_size, 15);
//! # rt.shutdown().await?;
//! # Ok::<(), ControllerError>(()) }).unwrap();
//! ```
//!
//! Over HTTP (see `router`, feature `http`, on by default): `PUT /controllers/{name}`,
//! `POST .../start`, `.../pause`, `.../reset`, `.../lease`, `.../report`,
//! `GET /controllers/{name}`, `GET .../decisions`, `DELETE /controllers/{name}`.

pub mod breaker;
mod client;
mod error;
#[cfg(feature = "http")]
mod http;
mod object;
pub mod policy;
mod spec;

pub use breaker::{Breaker, BreakerConfig, Transition};
pub use client::{
    Attachment, Batch, BatchProcessor, ControllerClient, ControllerConfig, ControllerEnv,
    IN_PROCESS,
};
pub use error::ControllerError;
#[cfg(feature = "http")]
pub use http::ControllerPattern;
pub use object::{
    BatchSummary, BreakerView, Cause, Configure, Controller, ControllerState, DecisionEntry,
    Decisions, Drive, Granted, Inspect, Lease, LeaseOut, MAX_LATENCY_MS, MAX_WORKER_CHARS, Pause,
    Remove, Report, Reported, Reset, Setting, Start, Status, Totals, WindowStats,
};
pub use policy::{
    Aimd, Bounds, Decision, Gradient, GradientState, MIN_BACKOFF_MS, Observation, Policy, Reason,
    Sample, Shape, Thresholds, Window,
};
pub use spec::{
    ControllerSpec, MAX_BATCH, MAX_CONCURRENCY, MAX_INTERVAL_MS, MAX_WINDOW, PolicyKind, Spec,
};

/// The controller routes, without a prefix (the umbrella crate mounts them under
/// `/controllers`), in any app state.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`].
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <ControllerPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ControllerPattern as stead_core::http::Pattern>::openapi()
}
