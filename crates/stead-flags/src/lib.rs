//! # stead-flags: feature flags
//!
//! Flag sets in flagd's definition format, one durable object per set, evaluated from the
//! committed snapshot a set publishes and served over OpenFeature's remote evaluation
//! protocol.
//!
//! Fractional splits bucket exactly as flagd does:
//!
//! ```
//! use stead_flags::fractional_bucket;
//!
//! // 25% a, 25% b, 50% c, by flag key + targeting key.
//! let weights = [25, 25, 50];
//! let bucket = fractional_bucket("rollout", "user-1", &weights).unwrap();
//! assert!(bucket < 3);
//! // The same key always lands in the same bucket.
//! assert_eq!(fractional_bucket("rollout", "user-1", &weights), Some(bucket));
//! ```

mod client;
mod definition;
mod error;
mod evaluate;
#[cfg(feature = "http")]
mod http;
mod object;
#[cfg(feature = "openfeature")]
mod openfeature;

pub use client::{CLUSTER_STALENESS, Details, FlagValue, FlagsClient, FlagsConfig, typed};
pub use definition::{
    DefinitionError, FlagDefinition, FlagSetDefinition, FlagState, FlagType, MAX_FLAGS,
    MAX_KEY_CHARS, check_flag_key,
};
pub use error::FlagsError;
pub use evaluate::{ErrorCode, Evaluation, Reason, Snapshot};
#[cfg(feature = "http")]
pub use http::{ACTOR_HEADER, FlagsPattern, MAX_WAIT_MS};
// Targeting rules are stead-logic's; the names a flag user meets are here too.
pub use object::{
    AuditAction, AuditEntry, Changed, Configure, DeleteFlag, Edit, FlagSet, FlagsEnv, Inspect,
    PutFlag, ReadAudit, Snapshots,
};
#[cfg(feature = "openfeature")]
pub use openfeature::FlagsProvider;
pub use stead_logic::{
    MAX_RESULT_DEPTH, MAX_TOTAL_WEIGHT, MAX_WORK, OPERATIONS, Rule, RuleError, RuleFault,
    bucket_of, fractional_bucket,
};

/// The admin and per-set OFREP routes, without a prefix (the umbrella crate mounts them
/// under `/flags`), in any app state.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`].
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <FlagsPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OFREP routes of the default set, at the root (`/ofrep/v1/...`), in any app state.
#[cfg(feature = "http")]
///
/// OFREP evaluation is meant for the flags' clients (web and mobile apps included), so it is
/// usually mounted with a token of its own, given to those clients, apart from the admin
/// routes.
pub fn root_router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    Ok(stead_core::http::Routes::new(
        <FlagsPattern as stead_core::http::Pattern>::root_router(rt)?,
    ))
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <FlagsPattern as stead_core::http::Pattern>::openapi()
}
