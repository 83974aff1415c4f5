//! The libSQL remote protocol's messages ("Hrana" over HTTP, JSON encoding), versions 2 and
//! 3: what a pipeline asks and what it answers. Pure data and conversions, no runtime.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use stead_core::SqlValue;

/// A pipeline request: `POST .../v2/pipeline` or `.../v3/pipeline`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PipelineRequest {
    /// The stream to continue. This server gives none: every pipeline is a stream of its own.
    #[serde(default)]
    pub baton: Option<String>,
    /// What to do, in order.
    pub requests: Vec<StreamRequest>,
}

/// A pipeline's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PipelineResponse {
    /// Always `null`: no stream outlives its pipeline.
    pub baton: Option<String>,
    /// Always `null`.
    pub base_url: Option<String>,
    /// One result per request.
    pub results: Vec<StreamResult>,
}

/// One request of a pipeline.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StreamRequest {
    /// Ends the stream; an open transaction is rolled back.
    Close,
    /// Runs one statement.
    Execute {
        /// The statement.
        stmt: Stmt,
    },
    /// Runs steps, each under a condition on the steps before.
    Batch {
        /// The steps.
        batch: Batch,
    },
    /// Runs a script of statements without parameters, stopping at the first error.
    Sequence {
        /// The script.
        #[serde(default)]
        sql: Option<String>,
        /// Or the id of a stored script.
        #[serde(default)]
        sql_id: Option<i32>,
    },
    /// Describes a statement without running it.
    Describe {
        /// The statement.
        #[serde(default)]
        sql: Option<String>,
        /// Or the id of a stored statement.
        #[serde(default)]
        sql_id: Option<i32>,
    },
    /// Stores SQL text under an id, for the rest of the stream.
    StoreSql {
        /// The id.
        sql_id: i32,
        /// The text.
        sql: String,
    },
    /// Forgets stored SQL text.
    CloseSql {
        /// The id.
        sql_id: i32,
    },
    /// Whether no transaction is open.
    GetAutocommit,
}

/// A statement with its arguments.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
pub struct Stmt {
    /// The SQL text.
    #[serde(default)]
    pub sql: Option<String>,
    /// Or the id of stored text.
    #[serde(default)]
    pub sql_id: Option<i32>,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Arguments by name (with their sigil: `:id`).
    #[serde(default)]
    pub named_args: Vec<NamedArg>,
    /// Whether to answer the rows (a write often needs none).
    #[serde(default = "yes")]
    pub want_rows: bool,
}

fn yes() -> bool {
    true
}

/// A named argument.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct NamedArg {
    /// The name, with its sigil.
    pub name: String,
    /// The value.
    pub value: Value,
}

/// Steps of a batch.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
pub struct Batch {
    /// The steps, in order.
    pub steps: Vec<BatchStep>,
}

/// One step of a batch.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct BatchStep {
    /// Runs only when this holds (always, without one).
    #[serde(default)]
    pub condition: Option<BatchCond>,
    /// The statement.
    pub stmt: Stmt,
}

/// A condition on earlier steps.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BatchCond {
    /// Step `step` ran and succeeded.
    Ok {
        /// The step's index.
        step: u32,
    },
    /// Step `step` ran and failed.
    Error {
        /// The step's index.
        step: u32,
    },
    /// Negation.
    Not {
        /// The condition negated.
        cond: Box<BatchCond>,
    },
    /// All hold.
    And {
        /// The conditions.
        conds: Vec<BatchCond>,
    },
    /// One holds.
    Or {
        /// The conditions.
        conds: Vec<BatchCond>,
    },
    /// No transaction is open.
    IsAutocommit,
}

/// One value, as the protocol carries it: integers as decimal strings (all 64 bits survive
/// JavaScript), blobs as base64.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Value {
    /// NULL.
    Null,
    /// An integer, in decimal.
    Integer {
        /// The digits.
        value: String,
    },
    /// A float.
    Float {
        /// The number.
        value: f64,
    },
    /// Text.
    Text {
        /// The text.
        value: String,
    },
    /// Bytes.
    Blob {
        /// The bytes, base64.
        base64: String,
    },
}

impl Value {
    /// The SQL value, or why the protocol value is not one.
    pub fn to_sql(&self) -> Result<SqlValue, String> {
        Ok(match self {
            Value::Null => SqlValue::Null,
            Value::Integer { value } => SqlValue::Integer(
                value
                    .parse()
                    .map_err(|_| format!("{value:?} is not a 64-bit integer"))?,
            ),
            Value::Float { value } => SqlValue::Real(*value),
            Value::Text { value } => SqlValue::Text(value.clone()),
            Value::Blob { base64 } => SqlValue::Blob(
                base64::engine::general_purpose::STANDARD
                    .decode(base64)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(base64))
                    .map_err(|e| format!("a blob's base64 is malformed: {e}"))?,
            ),
        })
    }

    /// The protocol value of a SQL value.
    pub fn from_sql(v: &SqlValue) -> Self {
        match v {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(i) => Value::Integer {
                value: i.to_string(),
            },
            SqlValue::Real(f) => Value::Float { value: *f },
            SqlValue::Text(t) => Value::Text { value: t.clone() },
            SqlValue::Blob(b) => Value::Blob {
                base64: base64::engine::general_purpose::STANDARD.encode(b),
            },
        }
    }
}

/// One request's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamResult {
    /// It succeeded.
    Ok {
        /// Its answer.
        response: StreamResponse,
    },
    /// It failed.
    Error {
        /// Why.
        error: ProtoError,
    },
}

/// A successful request's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StreamResponse {
    /// The stream ended.
    Close,
    /// A statement's result.
    Execute {
        /// The result.
        result: StmtResult,
    },
    /// A batch's results.
    Batch {
        /// The results.
        result: BatchResult,
    },
    /// A script ran.
    Sequence,
    /// A statement described.
    Describe {
        /// The description.
        result: DescribeResult,
    },
    /// Text stored.
    StoreSql,
    /// Text forgotten.
    CloseSql,
    /// Whether no transaction is open.
    GetAutocommit {
        /// No transaction is open.
        is_autocommit: bool,
    },
}

/// A statement's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StmtResult {
    /// Its columns.
    pub cols: Vec<Col>,
    /// Its rows (empty when `want_rows` was false).
    pub rows: Vec<Vec<Value>>,
    /// Rows it inserted, updated or deleted.
    pub affected_row_count: u64,
    /// The rowid of the last insert, in decimal.
    pub last_insert_rowid: Option<String>,
    /// Rows read.
    pub rows_read: u64,
    /// Rows written.
    pub rows_written: u64,
    /// How long it ran, in milliseconds.
    pub query_duration_ms: f64,
}

/// A column.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Col {
    /// Its name.
    pub name: Option<String>,
    /// Its declared type.
    pub decltype: Option<String>,
}

/// A batch's results: per step, a result or an error (both `null` for a step whose
/// condition did not hold).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BatchResult {
    /// Per step, its result.
    pub step_results: Vec<Option<StmtResult>>,
    /// Per step, its error.
    pub step_errors: Vec<Option<ProtoError>>,
}

/// A statement described.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DescribeResult {
    /// Its parameters.
    pub params: Vec<DescribeParam>,
    /// Its columns.
    pub cols: Vec<DescribeCol>,
    /// Whether it is an EXPLAIN.
    pub is_explain: bool,
    /// Whether it leaves the database as it is.
    pub is_readonly: bool,
}

/// A parameter described.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DescribeParam {
    /// Its name, if it has one.
    pub name: Option<String>,
}

/// A column described.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DescribeCol {
    /// Its name.
    pub name: String,
    /// Its declared type.
    pub decltype: Option<String>,
}

/// An error, as the protocol carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProtoError {
    /// What went wrong.
    pub message: String,
    /// A code: SQLite's (`SQLITE_CONSTRAINT`...) or the protocol's.
    #[serde(default)]
    pub code: Option<String>,
}

impl ProtoError {
    /// An error with a message and a code.
    pub fn new(message: impl Into<String>, code: &str) -> Self {
        ProtoError {
            message: message.into(),
            code: Some(code.to_owned()),
        }
    }
}

/// What a transaction statement of a client asks, read from its text: `BEGIN`, `COMMIT`
/// (`END`), `ROLLBACK` (not `ROLLBACK TO`, a savepoint's), or none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxStatement {
    /// BEGIN, and whether it is read-only (`BEGIN TRANSACTION READONLY`).
    Begin {
        readonly: bool,
    },
    Commit,
    Rollback,
}

/// Reads a statement's words (comments skipped, case ignored) to tell a transaction
/// statement from any other.
pub(crate) fn tx_statement(sql: &str) -> Option<TxStatement> {
    let words = words(sql);
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["BEGIN", rest @ ..] => {
            let rest: Vec<&str> = rest
                .iter()
                .copied()
                .filter(|x| !matches!(*x, "DEFERRED" | "IMMEDIATE" | "EXCLUSIVE" | "TRANSACTION"))
                .collect();
            match rest.as_slice() {
                [] => Some(TxStatement::Begin { readonly: false }),
                ["READONLY"] => Some(TxStatement::Begin { readonly: true }),
                _ => None,
            }
        }
        ["COMMIT" | "END"] | ["COMMIT" | "END", "TRANSACTION"] => Some(TxStatement::Commit),
        ["ROLLBACK"] | ["ROLLBACK", "TRANSACTION"] => Some(TxStatement::Rollback),
        _ => None,
    }
}

/// The words of a short statement, upper-cased, without comments or a final `;`; empty for
/// anything longer than a transaction statement can be.
fn words(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = sql.trim();
    while !rest.is_empty() && out.len() < 5 {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = rest.strip_prefix(';') {
            rest = r.trim_start();
            if !rest.is_empty() {
                return Vec::new();
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end == 0 {
                return Vec::new();
            }
            out.push(rest[..end].to_ascii_uppercase());
            rest = rest[end..].trim_start();
        }
    }
    if rest.is_empty() { out } else { Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_statements_are_told_apart() {
        use TxStatement::*;
        for (sql, want) in [
            ("BEGIN", Some(Begin { readonly: false })),
            ("begin immediate", Some(Begin { readonly: false })),
            (
                "BEGIN DEFERRED TRANSACTION;",
                Some(Begin { readonly: false }),
            ),
            ("BEGIN TRANSACTION READONLY", Some(Begin { readonly: true })),
            ("/* x */ COMMIT -- done", Some(Commit)),
            ("END TRANSACTION", Some(Commit)),
            ("ROLLBACK", Some(Rollback)),
            ("rollback transaction;", Some(Rollback)),
            ("ROLLBACK TO s", None),
            ("BEGIN; SELECT 1", None),
            ("SELECT 1", None),
            ("COMMITTED", None),
        ] {
            assert_eq!(tx_statement(sql), want, "{sql}");
        }
    }

    #[test]
    fn values_round_trip_through_the_protocol() {
        for v in [
            SqlValue::Null,
            SqlValue::Integer(i64::MAX),
            SqlValue::Integer(i64::MIN),
            SqlValue::Real(-0.5),
            SqlValue::Text("é".into()),
            SqlValue::Blob(vec![0, 1, 255]),
        ] {
            assert_eq!(Value::from_sql(&v).to_sql().unwrap(), v);
        }
        let json =
            serde_json::to_value(Value::from_sql(&SqlValue::Integer(9007199254740993))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "integer", "value": "9007199254740993"})
        );
        assert!(
            Value::Integer {
                value: "1e3".into()
            }
            .to_sql()
            .is_err()
        );
        assert!(
            Value::Blob {
                base64: "!!".into()
            }
            .to_sql()
            .is_err()
        );
    }
}
