//! The HTTP routes under `/counters`.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use stead_core::http::Json as Body;
use stead_core::{Error, Result};

use crate::client::{CounterClient, CounterPage, CounterValue};
use crate::object::Applied;

/// The body of `POST /counters/{name}/increment`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrementBody {
    /// The amount; 1 when absent.
    #[serde(default = "one")]
    by: i64,
    idempotency_key: Option<String>,
}

fn one() -> i64 {
    1
}

/// The query of `GET /counters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// The body of `POST /counters/{name}` (create with a shard count).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    shards: u32,
}

/// The routes, under `/counters`.
pub(crate) fn routes(client: CounterClient) -> Router {
    Router::new()
        .route("/counters", get(list))
        .route("/counters/{name}", get(read).put(create))
        .route("/counters/{name}/increment", post(increment))
        .route("/counters/{name}/reset", post(reset))
        .with_state(client)
        .layer(axum::middleware::from_fn(
            stead_core::http::problem_for_bare_errors,
        ))
}

async fn increment(
    State(c): State<CounterClient>,
    Path(name): Path<String>,
    Body(body): Body<IncrementBody>,
) -> Result<Body<Applied>> {
    Ok(Body(
        c.increment(&name, body.by, body.idempotency_key.as_deref())
            .await?,
    ))
}

async fn read(
    State(c): State<CounterClient>,
    Path(name): Path<String>,
) -> Result<Body<CounterValue>> {
    Ok(Body(c.get(&name).await?))
}

async fn create(
    State(c): State<CounterClient>,
    Path(name): Path<String>,
    Body(body): Body<CreateBody>,
) -> Result<Body<CounterValue>> {
    let shards = c.create(&name, body.shards).await?;
    Ok(Body(CounterValue {
        value: c.get(&name).await?.value,
        shards,
    }))
}

async fn reset(
    State(c): State<CounterClient>,
    Path(name): Path<String>,
) -> Result<Body<CounterValue>> {
    Ok(Body(c.reset(&name).await?))
}

async fn list(
    State(c): State<CounterClient>,
    query: std::result::Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Body<CounterPage>> {
    let Query(q) = query.map_err(|e| Error::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(Error::bad_request("limit must be between 1 and 1000"));
    }
    Ok(Body(c.list(&q.prefix, q.cursor.as_deref(), limit)?))
}

/// The OpenAPI 3.1 `paths` of these routes.
pub fn openapi_paths() -> Json {
    let problem = |d: &str| json!({ "description": d, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
    let name = json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": 256 } });
    let value = json!({ "description": "the exact value", "content": { "application/json": { "schema": {
        "type": "object", "required": ["value", "shards"],
        "properties": { "value": { "type": "integer", "format": "int64" }, "shards": { "type": "integer" } } } } } });
    json!({
        "/counters": { "get": {
            "operationId": "listCounters", "summary": "Counter names by prefix",
            "parameters": [
                { "name": "prefix", "in": "query", "schema": { "type": "string" } },
                { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } },
                { "name": "cursor", "in": "query", "schema": { "type": "string" } }
            ],
            "responses": {
                "200": { "description": "a page of names", "content": { "application/json": { "schema": {
                    "type": "object", "required": ["counters"],
                    "properties": { "counters": { "type": "array", "items": { "type": "string" } },
                                    "next_cursor": { "type": ["string", "null"] } } } } } },
                "400": problem("bad query")
            }
        }},
        "/counters/{name}": {
            "get": {
                "operationId": "getCounter", "summary": "The exact value (zero for a counter never used)",
                "parameters": [name.clone()],
                "responses": { "200": value.clone(), "400": problem("bad name") }
            },
            "put": {
                "operationId": "createCounter", "summary": "Fix the shard count of a new counter",
                "parameters": [name.clone()],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["shards"], "additionalProperties": false,
                    "properties": { "shards": { "type": "integer", "minimum": 1, "maximum": 1024 } } } } } },
                "responses": { "200": value.clone(), "400": problem("bad input"), "409": problem("the counter exists with another shard count") }
            }
        },
        "/counters/{name}/increment": { "post": {
            "operationId": "incrementCounter", "summary": "Add to a counter, once per idempotency key",
            "parameters": [name.clone()],
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object", "additionalProperties": false,
                "properties": { "by": { "type": "integer", "format": "int64", "default": 1 },
                                "idempotency_key": { "type": "string", "minLength": 1, "maxLength": 256 } } } } } },
            "responses": {
                "200": { "description": "applied, or a duplicate", "content": { "application/json": { "schema": {
                    "type": "object", "required": ["applied"], "properties": { "applied": { "type": "boolean" } } } } } },
                "400": problem("bad input or overflow"),
                "503": problem("overloaded; retry later")
            }
        }},
        "/counters/{name}/reset": { "post": {
            "operationId": "resetCounter", "summary": "Set to zero and forget idempotency keys",
            "parameters": [name],
            "responses": { "200": value, "400": problem("bad name") }
        }}
    })
}
