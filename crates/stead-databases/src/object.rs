//! The database object: one per name, its SQL database the object's own. A pipeline is one
//! turn: what it changes commits whole, with one group commit, or not at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use stead_core::{
    Context, DurableObject, Error, Handler, Params, Result, SqlErrorKind, split_statements,
};

use crate::error::DatabaseError;
use crate::protocol::{
    BatchCond, BatchResult, Col, DescribeCol, DescribeParam, DescribeResult, ProtoError, Stmt,
    StmtResult, StreamRequest, StreamResponse, StreamResult, TxStatement, Value, tx_statement,
};

/// The most bytes of rows one pipeline answers; a statement whose rows would pass it fails
/// (ask for fewer rows, with `LIMIT`).
pub const MAX_RESULT_BYTES: usize = 32 * 1024 * 1024;

/// The savepoint that stands for a client's transaction inside the turn.
const TX: &str = "stead_client_transaction";

/// One database.
#[derive(Debug)]
pub struct Database;

impl DurableObject for Database {
    const CLASS: &'static str = "database";
    type Env = ();

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote.message::<Pipeline>().message::<Remove>();
    }

    async fn activate(_ctx: &mut Context, _env: Arc<()>) -> Result<Self> {
        Ok(Database)
    }
}

/// Runs a pipeline's requests, in order, as one turn.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pipeline(pub Vec<StreamRequest>);

impl Handler<Pipeline> for Database {
    /// One result per request; an error keeps nothing of the pipeline.
    type Reply = std::result::Result<Vec<StreamResult>, DatabaseError>;

    async fn handle(
        &mut self,
        msg: Pipeline,
        ctx: &mut Context,
    ) -> std::result::Result<Vec<StreamResult>, DatabaseError> {
        let mut run = Run {
            ctx,
            tx: None,
            stored: HashMap::new(),
            answered: 0,
        };
        let mut results = Vec::with_capacity(msg.0.len());
        let mut closed = false;
        for req in msg.0 {
            if closed {
                results.push(StreamResult::Error {
                    error: ProtoError::new("the stream is closed", "STREAM_CLOSED"),
                });
                continue;
            }
            if matches!(req, StreamRequest::Close) {
                closed = true;
            }
            results.push(match run.request(req).await? {
                Ok(response) => StreamResult::Ok { response },
                Err(error) => StreamResult::Error { error },
            });
        }
        if run.tx.is_some() {
            if !closed {
                // The client meant to go on in a later request: this server keeps no
                // stream between requests. The error reply undoes the whole pipeline.
                return Err(DatabaseError::TransactionLeftOpen);
            }
            // A stream that closes with a transaction open rolls it back.
            // (Its failure, if any, was the statement's: the close is answered all the same.)
            let _ = run.end_tx(false).await?;
        }
        Ok(results)
    }
}

/// Deletes the database: its tables and everything in them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Remove;

impl Handler<Remove> for Database {
    type Reply = Result<()>;

    async fn handle(&mut self, _: Remove, ctx: &mut Context) -> Result<()> {
        ctx.storage().delete_all();
        Ok(())
    }
}

/// What a turn's pipeline has going.
struct Run<'a> {
    ctx: &'a mut Context,
    /// The client's open transaction, and whether it is read-only.
    tx: Option<bool>,
    /// SQL text stored by id for the rest of the pipeline.
    stored: HashMap<i32, String>,
    /// Bytes of rows answered so far.
    answered: usize,
}

type Answer<T> = Result<std::result::Result<T, ProtoError>>;

impl Run<'_> {
    async fn request(&mut self, req: StreamRequest) -> Answer<StreamResponse> {
        Ok(Ok(match req {
            StreamRequest::Close => StreamResponse::Close,
            StreamRequest::Execute { stmt } => match self.stmt(&stmt).await? {
                Ok(result) => StreamResponse::Execute { result },
                Err(e) => return Ok(Err(e)),
            },
            StreamRequest::Batch { batch } => {
                let n = batch.steps.len();
                let mut out = BatchResult {
                    step_results: Vec::with_capacity(n),
                    step_errors: Vec::with_capacity(n),
                };
                for step in batch.steps {
                    let run = match &step.condition {
                        Some(c) => self.holds(c, &out)?,
                        None => true,
                    };
                    let (result, error) = if !run {
                        (None, None)
                    } else {
                        match self.stmt(&step.stmt).await? {
                            Ok(r) => (Some(r), None),
                            Err(e) => (None, Some(e)),
                        }
                    };
                    out.step_results.push(result);
                    out.step_errors.push(error);
                }
                StreamResponse::Batch { result: out }
            }
            StreamRequest::Sequence { sql, sql_id } => {
                let sql = match self.text(sql, sql_id) {
                    Ok(s) => s,
                    Err(e) => return Ok(Err(e)),
                };
                for one in split_statements(&sql) {
                    let stmt = Stmt {
                        sql: Some(one.to_owned()),
                        want_rows: false,
                        ..Stmt::default()
                    };
                    if let Err(e) = self.stmt(&stmt).await? {
                        return Ok(Err(e));
                    }
                }
                StreamResponse::Sequence
            }
            StreamRequest::Describe { sql, sql_id } => {
                let sql = match self.text(sql, sql_id) {
                    Ok(s) => s,
                    Err(e) => return Ok(Err(e)),
                };
                match self.ctx.sql().describe(&sql).await {
                    Ok(d) => StreamResponse::Describe {
                        result: DescribeResult {
                            params: d
                                .params
                                .into_iter()
                                .map(|name| DescribeParam { name })
                                .collect(),
                            cols: d
                                .columns
                                .into_iter()
                                .map(|(name, decltype)| DescribeCol { name, decltype })
                                .collect(),
                            is_explain: d.explain,
                            is_readonly: d.readonly,
                        },
                    },
                    Err(e) => return sql_failure(e),
                }
            }
            StreamRequest::StoreSql { sql_id, sql } => {
                if self.stored.contains_key(&sql_id) {
                    return Ok(Err(ProtoError::new(
                        format!("SQL text with id {sql_id} is stored already"),
                        "SQL_STORE_CONFLICT",
                    )));
                }
                self.stored.insert(sql_id, sql);
                StreamResponse::StoreSql
            }
            StreamRequest::CloseSql { sql_id } => {
                self.stored.remove(&sql_id);
                StreamResponse::CloseSql
            }
            StreamRequest::GetAutocommit => StreamResponse::GetAutocommit {
                is_autocommit: self.tx.is_none(),
            },
        }))
    }

    fn holds(&self, cond: &BatchCond, done: &BatchResult) -> Result<bool> {
        let step = |s: u32| -> Result<(bool, bool)> {
            let s = s as usize;
            if s >= done.step_results.len() {
                return Err(Error::bad_request(format!(
                    "a batch condition names step {s}, which has not run before it"
                )));
            }
            Ok((
                done.step_results[s].is_some(),
                done.step_errors[s].is_some(),
            ))
        };
        Ok(match cond {
            BatchCond::Ok { step: s } => step(*s)?.0,
            BatchCond::Error { step: s } => step(*s)?.1,
            BatchCond::Not { cond } => !self.holds(cond, done)?,
            BatchCond::And { conds } => {
                for c in conds {
                    if !self.holds(c, done)? {
                        return Ok(false);
                    }
                }
                true
            }
            BatchCond::Or { conds } => {
                for c in conds {
                    if self.holds(c, done)? {
                        return Ok(true);
                    }
                }
                false
            }
            BatchCond::IsAutocommit => self.tx.is_none(),
        })
    }

    fn text(
        &self,
        sql: Option<String>,
        sql_id: Option<i32>,
    ) -> std::result::Result<String, ProtoError> {
        match (sql, sql_id) {
            (Some(s), None) => Ok(s),
            (None, Some(id)) => self.stored.get(&id).cloned().ok_or_else(|| {
                ProtoError::new(
                    format!("no SQL text is stored with id {id}"),
                    "SQL_NOT_FOUND",
                )
            }),
            _ => Err(ProtoError::new(
                "a statement needs exactly one of `sql` and `sql_id`",
                "SQL_ID_OR_TEXT",
            )),
        }
    }

    /// Runs one statement: a client's transaction statement becomes a savepoint of the turn.
    async fn stmt(&mut self, stmt: &Stmt) -> Answer<StmtResult> {
        let sql = match self.text(stmt.sql.clone(), stmt.sql_id) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let started = Instant::now();
        if let Some(tx) = tx_statement(&sql) {
            return self
                .tx_statement(tx)
                .await
                .map(|r| r.map(|()| StmtResult::default()));
        }
        let params = match params(stmt) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        if self.tx == Some(true) {
            match self.ctx.sql().describe(&sql).await {
                Ok(d) if !d.readonly => {
                    return Ok(Err(ProtoError::new(
                        "attempt to write in a read-only transaction",
                        "SQLITE_READONLY",
                    )));
                }
                Ok(_) => {}
                Err(e) => return sql_failure(e),
            }
        }
        let cursor = match self.ctx.sql().exec_with_decltypes(&sql, params).await {
            Ok(c) => c,
            Err(e) => return sql_failure(e),
        };
        let rows: Vec<Vec<Value>> = if stmt.want_rows {
            cursor
                .rows()
                .iter()
                .map(|r| r.iter().map(Value::from_sql).collect())
                .collect()
        } else {
            Vec::new()
        };
        self.answered += rows
            .iter()
            .flatten()
            .map(|v| match v {
                Value::Text { value } => value.len() + 16,
                Value::Blob { base64 } => base64.len() + 16,
                _ => 24,
            })
            .sum::<usize>();
        if self.answered > MAX_RESULT_BYTES {
            return Ok(Err(ProtoError::new(
                format!(
                    "the pipeline's rows would pass {MAX_RESULT_BYTES} bytes; ask for fewer (LIMIT)"
                ),
                "RESPONSE_TOO_LARGE",
            )));
        }
        let decltypes = cursor.decltypes();
        Ok(Ok(StmtResult {
            cols: cursor
                .columns()
                .iter()
                .enumerate()
                .map(|(i, name)| Col {
                    name: Some(name.clone()),
                    decltype: decltypes.get(i).cloned().flatten(),
                })
                .collect(),
            rows,
            affected_row_count: cursor.rows_written(),
            last_insert_rowid: Some(cursor.last_insert_rowid().to_string()),
            rows_read: cursor.rows_read(),
            rows_written: cursor.rows_written(),
            query_duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        }))
    }

    async fn tx_statement(&mut self, tx: TxStatement) -> Answer<()> {
        match (tx, self.tx) {
            (TxStatement::Begin { .. }, Some(_)) => Ok(Err(ProtoError::new(
                "cannot start a transaction within a transaction",
                "SQLITE_ERROR",
            ))),
            (TxStatement::Begin { readonly }, None) => {
                if let Err(e) = self.ctx.sql().exec(&format!("SAVEPOINT {TX}"), ()).await {
                    return sql_failure(e);
                }
                self.tx = Some(readonly);
                Ok(Ok(()))
            }
            (TxStatement::Commit, None) => Ok(Err(ProtoError::new(
                "cannot commit - no transaction is active",
                "SQLITE_ERROR",
            ))),
            (TxStatement::Rollback, None) => Ok(Err(ProtoError::new(
                "cannot rollback - no transaction is active",
                "SQLITE_ERROR",
            ))),
            (TxStatement::Commit, Some(_)) => self.end_tx(true).await,
            (TxStatement::Rollback, Some(_)) => self.end_tx(false).await,
        }
    }

    /// Ends the client's transaction: keeps its changes (they commit with the turn) or
    /// undoes them.
    async fn end_tx(&mut self, keep: bool) -> Answer<()> {
        let sql = if keep {
            format!("RELEASE {TX}")
        } else {
            format!("ROLLBACK TO {TX}; RELEASE {TX}")
        };
        self.tx = None;
        match self.ctx.sql().exec(&sql, ()).await {
            Ok(_) => Ok(Ok(())),
            Err(e) => sql_failure(e),
        }
    }
}

fn params(stmt: &Stmt) -> std::result::Result<Params, ProtoError> {
    let bad = |e: String| ProtoError::new(e, "ARGS_INVALID");
    match (stmt.args.is_empty(), stmt.named_args.is_empty()) {
        (true, true) => Ok(Params::None),
        (false, true) => Ok(Params::Positional(
            stmt.args
                .iter()
                .map(Value::to_sql)
                .collect::<std::result::Result<_, _>>()
                .map_err(bad)?,
        )),
        (true, false) => Ok(Params::Named(
            stmt.named_args
                .iter()
                .map(|a| Ok((a.name.clone(), a.value.to_sql()?)))
                .collect::<std::result::Result<_, String>>()
                .map_err(bad)?,
        )),
        (false, false) => Err(ProtoError::new(
            "a statement takes positional or named arguments, not both",
            "ARGS_BOTH_POSITIONAL_AND_NAMED",
        )),
    }
}

/// A statement's failure as the protocol reports it; any other failure of the runtime ends
/// the pipeline.
fn sql_failure<T>(e: Error) -> Answer<T> {
    match e {
        Error::Sql(e) => {
            let code = match e.kind {
                SqlErrorKind::Constraint => "SQLITE_CONSTRAINT",
                SqlErrorKind::TooLarge => "SQLITE_FULL",
                SqlErrorKind::Interrupted => "SQLITE_INTERRUPT",
                SqlErrorKind::Refused => "SQLITE_AUTH",
                _ => "SQLITE_ERROR",
            };
            Ok(Err(ProtoError::new(e.message, code)))
        }
        Error::BadRequest { detail } => Ok(Err(ProtoError::new(detail, "SQLITE_ERROR"))),
        other => Err(other),
    }
}
