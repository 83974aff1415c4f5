//! The HTTP routes under `/locks`.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use stead_core::Result;
use stead_core::http::{Json as Body, Problem};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::client::{AcquireOptions, LockClient};
use crate::object::{AcquireReply, Lease, LockState, Validity};

/// Asks for a lease.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    /// Who asks (a client id, a host name...).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    holder: String,
    /// How long the lease lasts unless renewed, in ms (at most a day).
    #[schema(minimum = 1, maximum = 86_400_000)]
    ttl_ms: u64,
    /// How long to wait in the fair queue when the lock is taken, in ms (at most five minutes).
    #[serde(default)]
    #[schema(maximum = 300_000)]
    wait_ms: u64,
    /// How many holders the lock admits at once (1: a mutex).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 10_000, default = 1)]
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
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    holder: String,
    /// The lease's fencing token.
    token: u64,
    /// The new time to live, from now, in ms.
    #[schema(minimum = 1, maximum = 86_400_000)]
    ttl_ms: u64,
}

/// Gives a lease back.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    /// The lease's holder.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    holder: String,
    /// The lease's fencing token.
    token: u64,
}

/// Asks whether a token belongs to a live lease.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ValidateBody {
    /// The token to check.
    token: u64,
}

/// The answer to a release.
#[derive(Debug, Serialize, ToSchema)]
struct Released {
    /// Always true: a release that fails is a problem.
    released: bool,
}

/// The path parameter of these routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct LockPath {
    /// The lock's name. 1 to 256 characters, no control characters.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    name: String,
}

pub(crate) fn routes(client: LockClient) -> Router {
    Router::new()
        .route("/locks/{name}", get(state))
        .route("/locks/{name}/acquire", post(acquire))
        .route("/locks/{name}/renew", post(renew))
        .route("/locks/{name}/release", post(release))
        .route("/locks/{name}/validate", post(validate))
        .with_state(client)
        .layer(stead_core::http::ProblemLayer)
}

/// Acquire a lease, optionally waiting in a fair queue.
#[utoipa::path(post, path = "/locks/{name}/acquire", operation_id = "acquireLock", tag = "locks",
    params(LockPath),
    request_body = AcquireBody,
    responses(
        (status = 200, description = "granted", body = AcquireReply),
        (status = 409, description = "held by another (the reply), or asked with another permit count than the holders' (a problem)",
            content((AcquireReply = "application/json"), (Problem = "application/problem+json"))),
        (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json")))]
async fn acquire(
    State(c): State<LockClient>,
    Path(LockPath { name }): Path<LockPath>,
    Body(b): Body<AcquireBody>,
) -> Result<Response> {
    let opts = AcquireOptions::new(b.holder, Duration::from_millis(b.ttl_ms))
        .wait(Duration::from_millis(b.wait_ms))
        .permits(b.permits);
    let reply = c.try_acquire(&name, &opts).await?;
    let status = if reply.acquired {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok((status, Body(reply)).into_response())
}

/// Extend a lease.
#[utoipa::path(post, path = "/locks/{name}/renew", operation_id = "renewLock", tag = "locks",
    params(LockPath),
    request_body = RenewBody,
    responses(
        (status = 200, description = "renewed", body = Lease),
        (status = 409, description = "wrong holder or stale token", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json")))]
async fn renew(
    State(c): State<LockClient>,
    Path(LockPath { name }): Path<LockPath>,
    Body(b): Body<RenewBody>,
) -> Result<Body<Lease>> {
    Ok(Body(
        c.renew(&name, &b.holder, b.token, Duration::from_millis(b.ttl_ms))
            .await?,
    ))
}

/// Give a lease back.
#[utoipa::path(post, path = "/locks/{name}/release", operation_id = "releaseLock", tag = "locks",
    params(LockPath),
    request_body = ReleaseBody,
    responses(
        (status = 200, description = "released", body = Released),
        (status = 409, description = "wrong holder or stale token", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json")))]
async fn release(
    State(c): State<LockClient>,
    Path(LockPath { name }): Path<LockPath>,
    Body(b): Body<ReleaseBody>,
) -> Result<Body<Released>> {
    c.release(&name, &b.holder, b.token).await?;
    Ok(Body(Released { released: true }))
}

/// Holders, queue length and last token.
#[utoipa::path(get, path = "/locks/{name}", operation_id = "getLock", tag = "locks",
    params(LockPath),
    responses(
        (status = 200, description = "the lock's state", body = LockState),
        (status = 400, description = "bad name", body = Problem, content_type = "application/problem+json")))]
async fn state(
    State(c): State<LockClient>,
    Path(LockPath { name }): Path<LockPath>,
) -> Result<Body<LockState>> {
    Ok(Body(c.state(&name).await?))
}

/// Whether a token belongs to a live lease.
#[utoipa::path(post, path = "/locks/{name}/validate", operation_id = "validateLockToken", tag = "locks",
    params(LockPath),
    request_body = ValidateBody,
    responses(
        (status = 200, description = "validity", body = Validity),
        (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json")))]
async fn validate(
    State(c): State<LockClient>,
    Path(LockPath { name }): Path<LockPath>,
    Body(b): Body<ValidateBody>,
) -> Result<Body<Validity>> {
    Ok(Body(c.validate(&name, b.token).await?))
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(acquire, renew, release, state, validate))]
struct Api;

/// The OpenAPI 3.1 description of the lock routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Api::openapi()
}
