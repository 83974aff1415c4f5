//! HTTP plumbing shared by every pattern's routes: RFC 9457 problem details, a JSON
//! extractor whose rejections are problems too, the validated [`Name`] path extractor, the
//! OpenAPI pieces every route declares alike ([`schema`], [`problems`]), the query of every
//! log route ([`LogParams`]), the [`Pattern`] trait by which the umbrella crate mounts each
//! pattern, and who may call them ([`RequireBearer`], [`Routes`]).

mod auth;
mod log;
mod name;
mod openapi;
mod pattern;
mod peer;
mod websocket;

pub use auth::{Checked, MIN_TOKEN_CHARS, RequestCheck, RequireBearer, Routes, check_token};
pub use log::LogParams;
pub use name::{Name, Names};
pub use openapi::{document_problems, problems, schema};
pub use pattern::Pattern;
pub(crate) use peer::PeerSocketOpen;
pub use peer::{
    MAX_PEER_BATCH, MAX_PEER_BATCH_BYTES, PEER_CALLS_PATH, PEER_SOCKET_PATH, PeerReplies,
    peer_routes,
};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// The content type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details body.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[serde(rename = "type")]
    #[schema(example = "/problems/bad-request")]
    pub kind: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, precisely.
    pub detail: String,
    /// Extra members (for example `retry_after_ms`).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    #[schema(ignore)]
    retry_after_secs: Option<u64>,
}

impl Problem {
    /// A problem with this status, a type slug (`/problems/<slug>`) and detail.
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            extensions: serde_json::Map::new(),
            retry_after_secs: None,
        }
    }

    /// Adds an extension member. The members RFC 9457 defines (`type`, `title`, `status`,
    /// `detail`, `instance`) are the problem's own: an extension of one of those names is
    /// sent with the prefix `ext_` (`status` of a step becomes `ext_status`), so that a body
    /// never holds a member twice. Name extensions otherwise.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        let key = if matches!(key, "type" | "title" | "status" | "detail" | "instance") {
            format!("ext_{key}")
        } else {
            key.to_owned()
        };
        self.extensions.insert(key, value.into());
        self
    }

    /// Sends a `Retry-After` header (seconds, rounded up) with the response.
    pub fn retry_after(mut self, d: std::time::Duration) -> Self {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        self.retry_after_secs = Some(secs.max(1));
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_after_secs;
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<&Error> for Problem {
    fn from(err: &Error) -> Self {
        use StatusCode as S;
        match err {
            Error::Overloaded { retry_after, .. } => {
                Problem::new(S::SERVICE_UNAVAILABLE, "overloaded", err.to_string())
                    .with("retry_after_ms", retry_after.as_millis() as u64)
                    .retry_after(*retry_after)
            }
            Error::Reset => Problem::new(S::SERVICE_UNAVAILABLE, "reset", err.to_string())
                .retry_after(std::time::Duration::from_secs(1)),
            Error::Panicked { .. } => Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "panicked",
                "the object failed while handling the request; nothing it did was kept",
            ),
            Error::InvalidKey { .. } => {
                Problem::new(S::BAD_REQUEST, "invalid-key", err.to_string())
            }
            Error::ValueTooLarge { .. } => {
                Problem::new(S::PAYLOAD_TOO_LARGE, "value-too-large", err.to_string())
            }
            Error::Codec(e) => Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "codec",
                format!("a stored value could not be encoded or decoded: {e}"),
            ),
            Error::Storage(_) => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "storage",
                "the storage backend failed; retry later",
            )
            .retry_after(std::time::Duration::from_secs(1)),
            Error::Timeout => Problem::new(S::GATEWAY_TIMEOUT, "timeout", err.to_string()),
            Error::NotFound { what } => {
                Problem::new(S::NOT_FOUND, "not-found", format!("{what} not found"))
            }
            Error::BadRequest { detail } => {
                Problem::new(S::BAD_REQUEST, "bad-request", detail.clone())
            }
            Error::Conflict { detail } => Problem::new(S::CONFLICT, "conflict", detail.clone()),
            Error::ShuttingDown => {
                Problem::new(S::SERVICE_UNAVAILABLE, "shutting-down", err.to_string())
                    .retry_after(std::time::Duration::from_secs(1))
            }
            Error::InvalidId => Problem::new(S::BAD_REQUEST, "invalid-id", err.to_string()),
            Error::ClassConflict { .. }
            | Error::AlreadyRegistered { .. }
            | Error::InvalidConfig { .. } => {
                Problem::new(S::INTERNAL_SERVER_ERROR, "internal", err.to_string())
            }
            Error::Other(_) => Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "the object failed while handling the request",
            ),
            Error::InvalidSchedule { detail } => {
                Problem::new(S::BAD_REQUEST, "invalid-schedule", detail.clone())
            }
            Error::Sql(e) => {
                use crate::SqlErrorKind as K;
                let (status, kind) = match e.kind {
                    K::Invalid => (S::BAD_REQUEST, "sql-invalid"),
                    K::Refused => (S::FORBIDDEN, "sql-refused"),
                    K::Constraint => (S::CONFLICT, "sql-constraint"),
                    K::TooLarge => (S::INSUFFICIENT_STORAGE, "sql-too-large"),
                    K::Interrupted => (S::UNPROCESSABLE_ENTITY, "sql-interrupted"),
                    K::Failed => (S::BAD_REQUEST, "sql-failed"),
                    _ => (S::INTERNAL_SERVER_ERROR, "sql"),
                };
                Problem::new(status, kind, e.message.clone()).with("statement", e.statement.clone())
            }
            Error::TooManyWebSockets { max } => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "too-many-websockets",
                err.to_string(),
            )
            .with("max", *max as u64)
            .retry_after(std::time::Duration::from_secs(1)),
        }
    }
}

/// A caller's invalid input: a 400 `bad-request` problem, the same whichever pattern or
/// extractor refused it.
impl From<&crate::InvalidInput> for Problem {
    fn from(e: &crate::InvalidInput) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", e.detail())
    }
}

/// A new id refused because none remembered may be forgotten yet: a 503 `remembering`
/// problem with `remembered`, `retry_after_ms` and a `Retry-After` header, the same in every
/// pattern that remembers ids.
impl From<&crate::Remembering> for Problem {
    fn from(e: &crate::Remembering) -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "remembering",
            e.to_string(),
        )
        .with("remembered", e.remembered)
        .with("retry_after_ms", e.retry_after_ms)
        .retry_after(std::time::Duration::from_millis(e.retry_after_ms))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if matches!(
            self,
            Error::Storage(_) | Error::Codec(_) | Error::Panicked { .. } | Error::Other(_)
        ) {
            tracing::error!(error = %self, source = ?std::error::Error::source(&self), "request failed");
        }
        Problem::from(&self).into_response()
    }
}

/// A JSON body extractor whose every rejection is a problem+json response: 400 for
/// malformed JSON, wrong types or missing fields (the detail says which), 413 for oversized
/// bodies, 415 for a wrong content type.
///
/// A number with a zero fraction (`19.0`) is an integer to JSON Schema, so it is accepted
/// where an integer is expected, as the OpenAPI document promises.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_body(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses a JSON body as `T`, with the problems [`Json`] answers.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // The usual request parses once; only a failure is parsed again, to say where.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    match axum::Json::<T>::from_bytes(bytes) {
        Ok(axum::Json(v)) => Ok(v),
        Err(rejection) => {
            // Only on failure, so the usual request pays nothing: try again with
            // integral floats read as integers.
            if matches!(rejection, JsonRejection::JsonDataError(_))
                && let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes)
                && integral_floats_to_integers(&mut value)
                && let Ok(v) = serde_json::from_value(value)
            {
                return Ok(v);
            }
            Err(json_problem(rejection))
        }
    }
}

/// The bytes of a request body that says it is JSON: 415 for another content type, 413
/// when it is larger than the route accepts.
async fn json_body<S: Send + Sync>(req: Request, state: &S) -> Result<axum::body::Bytes, Problem> {
    if !json_content_type(req.headers()) {
        return Err(not_json());
    }
    let bytes = axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    "the request body is larger than the server accepts",
                )
            } else if let Some(t) = body_timeout(&e) {
                Problem::new(StatusCode::REQUEST_TIMEOUT, "body-timeout", t.to_string())
            } else {
                Problem::new(e.status(), "bad-body", e.body_text())
            }
        })?;
    check_nesting(&bytes)?;
    Ok(bytes)
}

/// A request body that did not arrive whole within its deadline (the server's
/// `--body-read-timeout-ms`): reading it fails with this, and the JSON extractors answer
/// 408 `body-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub std::time::Duration);

/// The [`BodyTimeout`] behind a failed body read, if that is why it failed.
fn body_timeout(e: &(dyn std::error::Error + 'static)) -> Option<BodyTimeout> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<BodyTimeout>() {
            return Some(*t);
        }
        cause = c.source();
    }
    None
}

/// How deep a JSON request body may nest. What a route accepts is stored inside a few more
/// levels of its own and must read back (the stored form's reader stops at 128): one limit
/// at the edge, well below that, keeps every accepted value readable forever.
pub const MAX_BODY_DEPTH: usize = 64;

/// Refuses a body whose arrays and objects nest deeper than [`MAX_BODY_DEPTH`] (a scan of
/// its bytes, before any parsing).
fn check_nesting(bytes: &[u8]) -> Result<(), Problem> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_BODY_DEPTH {
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        "too-deep",
                        format!(
                            "the request body nests deeper than {MAX_BODY_DEPTH} levels of arrays and objects"
                        ),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// 201 Created for a request that made the thing it names, 200 OK for one that found it
/// there (a change, or a repeat).
pub fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// A JSON body that may be left out: no body at all (an empty one, with or without its
/// `Content-Type`) or `null` reads as `T::default()`; a body is read as [`Json`] reads it, with the
/// same problems. For actions whose every parameter is optional (`POST .../lease`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let h = req.headers();
        let empty = h.get(header::CONTENT_LENGTH).is_some_and(|v| v == "0")
            || (!h.contains_key(header::CONTENT_TYPE)
                && !h.contains_key(header::TRANSFER_ENCODING));
        if empty {
            return Ok(OptionalJson(T::default()));
        }
        let bytes = json_body(req, state).await?;
        // No body, or `null` (which an optional body's schema allows): the defaults.
        if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// A JSON request body as text, kept byte for byte (for routes that store the JSON a client
/// sent, such as a sidecar's values). It checks the content type (415), the size (413) and
/// UTF-8 (400); whether the text is one JSON value is for the handler to check, once.
#[derive(Debug, Clone, Default)]
pub struct JsonText(pub String);

impl<S: Send + Sync> FromRequest<S> for JsonText {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_body(req, state).await?;
        String::from_utf8(bytes.into()).map(JsonText).map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "the request body is not UTF-8",
            )
        })
    }
}

/// A query-string extractor whose rejection is a 400 problem+json that says what is wrong
/// (a wrong type, an unknown parameter when the type refuses them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| Problem::from(&Error::bad_request(e.body_text())))
    }
}

/// The 415 of a request that does not say its body is JSON.
fn not_json() -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "expected Content-Type: application/json (a write says it even without a body)",
    )
}

/// A tower layer that refuses a `POST`, `PUT` or `PATCH` that does not say
/// `Content-Type: application/json` (or `application/*+json`), with or without a body, with
/// 415. A web page can send a cross-site `POST` with another content type (a form,
/// `text/plain`) without asking the browser's permission first; with a JSON content type it
/// cannot, so an unauthenticated route can never be written by a page its operator happens
/// to visit. (`DELETE` is never sent cross-site without that permission, so it needs no
/// content type.) Every pattern router carries it (see [`Routes`]); add it to routes of
/// your own with `.route_layer(stead_core::http::RequireJsonWrites)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequireJsonWrites;

impl RequestCheck for RequireJsonWrites {
    fn refuse(&self, method: &Method, headers: &axum::http::HeaderMap) -> Option<Response> {
        let write = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
        (write && !json_content_type(headers)).then(|| not_json().into_response())
    }
}

impl<S> tower::Layer<S> for RequireJsonWrites {
    type Service = Checked<S, RequireJsonWrites>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked::new(inner, *self)
    }
}

/// [`RequireJsonWrites`] for stead's own routers ([`Routes`]): a method the route does not
/// take is answered 405 before any content type is looked at. A write without a JSON content
/// type is first shown, with a method no route takes, to the routes it was meant for; their
/// 405 stands when its `Allow` lacks the write's method, and the write is refused with 415
/// otherwise. No handler runs for that probe because no stead route takes any method
/// (`axum::routing::any`): a route that did would run its handler for it, which is why the
/// public layer, for an app's own routes, does not probe.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonWritesAfterMethods;

impl<S> tower::Layer<S> for JsonWritesAfterMethods {
    type Service = JsonWrites<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JsonWrites { inner }
    }
}

/// The service of [`JsonWritesAfterMethods`].
#[derive(Debug, Clone)]
pub(crate) struct JsonWrites<S> {
    inner: S,
}

/// The method of the probe: one no route takes.
const PROBE_METHOD: &[u8] = b"STEAD-NO-SUCH-METHOD";

impl<S> tower::Service<Request> for JsonWrites<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, std::result::Result<Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(refused) = RequireJsonWrites.refuse(req.method(), req.headers()) else {
            return Box::pin(self.inner.call(req));
        };
        let method = std::mem::replace(
            req.method_mut(),
            Method::from_bytes(PROBE_METHOD).expect("a valid method token"),
        );
        let uri = req
            .extensions()
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| req.uri().clone(), |o| o.0.clone());
        // The service that was made ready is used for the probe; the clone left behind is
        // the one the next call readies.
        let ready = self.inner.clone();
        let mut probe = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let answer = probe.call(req).await?;
            let allowed = answer
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|allow| allow.split(',').any(|m| m.trim() == method.as_str()));
            if answer.status() != StatusCode::METHOD_NOT_ALLOWED || allowed {
                return Ok(refused);
            }
            // The routes' 405, told of the method the client sent (not the probe's).
            let mut bare = StatusCode::METHOD_NOT_ALLOWED.into_response();
            if let Some(allow) = answer.headers().get(header::ALLOW) {
                bare.headers_mut().insert(header::ALLOW, allow.clone());
            }
            Ok(problem_for_bare_error(&method, uri.path(), bare))
        })
    }
}

/// Whether the request says its body is JSON (`application/json`, or `application/*+json`).
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim().as_bytes();
    let (top, rest) = essence.split_at(essence.len().min(12));
    top.eq_ignore_ascii_case(b"application/")
        && (rest.eq_ignore_ascii_case(b"json")
            || (rest.len() >= 5 && rest[rest.len() - 5..].eq_ignore_ascii_case(b"+json")))
}

/// Rewrites every float with a zero fraction whose integer a float holds exactly (at most
/// 2^53 in size) as that integer; answers whether anything changed. Larger floats are left
/// alone: `-9223372036854775809` is no `i64`, though as a float it rounds to one.
fn integral_floats_to_integers(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            if f.fract() != 0.0 || !f.is_finite() || f.abs() > EXACT {
                return false;
            }
            *v = Value::from(f as i64);
            true
        }
        Value::Array(a) => a
            .iter_mut()
            .fold(false, |changed, v| integral_floats_to_integers(v) | changed),
        Value::Object(m) => m
            .values_mut()
            .fold(false, |changed, v| integral_floats_to_integers(v) | changed),
        _ => false,
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_problem(rejection: JsonRejection) -> Problem {
    use StatusCode as S;
    let status = rejection.status();
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => Problem::new(S::BAD_REQUEST, "invalid-body", detail),
        JsonRejection::JsonSyntaxError(_) => Problem::new(S::BAD_REQUEST, "malformed-json", detail),
        JsonRejection::MissingJsonContentType(_) => not_json(),
        _ if status == S::PAYLOAD_TOO_LARGE => Problem::new(
            S::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "the request body is larger than the server accepts",
        ),
        _ => Problem::new(status, "bad-body", detail),
    }
}

/// A tower layer that turns the bodiless error responses axum produces itself (unknown
/// route, wrong method, oversized body) into problem+json responses. Every pattern router
/// carries it; add it to your own app with `.layer(stead_core::http::ProblemLayer)`.
///
/// It allocates nothing on the way through: a response that is not a bare error passes
/// untouched, so layering it more than once costs next to nothing.
///
/// ```
/// use axum::{Router, routing::get};
/// let app: Router = Router::new()
///     .route("/hello", get(|| async { "hello" }))
///     .layer(stead_core::http::ProblemLayer);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemLayer;

impl<S> tower::Layer<S> for ProblemLayer {
    type Service = ProblemService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProblemService { inner }
    }
}

/// The service of [`ProblemLayer`].
#[derive(Debug, Clone)]
pub struct ProblemService<S> {
    inner: S,
}

impl<S, B> tower::Service<axum::http::Request<B>> for ProblemService<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ProblemFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        // The path the client sent: inside a nested router the request's own URI has lost
        // the prefix, which axum keeps as the original URI. Both clones are reference
        // counts, not copies.
        let uri = req
            .extensions()
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| req.uri().clone(), |o| o.0.clone());
        let request = Some((req.method().clone(), uri));
        ProblemFuture {
            inner: self.inner.call(req),
            request,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ProblemService`].
    #[derive(Debug)]
    pub struct ProblemFuture<F> {
        #[pin]
        inner: F,
        request: Option<(Method, Uri)>,
    }
}

impl<F, E> std::future::Future for ProblemFuture<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.inner.poll(cx))?;
        let (method, uri) = this
            .request
            .take()
            .expect("ProblemFuture polled after it completed");
        std::task::Poll::Ready(Ok(problem_for_bare_error(&method, uri.path(), resp)))
    }
}

/// `resp` itself, or a problem+json response in its place when it is a bodiless error.
fn problem_for_bare_error(method: &Method, path: &str, resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let typed = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON) || ct.starts_with("application/json"));
    if typed {
        return resp;
    }
    let (slug, detail) = match status {
        StatusCode::NOT_FOUND => ("not-found", format!("no route matches {method} {path}")),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = resp
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .filter(|a| !a.is_empty())
                .map(|a| format!("; it accepts {a}"))
                .unwrap_or_default();
            (
                "method-not-allowed",
                format!("{method} is not allowed on {path}{allow}"),
            )
        }
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body-too-large",
            "the request body is larger than the server accepts".to_owned(),
        ),
        _ => (
            "error",
            status.canonical_reason().unwrap_or("error").to_owned(),
        ),
    };
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut out = Problem::new(status, slug, detail).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

/// The fallback for unknown routes: a 404 problem.
pub async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "no route matches this path",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn status(app: axum::Router, method: &str, content_type: Option<&str>) -> u16 {
        use tower::ServiceExt;
        let mut req = axum::http::Request::builder().method(method).uri("/x");
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let resp = app
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        resp.status().as_u16()
    }

    #[tokio::test]
    async fn a_method_a_route_does_not_take_is_405_before_any_content_type() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let routes = || {
            axum::Router::new().route(
                "/x",
                axum::routing::get(|| async { "got" }).post(|| async { "posted" }),
            )
        };
        let ours = routes().route_layer(JsonWritesAfterMethods);
        assert_eq!(status(ours.clone(), "PUT", None).await, 405);
        assert_eq!(status(ours.clone(), "POST", None).await, 415);
        assert_eq!(
            status(ours.clone(), "POST", Some("application/json")).await,
            200
        );
        assert_eq!(status(ours, "GET", None).await, 200);
        // The public layer, for an app's own routes, never shows a request to a handler
        // before it is checked: a route that takes any method runs nothing for it.
        let ran = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        let any = axum::Router::new()
            .route(
                "/x",
                axum::routing::any(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { "ran" }
                }),
            )
            .route_layer(RequireJsonWrites);
        assert_eq!(status(any, "PUT", None).await, 415);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        n: u32,
        by: i64,
    }

    async fn extract(content_type: &str, body: &str) -> Result<Body, Problem> {
        let req = axum::http::Request::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        Json::<Body>::from_request(req, &()).await.map(|Json(b)| b)
    }

    #[tokio::test]
    async fn integral_floats_are_integers_and_every_rejection_is_a_problem() {
        let ok = Body { n: 19, by: -3 };
        assert_eq!(
            extract("application/json", r#"{"n":19,"by":-3}"#)
                .await
                .unwrap(),
            ok
        );
        assert_eq!(
            extract("application/json", r#"{"n":19.0,"by":-3.0}"#)
                .await
                .unwrap(),
            ok
        );
        assert_eq!(
            extract(
                "application/merge-patch+json; charset=utf-8",
                r#"{"n":19,"by":-3}"#
            )
            .await
            .unwrap(),
            ok
        );
        let p = extract("application/json", r#"{"n":19.5,"by":1}"#)
            .await
            .unwrap_err();
        assert_eq!((p.status, p.kind.as_str()), (400, "/problems/invalid-body"));
        assert!(
            p.detail.contains("n: invalid type: floating point"),
            "{}",
            p.detail
        );
        let p = extract("application/json", r#"{"n":1e20,"by":1}"#)
            .await
            .unwrap_err();
        assert_eq!(p.status, 400);
        // Beyond 2^53 a float is not an exact integer: below i64::MIN stays out of range.
        let p = extract("application/json", r#"{"n":1,"by":-9223372036854775809}"#)
            .await
            .unwrap_err();
        assert_eq!(p.status, 400);
        let p = extract("application/json", r#"{"n":1,"by":1,"x":2}"#)
            .await
            .unwrap_err();
        assert!(p.detail.contains("unknown field `x`"), "{}", p.detail);
        let p = extract("application/json", r#"{"n":1,"#).await.unwrap_err();
        assert_eq!(p.kind, "/problems/malformed-json");
        let p = extract("text/plain", r#"{"n":1,"by":1}"#)
            .await
            .unwrap_err();
        assert_eq!(p.status, 415);
    }

    #[tokio::test]
    async fn a_body_nested_deeper_than_the_limit_is_refused_before_parsing() {
        let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let body = |inner: String| format!(r#"{{"n":1,"by":1,"x":{inner}}}"#);
        #[derive(Debug, serde::Deserialize)]
        struct Any {
            #[allow(dead_code)]
            x: serde_json::Value,
        }
        let extract_any = |b: String| async move {
            let req = axum::http::Request::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(b))
                .unwrap();
            Json::<Any>::from_request(req, &()).await.map(|_| ())
        };
        // The object holding `x` is one level: 63 more are accepted, 64 are not.
        assert!(extract_any(body(nest(MAX_BODY_DEPTH - 1))).await.is_ok());
        let p = extract_any(body(nest(MAX_BODY_DEPTH))).await.unwrap_err();
        assert_eq!((p.status, p.kind.as_str()), (400, "/problems/too-deep"));
        // Brackets inside strings do not count.
        let quoted = format!(r#"{{"x":"{}\"{}"}}"#, "[".repeat(200), "{".repeat(200));
        assert!(extract_any(quoted).await.is_ok());
    }

    #[test]
    fn an_extension_never_repeats_a_member_of_the_problem() {
        let p = Problem::new(StatusCode::CONFLICT, "x", "d")
            .with("status", "done")
            .with("step", "a");
        let body = serde_json::to_value(&p).unwrap();
        assert_eq!(body["status"], 409);
        assert_eq!(body["ext_status"], "done");
        assert_eq!(body["step"], "a");
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text.matches("\"status\"").count(), 1, "{text}");
    }

    #[test]
    fn json_content_types() {
        let is_json = |ct: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            json_content_type(&h)
        };
        for ct in [
            "application/json",
            "Application/JSON",
            " application/json ; charset=utf-8",
            "application/problem+json",
            "APPLICATION/MERGE-PATCH+JSON",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in [
            "",
            "application/",
            "application/jsonx",
            "application/json-seq",
            "text/json",
            "text/plain+json",
            "application/xml",
        ] {
            assert!(!is_json(ct), "{ct}");
        }
        assert!(!json_content_type(&axum::http::HeaderMap::new()));
    }
}
