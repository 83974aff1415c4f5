//! The HTTP routes of the controllers (mounted under `/controllers` by the umbrella crate),
//! and the mapping of [`ControllerError`] to problems.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use stead_core::http::{
    Json as Body, LogParams, Name, OptionalJson, Problem, Query, problems, schema,
};
use stead_core::{LogPage, Result, Runtime, duration_ms};
use utoipa::{OpenApi, ToSchema};

use crate::client::{ControllerClient, ControllerConfig};
use crate::error::ControllerError;
use crate::object::{ControllerState, DecisionEntry, Granted, Reported};
use crate::policy::Sample;
use crate::spec::ControllerSpec;

/// The controller pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct ControllerPattern;

impl stead_core::http::Pattern for ControllerPattern {
    const PREFIX: &'static str = "/controllers";
    const SETTINGS_KEY: &'static str = "controllers";
    type Settings = ControllerConfig;

    fn configure(rt: &Runtime, settings: ControllerConfig) -> Result<()> {
        ControllerClient::with_config(rt, settings).map(drop)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        Ok(Router::new()
            .route("/{name}", get(state).put(configure).delete(remove))
            .route("/{name}/start", post(start))
            .route("/{name}/pause", post(pause))
            .route("/{name}/reset", post(reset))
            .route("/{name}/lease", post(lease))
            .route("/{name}/report", post(report))
            .route("/{name}/decisions", get(decisions))
            .with_state(ControllerClient::new(rt)?)
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }
}

impl From<&ControllerError> for Problem {
    fn from(err: &ControllerError) -> Self {
        let detail = err.to_string();
        let later = |status, slug, retry_after: &Duration| {
            Problem::new(status, slug, detail.clone())
                .with("retry_after_ms", duration_ms(*retry_after))
                .retry_after(*retry_after)
        };
        match err {
            ControllerError::NotFound => {
                Problem::new(StatusCode::NOT_FOUND, "controller-not-found", detail)
            }
            ControllerError::Paused => Problem::new(StatusCode::CONFLICT, "paused", detail),
            ControllerError::CircuitOpen { retry_after } => {
                later(StatusCode::CONFLICT, "circuit-open", retry_after)
            }
            ControllerError::Busy { retry_after } => later(
                StatusCode::TOO_MANY_REQUESTS,
                "leases-exhausted",
                retry_after,
            ),
            ControllerError::NotDue { retry_after } => {
                later(StatusCode::TOO_MANY_REQUESTS, "not-due", retry_after)
            }
            ControllerError::UnknownLease { lease_id } => {
                Problem::new(StatusCode::CONFLICT, "unknown-lease", detail)
                    .with("lease_id", lease_id.clone())
            }
            ControllerError::Invalid(e) => Problem::from(e),
            ControllerError::Runtime(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for ControllerError {
    fn into_response(self) -> Response {
        match self {
            ControllerError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

/// Set a controller's configuration (every field optional; the defaults are the seed's),
/// creating it, running, if it is new.
#[utoipa::path(put, path = "/{name}", operation_id = "configureController", tag = "controllers",
    params(Name),
    request_body = ControllerSpec,
    responses(
        (status = 200, description = "changed", body = ControllerState),
        (status = 201, description = "created", body = ControllerState),
        problems::BadRequest))]
async fn configure(
    State(c): State<ControllerClient>,
    Name(name): Name,
    Body(spec): Body<ControllerSpec>,
) -> Result<Response, ControllerError> {
    let (state, created) = c.configure(&name, spec).await?;
    let status = stead_core::http::created_or_ok(created);
    Ok((status, Body(state)).into_response())
}

/// A controller's status, batch size, interval, leases out, window statistics, breaker,
/// totals and configuration.
#[utoipa::path(get, path = "/{name}", operation_id = "getController", tag = "controllers",
    params(Name),
    responses(
        (status = 200, description = "the controller's state", body = ControllerState),
        problems::NotFound, problems::BadRequest))]
async fn state(
    State(c): State<ControllerClient>,
    Name(name): Name,
) -> Result<Body<ControllerState>, ControllerError> {
    Ok(Body(c.state(&name).await?))
}

/// Delete a controller and everything it keeps.
#[utoipa::path(delete, path = "/{name}", operation_id = "deleteController", tag = "controllers",
    params(Name),
    responses(
        (status = 204, description = "deleted"),
        problems::NotFound, problems::BadRequest))]
async fn remove(
    State(c): State<ControllerClient>,
    Name(name): Name,
) -> Result<StatusCode, ControllerError> {
    if c.remove(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ControllerError::NotFound)
    }
}

/// Start a paused controller: the next batch is due at once.
#[utoipa::path(post, path = "/{name}/start", operation_id = "startController", tag = "controllers",
    params(Name),
    responses(
        (status = 200, description = "running", body = ControllerState),
        problems::NotFound, problems::BadRequest))]
async fn start(
    State(c): State<ControllerClient>,
    Name(name): Name,
) -> Result<Body<ControllerState>, ControllerError> {
    Ok(Body(c.start(&name).await?))
}

/// Pause a controller: nothing is leased until it is started (leases out may still report).
#[utoipa::path(post, path = "/{name}/pause", operation_id = "pauseController", tag = "controllers",
    params(Name),
    responses(
        (status = 200, description = "paused", body = ControllerState),
        problems::NotFound, problems::BadRequest))]
async fn pause(
    State(c): State<ControllerClient>,
    Name(name): Name,
) -> Result<Body<ControllerState>, ControllerError> {
    Ok(Body(c.pause(&name).await?))
}

/// Return to the initial batch and interval, close the circuit and clear the window
/// (totals and the decision log stay).
#[utoipa::path(post, path = "/{name}/reset", operation_id = "resetController", tag = "controllers",
    params(Name),
    responses(
        (status = 200, description = "reset", body = ControllerState),
        problems::NotFound, problems::BadRequest))]
async fn reset(
    State(c): State<ControllerClient>,
    Name(name): Name,
) -> Result<Body<ControllerState>, ControllerError> {
    Ok(Body(c.reset(&name).await?))
}

/// Who asks for a lease (the body is optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    /// A name for the worker, shown among the leases out.
    #[schema(schema_with = schema::optional_name)]
    worker: Option<String>,
}

/// Lease the next batch: do `batch_size` items and report before `deadline`, or the batch
/// counts as failed.
#[utoipa::path(post, path = "/{name}/lease", operation_id = "leaseControllerBatch", tag = "controllers",
    params(Name),
    request_body(content = Option<LeaseBody>, description = "optional"),
    responses(
        (status = 200, description = "a batch to do", body = Granted),
        (status = 409, description = "`paused`, or `circuit-open` (with `retry_after_ms` and Retry-After)",
            body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`not-due` (the interval has not passed) or `leases-exhausted` (every lease the concurrency allows is out), with `retry_after_ms` and Retry-After",
            body = Problem, content_type = "application/problem+json"),
        problems::NotFound, problems::BadRequest))]
async fn lease(
    State(c): State<ControllerClient>,
    Name(name): Name,
    OptionalJson(body): OptionalJson<LeaseBody>,
) -> Result<Body<Granted>, ControllerError> {
    Ok(Body(c.lease(&name, body.worker.as_deref()).await?))
}

/// A leased batch's outcomes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    /// The lease.
    lease_id: String,
    /// One outcome per item done: at most the batch size; none if there was nothing to do.
    results: Vec<Sample>,
}

/// Report a leased batch's outcomes; the controller decides on them.
#[utoipa::path(post, path = "/{name}/report", operation_id = "reportControllerBatch", tag = "controllers",
    params(Name),
    request_body = ReportBody,
    responses(
        (status = 200, description = "the setting after the decision", body = Reported),
        (status = 409, description = "`unknown-lease`: unknown, already reported or expired (an expired lease was counted as a failed batch); nothing changed",
            body = Problem, content_type = "application/problem+json"),
        problems::NotFound, problems::BadRequest))]
async fn report(
    State(c): State<ControllerClient>,
    Name(name): Name,
    Body(b): Body<ReportBody>,
) -> Result<Body<Reported>, ControllerError> {
    Ok(Body(c.report(&name, &b.lease_id, b.results).await?))
}

/// The decision log (newest first unless asked otherwise): every change of batch size,
/// interval or status, with its cause, the policy's reason and the numbers it was based on.
#[utoipa::path(get, path = "/{name}/decisions", operation_id = "listControllerDecisions", tag = "controllers",
    params(Name, LogParams),
    responses(
        (status = 200, description = "a page of the log", body = LogPage<DecisionEntry>),
        problems::NotFound, problems::BadRequest))]
async fn decisions(
    State(c): State<ControllerClient>,
    Name(name): Name,
    Query(q): Query<LogParams>,
) -> Result<Body<LogPage<DecisionEntry>>, ControllerError> {
    Ok(Body(c.decisions(&name, q.query()).await?))
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(
    configure, state, remove, start, pause, reset, lease, report, decisions
))]
struct Api;
