//! HTTP plumbing shared by every pattern's routes: RFC 9457 problem details, a JSON
//! extractor whose rejections are problems too, and name validation.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// The content type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The longest name accepted in a path, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// An RFC 9457 problem details body.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, precisely.
    pub detail: String,
    /// Extra members (for example `retry_after_ms`).
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
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

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
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
            Error::ClassConflict { .. } | Error::WrongReplyType => {
                Problem::new(S::INTERNAL_SERVER_ERROR, "internal", err.to_string())
            }
            Error::InvalidSchedule { detail } => {
                Problem::new(S::BAD_REQUEST, "invalid-schedule", detail.clone())
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if matches!(
            self,
            Error::Storage(_) | Error::Codec(_) | Error::Panicked { .. }
        ) {
            tracing::error!(error = %self, source = ?std::error::Error::source(&self), "request failed");
        }
        Problem::from(&self).into_response()
    }
}

/// A JSON body extractor whose every rejection is a problem+json response: 400 for
/// malformed JSON, wrong types or missing fields (the detail says which), 413 for oversized
/// bodies, 415 for a wrong content type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_problem(rejection)),
        }
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
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "expected a request body with Content-Type: application/json",
        ),
        _ if status == S::PAYLOAD_TOO_LARGE => Problem::new(
            S::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "the request body is larger than the server accepts",
        ),
        _ => Problem::new(status, "bad-body", detail),
    }
}

/// Checks a name taken from a path: 1 to 256 bytes, no control characters.
pub fn validate_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::bad_request(format!("{what} may not be empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::bad_request(format!(
            "{what} is {} bytes long; the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::bad_request(format!(
            "{what} may not contain control characters"
        )));
    }
    Ok(())
}

/// Checks a duration in milliseconds from a request: at least 1, at most `max`.
pub fn validate_ms(what: &str, value: u64, max: u64) -> Result<(), Error> {
    if value == 0 || value > max {
        return Err(Error::bad_request(format!(
            "{what} must be between 1 and {max}, not {value}"
        )));
    }
    Ok(())
}

/// Middleware that turns the bodiless error responses axum produces itself (unknown route,
/// wrong method, oversized body) into problem+json responses. Use with
/// `axum::middleware::from_fn(stead_core::http::problem_for_bare_errors)`.
pub async fn problem_for_bare_errors(req: Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
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
