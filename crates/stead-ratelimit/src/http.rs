//! The HTTP routes of the rate limiter (mounted under `/ratelimit` by the umbrella crate),
//! the RateLimit header fields they share with the layer, and the mapping of
//! [`RateLimitError`] to problems.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use stead_core::http::{Json as Body, Name, Problem, Query, problems, schema};
use stead_core::{InvalidInput, Result, Runtime};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Ref, Schema, Type};
use utoipa::{IntoParams, OpenApi, PartialSchema, ToSchema};

use crate::client::{Limit, RateLimitClient, RateLimitConfig};
use crate::error::RateLimitError;
use crate::policy::{Algorithm, Decision, MAX_LIMIT, MAX_PERIOD_MS, Policy};

/// The rate-limit pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitPattern;

impl stead_core::http::Pattern for RateLimitPattern {
    const PREFIX: &'static str = "/ratelimit";
    const SETTINGS_KEY: &'static str = "ratelimit";
    type Settings = RateLimitConfig;

    fn configure(rt: &Runtime, settings: RateLimitConfig) -> Result<()> {
        RateLimitClient::with_config(rt, settings).map(drop)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        Ok(Router::new()
            .route("/", get(policies))
            .route("/{name}", get(peek).delete(reset))
            .route("/{name}/check", post(check))
            .with_state(RateLimitClient::new(rt)?)
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }
}

impl From<&RateLimitError> for Problem {
    fn from(err: &RateLimitError) -> Self {
        let detail = err.to_string();
        match err {
            RateLimitError::Limited { decision, .. } => {
                let retry_ms = decision.retry_after_ms.unwrap_or(0);
                Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail)
                    .with("allowed", false)
                    .with("limit", decision.limit)
                    .with("remaining", decision.remaining)
                    .with("reset_ms", decision.reset_ms)
                    .with("retry_after_ms", retry_ms)
            }
            RateLimitError::UnknownPolicy { known, .. } => {
                Problem::new(StatusCode::BAD_REQUEST, "unknown-policy", detail)
                    .with("known_policies", known.clone())
            }
            RateLimitError::Invalid(e) => Problem::from(e),
            RateLimitError::Runtime(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for RateLimitError {
    fn into_response(self) -> Response {
        match self {
            RateLimitError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

/// The response to a refused request: a 429 problem with the decision's fields, and the
/// RateLimit header fields (`policy_field` is the limit's `RateLimit-Policy` value).
pub(crate) fn refusal(limit: &Limit, policy_field: &HeaderValue, d: Decision) -> Response {
    let err = RateLimitError::Limited {
        policy: limit.name().to_owned(),
        limit: limit.policy().limit,
        period_ms: limit.policy().period_ms,
        decision: d,
    };
    let mut resp = err.into_response();
    insert_fields(resp.headers_mut(), policy_field, limit.name(), &d);
    resp
}

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
    insert_fields(headers, &policy_field(limit), limit.name(), d);
}

/// The `RateLimit-Policy` field of a limit. Names are ASCII letters, digits and `_-.`, so
/// the field is always a valid header value.
pub(crate) fn policy_field(limit: &Limit) -> HeaderValue {
    HeaderValue::from_str(&limit.policy_field()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// [`insert_headers`] with the `RateLimit-Policy` field made already (the layer keeps it).
pub(crate) fn insert_fields(
    headers: &mut HeaderMap,
    policy: &HeaderValue,
    name: &str,
    d: &Decision,
) {
    let t = match d.retry_after_ms {
        Some(retry) => secs(retry, 1),
        None => secs(d.reset_ms, 0),
    };
    headers.insert(RATELIMIT_POLICY, policy.clone());
    if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r={};t={t}", d.remaining)) {
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
    fn resolve(self, c: &RateLimitClient) -> Result<Limit, RateLimitError> {
        let bad = |detail: &str| Err(RateLimitError::Invalid(InvalidInput::new(detail)));
        let inline = self.algorithm.is_some()
            || self.limit.is_some()
            || self.period_ms.is_some()
            || self.burst.is_some();
        match (self.policy, inline) {
            (Some(_), true) => bad(
                "give either \"policy\" or an inline policy (algorithm, limit, period_ms, burst), not both",
            ),
            (Some(Json::String(name)), false) => c.named(&name),
            (Some(obj @ Json::Object(_)), false) => {
                let policy: Policy = serde_json::from_value(obj)
                    .map_err(|e| InvalidInput::new(format!("policy: {e}")))?;
                Ok(Limit::inline(policy)?)
            }
            (Some(_), false) => bad("policy must be a configured policy's name or a policy object"),
            (None, true) => {
                let (Some(limit), Some(period_ms)) = (self.limit, self.period_ms) else {
                    return bad("an inline policy needs both limit and period_ms");
                };
                Ok(Limit::inline(Policy {
                    algorithm: self.algorithm.unwrap_or_default(),
                    limit,
                    period_ms,
                    burst: self.burst,
                })?)
            }
            (None, false) => bad(
                "name a policy (\"policy\":\"api\") or give one inline (\"limit\":10,\"period_ms\":1000)",
            ),
        }
    }
}

/// A request to admit: a policy, by name or inline, and what the request costs. Its schema
/// is `oneOf` [`NamedCheck`] and [`InlineCheck`]; the fields are read together so that a
/// body mixing the two gets an error saying so.
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

impl PartialSchema for CheckBody {
    fn schema() -> RefOr<Schema> {
        Schema::OneOf(
            OneOfBuilder::new()
                .item(Ref::from_schema_name("NamedCheck"))
                .item(Ref::from_schema_name("InlineCheck"))
                .description(Some(
                    "A request to admit: a policy by name (or as an object), or a policy's fields inline; and its cost.",
                ))
                .build(),
        )
        .into()
    }
}

impl ToSchema for CheckBody {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("NamedCheck".into(), NamedCheck::schema()));
        schemas.push(("InlineCheck".into(), InlineCheck::schema()));
        <Policy as ToSchema>::schemas(schemas);
        schemas.push(("Policy".into(), Policy::schema()));
    }
}

/// A check against a configured policy (by name) or a policy object.
#[derive(ToSchema)]
#[allow(dead_code)] // A schema only: `CheckBody` is what is read.
#[serde(deny_unknown_fields)]
struct NamedCheck {
    /// A configured policy's name, or a policy.
    #[schema(schema_with = policy_ref)]
    policy: Json,
    /// Units this request consumes (1 when absent); at most the policy's burst.
    #[schema(schema_with = schema::optional_integer::<1, MAX_LIMIT>)]
    cost: Option<u64>,
}

/// A check against a policy given by its fields.
#[derive(ToSchema)]
#[allow(dead_code)] // A schema only: `CheckBody` is what is read.
#[serde(deny_unknown_fields)]
struct InlineCheck {
    /// The algorithm (`gcra` when absent).
    algorithm: Option<Algorithm>,
    /// Requests admitted per period.
    #[schema(schema_with = schema::integer::<1, MAX_LIMIT>)]
    limit: u64,
    /// The period, in ms.
    #[schema(schema_with = schema::integer::<1, MAX_PERIOD_MS>)]
    period_ms: u64,
    /// The burst (gcra and token_bucket only; `limit` when absent).
    #[schema(schema_with = schema::optional_integer::<1, MAX_LIMIT>)]
    burst: Option<u64>,
    /// Units this request consumes (1 when absent); at most the policy's burst.
    #[schema(schema_with = schema::optional_integer::<1, MAX_LIMIT>)]
    cost: Option<u64>,
}

/// The schema of `policy`: a name, or a policy object.
fn policy_ref() -> Schema {
    Schema::OneOf(
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(crate::policy::MAX_POLICY_NAME_BYTES))
                    .pattern(Some("^[A-Za-z0-9_.-]+$")),
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
    #[param(schema_with = schema::integer::<1, MAX_LIMIT>)]
    limit: Option<u64>,
    /// An inline policy's period, in ms.
    #[param(schema_with = schema::integer::<1, MAX_PERIOD_MS>)]
    period_ms: Option<u64>,
    /// An inline policy's burst.
    #[param(schema_with = schema::integer::<1, MAX_LIMIT>)]
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

    fn resolve(self, c: &RateLimitClient) -> Result<Limit, RateLimitError> {
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

fn answer(limit: &Limit, d: Decision) -> Response {
    let field = policy_field(limit);
    if !d.allowed {
        return refusal(limit, &field, d);
    }
    let mut resp = Body(d).into_response();
    insert_fields(resp.headers_mut(), &field, limit.name(), &d);
    resp
}

/// Admit or refuse a request of `cost` units from `key`.
#[utoipa::path(post, path = "/{name}/check", operation_id = "checkRateLimit", tag = "ratelimit",
    params(Name),
    request_body = CheckBody,
    responses(
        (status = 200, description = "admitted", body = Decision, headers(
            ("RateLimit-Policy" = String, description = "\"<policy>\";q=<limit>;w=<period s>"),
            ("RateLimit" = String, description = "\"<policy>\";r=<remaining>;t=<s until whole>"))),
        (status = 429, description = "refused: a `rate-limited` problem carrying the decision's fields", body = Problem, content_type = "application/problem+json", headers(
            ("RateLimit-Policy" = String, description = "\"<policy>\";q=<limit>;w=<period s>"),
            ("RateLimit" = String, description = "\"<policy>\";r=0;t=<s until it can be retried>"),
            ("Retry-After" = u64, description = "seconds; the same as t"))),
        problems::BadRequest))]
async fn check(
    State(c): State<RateLimitClient>,
    Name(key): Name,
    Body(b): Body<CheckBody>,
) -> Result<Response, RateLimitError> {
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
#[utoipa::path(get, path = "/{name}", operation_id = "peekRateLimit", tag = "ratelimit",
    params(Name, PolicyQuery),
    responses(
        (status = 200, description = "the state (never a 429)", body = Decision, headers(
            ("RateLimit-Policy" = String, description = "\"<policy>\";q=<limit>;w=<period s>"),
            ("RateLimit" = String, description = "\"<policy>\";r=<remaining>;t=<s>"))),
        problems::BadRequest))]
async fn peek(
    State(c): State<RateLimitClient>,
    Name(key): Name,
    Query(q): Query<PolicyQuery>,
) -> Result<Response, RateLimitError> {
    let limit = q.resolve(&c)?;
    let d = c.peek(&key, &limit).await?;
    // A peek is not refused: it reports, so it answers 200 either way.
    let mut resp = Body(d).into_response();
    insert_fields(resp.headers_mut(), &policy_field(&limit), limit.name(), &d);
    Ok(resp)
}

/// Forget the key's state, under one policy or (with none given) under every policy.
#[utoipa::path(delete, path = "/{name}", operation_id = "resetRateLimit", tag = "ratelimit",
    params(Name, PolicyQuery),
    responses(
        (status = 200, description = "how many limiters were reset", body = ResetCount),
        problems::BadRequest))]
async fn reset(
    State(c): State<RateLimitClient>,
    Name(key): Name,
    Query(q): Query<PolicyQuery>,
) -> Result<Body<ResetCount>, RateLimitError> {
    let n = if q.is_empty() {
        c.reset_all(&key).await?
    } else {
        let limit = q.resolve(&c)?;
        u64::from(c.reset(&key, &limit).await?)
    };
    Ok(Body(ResetCount { reset: n }))
}

/// The configured policies.
#[utoipa::path(get, path = "/", operation_id = "listRateLimitPolicies", tag = "ratelimit",
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
#[openapi(
    paths(check, peek, reset, policies),
    components(schemas(Policy, NamedCheck, InlineCheck))
)]
struct Api;
