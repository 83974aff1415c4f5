//! # stead-sidecar: entity-scoped storage for workflows
//!
//! A workflow engine keeps little state per run, and none that two runs (or two steps
//! racing) can share safely. A sidecar is one durable object per entity (a workflow run, an
//! order, a user) that holds:
//!
//! - **values** (JSON, up to 16 MiB by default, stored in chunks within one turn, so a large
//!   value is written atomically and read back byte for byte), each with a **version**:
//!   writes can be conditioned on it (`If-Match`, `If-None-Match: *`), so a lost race is an
//!   error, never a silent overwrite;
//! - **append lists**, one stored entry per item (O(1) per append), read by index range,
//!   optionally trimmed to a maximum length;
//! - **listing** of keys by prefix with a cursor, stable under concurrent writes;
//! - a **lifetime**: after it runs out (renewed by writes, or fixed), an alarm deletes
//!   everything, so the clean-up happens even if the workflow died;
//! - **quotas** on total bytes and keys;
//! - **checkpointed steps**: declare them, lease the next one, complete or fail it, resume a
//!   failed one; every transition is one turn.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use stead_sidecar::SidecarClient;
//!
//! let rt = stead_core::Runtime::builder().memory().build().await?;
//! let sidecars = SidecarClient::new(&rt)?;
//! sidecars.declare_steps("run-1", &["fetch", "summarise"]).await?;
//! let next = sidecars.next_step("run-1", "worker-a", Duration::from_secs(60)).await?;
//! let lease = next.lease.unwrap();
//! assert_eq!(lease.name, "fetch");
//! sidecars.complete_step("run-1", "fetch", lease.token, Some(&serde_json::json!({"pages": 3}))).await?;
//! let next = sidecars.next_step("run-1", "worker-a", Duration::from_secs(60)).await?;
//! assert_eq!(next.lease.unwrap().previous_output.as_deref(), Some(r#"{"pages":3}"#));
//! # rt.shutdown().await?;
//! # Ok::<(), stead_sidecar::SidecarError>(()) }).unwrap();
//! ```
//!
//! Over HTTP (see `router`, feature `http`, on by default), under `/sidecars/{entity}`:
//! `keys/{key}` (GET, PUT, DELETE, with ETags), `keys?prefix=`, `lists/{key}` (POST appends,
//! GET reads), `ttl`, `steps`, and `DELETE /sidecars/{entity}`.

mod client;
mod error;
#[cfg(feature = "http")]
mod http;
mod object;

pub use client::{SidecarClient, SidecarConfig};
pub use error::{Quota, SidecarError, StepStatus};
#[cfg(feature = "http")]
pub use http::SidecarPattern;
pub use object::{
    Append, Appended, Condition, DeclareSteps, Delete, FinishStep, Get, Inspect, Item, Items,
    KeyInfo, KeyPage, Lifetime, Limits, ListKeys, MAX_ERROR_CHARS, MAX_KEY_BYTES, MAX_LEASE_MS,
    MAX_PAGE, MAX_STEPS, MAX_TTL_MS, NextReply, NextStep, Put, Range, Remove, ResumeStep,
    SetLifetime, Sidecar, SidecarInfo, Step, StepLease, Steps, Versioned, Written, validate_key,
};

/// The sidecar routes, without a prefix (the umbrella crate mounts them under `/sidecars`),
/// in any app state.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`].
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <SidecarPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <SidecarPattern as stead_core::http::Pattern>::openapi()
}
