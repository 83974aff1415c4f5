//! The HTTP routes of leader election (mounted under `/leaders` by the umbrella crate),
//! and the mapping of [`LeaderError`] to problems.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use stead_core::http::{Json as Body, Name, Problem, Query, problems, schema};
use stead_core::{Result, Runtime};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::client::{LeaderClient, LeaderConfig};
use crate::error::LeaderError;
use crate::object::{CampaignResult, Leadership, MAX_TTL_MS, MAX_WATCH_MS};

/// The leader-election pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct LeaderPattern;

impl stead_core::http::Pattern for LeaderPattern {
    const PREFIX: &'static str = "/leaders";
    const SETTINGS_KEY: &'static str = "leaders";
    type Settings = LeaderConfig;

    fn configure(rt: &Runtime, settings: LeaderConfig) -> Result<()> {
        LeaderClient::with_config(rt, settings).map(drop)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        Ok(Router::new()
            .route("/{name}", get(get_leader))
            .route("/{name}/campaign", post(campaign))
            .route("/{name}/heartbeat", post(heartbeat))
            .route("/{name}/resign", post(resign))
            .route("/{name}/watch", get(watch))
            .with_state(LeaderClient::new(rt)?)
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }
}

impl From<&LeaderError> for Problem {
    fn from(err: &LeaderError) -> Self {
        let detail = err.to_string();
        match err {
            LeaderError::NotLeader {
                leader,
                current_term,
                ..
            } => Problem::new(StatusCode::CONFLICT, "not-leader", detail)
                .with("leader", leader.clone())
                .with("term", *current_term),
            LeaderError::Invalid(e) => Problem::from(e),
            LeaderError::Runtime(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for LeaderError {
    fn into_response(self) -> Response {
        match self {
            LeaderError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

/// Stands for election.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CampaignBody {
    /// Who stands (a node id).
    #[schema(schema_with = schema::name)]
    candidate: String,
    /// How long the leadership lasts unless renewed, in ms (at most an hour).
    #[schema(schema_with = schema::integer::<1, MAX_TTL_MS>)]
    ttl_ms: u64,
}

/// Names the leader and the term it acts in.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TermBody {
    /// The leader.
    #[schema(schema_with = schema::name)]
    candidate: String,
    /// The term it was elected for.
    #[schema(schema_with = schema::integer::<0, { u64::MAX }>)]
    term: u64,
}

/// How long to watch, and for what.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WatchQuery {
    /// Answer once the term is past this one.
    #[serde(default)]
    #[param(schema_with = schema::integer::<0, { u64::MAX }>)]
    after_term: u64,
    /// Answer with the current state after this long at most, in ms (default 30000).
    #[serde(default = "thirty_seconds")]
    #[param(schema_with = schema::integer::<0, MAX_WATCH_MS>)]
    timeout_ms: u64,
}

fn thirty_seconds() -> u64 {
    30_000
}

/// Stand for election (renews the lease when already leading).
#[utoipa::path(post, path = "/{name}/campaign", operation_id = "campaign", tag = "leaders",
    params(Name),
    request_body = CampaignBody,
    responses(
        (status = 200, description = "the outcome (`elected` says whether it won)", body = CampaignResult),
        problems::BadRequest))]
async fn campaign(
    State(c): State<LeaderClient>,
    Name(group): Name,
    Body(b): Body<CampaignBody>,
) -> Result<Body<CampaignResult>, LeaderError> {
    Ok(Body(
        c.campaign(&group, &b.candidate, Duration::from_millis(b.ttl_ms))
            .await?,
    ))
}

/// Renew the leader's lease.
#[utoipa::path(post, path = "/{name}/heartbeat", operation_id = "heartbeat", tag = "leaders",
    params(Name),
    request_body = TermBody,
    responses(
        (status = 200, description = "the leadership", body = Leadership),
        (status = 409, description = "`not-leader`: not the leader of that term (with the `leader` and `term` now)", body = Problem, content_type = "application/problem+json"),
        problems::BadRequest))]
async fn heartbeat(
    State(c): State<LeaderClient>,
    Name(group): Name,
    Body(b): Body<TermBody>,
) -> Result<Body<Leadership>, LeaderError> {
    Ok(Body(c.heartbeat(&group, &b.candidate, b.term).await?))
}

/// Step down.
#[utoipa::path(post, path = "/{name}/resign", operation_id = "resign", tag = "leaders",
    params(Name),
    request_body = TermBody,
    responses(
        (status = 200, description = "the leadership", body = Leadership),
        (status = 409, description = "`not-leader`: not the leader of that term (with the `leader` and `term` now)", body = Problem, content_type = "application/problem+json"),
        problems::BadRequest))]
async fn resign(
    State(c): State<LeaderClient>,
    Name(group): Name,
    Body(b): Body<TermBody>,
) -> Result<Body<Leadership>, LeaderError> {
    Ok(Body(c.resign(&group, &b.candidate, b.term).await?))
}

/// The leader, its term and the number of transitions.
#[utoipa::path(get, path = "/{name}", operation_id = "getLeader", tag = "leaders",
    params(Name),
    responses(
        (status = 200, description = "the leadership", body = Leadership),
        problems::BadRequest))]
async fn get_leader(
    State(c): State<LeaderClient>,
    Name(group): Name,
) -> Result<Body<Leadership>, LeaderError> {
    Ok(Body(c.get(&group).await?))
}

/// Long-poll until the term passes `after_term` (or the timeout runs out).
#[utoipa::path(get, path = "/{name}/watch", operation_id = "watchLeader", tag = "leaders",
    params(Name, WatchQuery),
    responses(
        (status = 200, description = "the leadership", body = Leadership),
        problems::BadRequest))]
async fn watch(
    State(c): State<LeaderClient>,
    Name(group): Name,
    Query(q): Query<WatchQuery>,
) -> Result<Body<Leadership>, LeaderError> {
    Ok(Body(
        c.watch(&group, q.after_term, Duration::from_millis(q.timeout_ms))
            .await?,
    ))
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(campaign, heartbeat, resign, get_leader, watch))]
struct Api;
