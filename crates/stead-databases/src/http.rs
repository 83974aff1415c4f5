//! The HTTP routes of the databases (mounted under `/databases` by the umbrella crate): the
//! libSQL remote protocol's pipeline routes, which stock clients speak to, and the admin
//! routes (list, delete). Pipeline errors are answered as the protocol answers them
//! (`application/json` with `message` and `code`), so that clients report them as errors.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use stead_core::http::{Json as Body, Name, Problem, Query, problems, schema};
use stead_core::{Result, Runtime};
use utoipa::{IntoParams, OpenApi};

use crate::client::{DatabaseClient, DatabasePage, MAX_PAGE};
use crate::error::DatabaseError;
use crate::protocol::{PipelineRequest, PipelineResponse, ProtoError};

/// The databases pattern, as the umbrella crate mounts it.
#[derive(Debug, Clone, Copy)]
pub struct DatabasesPattern;

impl stead_core::http::Pattern for DatabasesPattern {
    const PREFIX: &'static str = "/databases";
    const SETTINGS_KEY: &'static str = "databases";
    type Settings = DatabasesSettings;

    fn configure(rt: &Runtime, _settings: DatabasesSettings) -> Result<()> {
        client(rt).map(drop)
    }

    fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<Router<S>> {
        let client = client(rt)?;
        Ok(Router::new()
            .route("/", get(list))
            .route("/{name}", delete(remove))
            .route("/{name}/v2", get(version))
            .route("/{name}/v3", get(version))
            .route("/{name}/v2/pipeline", post(pipeline))
            .route("/{name}/v3/pipeline", post(pipeline))
            .route("/v2", get(no_name))
            .route("/v3", get(no_name))
            .route("/v2/pipeline", post(no_name))
            .route("/v3/pipeline", post(no_name))
            .with_state(client)
            .layer(stead_core::http::ProblemLayer))
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        Api::openapi()
    }
}

fn client(rt: &Runtime) -> Result<DatabaseClient> {
    DatabaseClient::new(rt).map_err(|e| match e {
        DatabaseError::Runtime(e) => e,
        other => stead_core::Error::invalid_config(other.to_string()),
    })
}

/// The databases' settings (none yet: the limits of every object's SQL are the runtime's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabasesSettings {}

impl From<&DatabaseError> for Problem {
    fn from(err: &DatabaseError) -> Self {
        match err {
            DatabaseError::Invalid(e) => Problem::from(e),
            DatabaseError::Runtime(e) => Problem::from(e),
            other => Problem::new(StatusCode::BAD_REQUEST, "bad-request", other.to_string()),
        }
    }
}

impl IntoResponse for DatabaseError {
    fn into_response(self) -> Response {
        match self {
            DatabaseError::Runtime(e) => e.into_response(),
            other => Problem::from(&other).into_response(),
        }
    }
}

/// A protocol error answer: what the protocol's clients read as an error.
fn proto_error(status: StatusCode, message: String, code: &str) -> Response {
    let body = serde_json::to_vec(&ProtoError::new(message, code)).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Which database names to list.
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

/// Database names by prefix, a page at a time.
#[utoipa::path(get, path = "/", operation_id = "listDatabases", tag = "databases",
    params(ListQuery),
    responses(
        (status = 200, description = "a page of names", body = DatabasePage),
        problems::BadRequest))]
async fn list(
    State(c): State<DatabaseClient>,
    Query(q): Query<ListQuery>,
) -> std::result::Result<Body<DatabasePage>, DatabaseError> {
    let limit = q.limit.unwrap_or(100);
    Ok(Body(c.list(&q.prefix, q.cursor.as_deref(), limit).await?))
}

/// Delete a database: its tables and everything in them.
#[utoipa::path(delete, path = "/{name}", operation_id = "deleteDatabase", tag = "databases",
    params(Name),
    responses(
        (status = 204, description = "deleted (or there was none)"),
        problems::BadRequest))]
async fn remove(
    State(c): State<DatabaseClient>,
    Name(name): Name,
) -> std::result::Result<StatusCode, DatabaseError> {
    c.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The protocol version a client asks about is spoken here.
#[utoipa::path(get, path = "/{name}/v2", operation_id = "databaseProtocolVersion", tag = "databases",
    params(Name),
    responses((status = 200, description = "this version of the libSQL remote protocol is served")))]
async fn version(Name(_name): Name) -> StatusCode {
    StatusCode::OK
}

/// Run a pipeline of requests (libSQL remote protocol, versions 2 and 3, JSON) as one turn:
/// `execute`, `batch` (with conditions), `sequence`, `describe`, `store_sql`, `close_sql`,
/// `get_autocommit`, `close`. A transaction a client begins must end in the same pipeline
/// (interactive transactions across requests are refused with a protocol error).
#[utoipa::path(post, path = "/{name}/v2/pipeline", operation_id = "databasePipeline", tag = "databases",
    params(Name),
    request_body(content = serde_json::Value, description = "`{\"baton\": null, \"requests\": [...]}`", content_type = "application/json"),
    responses(
        (status = 200, description = "one result per request: `{\"baton\": null, \"base_url\": null, \"results\": [...]}`", body = serde_json::Value),
        (status = 400, description = "the pipeline was refused whole: `{\"message\", \"code\"}`; a bad name in the path is a problem", content((serde_json::Value = "application/json"), (Problem = "application/problem+json")))))]
async fn pipeline(State(c): State<DatabaseClient>, Name(name): Name, body: Bytes) -> Response {
    let req: PipelineRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return proto_error(
                StatusCode::BAD_REQUEST,
                format!("the pipeline request is malformed: {e}"),
                "PROTO_ERROR",
            );
        }
    };
    if req.baton.is_some() {
        let e = DatabaseError::BatonNotIssued;
        return proto_error(StatusCode::BAD_REQUEST, e.to_string(), "BATON_INVALID");
    }
    match c.pipeline(&name, req.requests).await {
        Ok(results) => Body(PipelineResponse {
            baton: None,
            base_url: None,
            results,
        })
        .into_response(),
        Err(e @ DatabaseError::TransactionLeftOpen) => proto_error(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            "TRANSACTION_NOT_SUPPORTED",
        ),
        Err(DatabaseError::Runtime(stead_core::Error::Sql(e))) => {
            // A statement's error that ended the whole turn (SQLite rolled it back).
            proto_error(StatusCode::BAD_REQUEST, e.message, "SQLITE_ERROR")
        }
        Err(e) => e.into_response(),
    }
}

/// A client URL without the database's name, or without its final slash.
async fn no_name() -> Response {
    proto_error(
        StatusCode::NOT_FOUND,
        "a database's URL names it and ends with a slash: http://HOST/databases/NAME/".into(),
        "DATABASE_URL",
    )
}

/// The OpenAPI description of these routes, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(paths(list, remove, version, pipeline))]
struct Api;
