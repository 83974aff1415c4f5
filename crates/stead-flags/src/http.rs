//! The HTTP routes of the flag sets: the admin routes (mounted under `/flags` by the
//! umbrella crate, problem+json on every error) and OpenFeature's remote evaluation
//! protocol (OFREP), per set under `/flags/{set}/ofrep/v1/...` and for the default set at
//! the root, `/ofrep/v1/...`, with the protocol's own bodies.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use stead_core::http::{Json as Body, LogParams, Name, Names, Problem, Query, problems, schema};
use stead_core::{LogPage, Result, Runtime};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::client::{FlagsClient, FlagsConfig};
use crate::definition::check_flag_key;
use crate::error::FlagsError;
use crate::evaluate::{ErrorCode, Evaluation, Reason, Snapshot};
use crate::object::{AuditEntry, Changed, Edit};

/// The header a change names its author in (kept in the audit log).
pub const ACTOR_HEADER: &str = "stead-actor";
/// The longest wait of a long-poll on a set's version, in ms.
pub const MAX_WAIT_MS: u64 = 60_000;

/// The flag pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct FlagsPattern;

impl stead_core::http::Pattern for FlagsPattern {
    const PREFIX: &'static str = "/flags";
    const SETTINGS_KEY: &'static str = "flags";
    type Settings = FlagsConfig;

    fn configure(rt: &Runtime, settings: FlagsConfig) -> Result<()> {
        FlagsClient::with_config(rt, settings).map(drop)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        Ok(Router::new()
            .route("/{set}", get(read_set).put(replace_set))
            .route("/{set}/audit", get(audit))
            .route("/{set}/version", get(version))
            .route("/{set}/flags/{flag}", put(put_flag).delete(delete_flag))
            .route("/{set}/ofrep/v1/evaluate/flags/{key}", post(ofrep_one))
            .route("/{set}/ofrep/v1/evaluate/flags", post(ofrep_bulk))
            .with_state(FlagsClient::new(rt)?)
            .layer(stead_core::http::ProblemLayer))
    }

    fn root_router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        Ok(Router::new()
            .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep_root_one))
            .route("/ofrep/v1/evaluate/flags", post(ofrep_root_bulk))
            .with_state(FlagsClient::new(rt)?)
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }

    fn root_openapi() -> Option<utoipa::openapi::OpenApi> {
        Some(RootApi::openapi())
    }
}

impl From<&FlagsError> for Problem {
    fn from(err: &FlagsError) -> Self {
        let detail = err.to_string();
        match err {
            FlagsError::Definition(e) => {
                let p = Problem::new(StatusCode::BAD_REQUEST, "invalid-definition", detail)
                    .with("path", e.path.clone());
                match &e.flag {
                    Some(f) => p.with("flag", f.clone()),
                    None => p,
                }
            }
            FlagsError::FlagNotFound { .. } => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
            }
            FlagsError::VersionConflict { current } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                detail,
            )
            .with("current_version", *current)
            .with("current_etag", etag(*current)),
            FlagsError::TooLarge { size, max } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "value-too-large", detail)
                    .with("size", *size)
                    .with("max", *max)
            }
            FlagsError::Invalid(e) => Problem::from(e),
            FlagsError::Runtime(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for FlagsError {
    fn into_response(self) -> Response {
        match self {
            FlagsError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

/// The ETag of a set's version.
fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// The version an `If-Match` names: `None` for none or `*`; a value that names no version
/// can never match (a version no set has).
/// The version an `If-Match` names: none for `*`, an empty field or no header; a version that never matches
/// for an entity tag that is not one of ours (412). A value that is not an entity tag at all
/// is a 400.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, FlagsError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or("?").trim();
    // An empty field says nothing; `*` matches any version.
    if v.is_empty() || v == "*" {
        return Ok(None);
    }
    let tag = v.strip_prefix("W/").unwrap_or(v);
    let Some(opaque) = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return Err(stead_core::InvalidInput::new(format!(
            "If-Match must be * or an entity tag such as \"3\", not {v}"
        ))
        .into());
    };
    Ok(Some(opaque.parse().unwrap_or(u64::MAX)))
}

fn edit(headers: &HeaderMap) -> Result<Edit, FlagsError> {
    Ok(Edit {
        actor: headers
            .get(ACTOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
        expect_version: if_match(headers)?,
    })
}

fn with_etag(tag: &str, body: impl IntoResponse) -> Response {
    let mut r = body.into_response();
    if let Ok(v) = HeaderValue::from_str(tag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn check_set(set: &str) -> Result<(), FlagsError> {
    stead_core::validate_name("flag set", set)?;
    Ok(())
}

/// What a change did.
#[derive(Debug, Serialize, ToSchema)]
struct ChangeBody {
    /// The set's version after the change.
    version: u64,
    /// Whether anything changed (an identical definition makes no version).
    changed: bool,
}

fn changed(c: Changed) -> Response {
    let version = c.snapshot.version();
    with_etag(
        &etag(version),
        Body(ChangeBody {
            version,
            changed: c.changed,
        }),
    )
}

/// Read a set's definition (flagd's document), with its version as the ETag.
#[utoipa::path(get, path = "/{set}", operation_id = "getFlagSet", tag = "flags",
    params(("set" = String, Path, description = "The flag set.")),
    responses(
        (status = 200, description = "the definition; an unknown set has no flags", body = Object,
            headers(("ETag" = String, description = "The set's version, for If-Match"))),
        problems::BadRequest))]
async fn read_set(State(c): State<FlagsClient>, Name(set): Name) -> Result<Response, FlagsError> {
    let snap = c.snapshot(&set).await?;
    Ok(with_etag(
        &etag(snap.version()),
        Body(snap.definition().to_json()),
    ))
}

/// Replace a set's whole definition with a flagd document.
#[utoipa::path(put, path = "/{set}", operation_id = "putFlagSet", tag = "flags",
    params(("set" = String, Path, description = "The flag set."),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = "^(|\\*|(W/)?\"[^\"]*\")$", description = "The ETag the change was made against (or `*`)."),
        ("Stead-Actor" = Option<String>, Header, description = "Who makes the change, for the audit log.")),
    request_body(content = Object, description = "flagd's flag-definition document."),
    responses(
        (status = 200, description = "stored", body = ChangeBody),
        (status = 412, description = "the set is at another version", body = Problem, content_type = "application/problem+json"),
        problems::BadRequest))]
async fn replace_set(
    State(c): State<FlagsClient>,
    Name(set): Name,
    headers: HeaderMap,
    Body(doc): Body<Value>,
) -> Result<Response, FlagsError> {
    Ok(changed(c.replace(&set, &doc, edit(&headers)?).await?))
}

/// Create or replace one flag (flagd's form, or the simple form).
#[utoipa::path(put, path = "/{set}/flags/{flag}", operation_id = "putFlag", tag = "flags",
    params(("set" = String, Path, description = "The flag set."),
        ("flag" = String, Path, description = "The flag key."),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = "^(|\\*|(W/)?\"[^\"]*\")$", description = "The ETag the change was made against (or `*`)."),
        ("Stead-Actor" = Option<String>, Header, description = "Who makes the change.")),
    request_body(content = Object, description = "One flag: flagd's form, or {enabled, rollout_percent, allow, block}."),
    responses(
        (status = 200, description = "stored", body = ChangeBody),
        (status = 412, description = "the set is at another version", body = Problem, content_type = "application/problem+json"),
        problems::BadRequest))]
async fn put_flag(
    State(c): State<FlagsClient>,
    Names(set, flag): Names,
    headers: HeaderMap,
    Body(doc): Body<Value>,
) -> Result<Response, FlagsError> {
    Ok(changed(
        c.put_flag(&set, &flag, &doc, edit(&headers)?).await?,
    ))
}

/// Delete one flag.
#[utoipa::path(delete, path = "/{set}/flags/{flag}", operation_id = "deleteFlag", tag = "flags",
    params(("set" = String, Path, description = "The flag set."),
        ("flag" = String, Path, description = "The flag key."),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = "^(|\\*|(W/)?\"[^\"]*\")$", description = "The ETag the change was made against (or `*`)."),
        ("Stead-Actor" = Option<String>, Header, description = "Who makes the change.")),
    responses(
        (status = 200, description = "deleted", body = ChangeBody),
        (status = 412, description = "the set is at another version", body = Problem, content_type = "application/problem+json"),
        problems::NotFound, problems::BadRequest))]
async fn delete_flag(
    State(c): State<FlagsClient>,
    Names(set, flag): Names,
    headers: HeaderMap,
) -> Result<Response, FlagsError> {
    Ok(changed(c.delete_flag(&set, &flag, edit(&headers)?).await?))
}

/// A set's audit log, numbered by version (newest first unless asked otherwise).
#[utoipa::path(get, path = "/{set}/audit", operation_id = "getFlagAudit", tag = "flags",
    params(("set" = String, Path, description = "The flag set."), LogParams),
    responses((status = 200, description = "a page of the log", body = LogPage<AuditEntry>),
        problems::BadRequest))]
async fn audit(
    State(c): State<FlagsClient>,
    Name(set): Name,
    Query(q): Query<LogParams>,
) -> Result<Body<LogPage<AuditEntry>>, FlagsError> {
    Ok(Body(c.audit(&set, q.query()).await?))
}

/// A long-poll on a set's version.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct VersionParams {
    /// Answer once the set is at another version than this one.
    #[param(schema_with = schema::integer::<0, { u64::MAX }>)]
    after: Option<u64>,
    /// Wait at most this long for a change, in ms (at most 60000; default 0).
    #[param(schema_with = schema::integer::<0, 60000>)]
    wait_ms: Option<u64>,
}

/// A set's version.
#[derive(Debug, Serialize, ToSchema)]
struct VersionBody {
    /// The version.
    version: u64,
    /// Its ETag.
    etag: String,
}

/// A set's version; with `after` and `wait_ms`, a long-poll that answers as soon as the set
/// changes (clients that hold a snapshot re-fetch then).
#[utoipa::path(get, path = "/{set}/version", operation_id = "getFlagSetVersion", tag = "flags",
    params(("set" = String, Path, description = "The flag set."), VersionParams),
    responses((status = 200, description = "the version", body = VersionBody), problems::BadRequest))]
async fn version(
    State(c): State<FlagsClient>,
    Name(set): Name,
    Query(q): Query<VersionParams>,
) -> Result<Response, FlagsError> {
    let wait = q.wait_ms.unwrap_or(0);
    if wait > 0 {
        stead_core::validate_ms("wait_ms", wait, MAX_WAIT_MS)?;
    }
    let version = match q.after {
        Some(after) if wait > 0 => {
            c.wait_for_change(&set, after, Duration::from_millis(wait))
                .await?
        }
        _ => c.snapshot(&set).await?.version(),
    };
    Ok(with_etag(
        &etag(version),
        Body(VersionBody {
            version,
            etag: etag(version),
        }),
    ))
}

// ---------------------------------------------------------------------------------------
// OFREP.

/// OFREP's failure body: `{key, errorCode, errorDetails}` (no key for a whole request).
fn failure_body(key: Option<&str>, code: &str, details: String) -> Value {
    let mut body = Map::new();
    if let Some(k) = key {
        body.insert("key".into(), Value::String(k.to_owned()));
    }
    body.insert("errorCode".into(), Value::String(code.to_owned()));
    body.insert("errorDetails".into(), Value::String(details));
    Value::Object(body)
}

/// An OFREP answer that is not a success.
fn ofrep_failure(status: StatusCode, key: Option<&str>, code: &str, details: String) -> Response {
    (status, axum::Json(failure_body(key, code, details))).into_response()
}

/// The evaluation context of an OFREP request: its `context` member (none is an empty
/// context). A body that is not JSON is `PARSE_ERROR`, a context that is not an object or
/// a `targetingKey` that is not a string `INVALID_CONTEXT`.
fn ofrep_context(body: &Bytes) -> Result<Map<String, Value>, (&'static str, String)> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ("PARSE_ERROR", format!("the request body is not JSON: {e}")))?;
    let ctx = match v {
        Value::Object(mut m) => match m.remove("context") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(c)) => c,
            Some(_) => return Err(("INVALID_CONTEXT", "context is a JSON object".into())),
        },
        _ => {
            return Err((
                "INVALID_CONTEXT",
                "the request body is a JSON object".into(),
            ));
        }
    };
    if ctx.get("targetingKey").is_some_and(|k| !k.is_string()) {
        return Err(("INVALID_CONTEXT", "targetingKey is a string".into()));
    }
    Ok(ctx)
}

/// One flag's OFREP result: `Ok` a success object, `Err` a failure object and its status.
fn ofrep_result(key: &str, e: Evaluation) -> Result<Map<String, Value>, (StatusCode, Value)> {
    if let Some((code, message)) = e.error {
        let status = match code {
            ErrorCode::FlagNotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        return Err((status, failure_body(Some(key), code.as_str(), message)));
    }
    let mut body = Map::new();
    body.insert("key".into(), Value::String(key.to_owned()));
    if let Some(v) = e.value {
        body.insert("value".into(), v);
    }
    body.insert("reason".into(), Value::String(e.reason.as_str().to_owned()));
    if let Some(variant) = e.variant {
        body.insert("variant".into(), Value::String(variant));
    }
    body.insert("metadata".into(), Value::Object(e.metadata));
    Ok(body)
}

async fn evaluate_one(c: &FlagsClient, set: &str, key: &str, body: &Bytes) -> Response {
    if let Err(e) = check_set(set) {
        return ofrep_failure(StatusCode::BAD_REQUEST, Some(key), "GENERAL", e.to_string());
    }
    if let Err(m) = check_flag_key(key) {
        return ofrep_failure(StatusCode::NOT_FOUND, Some(key), "FLAG_NOT_FOUND", m);
    }
    let ctx = match ofrep_context(body) {
        Ok(ctx) => ctx,
        Err((code, details)) => {
            return ofrep_failure(StatusCode::BAD_REQUEST, Some(key), code, details);
        }
    };
    let snap = match c.snapshot(set).await {
        Ok(s) => s,
        Err(e) => return ofrep_unavailable(e),
    };
    match ofrep_result(key, snap.evaluate(key, &ctx, c.now_secs())) {
        Ok(body) => axum::Json(Value::Object(body)).into_response(),
        Err((status, body)) => (status, axum::Json(body)).into_response(),
    }
}

/// A failure of the runtime on an OFREP route: the protocol's general error body, with the
/// status (and `Retry-After`) the runtime's problem has.
fn ofrep_unavailable(e: FlagsError) -> Response {
    let problem = Problem::from(&e);
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, axum::Json(json!({"errorDetails": e.to_string()}))).into_response();
    if let Some(retry) = problem.into_response().headers().get(header::RETRY_AFTER) {
        r.headers_mut().insert(header::RETRY_AFTER, retry.clone());
    }
    r
}

/// A stable tag of a bulk evaluation: the set's version and the context's hash.
fn bulk_etag(snap: &Snapshot, ctx: &Map<String, Value>) -> String {
    let text = serde_json::to_vec(ctx).unwrap_or_default();
    let hash = murmur3::murmur3_32(&mut std::io::Cursor::new(text), 0).unwrap_or(0);
    format!("\"{}-{hash:08x}\"", snap.version())
}

async fn evaluate_bulk(c: &FlagsClient, set: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    if let Err(e) = check_set(set) {
        return ofrep_failure(StatusCode::BAD_REQUEST, None, "GENERAL", e.to_string());
    }
    let ctx = match ofrep_context(body) {
        Ok(ctx) => ctx,
        Err((code, details)) => return ofrep_failure(StatusCode::BAD_REQUEST, None, code, details),
    };
    let snap = match c.snapshot(set).await {
        Ok(s) => s,
        Err(e) => return ofrep_unavailable(e),
    };
    let tag = bulk_etag(&snap, &ctx);
    let none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if none_match {
        return with_etag(&tag, StatusCode::NOT_MODIFIED);
    }
    let now = c.now_secs();
    let mut flags = Vec::new();
    for key in snap.keys() {
        let e = snap.evaluate(key, &ctx, now);
        // As flagd answers a bulk request: disabled flags, and flags that give no value
        // without an error, are left out.
        if e.reason == Reason::Disabled || (e.value.is_none() && e.error.is_none()) {
            continue;
        }
        flags.push(match ofrep_result(key, e) {
            Ok(body) => Value::Object(body),
            Err((_, body)) => body,
        });
    }
    with_etag(&tag, axum::Json(json!({ "flags": flags })))
}

/// The body of an OFREP request.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
struct EvaluationRequest {
    /// The evaluation context (`targetingKey` and any attributes); none is an empty one.
    #[schema(value_type = Option<Object>)]
    context: Option<Map<String, Value>>,
}

/// OFREP: evaluate one flag of a set.
#[utoipa::path(post, path = "/{set}/ofrep/v1/evaluate/flags/{key}", operation_id = "ofrepEvaluateFlag", tag = "ofrep",
    params(("set" = String, Path, description = "The flag set."), ("key" = String, Path, description = "The flag key.")),
    request_body(content = EvaluationRequest, description = "The evaluation context (optional)."),
    responses(
        (status = 200, description = "`{key, value, reason, variant, metadata}`", body = Object),
        (status = 400, description = "`{key, errorCode, errorDetails}`: PARSE_ERROR, INVALID_CONTEXT, TARGETING_KEY_MISSING or GENERAL", body = Object),
        (status = 404, description = "`{key, errorCode: FLAG_NOT_FOUND, errorDetails}`", body = Object)))]
async fn ofrep_one(
    State(c): State<FlagsClient>,
    Path((set, key)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    evaluate_one(&c, &set, &key, &body).await
}

/// OFREP: evaluate every flag of a set.
#[utoipa::path(post, path = "/{set}/ofrep/v1/evaluate/flags", operation_id = "ofrepEvaluateFlags", tag = "ofrep",
    params(("set" = String, Path, description = "The flag set."),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "The ETag of an earlier answer: 304 when nothing changed.")),
    request_body(content = EvaluationRequest, description = "The evaluation context (optional)."),
    responses(
        (status = 200, description = "`{flags: [...]}`, each a success or a failure object", body = Object),
        (status = 304, description = "not modified"),
        (status = 400, description = "`{errorCode, errorDetails}`", body = Object)))]
async fn ofrep_bulk(
    State(c): State<FlagsClient>,
    Path(set): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    evaluate_bulk(&c, &set, &headers, &body).await
}

/// OFREP: evaluate one flag of the default set.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{key}", operation_id = "ofrepEvaluateDefaultFlag", tag = "ofrep",
    params(("key" = String, Path, description = "The flag key.")),
    request_body(content = EvaluationRequest, description = "The evaluation context (optional)."),
    responses(
        (status = 200, description = "`{key, value, reason, variant, metadata}`", body = Object),
        (status = 400, description = "`{key, errorCode, errorDetails}`", body = Object),
        (status = 404, description = "`{key, errorCode: FLAG_NOT_FOUND, errorDetails}`", body = Object)))]
async fn ofrep_root_one(
    State(c): State<FlagsClient>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let set = c.config().default_set.clone();
    evaluate_one(&c, &set, &key, &body).await
}

/// OFREP: evaluate every flag of the default set.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", operation_id = "ofrepEvaluateDefaultFlags", tag = "ofrep",
    params(("If-None-Match" = Option<String>, Header, nullable = false, description = "The ETag of an earlier answer.")),
    request_body(content = EvaluationRequest, description = "The evaluation context (optional)."),
    responses(
        (status = 200, description = "`{flags: [...]}`", body = Object),
        (status = 304, description = "not modified"),
        (status = 400, description = "`{errorCode, errorDetails}`", body = Object)))]
async fn ofrep_root_bulk(
    State(c): State<FlagsClient>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let set = c.config().default_set.clone();
    evaluate_bulk(&c, &set, &headers, &body).await
}

/// The OpenAPI description of the routes under the prefix.
#[derive(OpenApi)]
#[openapi(paths(
    read_set,
    replace_set,
    put_flag,
    delete_flag,
    audit,
    version,
    ofrep_one,
    ofrep_bulk
))]
struct Api;

/// The OpenAPI description of the root OFREP routes.
#[derive(OpenApi)]
#[openapi(paths(ofrep_root_one, ofrep_root_bulk))]
struct RootApi;
