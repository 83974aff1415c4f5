//! The inspector: a page at `/ui/` whose script, style and data all come from this server
//! (nothing is fetched from elsewhere: the machines may have no internet), and the JSON it
//! reads under `/ui/api/`, behind the server's tokens like every other data route. The page
//! itself holds no data; it asks for a token when the API answers 401 and keeps it in memory.
//!
//! Every value is put on the page as text, never as markup: object names and stored values
//! are whatever clients wrote.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use stead::Runtime;
use stead::http::{Json, Query};

const PAGE: &str = include_str!("inspector/index.html");
const SCRIPT: &str = include_str!("inspector/app.js");
const STYLE: &str = include_str!("inspector/style.css");

/// The most objects one search answers.
const MAX_RESULTS: usize = 200;
/// The most rows the SQL console shows of one query.
const MAX_SQL_ROWS: usize = 1000;

/// The page and its script and style, which need no token (they hold no data).
pub(crate) fn page() -> Router {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset(PAGE, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/",
            get(|| async { asset(PAGE, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

/// The data the page reads, for the server's guarded routes.
pub(crate) fn api(rt: &Runtime, sql_writes: bool) -> Router {
    Router::new()
        .route("/ui/api/vitals", get(vitals))
        .route("/ui/api/counts", get(counts))
        .route("/ui/api/objects", get(objects))
        .route("/ui/api/object", get(object).put(import))
        .route("/ui/api/sql", get(sql).post(sql_write))
        .with_state(Inspector {
            rt: rt.clone(),
            sql_writes,
        })
}

/// A static asset, with a policy that lets the page load only from this server and never
/// be framed by another site.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn vitals(State(Inspector { rt, .. }): State<Inspector>) -> Json<stead::Vitals> {
    Json(rt.vitals().await)
}

/// Counted up to this many objects per class (more shows as "10000+").
const COUNT_UP_TO: usize = 10_000;

/// How many objects each class holds (up to [`COUNT_UP_TO`], then `more`).
#[derive(Debug, serde::Serialize)]
struct Count {
    class: String,
    objects: usize,
    more: bool,
}

async fn counts(
    State(Inspector { rt, .. }): State<Inspector>,
) -> Result<Json<Vec<Count>>, stead::Error> {
    let mut out = Vec::new();
    for class in rt.classes() {
        let n = rt.count_objects(class, COUNT_UP_TO).await?;
        out.push(Count {
            class: class.to_owned(),
            objects: n.min(COUNT_UP_TO),
            more: n > COUNT_UP_TO,
        });
    }
    Ok(Json(out))
}

/// A search: objects whose name starts with `q`, of one class or of every class.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    #[serde(default)]
    q: String,
    class: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, serde::Serialize)]
struct Found {
    class: String,
    name: String,
}

async fn objects(
    State(Inspector { rt, .. }): State<Inspector>,
    Query(s): Query<Search>,
) -> Result<Json<Vec<Found>>, stead::Error> {
    let limit = s.limit.unwrap_or(50).clamp(1, MAX_RESULTS);
    let classes = match s.class {
        Some(c) => vec![c],
        None => rt
            .vitals()
            .await
            .classes
            .into_iter()
            .map(|c| c.class)
            .collect(),
    };
    let mut found = Vec::new();
    for class in classes {
        for name in rt
            .find_objects(&class, &s.q, limit - found.len().min(limit))
            .await?
        {
            found.push(Found {
                class: class.clone(),
                name,
            });
        }
        if found.len() >= limit {
            break;
        }
    }
    Ok(Json(found))
}

/// One object, by class and name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectRef {
    class: String,
    name: String,
}

/// One object, by class and name, and how much of it to answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectQuery {
    class: String,
    name: String,
    /// `true`: the page's view, whose SQL database is left out (`"sql": ""` says there is
    /// one; the page reads its tables with queries). Otherwise the whole document, which
    /// `PUT` takes back.
    #[serde(default)]
    brief: bool,
}

async fn object(
    State(Inspector { rt, .. }): State<Inspector>,
    Query(o): Query<ObjectQuery>,
) -> Result<Json<stead::ObjectDocument>, stead::Error> {
    let mut doc = rt.export_object(&o.class, &o.name).await?;
    if o.brief && doc.sql.is_some() {
        doc.sql = Some(String::new());
    }
    Ok(Json(doc))
}

/// Replaces what the object holds with the document in the body (an export of an object of
/// the same class): a restore under the name it came from, a fork under another. 204.
async fn import(
    State(Inspector { rt, .. }): State<Inspector>,
    Query(o): Query<ObjectRef>,
    Json(doc): Json<stead::ObjectDocument>,
) -> Result<axum::http::StatusCode, stead::Error> {
    rt.import_object(&o.class, &o.name, doc).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// What the inspector's routes share.
#[derive(Clone)]
struct Inspector {
    rt: Runtime,
    /// The console may run statements that write.
    sql_writes: bool,
}

/// A read-only query on one object's SQL database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlQuery {
    class: String,
    name: String,
    sql: String,
}

/// What a query answered, its rows cut at [`MAX_SQL_ROWS`].
#[derive(Debug, serde::Serialize)]
struct SqlAnswer {
    columns: Vec<String>,
    decltypes: Vec<Option<String>>,
    rows: Vec<Vec<stead::SqlValue>>,
    truncated: bool,
    rows_read: u64,
    rows_written: u64,
    /// Whether the console may write (`POST`), so the page can say so.
    writes: bool,
}

impl SqlAnswer {
    fn of(c: stead::Cursor, writes: bool) -> Self {
        let truncated = c.rows().len() > MAX_SQL_ROWS;
        SqlAnswer {
            columns: c.columns().to_vec(),
            decltypes: c.decltypes().to_vec(),
            rows_read: c.rows_read(),
            rows_written: c.rows_written(),
            rows: c.into_rows().into_iter().take(MAX_SQL_ROWS).collect(),
            truncated,
            writes,
        }
    }
}

/// Runs one statement that only reads (anything else is a 400) in a turn of the object.
async fn sql(
    State(Inspector { rt, sql_writes }): State<Inspector>,
    Query(q): Query<SqlQuery>,
) -> Result<Json<SqlAnswer>, stead::Error> {
    let c = rt.query_object(&q.class, &q.name, &q.sql, ()).await?;
    Ok(Json(SqlAnswer::of(c, sql_writes)))
}

/// Runs any statement in a turn of the object, committed like its own writes, when the
/// server was started with `--inspector-sql-writes`; a 403 otherwise.
async fn sql_write(
    State(Inspector { rt, sql_writes }): State<Inspector>,
    Json(q): Json<SqlQuery>,
) -> Result<Json<SqlAnswer>, stead::http::Problem> {
    if !sql_writes {
        return Err(stead::http::Problem::new(
            axum::http::StatusCode::FORBIDDEN,
            "sql-writes-off",
            "the inspector's console only reads here: start the server with --inspector-sql-writes to let it write",
        ));
    }
    let c = rt
        .execute_object(&q.class, &q.name, &q.sql, ())
        .await
        .map_err(|e| stead::http::Problem::from(&e))?;
    Ok(Json(SqlAnswer::of(c, true)))
}
