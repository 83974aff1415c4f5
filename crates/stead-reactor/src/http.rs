//! The HTTP routes of the reactors (mounted under `/reactors` by the umbrella crate), and
//! the mapping of [`ReactorError`] to problems.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stead_core::http::{Json as Body, LogParams, Name, Names, Problem, Query, problems, schema};
use stead_core::{LogPage, Result, Runtime};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::client::{ReactorClient, ReactorConfig};
use crate::delivery::masked;
use crate::error::ReactorError;
use crate::object::{
    CommandPage, DeadLetter, DeadLetterAction, Decision, EntityView, Ingested, LIVE_TAG, MAX_PAGE,
    MAX_WAIT_MS,
};
use crate::reactor::Event;

/// The reactor pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct ReactorPattern;

impl stead_core::http::Pattern for ReactorPattern {
    const PREFIX: &'static str = "/reactors";
    const SETTINGS_KEY: &'static str = "reactors";
    type Settings = ReactorConfig;

    fn configure(rt: &Runtime, settings: ReactorConfig) -> Result<()> {
        ReactorClient::with_config(rt, settings)
            .map(drop)
            .map_err(setup_error)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        let client = ReactorClient::new(rt).map_err(setup_error)?;
        Ok(Router::new()
            .route("/{type}", get(definition).put(define))
            .route("/{type}/{entity}", get(state))
            .route("/{type}/{entity}/events", post(ingest))
            .route("/{type}/{entity}/decisions", get(decisions))
            .route("/{type}/{entity}/commands", get(commands))
            .route("/{type}/{entity}/commands/ack", post(ack))
            .route(
                "/{type}/{entity}/dead-letters",
                get(dead_letters).post(resolve_dead_letters),
            )
            .route("/{type}/{entity}/live", get(live))
            .with_state(client)
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }
}

/// A failure to set the reactors up, as the runtime's error (a bad setting is a bad
/// configuration).
fn setup_error(e: ReactorError) -> stead_core::Error {
    match e {
        ReactorError::Runtime(e) => e,
        other => stead_core::Error::invalid_config(other.to_string()),
    }
}

impl From<&ReactorError> for Problem {
    fn from(err: &ReactorError) -> Self {
        let detail = err.to_string();
        match err {
            ReactorError::UnknownType(t) => {
                Problem::new(StatusCode::NOT_FOUND, "unknown-reactor-type", detail)
                    .with("reactor", t.clone())
            }
            ReactorError::DefinedInCode(t) => {
                Problem::new(StatusCode::CONFLICT, "defined-in-code", detail)
                    .with("reactor", t.clone())
            }
            ReactorError::Definition(e) => {
                Problem::new(StatusCode::BAD_REQUEST, "bad-definition", detail)
                    .with("at", e.at.clone())
                    .with("fault", e.message.clone())
            }
            ReactorError::Rejected(r) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "event-rejected", detail)
                    .with("reason", r.0.clone())
            }
            ReactorError::OutboxFull { pending } => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "outbox-full", detail)
                    .with("pending", *pending)
                    .retry_after(Duration::from_secs(1))
            }
            ReactorError::Remembering(r) => Problem::from(r),
            ReactorError::AckBeyondOutbox { last, .. } => {
                Problem::new(StatusCode::CONFLICT, "ack-beyond-outbox", detail).with("last", *last)
            }
            ReactorError::StateTooLarge { bytes, max } => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "state-too-large", detail)
                    .with("bytes", *bytes)
                    .with("max", *max)
            }
            ReactorError::NotPulled => Problem::new(StatusCode::CONFLICT, "not-pulled", detail),
            ReactorError::UnknownDeadLetter(n) => {
                Problem::new(StatusCode::NOT_FOUND, "unknown-dead-letter", detail).with("seq", *n)
            }
            ReactorError::EndpointGone(url) => {
                Problem::new(StatusCode::CONFLICT, "endpoint-gone", detail)
                    .with("endpoint", masked(url))
            }
            ReactorError::Invalid(e) => Problem::from(e),
            ReactorError::Runtime(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for ReactorError {
    fn into_response(self) -> Response {
        match self {
            ReactorError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

/// The type and entity of a path, as the OpenAPI document describes them (the handlers take
/// them with `Names`).
#[derive(Debug, Deserialize, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Path)]
struct TypeEntity {
    /// The reactor type: 1 to 256 characters, no control characters, no `/`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: String,
    /// The entity: 1 to 256 characters, no control characters.
    entity: String,
}

/// Set (or replace) a declarative reactor type's definition. Entities use it from their
/// next turn.
#[utoipa::path(put, path = "/{type}", operation_id = "defineReactor", tag = "reactors",
    params(("type" = String, Path, description = "The reactor type: 1 to 256 characters, no control characters, no `/`.")),
    request_body(content = Object, description = "The definition: `state`, `rules`, `cycles`, `webhooks`, `pull`."),
    responses(
        (status = 200, description = "replaced"),
        (status = 201, description = "created"),
        (status = 409, description = "`defined-in-code`", body = Problem, content_type = "application/problem+json"),
        problems::BadRequest))]
async fn define(
    State(c): State<ReactorClient>,
    Name(kind): Name,
    Body(def): Body<Value>,
) -> std::result::Result<StatusCode, ReactorError> {
    let created = c.define(&kind, def).await?;
    Ok(stead_core::http::created_or_ok(created))
}

/// A declarative type's definition, webhook secrets masked.
#[utoipa::path(get, path = "/{type}", operation_id = "getReactorDefinition", tag = "reactors",
    params(("type" = String, Path, description = "The reactor type.")),
    responses((status = 200, description = "the definition", body = Object),
        problems::NotFound, problems::BadRequest))]
async fn definition(
    State(c): State<ReactorClient>,
    Name(kind): Name,
) -> std::result::Result<Response, ReactorError> {
    match c.definition(&kind).await? {
        Some(mut def) => {
            if let Some(hooks) = def.get_mut("webhooks").and_then(Value::as_array_mut) {
                for h in hooks {
                    if let Some(s) = h.get_mut("secret") {
                        *s = Value::from("whsec_…");
                    }
                    if let Some(Value::String(url)) = h.get_mut("url") {
                        *url = masked(url);
                    }
                }
            }
            Ok(Body(def).into_response())
        }
        None => Ok(Body(serde_json::json!({"defined_in": "code"})).into_response()),
    }
}

/// An entity's state and where its outbox stands.
#[utoipa::path(get, path = "/{type}/{entity}", operation_id = "getReactorEntity", tag = "reactors",
    params(TypeEntity),
    responses((status = 200, description = "the entity", body = EntityView),
        problems::NotFound, problems::BadRequest))]
async fn state(
    State(c): State<ReactorClient>,
    Names(kind, entity): Names,
) -> std::result::Result<Body<EntityView>, ReactorError> {
    let mut view = c.state(&kind, &entity).await?;
    for e in &mut view.endpoints {
        e.url = masked(&e.url);
    }
    Ok(Body(view))
}

/// Send an event. The same id again (within the retention window) is acknowledged with
/// `duplicate: true` and changes nothing.
#[utoipa::path(post, path = "/{type}/{entity}/events", operation_id = "sendReactorEvent", tag = "reactors",
    params(TypeEntity),
    request_body = Event,
    responses(
        (status = 200, description = "accepted", body = Ingested),
        (status = 422, description = "`event-rejected` by the reactor, or `state-too-large`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`outbox-full`: the consumers are not taking commands", body = Problem, content_type = "application/problem+json"),
        problems::NotFound, problems::BadRequest))]
async fn ingest(
    State(c): State<ReactorClient>,
    Names(kind, entity): Names,
    Body(event): Body<Event>,
) -> std::result::Result<Body<Ingested>, ReactorError> {
    Ok(Body(c.send(&kind, &entity, event).await?))
}

/// The decision log (newest first unless asked otherwise), each with its reason and the
/// commands it emitted.
#[utoipa::path(get, path = "/{type}/{entity}/decisions", operation_id = "getReactorDecisions", tag = "reactors",
    params(TypeEntity, LogParams),
    responses((status = 200, description = "a page of the log", body = LogPage<Decision>),
        problems::NotFound, problems::BadRequest))]
async fn decisions(
    State(c): State<ReactorClient>,
    Names(kind, entity): Names,
    Query(q): Query<LogParams>,
) -> std::result::Result<Body<LogPage<Decision>>, ReactorError> {
    Ok(Body(c.decisions(&kind, &entity, q.query()).await?))
}

/// Which commands to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PollParams {
    /// Only commands numbered above this (default 0).
    #[param(schema_with = schema::integer::<0, { u64::MAX }>)]
    after: Option<u64>,
    /// At most this many (default 100).
    #[param(schema_with = schema::integer::<1, { MAX_PAGE as u64 }>)]
    limit: Option<u32>,
    /// When there is none, wait up to this long for one, in ms (default 0).
    #[param(schema_with = schema::integer::<0, MAX_WAIT_MS>)]
    wait_ms: Option<u64>,
}

/// Commands not yet acknowledged, in order; with `wait_ms`, answers as soon as there is
/// one (or empty when the wait is over).
#[utoipa::path(get, path = "/{type}/{entity}/commands", operation_id = "pollReactorCommands", tag = "reactors",
    params(TypeEntity, PollParams),
    responses((status = 200, description = "commands", body = CommandPage),
        (status = 409, description = "`not-pulled`: the type delivers to webhooks only", body = Problem, content_type = "application/problem+json"),
        problems::NotFound, problems::BadRequest))]
async fn commands(
    State(c): State<ReactorClient>,
    Names(kind, entity): Names,
    Query(q): Query<PollParams>,
) -> std::result::Result<Body<CommandPage>, ReactorError> {
    let wait = q.wait_ms.unwrap_or(0);
    if wait > MAX_WAIT_MS {
        return Err(
            stead_core::InvalidInput::new(format!("wait_ms may be at most {MAX_WAIT_MS}")).into(),
        );
    }
    Ok(Body(
        c.commands(
            &kind,
            &entity,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(100),
            Duration::from_millis(wait),
        )
        .await?,
    ))
}

/// An acknowledgement.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AckBody {
    /// The last command taken: it and every one before it are acknowledged.
    #[schema(schema_with = schema::integer::<0, { u64::MAX }>)]
    up_to: u64,
}

/// Where acknowledgements stand.
#[derive(Debug, Serialize, ToSchema)]
struct Acked {
    /// Every command up to this one is acknowledged.
    acked: u64,
}

/// Acknowledge commands up to `up_to`: they leave storage once every webhook has them too.
#[utoipa::path(post, path = "/{type}/{entity}/commands/ack", operation_id = "ackReactorCommands", tag = "reactors",
    params(TypeEntity),
    request_body = AckBody,
    responses((status = 200, description = "acknowledged", body = Acked),
        (status = 409, description = "`not-pulled`, or `ack-beyond-outbox`: `up_to` is past the last command", body = Problem, content_type = "application/problem+json"),
        problems::NotFound, problems::BadRequest))]
async fn ack(
    State(c): State<ReactorClient>,
    Names(kind, entity): Names,
    Body(b): Body<AckBody>,
) -> std::result::Result<Body<Acked>, ReactorError> {
    Ok(Body(Acked {
        acked: c.ack(&kind, &entity, b.up_to).await?,
    }))
}

/// Commands a webhook endpoint did not take after every attempt (newest first unless asked
/// otherwise; `order=oldest` lists them in the order they failed).
#[utoipa::path(get, path = "/{type}/{entity}/dead-letters", operation_id = "getReactorDeadLetters", tag = "reactors",
    params(TypeEntity, LogParams),
    responses((status = 200, description = "a page of dead letters", body = LogPage<DeadLetter>),
        problems::NotFound, problems::BadRequest))]
async fn dead_letters(
    State(c): State<ReactorClient>,
    Names(kind, entity): Names,
    Query(q): Query<LogParams>,
) -> std::result::Result<Body<LogPage<DeadLetter>>, ReactorError> {
    let page = c.dead_letters(&kind, &entity, q.query()).await?;
    Ok(Body(page.map(|mut d| {
        d.endpoint = masked(&d.endpoint);
        d
    })))
}

/// What to do with dead letters.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    /// `retry` (deliver again to their endpoint) or `drop`.
    action: DeadLetterAction,
    /// Which (by number); all when absent.
    #[serde(default)]
    #[schema(schema_with = seq_list)]
    seqs: Option<Vec<u64>>,
}

/// A list of dead-letter numbers, or `null` for all.
fn seq_list() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{SchemaType, Type};
    utoipa::openapi::schema::ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(schema::integer::<1, { u64::MAX }>())
        .build()
}

/// How many dead letters were handled.
#[derive(Debug, Serialize, ToSchema)]
struct Resolved {
    /// How many.
    count: u64,
}

/// Retry or drop dead letters.
#[utoipa::path(post, path = "/{type}/{entity}/dead-letters", operation_id = "resolveReactorDeadLetters", tag = "reactors",
    params(TypeEntity),
    request_body = ResolveBody,
    responses((status = 200, description = "handled", body = Resolved),
        (status = 409, description = "`endpoint-gone`", body = Problem, content_type = "application/problem+json"),
        problems::NotFound, problems::BadRequest))]
async fn resolve_dead_letters(
    State(c): State<ReactorClient>,
    Names(kind, entity): Names,
    Body(b): Body<ResolveBody>,
) -> std::result::Result<Body<Resolved>, ReactorError> {
    Ok(Body(Resolved {
        count: c
            .resolve_dead_letters(&kind, &entity, b.action, b.seqs)
            .await?,
    }))
}

/// Follow an entity live (a WebSocket): first a `snapshot` (its state), then an `update`
/// per decision turn (the new state if it changed, the decisions, the commands). Not in the
/// OpenAPI document, which describes request and response routes only.
async fn live(
    State(c): State<ReactorClient>,
    Names(kind, entity): Names,
    upgrade: WebSocketUpgrade,
) -> std::result::Result<Response, ReactorError> {
    let stub = c.stub(&kind, &entity)?;
    Ok(stub.accept_websocket(upgrade, &[LIVE_TAG], &())?)
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(
    define,
    definition,
    state,
    ingest,
    decisions,
    commands,
    ack,
    dead_letters,
    resolve_dead_letters
))]
struct Api;
