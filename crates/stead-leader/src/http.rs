//! The HTTP routes under `/leaders`.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use serde::Deserialize;
use stead_core::Result;
use stead_core::http::{Json as Body, Problem, Query};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::client::LeaderClient;
use crate::object::{CampaignResult, Leadership};

/// Stands for election.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CampaignBody {
    /// Who stands (a node id).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    candidate: String,
    /// How long the leadership lasts unless renewed, in ms (at most an hour).
    #[schema(minimum = 1, maximum = 3_600_000)]
    ttl_ms: u64,
}

/// Names the leader and the term it acts in.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TermBody {
    /// The leader.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    candidate: String,
    /// The term it was elected for.
    term: u64,
}

/// How long to watch, and for what.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WatchQuery {
    /// Answer once the term is past this one.
    #[serde(default)]
    after_term: u64,
    /// Answer with the current state after this long at most, in ms.
    #[serde(default = "thirty_seconds")]
    #[param(maximum = 300_000, default = 30_000)]
    timeout_ms: u64,
}

fn thirty_seconds() -> u64 {
    30_000
}

/// The path parameter of these routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct GroupPath {
    /// The group's name. 1 to 256 characters, no control characters.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    group: String,
}

pub(crate) fn routes(client: LeaderClient) -> Router {
    Router::new()
        .route("/leaders/{group}", get(get_leader))
        .route("/leaders/{group}/campaign", post(campaign))
        .route("/leaders/{group}/heartbeat", post(heartbeat))
        .route("/leaders/{group}/resign", post(resign))
        .route("/leaders/{group}/watch", get(watch))
        .with_state(client)
        .layer(stead_core::http::ProblemLayer)
}

/// Stand for election (renews the lease when already leading).
#[utoipa::path(post, path = "/leaders/{group}/campaign", operation_id = "campaign", tag = "leaders",
    params(GroupPath),
    request_body = CampaignBody,
    responses(
        (status = 200, description = "the outcome", body = CampaignResult),
        (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json")))]
async fn campaign(
    State(c): State<LeaderClient>,
    Path(GroupPath { group }): Path<GroupPath>,
    Body(b): Body<CampaignBody>,
) -> Result<Body<CampaignResult>> {
    Ok(Body(
        c.campaign(&group, &b.candidate, Duration::from_millis(b.ttl_ms))
            .await?,
    ))
}

/// Renew the leader's lease.
#[utoipa::path(post, path = "/leaders/{group}/heartbeat", operation_id = "heartbeat", tag = "leaders",
    params(GroupPath),
    request_body = TermBody,
    responses(
        (status = 200, description = "the leadership", body = Leadership),
        (status = 409, description = "not the leader of that term", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json")))]
async fn heartbeat(
    State(c): State<LeaderClient>,
    Path(GroupPath { group }): Path<GroupPath>,
    Body(b): Body<TermBody>,
) -> Result<Body<Leadership>> {
    Ok(Body(c.heartbeat(&group, &b.candidate, b.term).await?))
}

/// Step down.
#[utoipa::path(post, path = "/leaders/{group}/resign", operation_id = "resign", tag = "leaders",
    params(GroupPath),
    request_body = TermBody,
    responses(
        (status = 200, description = "the leadership", body = Leadership),
        (status = 409, description = "not the leader of that term", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json")))]
async fn resign(
    State(c): State<LeaderClient>,
    Path(GroupPath { group }): Path<GroupPath>,
    Body(b): Body<TermBody>,
) -> Result<Body<Leadership>> {
    Ok(Body(c.resign(&group, &b.candidate, b.term).await?))
}

/// The leader, its term and the number of transitions.
#[utoipa::path(get, path = "/leaders/{group}", operation_id = "getLeader", tag = "leaders",
    params(GroupPath),
    responses(
        (status = 200, description = "the leadership", body = Leadership),
        (status = 400, description = "bad name", body = Problem, content_type = "application/problem+json")))]
async fn get_leader(
    State(c): State<LeaderClient>,
    Path(GroupPath { group }): Path<GroupPath>,
) -> Result<Body<Leadership>> {
    Ok(Body(c.get(&group).await?))
}

/// Long-poll until the term passes `after_term` (or the timeout runs out).
#[utoipa::path(get, path = "/leaders/{group}/watch", operation_id = "watchLeader", tag = "leaders",
    params(GroupPath, WatchQuery),
    responses(
        (status = 200, description = "the leadership", body = Leadership),
        (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json")))]
async fn watch(
    State(c): State<LeaderClient>,
    Path(GroupPath { group }): Path<GroupPath>,
    Query(q): Query<WatchQuery>,
) -> Result<Body<Leadership>> {
    Ok(Body(
        c.watch(&group, q.after_term, Duration::from_millis(q.timeout_ms))
            .await?,
    ))
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(campaign, heartbeat, resign, get_leader, watch))]
struct Api;

/// The OpenAPI 3.1 description of the leader routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Api::openapi()
}
