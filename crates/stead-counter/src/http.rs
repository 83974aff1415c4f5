//! The HTTP routes of the counters (mounted under `/counters` by the umbrella crate), and
//! the mapping of [`CounterError`] to problems.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use stead_core::http::{Json as Body, Name, Problem, Query, problems, schema};
use stead_core::{Result, Runtime};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::client::{CounterClient, CounterPage, CounterValue, MAX_PAGE};
use crate::error::CounterError;
use crate::object::{Applied, CounterConfig, MAX_SHARDS};

/// The counter pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct CounterPattern;

impl stead_core::http::Pattern for CounterPattern {
    const PREFIX: &'static str = "/counters";
    const SETTINGS_KEY: &'static str = "counters";
    type Settings = CounterConfig;

    fn configure(rt: &Runtime, settings: CounterConfig) -> Result<()> {
        CounterClient::with_config(rt, settings).map(drop)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        Ok(Router::new()
            .route("/", get(list))
            .route("/{name}", get(read).put(create))
            .route("/{name}/increment", post(increment))
            .route("/{name}/reset", post(reset))
            .with_state(CounterClient::new(rt)?)
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }
}

impl From<&CounterError> for Problem {
    fn from(err: &CounterError) -> Self {
        let detail = err.to_string();
        match err {
            CounterError::ShardsFixed { shards, .. } => {
                Problem::new(StatusCode::CONFLICT, "shards-fixed", detail).with("shards", *shards)
            }
            CounterError::Overflow { min, max, .. } => {
                Problem::new(StatusCode::CONFLICT, "overflow", detail)
                    .with("shard_min", *min)
                    .with("shard_max", *max)
            }
            CounterError::Remembering(r) => Problem::from(r),
            CounterError::Invalid(e) => Problem::from(e),
            CounterError::Runtime(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for CounterError {
    fn into_response(self) -> Response {
        match self {
            CounterError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

/// Adds to a counter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct IncrementBody {
    /// The amount (negative to subtract); 1 when absent. Overflow is a 409 problem.
    #[serde(default = "one")]
    #[schema(schema_with = schema::signed::<{ i64::MIN }, { i64::MAX }>, default = 1)]
    by: i64,
    /// Applied once: a repeat within the dedup window (24 h by default) is not counted again.
    #[schema(schema_with = schema::optional_name)]
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
    #[param(schema_with = schema::integer::<1, { MAX_PAGE as u64 }>)]
    limit: Option<usize>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

/// Fixes the shard count of a new counter.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateCounter)]
struct CreateBody {
    /// How many shard objects the counter spreads over.
    #[schema(schema_with = schema::integer::<1, { MAX_SHARDS as u64 }>)]
    shards: u32,
}

/// Add to a counter, once per idempotency key.
#[utoipa::path(post, path = "/{name}/increment", operation_id = "incrementCounter", tag = "counters",
    params(Name),
    request_body = IncrementBody,
    responses(
        (status = 200, description = "applied, or a duplicate of an earlier increment", body = Applied),
        (status = 409, description = "`overflow`: the sum would leave the signed 64-bit range", body = Problem, content_type = "application/problem+json"),
        problems::BadRequest))]
async fn increment(
    State(c): State<CounterClient>,
    Name(name): Name,
    Body(body): Body<IncrementBody>,
) -> Result<Body<Applied>, CounterError> {
    Ok(Body(
        c.increment(&name, body.by, body.idempotency_key.as_deref())
            .await?,
    ))
}

/// The exact value (zero for a counter never used).
#[utoipa::path(get, path = "/{name}", operation_id = "getCounter", tag = "counters",
    params(Name),
    responses(
        (status = 200, description = "the exact value", body = CounterValue),
        problems::BadRequest))]
async fn read(
    State(c): State<CounterClient>,
    Name(name): Name,
) -> Result<Body<CounterValue>, CounterError> {
    Ok(Body(c.get(&name).await?))
}

/// Fix the shard count of a new counter.
#[utoipa::path(put, path = "/{name}", operation_id = "createCounter", tag = "counters",
    params(Name),
    request_body = CreateBody,
    responses(
        (status = 200, description = "the counter", body = CounterValue),
        (status = 409, description = "`shards-fixed`: the counter exists with another shard count", body = Problem, content_type = "application/problem+json"),
        problems::BadRequest))]
async fn create(
    State(c): State<CounterClient>,
    Name(name): Name,
    Body(body): Body<CreateBody>,
) -> Result<Body<CounterValue>, CounterError> {
    let shards = c.create(&name, body.shards).await?;
    Ok(Body(CounterValue {
        value: c.get(&name).await?.value,
        shards,
    }))
}

/// Set to zero and forget idempotency keys.
#[utoipa::path(post, path = "/{name}/reset", operation_id = "resetCounter", tag = "counters",
    params(Name),
    responses(
        (status = 200, description = "the counter, now zero", body = CounterValue),
        problems::BadRequest))]
async fn reset(
    State(c): State<CounterClient>,
    Name(name): Name,
) -> Result<Body<CounterValue>, CounterError> {
    Ok(Body(c.reset(&name).await?))
}

/// Counter names by prefix, a page at a time.
#[utoipa::path(get, path = "/", operation_id = "listCounters", tag = "counters",
    params(ListQuery),
    responses(
        (status = 200, description = "a page of names", body = CounterPage),
        problems::BadRequest))]
async fn list(
    State(c): State<CounterClient>,
    Query(q): Query<ListQuery>,
) -> Result<Body<CounterPage>, CounterError> {
    let limit = q.limit.unwrap_or(100);
    Ok(Body(c.list(&q.prefix, q.cursor.as_deref(), limit).await?))
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(increment, read, create, reset, list))]
struct Api;
