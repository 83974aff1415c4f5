//! The HTTP routes under `/ratelimit`, and the RateLimit header fields they share with the
//! layer.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use stead_core::http::Json as Body;
use stead_core::{Error, Result};

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

/// The body of `POST /ratelimit/{key}/check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    policy: Option<Json>,
    algorithm: Option<Algorithm>,
    limit: Option<u64>,
    period_ms: Option<u64>,
    burst: Option<u64>,
    cost: Option<u64>,
}

/// The query of `GET` and `DELETE /ratelimit/{key}`: a policy by name or inline.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyQuery {
    policy: Option<String>,
    algorithm: Option<Algorithm>,
    limit: Option<u64>,
    period_ms: Option<u64>,
    burst: Option<u64>,
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

fn query(q: std::result::Result<Query<PolicyQuery>, QueryRejection>) -> Result<PolicyQuery> {
    q.map(|Query(q)| q)
        .map_err(|e| Error::bad_request(e.body_text()))
}

pub(crate) fn routes(client: RateLimitClient) -> Router {
    Router::new()
        .route("/ratelimit", get(policies))
        .route("/ratelimit/{key}", get(peek).delete(reset))
        .route("/ratelimit/{key}/check", post(check))
        .with_state(client)
        .layer(axum::middleware::from_fn(
            stead_core::http::problem_for_bare_errors,
        ))
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

async fn check(
    State(c): State<RateLimitClient>,
    Path(key): Path<String>,
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

async fn peek(
    State(c): State<RateLimitClient>,
    Path(key): Path<String>,
    q: std::result::Result<Query<PolicyQuery>, QueryRejection>,
) -> Result<Response> {
    let limit = query(q)?.resolve(&c)?;
    let d = c.peek(&key, &limit).await?;
    // A peek is not refused: it reports, so it answers 200 either way.
    let mut resp = Body(d).into_response();
    insert_headers(resp.headers_mut(), &limit, &d);
    Ok(resp)
}

async fn reset(
    State(c): State<RateLimitClient>,
    Path(key): Path<String>,
    q: std::result::Result<Query<PolicyQuery>, QueryRejection>,
) -> Result<Body<Json>> {
    let q = query(q)?;
    let n = if q.is_empty() {
        c.reset_all(&key).await?
    } else {
        let limit = q.resolve(&c)?;
        u64::from(c.reset(&key, &limit).await?)
    };
    Ok(Body(json!({ "reset": n })))
}

async fn policies(State(c): State<RateLimitClient>) -> Body<Json> {
    let map: serde_json::Map<String, Json> = c
        .policies()
        .iter()
        .map(|(name, p)| (name.to_owned(), json!(p)))
        .collect();
    Body(json!({ "policies": map }))
}

/// The OpenAPI 3.1 `paths` of these routes.
pub fn openapi_paths() -> Json {
    let problem = |d: &str| json!({ "description": d, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
    let key = json!({ "name": "key", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": 256 } });
    let policy = json!({ "type": "object", "required": ["limit", "period_ms"], "additionalProperties": false, "properties": {
        "algorithm": { "type": "string", "enum": ["gcra", "token_bucket", "sliding_window", "fixed_window"], "default": "gcra" },
        "limit": { "type": "integer", "minimum": 1, "maximum": crate::object::MAX_LIMIT },
        "period_ms": { "type": "integer", "minimum": 1, "maximum": crate::object::MAX_PERIOD_MS },
        "burst": { "type": "integer", "minimum": 1 } } });
    let decision = json!({ "type": "object", "required": ["allowed", "limit", "remaining", "reset_ms"], "properties": {
        "allowed": { "type": "boolean" }, "limit": { "type": "integer" }, "remaining": { "type": "integer" },
        "reset_ms": { "type": "integer" }, "retry_after_ms": { "type": "integer" } } });
    let headers = json!({
        "RateLimit-Policy": { "schema": { "type": "string" }, "description": "\"<policy>\";q=<quota>;w=<window s>" },
        "RateLimit": { "schema": { "type": "string" }, "description": "\"<policy>\";r=<remaining>;t=<s>" } });
    let mut refused_headers = headers.clone();
    refused_headers["Retry-After"] =
        json!({ "schema": { "type": "integer" }, "description": "seconds; equal to t" });
    let query_params = |extra: &str| {
        json!([key.clone(),
        { "name": "policy", "in": "query", "required": false, "schema": { "type": "string" }, "description": format!("a configured policy's name{extra}") },
        { "name": "algorithm", "in": "query", "required": false, "schema": { "type": "string", "enum": ["gcra", "token_bucket", "sliding_window", "fixed_window"] } },
        { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1 } },
        { "name": "period_ms", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1 } },
        { "name": "burst", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1 } }])
    };
    json!({
        "/ratelimit": { "get": {
            "operationId": "listRateLimitPolicies", "summary": "The configured policies, by name",
            "responses": { "200": { "description": "policies", "content": { "application/json": { "schema": {
                "type": "object", "properties": { "policies": { "type": "object", "additionalProperties": policy.clone() } } } } } } }
        }},
        "/ratelimit/{key}/check": { "post": {
            "operationId": "checkRateLimit", "summary": "Admit or refuse a request of `cost` units from `key`",
            "parameters": [key.clone()],
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object", "additionalProperties": false, "properties": {
                    "policy": { "oneOf": [ { "type": "string" }, policy.clone() ] },
                    "algorithm": policy["properties"]["algorithm"].clone(), "limit": policy["properties"]["limit"].clone(),
                    "period_ms": policy["properties"]["period_ms"].clone(), "burst": policy["properties"]["burst"].clone(),
                    "cost": { "type": "integer", "minimum": 1, "default": 1 } } } } } },
            "responses": {
                "200": { "description": "admitted", "headers": headers.clone(), "content": { "application/json": { "schema": decision.clone() } } },
                "429": { "description": "refused", "headers": refused_headers, "content": { "application/json": { "schema": decision.clone() } } },
                "400": problem("bad policy, key or cost")
            }
        }},
        "/ratelimit/{key}": {
            "get": {
                "operationId": "peekRateLimit", "summary": "What a unit-cost request would get, consuming nothing",
                "parameters": query_params(""),
                "responses": { "200": { "description": "the state", "headers": headers, "content": { "application/json": { "schema": decision } } },
                    "400": problem("bad policy or key") }
            },
            "delete": {
                "operationId": "resetRateLimit", "summary": "Forget the key's state (under one policy, or every policy when none is given)",
                "parameters": query_params("; every policy when no policy is given"),
                "responses": { "200": { "description": "how many limiters were reset", "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "reset": { "type": "integer" } } } } } },
                    "400": problem("bad policy or key") }
            }
        }
    })
}
