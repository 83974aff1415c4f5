//! The HTTP routes under `/counters`.

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use stead_core::http::{Json as Body, Problem, Query};
use stead_core::{Error, Result};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::client::{CounterClient, CounterPage, CounterValue};
use crate::object::Applied;

/// Adds to a counter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct IncrementBody {
    /// The amount (negative to subtract); 1 when absent. Overflow is an error.
    #[serde(default = "one")]
    #[schema(default = 1)]
    by: i64,
    /// Applied once: a repeat within the dedup window (24 h by default) is not counted again.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    idempotency_key: Option<String>,
}

fn one() -> i64 {
    1
}

/// Which counter names to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only names that start with this.
    #[serde(default)]
    prefix: String,
    /// At most this many names (1 to 1000, 100 when absent).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

/// Fixes the shard count of a new counter.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// How many shard objects the counter spreads over.
    #[schema(minimum = 1, maximum = 1024)]
    shards: u32,
}

/// The path parameter of these routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct CounterPath {
    /// The counter's name. 1 to 256 characters, no control characters.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    name: String,
}

/// The routes, under `/counters`.
pub(crate) fn routes(client: CounterClient) -> Router {
    Router::new()
        .route("/counters", get(list))
        .route("/counters/{name}", get(read).put(create))
        .route("/counters/{name}/increment", post(increment))
        .route("/counters/{name}/reset", post(reset))
        .with_state(client)
        .layer(stead_core::http::ProblemLayer)
}

/// Add to a counter, once per idempotency key.
#[utoipa::path(post, path = "/counters/{name}/increment", operation_id = "incrementCounter", tag = "counters",
    params(CounterPath),
    request_body = IncrementBody,
    responses(
        (status = 200, description = "applied, or a duplicate of an earlier increment", body = Applied),
        (status = 400, description = "bad input or overflow", body = Problem, content_type = "application/problem+json")))]
async fn increment(
    State(c): State<CounterClient>,
    Path(CounterPath { name }): Path<CounterPath>,
    Body(body): Body<IncrementBody>,
) -> Result<Body<Applied>> {
    Ok(Body(
        c.increment(&name, body.by, body.idempotency_key.as_deref())
            .await?,
    ))
}

/// The exact value (zero for a counter never used).
#[utoipa::path(get, path = "/counters/{name}", operation_id = "getCounter", tag = "counters",
    params(CounterPath),
    responses(
        (status = 200, description = "the exact value", body = CounterValue),
        (status = 400, description = "bad name", body = Problem, content_type = "application/problem+json")))]
async fn read(
    State(c): State<CounterClient>,
    Path(CounterPath { name }): Path<CounterPath>,
) -> Result<Body<CounterValue>> {
    Ok(Body(c.get(&name).await?))
}

/// Fix the shard count of a new counter.
#[utoipa::path(put, path = "/counters/{name}", operation_id = "createCounter", tag = "counters",
    params(CounterPath),
    request_body = CreateBody,
    responses(
        (status = 200, description = "the counter", body = CounterValue),
        (status = 409, description = "the counter exists with another shard count", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "bad input", body = Problem, content_type = "application/problem+json")))]
async fn create(
    State(c): State<CounterClient>,
    Path(CounterPath { name }): Path<CounterPath>,
    Body(body): Body<CreateBody>,
) -> Result<Body<CounterValue>> {
    let shards = c.create(&name, body.shards).await?;
    Ok(Body(CounterValue {
        value: c.get(&name).await?.value,
        shards,
    }))
}

/// Set to zero and forget idempotency keys.
#[utoipa::path(post, path = "/counters/{name}/reset", operation_id = "resetCounter", tag = "counters",
    params(CounterPath),
    responses(
        (status = 200, description = "the counter, now zero", body = CounterValue),
        (status = 400, description = "bad name", body = Problem, content_type = "application/problem+json")))]
async fn reset(
    State(c): State<CounterClient>,
    Path(CounterPath { name }): Path<CounterPath>,
) -> Result<Body<CounterValue>> {
    Ok(Body(c.reset(&name).await?))
}

/// Counter names by prefix, a page at a time.
#[utoipa::path(get, path = "/counters", operation_id = "listCounters", tag = "counters",
    params(ListQuery),
    responses(
        (status = 200, description = "a page of names", body = CounterPage),
        (status = 400, description = "bad query", body = Problem, content_type = "application/problem+json")))]
async fn list(
    State(c): State<CounterClient>,
    Query(q): Query<ListQuery>,
) -> Result<Body<CounterPage>> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(Error::bad_request("limit must be between 1 and 1000"));
    }
    Ok(Body(c.list(&q.prefix, q.cursor.as_deref(), limit).await?))
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(increment, read, create, reset, list))]
struct Api;

/// The OpenAPI 3.1 description of the counter routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Api::openapi()
}
