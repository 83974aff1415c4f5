//! What fails in the PostgreSQL backend: a message for people, PostgreSQL's SQLSTATE when the
//! server answered, and the cause, kept as the error's source.

use std::sync::Arc;

/// An error of the PostgreSQL backend. The runtime's errors carry it as their source
/// (`stead_core::Error::Storage`), so a caller can find it there and read the SQLSTATE.
///
/// ```
/// use std::error::Error as _;
/// use stead_postgres::PostgresError;
///
/// let e = PostgresError::new("the PostgreSQL backend is closed");
/// assert_eq!((e.sqlstate(), e.source().is_none()), (None, true));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}")]
pub struct PostgresError {
    what: String,
    sqlstate: Option<String>,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PostgresError {
    /// An error with no cause below it.
    pub fn new(what: impl Into<String>) -> Self {
        PostgresError {
            what: what.into(),
            sqlstate: None,
            source: None,
        }
    }

    /// An error of PostgreSQL's client or server, in `context` (what was being done): the
    /// server's message and SQLSTATE when the server answered.
    pub(crate) fn postgres(context: &str, e: tokio_postgres::Error) -> Self {
        let (what, sqlstate) = match e.as_db_error() {
            Some(db) => (
                format!("{context}: {} ({})", db.message(), db.code().code()),
                Some(db.code().code().to_owned()),
            ),
            None => (format!("{context}: {e}"), None),
        };
        PostgresError {
            what,
            sqlstate,
            source: Some(Arc::new(e)),
        }
    }

    /// A connection that could not be had from the pool, in `context`: the server's message
    /// and SQLSTATE when it refused (no such database, a wrong password).
    pub(crate) fn pool(context: impl std::fmt::Display, e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(pg) => Self::postgres(&context.to_string(), pg),
            other => Self::caused(context, other),
        }
    }

    /// An error caused by `source` (a connection that could not be had, ...).
    pub(crate) fn caused(
        what: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        PostgresError {
            what: format!("{what}: {source}"),
            sqlstate: None,
            source: Some(Arc::new(source)),
        }
    }

    /// The same error, said of `context` (`PostgreSQL at host:5432: ...`).
    pub(crate) fn within(mut self, context: impl std::fmt::Display) -> Self {
        self.what = format!("{context}: {}", self.what);
        self
    }

    /// PostgreSQL's SQLSTATE (`42501`: insufficient privilege, `3D000`: no such database,
    /// ...), when the server answered with an error.
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }
}

/// Two errors are the same when they say the same (their sources are not compared).
impl PartialEq for PostgresError {
    fn eq(&self, other: &Self) -> bool {
        self.what == other.what && self.sqlstate == other.sqlstate
    }
}

impl Eq for PostgresError {}

/// The PostgreSQL error a runtime error carries, if it carries one.
pub(crate) fn carried(e: &stead_core::Error) -> Option<&PostgresError> {
    match e {
        stead_core::Error::Storage(source) => source.downcast_ref::<PostgresError>(),
        _ => None,
    }
}
