//! The HTTP routes of the sidecars (mounted under `/sidecars` by the umbrella crate), and the
//! mapping of [`SidecarError`] to problems.

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use stead_core::http::{Json as Body, JsonText, Name, Problem, Query, problems, schema};
use stead_core::{Result, Runtime};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::client::{SidecarClient, SidecarConfig};
use crate::error::SidecarError;
use crate::object::{
    Appended, Condition, KeyPage, Lifetime, MAX_LEASE_MS, MAX_PAGE, MAX_STEPS, MAX_TTL_MS,
    NextReply, SidecarInfo, Step, Written, validate_key,
};

/// The sidecar pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct SidecarPattern;

impl stead_core::http::Pattern for SidecarPattern {
    const PREFIX: &'static str = "/sidecars";
    const SETTINGS_KEY: &'static str = "sidecars";
    type Settings = SidecarConfig;

    fn configure(rt: &Runtime, settings: SidecarConfig) -> Result<()> {
        SidecarClient::with_config(rt, settings).map(drop)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        let client = SidecarClient::new(rt)?;
        // Values may be larger than the server's usual body limit: these routes take up to
        // the configured value size (and a little for the JSON around an item).
        let body_limit = usize::try_from(client.limits().max_value_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(4096);
        Ok(Router::new()
            .route("/{name}", get(info).delete(delete_all))
            .route("/{name}/ttl", put(set_ttl))
            .route("/{name}/keys", get(list_keys))
            .route(
                "/{name}/keys/{*key}",
                get(get_value).put(put_value).delete(delete_value),
            )
            .route("/{name}/lists/{*key}", post(append).get(range))
            .route("/{name}/steps", put(declare_steps).get(steps))
            .route("/{name}/steps/next", post(next_step))
            .route("/{name}/steps/{step}/complete", post(complete_step))
            .route("/{name}/steps/{step}/fail", post(fail_step))
            .route("/{name}/steps/{step}/resume", post(resume_step))
            .with_state(client)
            .layer(DefaultBodyLimit::max(body_limit))
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }
}

impl From<&SidecarError> for Problem {
    fn from(err: &SidecarError) -> Self {
        let detail = err.to_string();
        match err {
            SidecarError::PreconditionFailed { key, current } => {
                let p = Problem::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition-failed",
                    detail,
                )
                .with("key", key.clone());
                match current {
                    Some(v) => p.with("current_etag", etag(*v)),
                    None => p,
                }
            }
            SidecarError::QuotaExceeded {
                quota,
                limit,
                requested,
            } => Problem::new(StatusCode::INSUFFICIENT_STORAGE, "quota-exceeded", detail)
                .with("quota", quota.to_string())
                .with("limit", *limit)
                .with("requested", *requested),
            SidecarError::TooLarge { size, max } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "value-too-large", detail)
                    .with("size", *size)
                    .with("max", *max)
            }
            SidecarError::StepNotFound { name } => {
                Problem::new(StatusCode::NOT_FOUND, "step-not-found", detail)
                    .with("step", name.clone())
            }
            SidecarError::StepsDeclared { steps } => {
                Problem::new(StatusCode::CONFLICT, "steps-declared", detail)
                    .with("steps", steps.clone())
            }
            SidecarError::StepLeaseLost {
                name,
                status,
                current,
                ..
            } => {
                let p = Problem::new(StatusCode::CONFLICT, "step-lease-lost", detail)
                    .with("step", name.clone())
                    .with("step_status", status.to_string());
                match current {
                    Some(t) => p.with("current_token", *t),
                    None => p,
                }
            }
            SidecarError::StepNotFailed { name, status } => {
                Problem::new(StatusCode::CONFLICT, "step-not-failed", detail)
                    .with("step", name.clone())
                    .with("step_status", status.to_string())
            }
            SidecarError::Invalid(e) => Problem::from(e),
            SidecarError::Runtime(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for SidecarError {
    fn into_response(self) -> Response {
        match self {
            SidecarError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

fn not_found(what: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", format!("no {what}"))
}

/// The entity and the second parameter of a route (`/{name}/keys/{*key}`,
/// `/{name}/steps/{step}/...`), both checked: the entity as a name, the second by `check`.
fn entity_and(
    parts: (String, String),
    check: impl Fn(&str) -> Result<(), stead_core::InvalidInput>,
) -> Result<(String, String), Problem> {
    let (entity, second) = parts;
    stead_core::validate_name("the entity in the path", &entity).map_err(|e| Problem::from(&e))?;
    check(&second).map_err(|e| Problem::from(&e))?;
    Ok((entity, second))
}

async fn two_params<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<(String, String), Problem> {
    Path::<(String, String)>::from_request_parts(parts, state)
        .await
        .map(|Path(p)| p)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "bad-request", e.body_text()))
}

/// The entity and the key of a value or list route.
struct Keyed {
    entity: String,
    key: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Keyed {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let (entity, key) = entity_and(two_params(parts, state).await?, validate_key)?;
        Ok(Keyed { entity, key })
    }
}

/// The entity and the step of a step route.
struct StepPath {
    entity: String,
    step: String,
}

impl<S: Send + Sync> FromRequestParts<S> for StepPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let (entity, step) = entity_and(two_params(parts, state).await?, |s| {
            stead_core::validate_name("the step in the path", s)
        })?;
        Ok(StepPath { entity, step })
    }
}

/// An entity tag of a conditional header: whether it is weak, and the version it names if
/// it is one this server issues (`"12"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag {
    weak: bool,
    version: Option<u64>,
}

/// A conditional header's value: `*`, or a comma-separated list of entity tags (RFC 9110,
/// section 8.8.3). `None` when it is neither.
fn tag_list(value: &str) -> Option<Option<Vec<Tag>>> {
    let value = value.trim();
    if value == "*" {
        return Some(None);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (weak, quoted) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let body = quoted.strip_prefix('"')?;
        let close = body.find('"')?;
        let opaque = &body[..close];
        if opaque.bytes().any(|b| b < 0x21 || b == 0x7f) {
            return None;
        }
        tags.push(Tag {
            weak,
            version: opaque.parse().ok(),
        });
        rest = body[close + 1..].trim_start_matches([' ', '\t']);
        if !(rest.is_empty() || rest.starts_with(',')) {
            return None;
        }
    }
    if tags.is_empty() {
        None
    } else {
        Some(Some(tags))
    }
}

/// A header's text; an empty one is no header (a field with an empty value says nothing).
fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<&str>, Problem> {
    let text = headers
        .get(&name)
        .map(|v| {
            v.to_str().map_err(|_| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    format!("{name} is not text"),
                )
            })
        })
        .transpose()?;
    Ok(text.filter(|t| !t.trim().is_empty()))
}

/// The write condition of `If-Match` (`*` or a list of ETags, compared strongly: a weak
/// ETag never matches) or `If-None-Match: *`.
fn condition(headers: &HeaderMap) -> Result<Condition, Problem> {
    let bad = |detail: String| Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail);
    match (
        header_text(headers, header::IF_MATCH)?,
        header_text(headers, header::IF_NONE_MATCH)?,
    ) {
        (Some(_), Some(_)) => Err(bad("give If-Match or If-None-Match, not both".into())),
        (Some(m), None) => match tag_list(m) {
            Some(None) => Ok(Condition::IfPresent),
            Some(Some(tags)) => {
                let versions: Vec<u64> = tags
                    .iter()
                    .filter(|t| !t.weak)
                    .filter_map(|t| t.version)
                    .collect();
                Ok(match versions[..] {
                    [v] => Condition::IfVersion(v),
                    _ => Condition::IfVersionIn(versions),
                })
            }
            None => Err(bad(format!(
                "If-Match must be * or a list of ETags (\"12\", \"13\"), not {m}"
            ))),
        },
        (None, Some(m)) if m.trim() == "*" => Ok(Condition::IfAbsent),
        (None, Some(m)) => Err(bad(format!(
            "a write takes If-None-Match: * (create only), not {m}"
        ))),
        (None, None) => Ok(Condition::Always),
    }
}

/// Whether a read's `If-None-Match` (`*` or a list, compared weakly) names `version`: the
/// answer is then 304.
fn not_modified(headers: &HeaderMap, version: u64) -> Result<bool, Problem> {
    let Some(m) = header_text(headers, header::IF_NONE_MATCH)? else {
        return Ok(false);
    };
    match tag_list(m) {
        Some(None) => Ok(true),
        Some(Some(tags)) => Ok(tags.iter().any(|t| t.version == Some(version))),
        None => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("If-None-Match must be * or a list of ETags, not {m}"),
        )),
    }
}

fn json_response(status: StatusCode, version: Option<u64>, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = version
        && let Ok(v) = HeaderValue::from_str(&etag(v))
    {
        h.insert(header::ETAG, v);
    }
    resp
}

/// The sidecar's size, quotas and lifetime.
#[utoipa::path(get, path = "/{name}", operation_id = "getSidecar", tag = "sidecars",
    params(Name),
    responses((status = 200, description = "what the sidecar holds", body = SidecarInfo), problems::BadRequest))]
async fn info(
    State(c): State<SidecarClient>,
    Name(entity): Name,
) -> Result<Body<SidecarInfo>, SidecarError> {
    Ok(Body(c.info(&entity).await?))
}

/// Delete everything the sidecar holds.
#[utoipa::path(delete, path = "/{name}", operation_id = "deleteSidecar", tag = "sidecars",
    params(Name),
    responses((status = 204, description = "deleted"), problems::BadRequest))]
async fn delete_all(
    State(c): State<SidecarClient>,
    Name(entity): Name,
) -> Result<StatusCode, SidecarError> {
    c.delete_all(&entity).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A lifetime: after `ttl_ms` everything is deleted.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TtlBody {
    /// How long the sidecar lives, in ms; `null` removes the lifetime.
    #[schema(schema_with = schema::optional_integer::<1, MAX_TTL_MS>)]
    ttl_ms: Option<u64>,
    /// Whether each write starts the time again (default true).
    #[serde(default = "yes")]
    renew_on_write: bool,
}

fn yes() -> bool {
    true
}

/// Set or remove the sidecar's lifetime (the time runs from now).
#[utoipa::path(put, path = "/{name}/ttl", operation_id = "setSidecarTtl", tag = "sidecars",
    params(Name), request_body = TtlBody,
    responses((status = 200, description = "the sidecar with its lifetime", body = SidecarInfo), problems::BadRequest))]
async fn set_ttl(
    State(c): State<SidecarClient>,
    Name(entity): Name,
    Body(b): Body<TtlBody>,
) -> Result<Body<SidecarInfo>, SidecarError> {
    let lifetime = b.ttl_ms.map(|ttl_ms| Lifetime {
        ttl_ms,
        renew_on_write: b.renew_on_write,
    });
    Ok(Body(c.set_lifetime(&entity, lifetime).await?))
}

/// Which keys to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only keys that start with this.
    #[serde(default)]
    prefix: String,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// At most this many keys (default 100).
    #[param(schema_with = schema::integer::<1, { MAX_PAGE as u64 }>)]
    limit: Option<usize>,
}

/// List keys by prefix, in key order, a page at a time.
#[utoipa::path(get, path = "/{name}/keys", operation_id = "listSidecarKeys", tag = "sidecars",
    params(Name, ListParams),
    responses((status = 200, description = "a page of keys", body = KeyPage), problems::BadRequest))]
async fn list_keys(
    State(c): State<SidecarClient>,
    Name(entity): Name,
    Query(q): Query<ListParams>,
) -> Result<Body<KeyPage>, SidecarError> {
    let page = c
        .list(
            &entity,
            &q.prefix,
            q.cursor.as_deref(),
            q.limit.unwrap_or(100),
        )
        .await?;
    Ok(Body(page))
}

/// Read a value: its JSON text as written, with its ETag.
#[utoipa::path(get, path = "/{name}/keys/{key}", operation_id = "getSidecarValue", tag = "sidecars",
    params(Name, ("key" = String, Path, min_length = 1, max_length = 1024, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$", description = "The key: 1 to 1024 bytes, no control characters; may contain `/`."),
        ("If-None-Match" = Option<String>, Header, nullable = false, pattern = "^(|\\*|(W/)?\"[^\"\\u0000-\\u0020\\u007F]*\"([ \\t]*,[ \\t]*(W/)?\"[^\"\\u0000-\\u0020\\u007F]*\")*)$", description = "`*` or a list of ETags: 304 without a body if the value is at one of them.")),
    responses(
        (status = 200, description = "the value, with its `ETag`", body = serde_json::Value),
        (status = 304, description = "not modified: the value is at an ETag `If-None-Match` names"),
        problems::NotFound, problems::BadRequest))]
async fn get_value(
    State(c): State<SidecarClient>,
    k: Keyed,
    headers: HeaderMap,
) -> Result<Response, SidecarError> {
    match c.get(&k.entity, &k.key).await? {
        Some(v) => match not_modified(&headers, v.version) {
            Ok(true) => {
                let mut resp = StatusCode::NOT_MODIFIED.into_response();
                if let Ok(tag) = HeaderValue::from_str(&etag(v.version)) {
                    resp.headers_mut().insert(header::ETAG, tag);
                }
                Ok(resp)
            }
            Ok(false) => Ok(json_response(StatusCode::OK, Some(v.version), v.value)),
            Err(p) => Ok(p.into_response()),
        },
        None => Ok(not_found("such key").into_response()),
    }
}

/// Write a value (any JSON), optionally only at a version (`If-Match`) or only if absent
/// (`If-None-Match: *`).
#[utoipa::path(put, path = "/{name}/keys/{key}", operation_id = "putSidecarValue", tag = "sidecars",
    params(Name, ("key" = String, Path, min_length = 1, max_length = 1024, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$", description = "The key."),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = "^(|\\*|(W/)?\"[^\"\\u0000-\\u0020\\u007F]*\"([ \\t]*,[ \\t]*(W/)?\"[^\"\\u0000-\\u0020\\u007F]*\")*)$", description = "Write only if the key is at one of these ETags (compared strongly: a weak ETag never matches), or with `*` if it exists."),
        ("If-None-Match" = Option<String>, Header, nullable = false, pattern = "^\\*?$", description = "`*`: write only if the key does not exist.")),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "replaced; the new `ETag`", body = Written),
        (status = 201, description = "created; its `ETag`", body = Written),
        problems::PreconditionFailed, problems::InsufficientStorage, problems::BadRequest))]
async fn put_value(
    State(c): State<SidecarClient>,
    k: Keyed,
    headers: HeaderMap,
    JsonText(value): JsonText,
) -> Result<Response, SidecarError> {
    let cond = match condition(&headers) {
        Ok(c) => c,
        Err(p) => return Ok(p.into_response()),
    };
    let w = c.put_raw(&k.entity, &k.key, value, cond).await?;
    let status = stead_core::http::created_or_ok(w.created);
    let body = serde_json::to_string(&w).unwrap_or_default();
    Ok(json_response(status, Some(w.version), body))
}

/// Delete a value, optionally only at a version (`If-Match`).
#[utoipa::path(delete, path = "/{name}/keys/{key}", operation_id = "deleteSidecarValue", tag = "sidecars",
    params(Name, ("key" = String, Path, min_length = 1, max_length = 1024, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$", description = "The key."),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = "^(|\\*|(W/)?\"[^\"\\u0000-\\u0020\\u007F]*\"([ \\t]*,[ \\t]*(W/)?\"[^\"\\u0000-\\u0020\\u007F]*\")*)$", description = "Delete only if the key is at this ETag.")),
    responses(
        (status = 204, description = "deleted"),
        problems::NotFound, problems::PreconditionFailed, problems::BadRequest))]
async fn delete_value(
    State(c): State<SidecarClient>,
    k: Keyed,
    headers: HeaderMap,
) -> Result<Response, SidecarError> {
    let cond = match condition(&headers) {
        Ok(Condition::IfAbsent) => {
            return Ok(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "a delete takes If-Match, not If-None-Match",
            )
            .into_response());
        }
        Ok(c) => c,
        Err(p) => return Ok(p.into_response()),
    };
    match c.delete(&k.entity, &k.key, cond).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        // An absent key is a 404 with or without a condition: a precondition is ignored
        // where the request without it would not succeed (RFC 9110, 13.2.1).
        Ok(false) | Err(SidecarError::PreconditionFailed { current: None, .. }) => {
            Ok(not_found("such key").into_response())
        }
        Err(e) => Err(e),
    }
}

/// How to append.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AppendParams {
    /// Keep at most this many items; the oldest go first.
    #[param(schema_with = schema::integer::<1, { u64::MAX }>)]
    max_len: Option<u64>,
}

/// Append an item (any JSON) to a list; answers its index.
#[utoipa::path(post, path = "/{name}/lists/{key}", operation_id = "appendSidecarList", tag = "sidecars",
    params(Name, ("key" = String, Path, min_length = 1, max_length = 1024, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$", description = "The list's key."), AppendParams),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "appended", body = Appended),
        problems::InsufficientStorage, problems::BadRequest))]
async fn append(
    State(c): State<SidecarClient>,
    k: Keyed,
    Query(q): Query<AppendParams>,
    JsonText(item): JsonText,
) -> Result<Body<Appended>, SidecarError> {
    Ok(Body(
        c.append_raw(&k.entity, &k.key, item, q.max_len).await?,
    ))
}

/// Which items to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RangeParams {
    /// The first index (default 0).
    #[serde(default)]
    #[param(schema_with = schema::integer::<0, { u64::MAX }>)]
    from: u64,
    /// At most this many items (default 100).
    #[param(schema_with = schema::integer::<1, { MAX_PAGE as u64 }>)]
    limit: Option<usize>,
}

/// Items of a list, by index.
#[derive(Debug, Serialize, ToSchema)]
struct ItemsBody {
    /// The items, in index order.
    items: Vec<ItemBody>,
    /// The index of the oldest item kept.
    first: u64,
    /// The index the next append gets.
    next: u64,
}

/// One item.
#[derive(Debug, Serialize, ToSchema)]
struct ItemBody {
    /// Its index.
    index: u64,
    /// The item, as appended.
    #[schema(value_type = serde_json::Value)]
    item: Box<RawValue>,
}

/// Read items of a list, from an index on.
#[utoipa::path(get, path = "/{name}/lists/{key}", operation_id = "readSidecarList", tag = "sidecars",
    params(Name, ("key" = String, Path, min_length = 1, max_length = 1024, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$", description = "The list's key."), RangeParams),
    responses(
        (status = 200, description = "the items", body = ItemsBody),
        problems::NotFound, problems::BadRequest))]
async fn range(
    State(c): State<SidecarClient>,
    k: Keyed,
    Query(q): Query<RangeParams>,
) -> Result<Response, SidecarError> {
    let Some(items) = c
        .range(&k.entity, &k.key, q.from, q.limit.unwrap_or(100))
        .await?
    else {
        return Ok(not_found("such list").into_response());
    };
    let body = ItemsBody {
        items: items
            .items
            .into_iter()
            .filter_map(|i| {
                RawValue::from_string(i.item).ok().map(|item| ItemBody {
                    index: i.index,
                    item,
                })
            })
            .collect(),
        first: items.first,
        next: items.next,
    };
    Ok(Body(body).into_response())
}

/// The steps of the entity's workflow, in order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StepsBody {
    /// Step names (1 to 256 characters each), in the order they run.
    #[schema(schema_with = step_names)]
    steps: Vec<String>,
}

/// 1 to [`MAX_STEPS`] names, each once.
fn step_names() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(schema::name())
        .min_items(Some(1))
        .max_items(Some(MAX_STEPS))
        .unique_items(true)
        .build()
}

/// Declare the steps (again with the same steps: no change).
#[utoipa::path(put, path = "/{name}/steps", operation_id = "declareSidecarSteps", tag = "sidecars",
    params(Name), request_body = StepsBody,
    responses(
        (status = 200, description = "the steps", body = [Step]),
        problems::Conflict, problems::BadRequest))]
async fn declare_steps(
    State(c): State<SidecarClient>,
    Name(entity): Name,
    Body(b): Body<StepsBody>,
) -> Result<Body<Vec<Step>>, SidecarError> {
    let names: Vec<&str> = b.steps.iter().map(String::as_str).collect();
    Ok(Body(c.declare_steps(&entity, &names).await?))
}

/// The steps, with their outputs.
#[utoipa::path(get, path = "/{name}/steps", operation_id = "getSidecarSteps", tag = "sidecars",
    params(Name),
    responses((status = 200, description = "the steps", body = [Step]), problems::BadRequest))]
async fn steps(
    State(c): State<SidecarClient>,
    Name(entity): Name,
) -> Result<Body<Vec<Step>>, SidecarError> {
    Ok(Body(c.steps(&entity).await?))
}

/// Who takes the next step, and for how long.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NextBody {
    /// The worker.
    #[schema(schema_with = schema::name)]
    worker: String,
    /// How long the lease lasts, in ms.
    #[schema(schema_with = schema::integer::<1, MAX_LEASE_MS>)]
    lease_ms: u64,
}

/// Lease the next step, if it can be run now.
#[utoipa::path(post, path = "/{name}/steps/next", operation_id = "nextSidecarStep", tag = "sidecars",
    params(Name), request_body = NextBody,
    responses((status = 200, description = "a lease, or why there is none", body = NextReply), problems::BadRequest))]
async fn next_step(
    State(c): State<SidecarClient>,
    Name(entity): Name,
    Body(b): Body<NextBody>,
) -> Result<Body<NextReply>, SidecarError> {
    let lease = std::time::Duration::from_millis(b.lease_ms);
    Ok(Body(c.next_step(&entity, &b.worker, lease).await?))
}

/// A leased step's output.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    /// The lease's token.
    #[schema(schema_with = schema::integer::<0, { u64::MAX }>)]
    token: u64,
    /// The step's output (any JSON).
    #[schema(value_type = Option<serde_json::Value>)]
    output: Option<Box<RawValue>>,
}

/// Complete a leased step.
#[utoipa::path(post, path = "/{name}/steps/{step}/complete", operation_id = "completeSidecarStep", tag = "sidecars",
    params(Name, ("step" = String, Path, description = "The step.")), request_body = CompleteBody,
    responses(
        (status = 200, description = "done", body = Step),
        problems::NotFound, problems::Conflict, problems::BadRequest))]
async fn complete_step(
    State(c): State<SidecarClient>,
    p: StepPath,
    Body(b): Body<CompleteBody>,
) -> Result<Body<Step>, SidecarError> {
    let output = b.output.map(|o| o.get().to_owned());
    Ok(Body(
        c.finish(&p.entity, &p.step, b.token, Ok(output)).await?,
    ))
}

/// A leased step's failure.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FailBody {
    /// The lease's token.
    #[schema(schema_with = schema::integer::<0, { u64::MAX }>)]
    token: u64,
    /// What went wrong (kept up to 4096 characters).
    error: String,
}

/// Record that a leased step failed.
#[utoipa::path(post, path = "/{name}/steps/{step}/fail", operation_id = "failSidecarStep", tag = "sidecars",
    params(Name, ("step" = String, Path, description = "The step.")), request_body = FailBody,
    responses(
        (status = 200, description = "failed", body = Step),
        problems::NotFound, problems::Conflict, problems::BadRequest))]
async fn fail_step(
    State(c): State<SidecarClient>,
    p: StepPath,
    Body(b): Body<FailBody>,
) -> Result<Body<Step>, SidecarError> {
    Ok(Body(
        c.fail_step(&p.entity, &p.step, b.token, &b.error).await?,
    ))
}

/// Re-open a failed step.
#[utoipa::path(post, path = "/{name}/steps/{step}/resume", operation_id = "resumeSidecarStep", tag = "sidecars",
    params(Name, ("step" = String, Path, description = "The step.")),
    responses(
        (status = 200, description = "pending again", body = Step),
        problems::NotFound, problems::Conflict, problems::BadRequest))]
async fn resume_step(
    State(c): State<SidecarClient>,
    p: StepPath,
) -> Result<Body<Step>, SidecarError> {
    Ok(Body(c.resume_step(&p.entity, &p.step).await?))
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(
    info,
    delete_all,
    set_ttl,
    list_keys,
    get_value,
    put_value,
    delete_value,
    append,
    range,
    declare_steps,
    steps,
    next_step,
    complete_step,
    fail_step,
    resume_step
))]
struct Api;
