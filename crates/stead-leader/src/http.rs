//! The HTTP routes under `/leaders`.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use stead_core::http::Json as Body;
use stead_core::{Error, Result};

use crate::client::LeaderClient;
use crate::object::{CampaignResult, Leadership};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignBody {
    candidate: String,
    ttl_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TermBody {
    candidate: String,
    term: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    #[serde(default)]
    after_term: u64,
    #[serde(default = "thirty_seconds")]
    timeout_ms: u64,
}

fn thirty_seconds() -> u64 {
    30_000
}

pub(crate) fn routes(client: LeaderClient) -> Router {
    Router::new()
        .route("/leaders/{group}", get(get_leader))
        .route("/leaders/{group}/campaign", post(campaign))
        .route("/leaders/{group}/heartbeat", post(heartbeat))
        .route("/leaders/{group}/resign", post(resign))
        .route("/leaders/{group}/watch", get(watch))
        .with_state(client)
        .layer(axum::middleware::from_fn(
            stead_core::http::problem_for_bare_errors,
        ))
}

async fn campaign(
    State(c): State<LeaderClient>,
    Path(group): Path<String>,
    Body(b): Body<CampaignBody>,
) -> Result<Body<CampaignResult>> {
    Ok(Body(
        c.campaign(&group, &b.candidate, Duration::from_millis(b.ttl_ms))
            .await?,
    ))
}

async fn heartbeat(
    State(c): State<LeaderClient>,
    Path(group): Path<String>,
    Body(b): Body<TermBody>,
) -> Result<Body<Leadership>> {
    Ok(Body(c.heartbeat(&group, &b.candidate, b.term).await?))
}

async fn resign(
    State(c): State<LeaderClient>,
    Path(group): Path<String>,
    Body(b): Body<TermBody>,
) -> Result<Body<Leadership>> {
    Ok(Body(c.resign(&group, &b.candidate, b.term).await?))
}

async fn get_leader(
    State(c): State<LeaderClient>,
    Path(group): Path<String>,
) -> Result<Body<Leadership>> {
    Ok(Body(c.get(&group).await?))
}

async fn watch(
    State(c): State<LeaderClient>,
    Path(group): Path<String>,
    query: std::result::Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Body<Leadership>> {
    let Query(q) = query.map_err(|e| Error::bad_request(e.body_text()))?;
    Ok(Body(
        c.watch(&group, q.after_term, Duration::from_millis(q.timeout_ms))
            .await?,
    ))
}

/// The OpenAPI 3.1 `paths` of these routes.
pub fn openapi_paths() -> Json {
    let problem = |d: &str| json!({ "description": d, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
    let group = json!({ "name": "group", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": 256 } });
    let leadership = json!({ "description": "the leadership", "content": { "application/json": { "schema": {
        "type": "object", "required": ["term", "transitions"], "properties": {
            "leader": { "type": ["string", "null"] }, "term": { "type": "integer" },
            "expires_at": { "type": ["string", "null"], "format": "date-time" }, "transitions": { "type": "integer" } } } } } });
    let term_body = json!({ "required": true, "content": { "application/json": { "schema": {
        "type": "object", "required": ["candidate", "term"], "additionalProperties": false,
        "properties": { "candidate": { "type": "string" }, "term": { "type": "integer" } } } } } });
    json!({
        "/leaders/{group}": { "get": {
            "operationId": "getLeader", "summary": "The leader, term and transitions",
            "parameters": [group.clone()], "responses": { "200": leadership.clone(), "400": problem("bad name") } } },
        "/leaders/{group}/campaign": { "post": {
            "operationId": "campaign", "summary": "Stand for election (renews when already leading)",
            "parameters": [group.clone()],
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object", "required": ["candidate", "ttl_ms"], "additionalProperties": false,
                "properties": { "candidate": { "type": "string" }, "ttl_ms": { "type": "integer", "minimum": 1 } } } } } },
            "responses": { "200": { "description": "the outcome", "content": { "application/json": { "schema": {
                "type": "object", "required": ["elected", "term"], "properties": {
                    "elected": { "type": "boolean" }, "leader": { "type": ["string", "null"] }, "term": { "type": "integer" },
                    "expires_at": { "type": ["string", "null"], "format": "date-time" } } } } } },
                "400": problem("bad input") } } },
        "/leaders/{group}/heartbeat": { "post": {
            "operationId": "heartbeat", "summary": "Renew the leader's lease",
            "parameters": [group.clone()], "requestBody": term_body.clone(),
            "responses": { "200": leadership.clone(), "409": problem("not the leader of that term"), "400": problem("bad input") } } },
        "/leaders/{group}/resign": { "post": {
            "operationId": "resign", "summary": "Step down",
            "parameters": [group.clone()], "requestBody": term_body,
            "responses": { "200": leadership.clone(), "409": problem("not the leader of that term"), "400": problem("bad input") } } },
        "/leaders/{group}/watch": { "get": {
            "operationId": "watchLeader", "summary": "Long-poll until the term passes after_term",
            "parameters": [group,
                { "name": "after_term", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
                { "name": "timeout_ms", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": 300000 } }],
            "responses": { "200": leadership, "400": problem("bad query") } } }
    })
}
