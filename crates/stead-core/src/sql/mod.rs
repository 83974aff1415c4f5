//! SQL in every object: [`Context::sql`](crate::Context::sql) gives a turn the object's own
//! SQLite database. Its changes commit with the turn's key-value writes, alarm and sends, in
//! the same batch, on every backend; a turn that fails leaves it as it was.
//!
//! How it is stored: the database's file is kept in memory while the object is, and a turn
//! that commits hands the 4 KiB chunks it changed to the object's storage as the object's own
//! entries (under a reserved prefix). So a database lives wherever its object does (SQLite
//! shards, PostgreSQL), goes into the same group commit as everything else, and is read back
//! whole when the object next activates.

pub(crate) mod chunk;
mod db;
mod row;
pub(crate) mod vfs;

use std::time::Duration;

use serde::de::DeserializeOwned;

pub(crate) use db::{SQL_PREFIX, SqlDb, SqlLimits, chunk_key, opens_transaction};
// The differential test of the conformance suite converts values as the runtime does.
#[cfg(feature = "test-util")]
pub(crate) use db::{as_sql, value_of};

use crate::error::{Error, Result};
use crate::storage::Storage;

/// Limits of every object's SQL database (see [`crate::RuntimeConfig::sql`]).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SqlConfig {
    /// The largest an object's database may grow, in bytes (default 256 MiB). A statement
    /// that would grow it further fails with [`SqlErrorKind::TooLarge`] and changes nothing.
    /// An object in memory keeps its whole database in memory.
    pub max_bytes: u64,
    /// How long one statement may run before it is interrupted (default 5 s).
    pub statement_timeout: Duration,
    /// SQLite's page cache per object in memory, in bytes (default 64 KiB). The database
    /// itself is in memory already; this only saves copying hot pages out of it.
    pub cache_bytes: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            max_bytes: 256 * 1024 * 1024,
            statement_timeout: Duration::from_secs(5),
            cache_bytes: 64 * 1024,
        }
    }
}

impl SqlConfig {
    pub(crate) fn limits(&self) -> SqlLimits {
        SqlLimits {
            max_bytes: self.max_bytes,
            statement_timeout: self.statement_timeout,
            cache_bytes: self.cache_bytes,
        }
    }
}

/// One SQL value: SQLite's five storage classes.
///
/// Serialized as plain JSON: `null`, an integer, a float, a string, or an array of bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for SqlValue {
            fn from(v: $t) -> Self { SqlValue::Integer(i64::from(v)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32, bool);

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Real(v)
    }
}
impl From<f32> for SqlValue {
    fn from(v: f32) -> Self {
        SqlValue::Real(f64::from(v))
    }
}
impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_owned())
    }
}
impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}
impl From<&String> for SqlValue {
    fn from(v: &String) -> Self {
        SqlValue::Text(v.clone())
    }
}
impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        SqlValue::Blob(v)
    }
}
impl From<&[u8]> for SqlValue {
    fn from(v: &[u8]) -> Self {
        SqlValue::Blob(v.to_vec())
    }
}
impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

impl SqlValue {
    /// The value as JSON: blobs become arrays of bytes.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            SqlValue::Null => serde_json::Value::Null,
            SqlValue::Integer(i) => (*i).into(),
            SqlValue::Real(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            SqlValue::Text(t) => t.clone().into(),
            SqlValue::Blob(b) => b.iter().map(|&x| serde_json::Value::from(x)).collect(),
        }
    }
}

/// The parameters of a statement: none, positional (`?`, `?1`), or by name (`:a`, `@a`,
/// `$a`). Build them with [`sql_params!`](crate::sql_params), an array of one type, a
/// `Vec<SqlValue>`, or `()` for none.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub enum Params {
    /// No parameters.
    #[default]
    None,
    /// Bound in order to `?`, `?1`, `?2`...
    Positional(Vec<SqlValue>),
    /// Bound by name: `":id"`, or `"id"` for whichever of `:id`, `@id`, `$id` the
    /// statement has.
    Named(Vec<(String, SqlValue)>),
}

impl Params {
    /// Parameters bound by name (`":id"`, or `"id"` for whichever sigil the statement uses).
    pub fn named<K: Into<String>, V: Into<SqlValue>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Params::Named(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Params::None => true,
            Params::Positional(v) => v.is_empty(),
            Params::Named(v) => v.is_empty(),
        }
    }
}

impl From<()> for Params {
    fn from((): ()) -> Self {
        Params::None
    }
}
impl From<Vec<SqlValue>> for Params {
    fn from(v: Vec<SqlValue>) -> Self {
        Params::Positional(v)
    }
}
impl<T: Into<SqlValue>, const N: usize> From<[T; N]> for Params {
    fn from(v: [T; N]) -> Self {
        Params::Positional(v.into_iter().map(Into::into).collect())
    }
}

/// Positional parameters of mixed types: `sql_params![42, "ada", None::<i64>]`.
#[macro_export]
macro_rules! sql_params {
    () => { $crate::Params::None };
    ($($v:expr),+ $(,)?) => {
        $crate::Params::Positional(vec![$($crate::SqlValue::from($v)),+])
    };
}

/// What a statement answered: its columns, its rows, and how many rows it read and wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cursor {
    pub(crate) columns: std::sync::Arc<[String]>,
    /// Filled by [`Sql::exec_with_decltypes`] only.
    pub(crate) decltypes: Vec<Option<String>>,
    pub(crate) rows: Vec<Vec<SqlValue>>,
    pub(crate) rows_read: u64,
    pub(crate) rows_written: u64,
    pub(crate) last_insert_rowid: i64,
}

impl Cursor {
    /// The names of the columns.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The declared type of each column (`INTEGER`, `TEXT`...; `None` for an expression),
    /// when the statement ran by [`Sql::exec_with_decltypes`]; empty otherwise.
    pub fn decltypes(&self) -> &[Option<String>] {
        &self.decltypes
    }

    /// The rowid of the last row inserted through this database (by this statement or an
    /// earlier one), as SQLite's `last_insert_rowid()` says.
    pub fn last_insert_rowid(&self) -> i64 {
        self.last_insert_rowid
    }

    /// The rows, each a value per column.
    pub fn rows(&self) -> &[Vec<SqlValue>] {
        &self.rows
    }

    /// The rows, taken.
    pub fn into_rows(self) -> Vec<Vec<SqlValue>> {
        self.rows
    }

    /// Rows the statement read: those its full scans went through, or those it answered if
    /// more (an estimate from SQLite's counters, as Cloudflare's `rowsRead` is a count).
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Rows the statement inserted, updated or deleted (triggers' changes included).
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// Each row as a `T`: a struct (or map) whose fields are the column names, a tuple of
    /// the columns in order, or, for a statement with one column, that column's value
    /// (`query_as::<i64>`).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.rows.iter().map(|r| self.row_as(r)).collect()
    }

    fn row_as<T: DeserializeOwned>(&self, row: &[SqlValue]) -> Result<T> {
        T::deserialize(row::RowDe {
            columns: &self.columns,
            values: row,
        })
        .map_err(|e| Error::Codec(serde::de::Error::custom(e)))
    }
}

/// What a statement takes and answers: from [`Sql::describe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Description {
    /// Its parameters in order, with their names (`:id`) where they have one.
    pub params: Vec<Option<String>>,
    /// Its columns: name and declared type.
    pub columns: Vec<(String, Option<String>)>,
    /// Whether it leaves the database as it is.
    pub readonly: bool,
    /// Whether it is an `EXPLAIN`.
    pub explain: bool,
}

/// Splits a script into its statements, each with its `;`, as SQLite reads them: a `;`
/// inside a string, a comment or a trigger's body does not end a statement. Text after the
/// last complete statement is the last item.
///
/// ```
/// let s = stead_core::split_statements(
///     "CREATE TABLE t (x); INSERT INTO t VALUES (';'); CREATE TRIGGER g AFTER INSERT ON t BEGIN DELETE FROM t; END;",
/// );
/// assert_eq!(s.len(), 3);
/// assert_eq!(s[1], "INSERT INTO t VALUES (';');");
/// ```
pub fn split_statements(script: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in script.match_indices(';') {
        let candidate = &script[start..=i];
        if vfs::is_complete(candidate) {
            let trimmed = candidate.trim();
            if trimmed != ";" {
                out.push(trimmed);
            }
            start = i + 1;
        }
    }
    let rest = script[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// What kind of SQL failure an [`SqlError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SqlErrorKind {
    /// The statement could not be prepared: a syntax error, an unknown table or column,
    /// parameters that do not match.
    Invalid,
    /// The runtime refuses it: transaction control, ATTACH, a pragma that is the runtime's.
    Refused,
    /// A constraint failed (UNIQUE, NOT NULL, CHECK, FOREIGN KEY).
    Constraint,
    /// The database would grow past [`SqlConfig::max_bytes`].
    TooLarge,
    /// The statement ran past [`SqlConfig::statement_timeout`].
    Interrupted,
    /// The statement failed while it ran, for another reason.
    Failed,
    /// The database could not be opened or committed.
    Other,
}

/// A statement that failed: which one, and SQLite's message.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{message} (in `{statement}`)")]
#[non_exhaustive]
pub struct SqlError {
    /// What kind of failure.
    pub kind: SqlErrorKind,
    /// The statement, shortened to 200 characters.
    pub statement: String,
    /// SQLite's message, or the runtime's reason.
    pub message: String,
}

/// An object's SQL database, inside a turn: from [`Context::sql`](crate::Context::sql).
///
/// Every statement runs in the turn's transaction: its changes are seen by the turn's later
/// statements, commit with the turn's other writes, or vanish with them if the turn fails.
/// Calls are `async` because the first one of an activation reads the database from storage.
///
/// ```
/// use std::sync::Arc;
/// use serde::{Deserialize, Serialize};
/// use stead_core::{sql_params, Context, DurableObject, Handler, Result, Runtime};
///
/// struct Orders;
///
/// impl DurableObject for Orders {
///     const CLASS: &'static str = "orders";
///     type Env = ();
///     async fn activate(ctx: &mut Context, _env: Arc<()>) -> Result<Self> {
///         ctx.sql()
///             .exec("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER)", ())
///             .await?;
///         Ok(Orders)
///     }
/// }
///
/// #[derive(Serialize, Deserialize)]
/// struct Place { item: String, qty: i64 }
///
/// #[derive(Debug, PartialEq, Deserialize)]
/// struct Order { id: i64, item: String, qty: i64 }
///
/// impl Handler<Place> for Orders {
///     type Reply = Result<Vec<Order>>;
///     async fn handle(&mut self, msg: Place, ctx: &mut Context) -> Result<Vec<Order>> {
///         let mut sql = ctx.sql();
///         sql.exec("INSERT INTO orders (item, qty) VALUES (?1, ?2)", sql_params![msg.item, msg.qty])
///             .await?;
///         sql.query_as("SELECT id, item, qty FROM orders ORDER BY id", ()).await
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let rt = Runtime::builder().memory().build().await?;
/// let shop = rt.namespace::<Orders>(())?.get_by_name("shop");
/// shop.call(Place { item: "tea".into(), qty: 2 }).await?;
/// let all = shop.call(Place { item: "cake".into(), qty: 1 }).await?;
/// assert_eq!(all[1], Order { id: 2, item: "cake".into(), qty: 1 });
/// # Ok::<(), stead_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct Sql<'a> {
    pub(crate) storage: &'a mut Storage,
}

impl Sql<'_> {
    /// Runs one statement (or, without parameters, several separated by `;`, answering the
    /// last one's cursor).
    pub async fn exec(&mut self, sql: &str, params: impl Into<Params>) -> Result<Cursor> {
        self.run(sql, params.into(), false).await
    }

    async fn run(&mut self, sql: &str, params: Params, decltypes: bool) -> Result<Cursor> {
        let db = self.storage.sql_db().await?;
        db.exec(sql, &params, decltypes).map_err(Error::Sql)
    }

    /// [`exec`](Self::exec), with the declared type of each column in the cursor
    /// ([`Cursor::decltypes`]).
    pub async fn exec_with_decltypes(
        &mut self,
        sql: &str,
        params: impl Into<Params>,
    ) -> Result<Cursor> {
        self.run(sql, params.into(), true).await
    }

    /// What one statement takes and answers, without running it.
    pub async fn describe(&mut self, sql: &str) -> Result<Description> {
        self.storage
            .sql_db()
            .await?
            .describe(sql)
            .map_err(Error::Sql)
    }

    /// Runs a query and answers each row as a `T` (see [`Cursor::deserialize`]).
    pub async fn query_as<T: DeserializeOwned>(
        &mut self,
        sql: &str,
        params: impl Into<Params>,
    ) -> Result<Vec<T>> {
        self.exec(sql, params).await?.deserialize()
    }

    /// Runs a query that answers exactly one row.
    pub async fn one<T: DeserializeOwned>(
        &mut self,
        sql: &str,
        params: impl Into<Params>,
    ) -> Result<T> {
        let cursor = self.exec(sql, params).await?;
        match cursor.rows.len() {
            1 => cursor.row_as(&cursor.rows[0]),
            n => Err(Error::bad_request(format!(
                "expected exactly one row, the query answered {n} (in `{sql}`)"
            ))),
        }
    }

    /// Runs a query that answers at most one row.
    pub async fn optional<T: DeserializeOwned>(
        &mut self,
        sql: &str,
        params: impl Into<Params>,
    ) -> Result<Option<T>> {
        let cursor = self.exec(sql, params).await?;
        match cursor.rows.len() {
            0 => Ok(None),
            1 => cursor.row_as(&cursor.rows[0]).map(Some),
            n => Err(Error::bad_request(format!(
                "expected at most one row, the query answered {n} (in `{sql}`)"
            ))),
        }
    }

    /// The database's size in bytes, this turn's changes included.
    pub async fn size(&mut self) -> Result<u64> {
        self.storage.sql_db().await?.size().map_err(Error::Sql)
    }
}
