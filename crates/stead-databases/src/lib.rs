//! # stead-databases: a SQL database per name, over the libSQL remote protocol
//!
//! Each name is one object whose SQL database ([`stead_core::Sql`]) is the object's own:
//! a database per tenant, per user, per document, without a database server. Over HTTP
//! the databases speak the libSQL remote protocol (Hrana over HTTP, versions 2 and 3, JSON),
//! so that stock clients work unchanged: `createClient({ url:
//! "http://127.0.0.1:8080/databases/orders/" })` from `@libsql/client`. A pipeline is one
//! turn: everything it changes commits at once, in one group commit, or not at all.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use stead_core::SqlValue;
//! use stead_databases::DatabaseClient;
//!
//! let rt = stead_core::Runtime::builder().memory().build().await?;
//! let dbs = DatabaseClient::new(&rt)?;
//! dbs.execute("orders", "CREATE TABLE o (id INTEGER PRIMARY KEY, item TEXT)", &[]).await?.unwrap();
//! dbs.execute("orders", "INSERT INTO o (item) VALUES (?)", &[SqlValue::from("tea")]).await?.unwrap();
//! let r = dbs.execute("orders", "SELECT item FROM o", &[]).await?.unwrap();
//! assert_eq!(r.rows.len(), 1);
//! # Ok::<(), stead_databases::DatabaseError>(()) }).unwrap();
//! ```
//!
//! Over HTTP (see `router`, feature `http`, on by default): `POST /databases/{name}/v2/pipeline`
//! and `/v3/pipeline` (the protocol), `GET /databases?prefix=…` (names), `DELETE
//! /databases/{name}`. A client's `BEGIN` ... `COMMIT` runs as a savepoint inside the turn;
//! a transaction must end in the request that began it (a `batch`), since no stream
//! outlives its request: an interactive transaction is refused with a protocol error.

mod client;
mod error;
#[cfg(feature = "http")]
mod http;
mod object;
pub mod protocol;

pub use client::{DatabaseClient, DatabasePage, MAX_PAGE};
pub use error::DatabaseError;
#[cfg(feature = "http")]
pub use http::{DatabasesPattern, DatabasesSettings};
pub use object::{Database, MAX_RESULT_BYTES, Pipeline, Remove};

/// The database routes, without a prefix (the umbrella crate mounts them under
/// `/databases`), in any app state.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`]. Every route
/// here reads or writes data: they are for trusted callers only.
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <DatabasesPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <DatabasesPattern as stead_core::http::Pattern>::openapi()
}
