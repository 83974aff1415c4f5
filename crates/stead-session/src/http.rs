//! The HTTP routes of the sessions (mounted under `/sessions` by the umbrella crate), and
//! the mapping of [`SessionError`] to problems. Session ids are secrets: only the answer to
//! `POST /sessions` carries one; every other route names a session by its handle, so no
//! id ever travels in a URL, a problem or a log line. Every route is for operators: they
//! create logins and reveal session data.

use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stead_core::http::{Json as Body, Name, Problem, problems, schema};
use stead_core::{Result, Runtime};
use utoipa::{OpenApi, ToSchema};

use crate::client::{NewSession, SessionClient, SessionConfig, UserSession, check_handle};
use crate::error::SessionError;
use crate::object::{MAX_TTL_MS, SessionView};

/// The session pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct SessionPattern;

impl stead_core::http::Pattern for SessionPattern {
    const PREFIX: &'static str = "/sessions";
    const SETTINGS_KEY: &'static str = "sessions";
    type Settings = SessionConfig;

    fn configure(rt: &Runtime, settings: SessionConfig) -> Result<()> {
        SessionClient::with_config(rt, settings).map(drop)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        Ok(Router::new()
            .route("/", post(create))
            .route("/{handle}", get(read).patch(patch).delete(delete))
            .route("/users/{name}", get(list).delete(revoke_user))
            .with_state(SessionClient::new(rt)?)
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }
}

impl From<&SessionError> for Problem {
    fn from(err: &SessionError) -> Self {
        let detail = err.to_string();
        match err {
            SessionError::Exists => Problem::new(StatusCode::CONFLICT, "session-exists", detail),
            SessionError::NotFound => Problem::new(StatusCode::NOT_FOUND, "not-found", detail),
            SessionError::TooLarge { size, max } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "value-too-large", detail)
                    .with("size", *size)
                    .with("max", *max)
            }
            SessionError::Invalid(e) => Problem::from(e),
            SessionError::Runtime(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        match self {
            SessionError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

/// The `{handle}` of a session route, checked (64 lowercase hex characters).
struct Handle(String);

impl<S: Send + Sync> FromRequestParts<S> for Handle {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path(handle) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "bad-request", e.body_text()))?;
        check_handle(&handle).map_err(|e| Problem::from(&e))?;
        Ok(Handle(handle))
    }
}

/// A new session.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateSession)]
struct CreateBody {
    /// The user it belongs to (entered in that user's index).
    #[schema(schema_with = schema::optional_name)]
    user: Option<String>,
    /// The sliding TTL in ms: each use pushes the expiry this far out.
    #[schema(schema_with = schema::integer::<1, MAX_TTL_MS>)]
    ttl_ms: u64,
    /// The absolute lifetime in ms: the session ends then however active.
    #[schema(schema_with = schema::optional_integer::<1, MAX_TTL_MS>)]
    max_lifetime_ms: Option<u64>,
    /// Its data (a JSON object).
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Map<String, Value>,
    /// A client label (a user agent, a device name; at most 256 characters).
    label: Option<String>,
}

/// A created session.
#[derive(Serialize, ToSchema)]
struct Created {
    /// Its id: a secret, as good as the session itself, shown by this answer only.
    id: String,
    /// Its handle (the SHA-256 of the id, in hex): how every other route names it.
    handle: String,
    /// When it expires unless used.
    expires_at: DateTime<Utc>,
}

/// Create a session.
#[utoipa::path(post, path = "/", operation_id = "createSession", tag = "sessions",
    request_body = CreateBody,
    responses(
        (status = 201, description = "created", body = Created),
        problems::BadRequest))]
async fn create(
    State(c): State<SessionClient>,
    Body(b): Body<CreateBody>,
) -> Result<(StatusCode, Body<Created>), SessionError> {
    let mut new = NewSession::new(Duration::from_millis(b.ttl_ms)).data(b.data);
    new.user = b.user;
    new.label = b.label;
    new.max_lifetime = b.max_lifetime_ms.map(Duration::from_millis);
    let s = c.create(new).await?;
    Ok((
        StatusCode::CREATED,
        Body(Created {
            id: s.id,
            handle: s.session.handle,
            expires_at: s.session.expires_at,
        }),
    ))
}

/// Read a session (not a use of it: an operator looking does not keep it alive).
#[utoipa::path(get, path = "/{handle}", operation_id = "getSession", tag = "sessions",
    params(("handle" = String, Path, min_length = 64, max_length = 64, pattern = "^[0-9a-f]{64}$", description = "The session's handle: 64 hex characters.")),
    responses(
        (status = 200, description = "the session", body = SessionView),
        problems::NotFound, problems::BadRequest))]
async fn read(
    State(c): State<SessionClient>,
    Handle(handle): Handle,
) -> Result<Body<SessionView>, SessionError> {
    c.peek_handle(&handle)
        .await?
        .map(Body)
        .ok_or(SessionError::NotFound)
}

/// Change a session's data with a JSON merge patch (RFC 7396); a use of it.
#[utoipa::path(patch, path = "/{handle}", operation_id = "patchSession", tag = "sessions",
    params(("handle" = String, Path, min_length = 64, max_length = 64, pattern = "^[0-9a-f]{64}$", description = "The session's handle.")),
    request_body(content = Object, content_type = "application/merge-patch+json",
        description = "A JSON merge patch of the data: members set keys, `null` members delete them."),
    responses(
        (status = 200, description = "the session after the patch", body = SessionView),
        problems::NotFound, problems::BadRequest))]
async fn patch(
    State(c): State<SessionClient>,
    Handle(handle): Handle,
    Body(patch): Body<Value>,
) -> Result<Body<SessionView>, SessionError> {
    c.patch_handle(&handle, patch)
        .await?
        .map(Body)
        .ok_or(SessionError::NotFound)
}

/// Delete (revoke) a session.
#[utoipa::path(delete, path = "/{handle}", operation_id = "deleteSession", tag = "sessions",
    params(("handle" = String, Path, min_length = 64, max_length = 64, pattern = "^[0-9a-f]{64}$", description = "The session's handle.")),
    responses((status = 204, description = "deleted"), problems::NotFound, problems::BadRequest))]
async fn delete(
    State(c): State<SessionClient>,
    Handle(handle): Handle,
) -> Result<StatusCode, SessionError> {
    if c.revoke(&handle).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(SessionError::NotFound)
    }
}

/// A user's live sessions.
#[derive(Debug, Serialize, ToSchema)]
struct SessionList {
    /// The sessions, oldest first, by handle (never by id).
    sessions: Vec<UserSession>,
}

/// List a user's live sessions.
#[utoipa::path(get, path = "/users/{name}", operation_id = "listUserSessions", tag = "sessions",
    params(Name),
    responses((status = 200, description = "the sessions", body = SessionList), problems::BadRequest))]
async fn list(
    State(c): State<SessionClient>,
    Name(user): Name,
) -> Result<Body<SessionList>, SessionError> {
    Ok(Body(SessionList {
        sessions: c.user_sessions(&user).await?,
    }))
}

/// How many sessions a sign-out ended.
#[derive(Debug, Serialize, ToSchema)]
struct Revoked {
    /// Live sessions revoked.
    revoked: u64,
}

/// Sign a user out everywhere: every live session of the user ends.
#[utoipa::path(delete, path = "/users/{name}", operation_id = "revokeUserSessions", tag = "sessions",
    params(Name),
    responses((status = 200, description = "revoked", body = Revoked), problems::BadRequest))]
async fn revoke_user(
    State(c): State<SessionClient>,
    Name(user): Name,
) -> Result<Body<Revoked>, SessionError> {
    Ok(Body(Revoked {
        revoked: c.revoke_user(&user).await?,
    }))
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(create, read, patch, delete, list, revoke_user))]
struct Api;
