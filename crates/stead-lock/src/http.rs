//! The HTTP routes of the locks (mounted under `/locks` by the umbrella crate), and the
//! mapping of [`LockError`] to problems.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use stead_core::http::{Json as Body, Name, Problem, problems, schema};
use stead_core::{Result, Runtime, duration_ms};
use utoipa::{OpenApi, ToSchema};

use crate::client::{AcquireOptions, LockClient, LockConfig};
use crate::error::LockError;
use crate::object::{Lease, LockState, MAX_PERMITS, MAX_TTL_MS, MAX_WAIT_MS, Validity};

/// The lock pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct LockPattern;

impl stead_core::http::Pattern for LockPattern {
    const PREFIX: &'static str = "/locks";
    const SETTINGS_KEY: &'static str = "locks";
    type Settings = LockConfig;

    fn configure(rt: &Runtime, settings: LockConfig) -> Result<()> {
        LockClient::with_config(rt, settings).map(drop)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        Ok(Router::new()
            .route("/{name}", get(state))
            .route("/{name}/acquire", post(acquire))
            .route("/{name}/renew", post(renew))
            .route("/{name}/release", post(release))
            .route("/{name}/validate", post(validate))
            .with_state(LockClient::new(rt)?)
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }
}

impl From<&LockError> for Problem {
    fn from(err: &LockError) -> Self {
        let detail = err.to_string();
        match err {
            LockError::Held {
                holder,
                retry_after,
            } => Problem::new(StatusCode::CONFLICT, "lock-held", detail)
                .with("holder", holder.clone())
                .with("retry_after_ms", duration_ms(*retry_after))
                .retry_after(*retry_after),
            LockError::PermitMismatch { permits } => {
                Problem::new(StatusCode::CONFLICT, "permit-mismatch", detail)
                    .with("permits", *permits)
            }
            LockError::StaleToken {
                holder,
                token,
                current,
            } => Problem::new(StatusCode::CONFLICT, "stale-token", detail)
                .with("holder", holder.clone())
                .with("token", *token)
                .with("current_token", *current),
            LockError::NotHolder { holder, token } => {
                Problem::new(StatusCode::CONFLICT, "not-holder", detail)
                    .with("holder", holder.clone())
                    .with("token", *token)
            }
            LockError::Invalid(e) => Problem::from(e),
            LockError::Runtime(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for LockError {
    fn into_response(self) -> Response {
        match self {
            LockError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

/// Asks for a lease.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    /// Who asks (a client id, a host name...).
    #[schema(schema_with = schema::name)]
    holder: String,
    /// How long the lease lasts unless renewed, in ms (at most a day).
    #[schema(schema_with = schema::integer::<1, MAX_TTL_MS>)]
    ttl_ms: u64,
    /// How long to wait in the fair queue when the lock is taken, in ms (at most five minutes).
    #[serde(default)]
    #[schema(schema_with = schema::integer::<0, MAX_WAIT_MS>)]
    wait_ms: u64,
    /// How many holders the lock admits at once (1: a mutex).
    #[serde(default = "one")]
    #[schema(schema_with = schema::integer::<1, { MAX_PERMITS as u64 }>)]
    permits: u32,
}

fn one() -> u32 {
    1
}

/// Extends a lease.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    /// The lease's holder.
    #[schema(schema_with = schema::name)]
    holder: String,
    /// The lease's fencing token.
    #[schema(schema_with = schema::integer::<0, { u64::MAX }>)]
    token: u64,
    /// The new time to live, from now, in ms.
    #[schema(schema_with = schema::integer::<1, MAX_TTL_MS>)]
    ttl_ms: u64,
}

/// Gives a lease back.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    /// The lease's holder.
    #[schema(schema_with = schema::name)]
    holder: String,
    /// The lease's fencing token.
    #[schema(schema_with = schema::integer::<0, { u64::MAX }>)]
    token: u64,
}

/// Asks whether a token belongs to a live lease.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ValidateBody {
    /// The token to check.
    #[schema(schema_with = schema::integer::<0, { u64::MAX }>)]
    token: u64,
}

/// A granted lease.
#[derive(Debug, Serialize, ToSchema)]
struct Acquired {
    /// Always true: a refusal is a problem.
    acquired: bool,
    /// The lease.
    #[serde(flatten)]
    lease: Lease,
}

/// The answer to a release.
#[derive(Debug, Serialize, ToSchema)]
struct Released {
    /// Always true: a release that fails is a problem.
    released: bool,
}

/// Acquire a lease, optionally waiting in a fair queue.
#[utoipa::path(post, path = "/{name}/acquire", operation_id = "acquireLock", tag = "locks",
    params(Name),
    request_body = AcquireBody,
    responses(
        (status = 200, description = "granted", body = Acquired),
        (status = 409, description = "held by another (`lock-held`, with `holder`, `retry_after_ms` and Retry-After), or held with another permit count (`permit-mismatch`)",
            body = Problem, content_type = "application/problem+json"),
        problems::BadRequest))]
async fn acquire(
    State(c): State<LockClient>,
    Name(name): Name,
    Body(b): Body<AcquireBody>,
) -> Result<Body<Acquired>, LockError> {
    let opts = AcquireOptions::new(b.holder, Duration::from_millis(b.ttl_ms))
        .wait(Duration::from_millis(b.wait_ms))
        .permits(b.permits);
    let reply = c.try_acquire(&name, &opts).await?;
    match (reply.token, reply.expires_at) {
        (Some(token), Some(expires_at)) => Ok(Body(Acquired {
            acquired: true,
            lease: Lease {
                holder: opts.holder,
                token,
                expires_at,
            },
        })),
        _ => Err(LockError::Held {
            holder: reply.holder,
            retry_after: Duration::from_millis(reply.retry_after_ms.unwrap_or(0)),
        }),
    }
}

/// Extend a lease.
#[utoipa::path(post, path = "/{name}/renew", operation_id = "renewLock", tag = "locks",
    params(Name),
    request_body = RenewBody,
    responses(
        (status = 200, description = "renewed", body = Lease),
        (status = 409, description = "the lease is lost: `stale-token` or `not-holder`", body = Problem, content_type = "application/problem+json"),
        problems::BadRequest))]
async fn renew(
    State(c): State<LockClient>,
    Name(name): Name,
    Body(b): Body<RenewBody>,
) -> Result<Body<Lease>, LockError> {
    Ok(Body(
        c.renew(&name, &b.holder, b.token, Duration::from_millis(b.ttl_ms))
            .await?,
    ))
}

/// Give a lease back.
#[utoipa::path(post, path = "/{name}/release", operation_id = "releaseLock", tag = "locks",
    params(Name),
    request_body = ReleaseBody,
    responses(
        (status = 200, description = "released", body = Released),
        (status = 409, description = "the lease is lost: `stale-token` or `not-holder`", body = Problem, content_type = "application/problem+json"),
        problems::BadRequest))]
async fn release(
    State(c): State<LockClient>,
    Name(name): Name,
    Body(b): Body<ReleaseBody>,
) -> Result<Body<Released>, LockError> {
    c.release(&name, &b.holder, b.token).await?;
    Ok(Body(Released { released: true }))
}

/// Holders, queue length and last token.
#[utoipa::path(get, path = "/{name}", operation_id = "getLock", tag = "locks",
    params(Name),
    responses(
        (status = 200, description = "the lock's state", body = LockState),
        problems::BadRequest))]
async fn state(
    State(c): State<LockClient>,
    Name(name): Name,
) -> Result<Body<LockState>, LockError> {
    Ok(Body(c.state(&name).await?))
}

/// Whether a token belongs to a live lease.
#[utoipa::path(post, path = "/{name}/validate", operation_id = "validateLockToken", tag = "locks",
    params(Name),
    request_body = ValidateBody,
    responses(
        (status = 200, description = "validity", body = Validity),
        problems::BadRequest))]
async fn validate(
    State(c): State<LockClient>,
    Name(name): Name,
    Body(b): Body<ValidateBody>,
) -> Result<Body<Validity>, LockError> {
    Ok(Body(c.validate(&name, b.token).await?))
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(acquire, renew, release, state, validate))]
struct Api;
