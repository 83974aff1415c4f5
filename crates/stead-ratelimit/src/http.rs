//! The HTTP routes under `/ratelimit`, and the RateLimit header fields they share with the
//! layer.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use stead_core::http::{Json as Body, Problem, Query};
use stead_core::{Error, Result};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Ref, Schema, Type};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::client::{Limit, RateLimitClient};
use crate::object::{Algorithm, Decision, Policy};

/// `RateLimit-Policy`: the quota policy (draft-ietf-httpapi-ratelimit-headers-10).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what is left of the quota and when it resets.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Seconds, rounded up, at least `min`.
fn secs(ms: u64, min: u64) -> u64 {
    ms.div_ceil(1000).max(min)
}

/// Adds the RateLimit header fields of a decision, and `Retry-After` when it was refused.
///
/// `RateLimit-Policy: "<name>";q=<limit>;w=<period in s>` and
/// `RateLimit: "<name>";r=<remaining>;t=<s>`, where `t` is the time until the quota is whole
/// again, or, on a refusal, until the request can be retried, which is also what
/// `Retry-After` says: a client never sees a `Retry-After` earlier than `t`.
pub fn insert_headers(headers: &mut HeaderMap, limit: &Limit, d: &Decision) {
    let t = match d.retry_after_ms {
        Some(retry) => secs(retry, 1),
        None => secs(d.reset_ms, 0),
    };
    headers.insert(RATELIMIT_POLICY, limit.policy_field().clone());
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\";r={};t={t}", limit.name(), d.remaining)) {
        headers.insert(RATELIMIT, v);
    }
    if d.retry_after_ms.is_some() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(t));
    }
}

/// A policy named or given inline, as a body or a query carries it.
#[derive(Debug, Default)]
struct PolicyFields {
    /// A configured policy's name, or (in a body) a policy object.
    policy: Option<Json>,
    algorithm: Option<Algorithm>,
    limit: Option<u64>,
    period_ms: Option<u64>,
    burst: Option<u64>,
}

impl PolicyFields {
    fn resolve(self, c: &RateLimitClient) -> Result<Limit> {
        let inline = self.algorithm.is_some()
            || self.limit.is_some()
            || self.period_ms.is_some()
            || self.burst.is_some();
        match (self.policy, inline) {
            (Some(_), true) => Err(Error::bad_request(
                "give either \"policy\" or an inline policy (algorithm, limit, period_ms, burst), not both",
            )),
            (Some(Json::String(name)), false) => c.named(&name),
            (Some(obj @ Json::Object(_)), false) => {
                let policy: Policy = serde_json::from_value(obj)
                    .map_err(|e| Error::bad_request(format!("policy: {e}")))?;
                Limit::inline(policy)
            }
            (Some(_), false) => Err(Error::bad_request(
                "policy must be a configured policy's name or a policy object",
            )),
            (None, true) => {
                let (Some(limit), Some(period_ms)) = (self.limit, self.period_ms) else {
                    return Err(Error::bad_request(
                        "an inline policy needs both limit and period_ms",
                    ));
                };
                Limit::inline(Policy {
                    algorithm: self.algorithm.unwrap_or_default(),
                    limit,
                    period_ms,
                    burst: self.burst,
                })
            }
            (None, false) => Err(Error::bad_request(
                "name a policy (\"policy\":\"api\") or give one inline (\"limit\":10,\"period_ms\":1000)",
            )),
        }
    }
}

/// A request to admit: a policy, by name or inline, and what the request costs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    /// A configured policy's name, or a policy. Or give the policy's fields here instead.
    #[schema(schema_with = policy_ref)]
    policy: Option<Json>,
    /// An inline policy's algorithm (`gcra` when absent).
    algorithm: Option<Algorithm>,
    /// An inline policy's limit per period.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    limit: Option<u64>,
    /// An inline policy's period, in ms.
    #[schema(minimum = 1, maximum = 31_622_400_000_u64)]
    period_ms: Option<u64>,
    /// An inline policy's burst.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    burst: Option<u64>,
    /// Units this request consumes (1 when absent); at most the policy's burst.
    #[schema(minimum = 1, default = 1)]
    cost: Option<u64>,
}

/// The schema of `policy`: a name, or a policy object.
fn policy_ref() -> Schema {
    Schema::OneOf(
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1)),
            )
            .item(Ref::from_schema_name("Policy"))
            .build(),
    )
}

/// A policy, by name or inline, in the query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PolicyQuery {
    /// A configured policy's name (for a reset: none resets the key under every policy).
    policy: Option<String>,
    /// An inline policy's algorithm.
    #[param(inline)]
    algorithm: Option<Algorithm>,
    /// An inline policy's limit per period.
    #[param(minimum = 1)]
    limit: Option<u64>,
    /// An inline policy's period, in ms.
    #[param(minimum = 1)]
    period_ms: Option<u64>,
    /// An inline policy's burst.
    #[param(minimum = 1)]
    burst: Option<u64>,
}

/// The configured policies, by name.
#[derive(Debug, Serialize, ToSchema)]
struct PolicyList {
    /// Every named policy.
    policies: BTreeMap<String, Policy>,
}

/// How many limiters a reset forgot.
#[derive(Debug, Serialize, ToSchema)]
struct ResetCount {
    /// Limiters that had state and lost it.
    reset: u64,
}

impl PolicyQuery {
    fn is_empty(&self) -> bool {
        self.policy.is_none()
            && self.algorithm.is_none()
            && self.limit.is_none()
            && self.period_ms.is_none()
            && self.burst.is_none()
    }

    fn resolve(self, c: &RateLimitClient) -> Result<Limit> {
        PolicyFields {
            policy: self.policy.map(Json::String),
            algorithm: self.algorithm,
            limit: self.limit,
            period_ms: self.period_ms,
            burst: self.burst,
        }
        .resolve(c)
    }
}

/// The path parameter of these routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct KeyPath {
    /// Who is limited: a user, an IP address, an API key. 1 to 256 characters, no control characters.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    key: String,
}

pub(crate) fn routes(client: RateLimitClient) -> Router {
    Router::new()
        .route("/ratelimit", get(policies))
        .route("/ratelimit/{key}", get(peek).delete(reset))
        .route("/ratelimit/{key}/check", post(check))
        .with_state(client)
        .layer(stead_core::http::ProblemLayer)
}

fn answer(limit: &Limit, d: Decision) -> Response {
    let status = if d.allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut resp = (status, Body(d)).into_response();
    insert_headers(resp.headers_mut(), limit, &d);
    resp
}

/// Admit or refuse a request of `cost` units from `key`.
#[utoipa::path(post, path = "/ratelimit/{key}/check", operation_id = "checkRateLimit", tag = "ratelimit",
    params(KeyPath),
    request_body = CheckBody,
    responses(
        (status = 200, description = "admitted", body = Decision, headers(
            ("RateLimit-Policy" = String, description = "\"<policy>\";q=<limit>;w=<period s>"),
            ("RateLimit" = String, description = "\"<policy>\";r=<remaining>;t=<s until whole>"))),
        (status = 429, description = "refused", body = Decision, headers(
            ("RateLimit-Policy" = String, description = "\"<policy>\";q=<limit>;w=<period s>"),
            ("RateLimit" = String, description = "\"<policy>\";r=0;t=<s until it can be retried>"),
            ("Retry-After" = u64, description = "seconds; the same as t"))),
        (status = 400, description = "bad policy, key or cost", body = Problem, content_type = "application/problem+json")))]
async fn check(
    State(c): State<RateLimitClient>,
    Path(KeyPath { key }): Path<KeyPath>,
    Body(b): Body<CheckBody>,
) -> Result<Response> {
    let limit = PolicyFields {
        policy: b.policy,
        algorithm: b.algorithm,
        limit: b.limit,
        period_ms: b.period_ms,
        burst: b.burst,
    }
    .resolve(&c)?;
    let d = c.check(&key, &limit, b.cost.unwrap_or(1)).await?;
    Ok(answer(&limit, d))
}

/// What a unit-cost request would get now, consuming nothing.
#[utoipa::path(get, path = "/ratelimit/{key}", operation_id = "peekRateLimit", tag = "ratelimit",
    params(KeyPath, PolicyQuery),
    responses(
        (status = 200, description = "the state (never a 429)", body = Decision, headers(
            ("RateLimit-Policy" = String, description = "\"<policy>\";q=<limit>;w=<period s>"),
            ("RateLimit" = String, description = "\"<policy>\";r=<remaining>;t=<s>"))),
        (status = 400, description = "bad policy or key", body = Problem, content_type = "application/problem+json")))]
async fn peek(
    State(c): State<RateLimitClient>,
    Path(KeyPath { key }): Path<KeyPath>,
    Query(q): Query<PolicyQuery>,
) -> Result<Response> {
    let limit = q.resolve(&c)?;
    let d = c.peek(&key, &limit).await?;
    // A peek is not refused: it reports, so it answers 200 either way.
    let mut resp = Body(d).into_response();
    insert_headers(resp.headers_mut(), &limit, &d);
    Ok(resp)
}

/// Forget the key's state, under one policy or (with none given) under every policy.
#[utoipa::path(delete, path = "/ratelimit/{key}", operation_id = "resetRateLimit", tag = "ratelimit",
    params(KeyPath, PolicyQuery),
    responses(
        (status = 200, description = "how many limiters were reset", body = ResetCount),
        (status = 400, description = "bad policy or key", body = Problem, content_type = "application/problem+json")))]
async fn reset(
    State(c): State<RateLimitClient>,
    Path(KeyPath { key }): Path<KeyPath>,
    Query(q): Query<PolicyQuery>,
) -> Result<Body<ResetCount>> {
    let n = if q.is_empty() {
        c.reset_all(&key).await?
    } else {
        let limit = q.resolve(&c)?;
        u64::from(c.reset(&key, &limit).await?)
    };
    Ok(Body(ResetCount { reset: n }))
}

/// The configured policies.
#[utoipa::path(get, path = "/ratelimit", operation_id = "listRateLimitPolicies", tag = "ratelimit",
    responses((status = 200, description = "the configured policies, by name", body = PolicyList)))]
async fn policies(State(c): State<RateLimitClient>) -> Body<PolicyList> {
    let policies = c
        .policies()
        .iter()
        .map(|(name, p)| (name.to_owned(), p.clone()))
        .collect();
    Body(PolicyList { policies })
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(check, peek, reset, policies), components(schemas(Policy)))]
struct Api;

/// The OpenAPI 3.1 description of the rate-limit routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Api::openapi()
}
