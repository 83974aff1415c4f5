//! The HTTP routes under `/locks`.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use stead_core::Result;
use stead_core::http::Json as Body;

use crate::client::{AcquireOptions, LockClient};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    holder: String,
    ttl_ms: u64,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default = "one")]
    permits: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    holder: String,
    token: u64,
    ttl_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    holder: String,
    token: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateBody {
    token: u64,
}

pub(crate) fn routes(client: LockClient) -> Router {
    Router::new()
        .route("/locks/{name}", get(state))
        .route("/locks/{name}/acquire", post(acquire))
        .route("/locks/{name}/renew", post(renew))
        .route("/locks/{name}/release", post(release))
        .route("/locks/{name}/validate", post(validate))
        .with_state(client)
        .layer(axum::middleware::from_fn(
            stead_core::http::problem_for_bare_errors,
        ))
}

async fn acquire(
    State(c): State<LockClient>,
    Path(name): Path<String>,
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

async fn renew(
    State(c): State<LockClient>,
    Path(name): Path<String>,
    Body(b): Body<RenewBody>,
) -> Result<Body<crate::object::Lease>> {
    Ok(Body(
        c.renew(&name, &b.holder, b.token, Duration::from_millis(b.ttl_ms))
            .await?,
    ))
}

async fn release(
    State(c): State<LockClient>,
    Path(name): Path<String>,
    Body(b): Body<ReleaseBody>,
) -> Result<Body<Json>> {
    c.release(&name, &b.holder, b.token).await?;
    Ok(Body(json!({ "released": true })))
}

async fn state(
    State(c): State<LockClient>,
    Path(name): Path<String>,
) -> Result<Body<crate::object::LockState>> {
    Ok(Body(c.state(&name).await?))
}

async fn validate(
    State(c): State<LockClient>,
    Path(name): Path<String>,
    Body(b): Body<ValidateBody>,
) -> Result<Body<crate::object::Validity>> {
    Ok(Body(c.validate(&name, b.token).await?))
}

/// The OpenAPI 3.1 `paths` of these routes.
pub fn openapi_paths() -> Json {
    let problem = |d: &str| json!({ "description": d, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
    let name = json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": 256 } });
    let lease = json!({ "type": "object", "required": ["holder", "token", "expires_at"], "properties": {
        "holder": { "type": "string" }, "token": { "type": "integer" }, "expires_at": { "type": "string", "format": "date-time" } } });
    let body = |required: &[&str], props: Json| {
        json!({ "required": true, "content": { "application/json": { "schema": {
        "type": "object", "required": required, "additionalProperties": false, "properties": props } } } })
    };
    let acquire_reply = json!({ "type": "object", "required": ["acquired"], "properties": {
        "acquired": { "type": "boolean" }, "token": { "type": "integer" }, "expires_at": { "type": "string", "format": "date-time" },
        "holder": { "type": "string" }, "retry_after_ms": { "type": "integer" } } });
    json!({
        "/locks/{name}": { "get": {
            "operationId": "getLock", "summary": "Holders, queue length and last token",
            "parameters": [name.clone()],
            "responses": { "200": { "description": "the lock's state", "content": { "application/json": { "schema": {
                "type": "object", "properties": { "permits": { "type": "integer" }, "holders": { "type": "array", "items": lease.clone() },
                "waiters": { "type": "integer" }, "last_token": { "type": "integer" } } } } } }, "400": problem("bad name") }
        }},
        "/locks/{name}/acquire": { "post": {
            "operationId": "acquireLock", "summary": "Acquire a lease (optionally waiting in a fair queue)",
            "parameters": [name.clone()],
            "requestBody": body(&["holder", "ttl_ms"], json!({ "holder": { "type": "string" }, "ttl_ms": { "type": "integer", "minimum": 1 },
                "wait_ms": { "type": "integer", "minimum": 0 }, "permits": { "type": "integer", "minimum": 1 } })),
            "responses": {
                "200": { "description": "granted", "content": { "application/json": { "schema": acquire_reply.clone() } } },
                "409": { "description": "held by another", "content": { "application/json": { "schema": acquire_reply } } },
                "400": problem("bad input")
            }
        }},
        "/locks/{name}/renew": { "post": {
            "operationId": "renewLock", "summary": "Extend a lease",
            "parameters": [name.clone()],
            "requestBody": body(&["holder", "token", "ttl_ms"], json!({ "holder": { "type": "string" }, "token": { "type": "integer" }, "ttl_ms": { "type": "integer" } })),
            "responses": { "200": { "description": "renewed", "content": { "application/json": { "schema": lease } } },
                "409": problem("wrong holder or stale token"), "400": problem("bad input") }
        }},
        "/locks/{name}/release": { "post": {
            "operationId": "releaseLock", "summary": "Give a lease back",
            "parameters": [name.clone()],
            "requestBody": body(&["holder", "token"], json!({ "holder": { "type": "string" }, "token": { "type": "integer" } })),
            "responses": { "200": { "description": "released", "content": { "application/json": { "schema": {
                "type": "object", "properties": { "released": { "type": "boolean" } } } } } },
                "409": problem("wrong holder or stale token"), "400": problem("bad input") }
        }},
        "/locks/{name}/validate": { "post": {
            "operationId": "validateLockToken", "summary": "Whether a token belongs to a live lease",
            "parameters": [name],
            "requestBody": body(&["token"], json!({ "token": { "type": "integer" } })),
            "responses": { "200": { "description": "validity", "content": { "application/json": { "schema": {
                "type": "object", "properties": { "valid": { "type": "boolean" }, "last_token": { "type": "integer" } } } } } },
                "400": problem("bad input") }
        }}
    })
}
