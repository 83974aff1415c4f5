//! The typed client: pipelines, single statements, and the list of databases.

use stead_core::{Namespace, Runtime, SqlValue};

use crate::error::DatabaseError;
use crate::object::{Database, Pipeline, Remove};
use crate::protocol::{
    ProtoError, Stmt, StmtResult, StreamRequest, StreamResponse, StreamResult, Value,
};

pub use stead_core::MAX_PAGE;

/// A page of database names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct DatabasePage {
    /// The names, in order.
    pub databases: Vec<String>,
    /// Where the next page starts, if there is one.
    pub next_cursor: Option<String>,
}

/// SQL databases by name, each one object of class `database`.
#[derive(Debug, Clone)]
pub struct DatabaseClient {
    ns: Namespace<Database>,
}

impl DatabaseClient {
    /// The client of `rt`'s databases (registering the class on first use).
    pub fn new(rt: &Runtime) -> Result<Self, DatabaseError> {
        let (ns, _) = rt.get_or_register::<Database>(Default::default(), || ())?;
        Ok(DatabaseClient { ns })
    }

    /// Runs a pipeline's requests on database `name`, as one turn: one result per request;
    /// an error keeps nothing of it.
    pub async fn pipeline(
        &self,
        name: &str,
        requests: Vec<StreamRequest>,
    ) -> Result<Vec<StreamResult>, DatabaseError> {
        stead_core::validate_object_name(name)?;
        self.ns.get_by_name(name).ask(Pipeline(requests)).await?
    }

    /// Runs one statement with positional arguments.
    pub async fn execute(
        &self,
        name: &str,
        sql: &str,
        args: &[SqlValue],
    ) -> Result<Result<StmtResult, ProtoError>, DatabaseError> {
        let stmt = Stmt {
            sql: Some(sql.to_owned()),
            args: args.iter().map(Value::from_sql).collect(),
            want_rows: true,
            ..Stmt::default()
        };
        let mut out = self
            .pipeline(
                name,
                vec![StreamRequest::Execute { stmt }, StreamRequest::Close],
            )
            .await?;
        out.truncate(1);
        Ok(match out.pop() {
            Some(StreamResult::Ok {
                response: StreamResponse::Execute { result },
            }) => Ok(result),
            Some(StreamResult::Error { error }) => Err(error),
            other => Err(ProtoError::new(
                format!("unexpected answer {other:?}"),
                "PROTOCOL",
            )),
        })
    }

    /// Deletes database `name`: its tables and everything in them.
    pub async fn delete(&self, name: &str) -> Result<(), DatabaseError> {
        stead_core::validate_object_name(name)?;
        Ok(self.ns.get_by_name(name).call(Remove).await?)
    }

    /// Database names that start with `prefix`, in order, a page at a time.
    pub async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DatabasePage, DatabaseError> {
        stead_core::validate_page_limit(limit as u64)?;
        let page = self.ns.list_by_name(prefix, cursor, limit).await?;
        Ok(DatabasePage {
            databases: page.objects.into_iter().map(|o| o.name).collect(),
            next_cursor: page.next_cursor,
        })
    }
}
