//! One object's database while the object is in memory: its connection, the turn's
//! transaction, the statement rules and limits, and the chunks a commit hands to storage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags, ffi};

use super::chunk;
use super::vfs::{self, CHUNK, MemFile, SharedFile};
use super::{Cursor, Description, Params, SqlError, SqlErrorKind, SqlValue};
use crate::backend::Value;

/// Where an object's database chunks are kept among its entries (internal keys).
pub(crate) const SQL_PREFIX: &str = "\0sql/";

/// The key of chunk `i`.
pub(crate) fn chunk_key(i: u32) -> String {
    format!("{SQL_PREFIX}{i:08x}")
}

/// Limits of every object's database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SqlLimits {
    pub(crate) max_bytes: u64,
    pub(crate) statement_timeout: Duration,
    pub(crate) cache_bytes: usize,
}

/// The largest string, blob or row a statement may make (SQLite's `SQLITE_LIMIT_LENGTH`).
pub(crate) const MAX_SQL_VALUE_BYTES: i32 = 16 * 1024 * 1024;
/// The longest statement text (`SQLITE_LIMIT_SQL_LENGTH`).
pub(crate) const MAX_SQL_TEXT_BYTES: i32 = 1024 * 1024;

/// No statement is running.
const IDLE: u64 = 0;
/// A statement is running; its deadline is set at its first progress call.
const STARTED: u64 = 1;

/// Pragmas a turn may run: ones that read the schema or the database's figures, and
/// settings that only change how statements behave. Anything else (journal, locking, page
/// size, size limit, writable schema) is the runtime's.
const ALLOWED_PRAGMAS: &[&str] = &[
    "analysis_limit",
    "application_id",
    "automatic_index",
    "case_sensitive_like",
    "collation_list",
    "data_version",
    "defer_foreign_keys",
    "encoding",
    "foreign_key_check",
    "foreign_key_list",
    "foreign_keys",
    "freelist_count",
    "function_list",
    "ignore_check_constraints",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "legacy_alter_table",
    "optimize",
    "page_count",
    "pragma_list",
    "quick_check",
    "recursive_triggers",
    "reverse_unordered_selects",
    "table_info",
    "table_list",
    "table_xinfo",
    "user_version",
];

/// Pragmas a turn may read but not set.
const READ_ONLY_PRAGMAS: &[&str] = &["page_size", "max_page_count", "schema_version"];

pub(crate) struct SqlDb {
    /// Statements prepared lately, by their text. Declared before `conn`: they are
    /// finalized before it closes.
    statements: Statements,
    conn: Pinned,
    file: SharedFile,
    /// How many chunks the store holds (the file's length when it was last flushed).
    stored_chunks: u32,
    /// The first chunk as stored. Every commit bumps the change counter in the database's
    /// header; a first chunk that differs from the stored one only there is not written
    /// again (one chunk less per turn: the counter is only read to tell other connections
    /// of a change, and an object's database has one).
    stored_first: Vec<u8>,
    /// Our transaction is open. It opens with the first statement and stays open through
    /// turns that only read (so that their statements pay no transaction of their own); a
    /// turn that may have written commits it (or rolls it back) at its end.
    open: bool,
    /// The turn ran a statement that may have changed the database.
    wrote: bool,
    /// SQLite rolled the turn's transaction back on an error (it does for some: a full
    /// database, an interrupt): the turn's earlier statements are undone, so the turn may
    /// not go on or commit.
    aborted: Option<String>,
    /// Our own BEGIN, COMMIT and ROLLBACK pass the authorizer; a turn's do not.
    ours: Arc<AtomicBool>,
    /// Why the authorizer last refused a statement.
    refused: Arc<Mutex<Option<String>>>,
    /// When the running statement must stop, in nanoseconds after the connection opened;
    /// [`IDLE`] between statements, [`STARTED`] until the statement's first progress call.
    deadline: Arc<AtomicU64>,
    limits: SqlLimits,
}

impl std::fmt::Debug for SqlDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlDb")
            .field("bytes", &vfs::lock(&self.file).data.len())
            .field("open", &self.open)
            .finish()
    }
}

fn setup_error(e: impl std::fmt::Display) -> SqlError {
    SqlError {
        kind: SqlErrorKind::Other,
        statement: String::new(),
        message: format!("the object's database could not be opened: {e}"),
    }
}

impl SqlDb {
    /// Opens a database from its stored chunks, in order (chunk `i` at index `i`).
    pub(crate) fn open(chunks: Vec<(String, Value)>, limits: SqlLimits) -> Result<Self, SqlError> {
        vfs::register().map_err(setup_error)?;
        let mut data = Vec::with_capacity(chunks.len() * CHUNK);
        for (i, (key, stored)) in chunks.iter().enumerate() {
            match chunk::decode(stored) {
                Some(bytes) if *key == chunk_key(i as u32) => data.extend_from_slice(&bytes),
                _ => {
                    return Err(setup_error(format!(
                        "its stored chunks are not whole (at {key:?})"
                    )));
                }
            }
        }
        let stored_chunks = chunks.len() as u32;
        let stored_first = data[..data.len().min(CHUNK)].to_vec();
        let file: SharedFile = Arc::new(Mutex::new(MemFile {
            data,
            dirty: Default::default(),
        }));
        let name = vfs::offer(file.clone());
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = match Connection::open_with_flags_and_vfs(&name, flags, vfs::VFS_NAME) {
            Ok(c) => c,
            Err(e) => {
                vfs::withdraw(&name);
                return Err(setup_error(e));
            }
        };
        vfs::without_lookaside(&conn).map_err(setup_error)?;
        let max_pages = (limits.max_bytes / CHUNK as u64).max(2);
        let cache_kib = (limits.cache_bytes / 1024).max(16);
        conn.execute_batch(&format!(
            "PRAGMA page_size = 4096;
             PRAGMA secure_delete = ON;
             PRAGMA journal_mode = MEMORY;
             PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA synchronous = OFF;
             PRAGMA temp_store = MEMORY;
             PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -{cache_kib};
             PRAGMA max_page_count = {max_pages};"
        ))
        .map_err(setup_error)?;
        // A value (string, blob, row) and a statement's text are bounded, so that one
        // statement cannot make the object allocate what it pleases.
        for (limit, value) in [
            (
                rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
                MAX_SQL_VALUE_BYTES,
            ),
            (
                rusqlite::limits::Limit::SQLITE_LIMIT_SQL_LENGTH,
                MAX_SQL_TEXT_BYTES,
            ),
        ] {
            conn.set_limit(limit, value).map_err(setup_error)?;
        }
        // The connection's own cache keeps only the runtime's BEGIN, COMMIT and ROLLBACK.
        conn.set_prepared_statement_cache_capacity(3);
        let ours = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(Mutex::new(None));
        let (o, r) = (ours.clone(), refused.clone());
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let why = refusal(&ctx, o.load(Ordering::Relaxed));
            match why {
                None => Authorization::Allow,
                Some(why) => {
                    *r.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    Authorization::Deny
                }
            }
        }))
        .map_err(setup_error)?;
        let deadline = Arc::new(AtomicU64::new(IDLE));
        let epoch = Instant::now();
        let d = deadline.clone();
        let timeout = limits.statement_timeout;
        // Called every 10,000 steps of a statement (tens of microseconds): the first call
        // starts the clock, so that a short statement never reads it.
        conn.progress_handler(
            10_000,
            Some(move || match d.load(Ordering::Relaxed) {
                IDLE => false,
                STARTED => {
                    let at = (epoch.elapsed() + timeout).as_nanos() as u64;
                    d.store(at.max(STARTED + 1), Ordering::Relaxed);
                    false
                }
                at => epoch.elapsed().as_nanos() as u64 > at,
            }),
        )
        .map_err(setup_error)?;
        Ok(SqlDb {
            statements: Statements::default(),
            conn: Pinned::new(conn),
            file,
            stored_chunks,
            stored_first,
            open: false,
            wrote: false,
            aborted: None,
            ours,
            refused,
            deadline,
            limits,
        })
    }

    /// Runs `sql` in the turn: reads before the turn's first write run on their own; the
    /// first statement that may write opens the turn's transaction.
    pub(crate) fn exec(
        &mut self,
        sql: &str,
        params: &Params,
        decltypes: bool,
    ) -> Result<Cursor, SqlError> {
        if let Some(why) = &self.aborted {
            return Err(aborted(sql, why));
        }
        self.deadline.store(STARTED, Ordering::Relaxed);
        let result = self.run(sql, params, decltypes);
        self.deadline.store(IDLE, Ordering::Relaxed);
        if let Err(e) = &result
            && self.open
            && self.conn.is_autocommit()
        {
            self.aborted = Some(e.message.clone());
        }
        result
    }

    fn run(&mut self, sql: &str, params: &Params, decltypes: bool) -> Result<Cursor, SqlError> {
        let before = self.conn.total_changes();
        let wrote_before = self.wrote;
        // One statement, prepared once per connection (the common case); anything the cache
        // cannot take (several statements, or an error to report) goes through `run_many`.
        let prepared = match self.statements.get(&self.conn, sql) {
            Some(prepared) => {
                let stmt = &mut prepared.stmt;
                // A statement that answers columns is never one of a savepoint's.
                let writes =
                    !stmt.readonly() || (stmt.column_count() == 0 && opens_transaction(sql));
                let began = if !self.open {
                    control(&self.conn, &self.ours, Control::Begin)
                } else {
                    Ok(())
                };
                Some(began.map(|()| {
                    let cursor = collect(stmt, params, decltypes, &mut prepared.columns);
                    if !params.is_empty() {
                        // A value bound stays with the statement until cleared.
                        stmt.clear_bindings();
                    }
                    (cursor, writes)
                }))
            }
            None => None,
        };
        let mut cursor = match prepared {
            Some(Ok((c, writes))) => {
                self.open = true;
                self.wrote |= writes;
                c.map_err(|e| self.error(SqlErrorKind::Failed, sql, e))?
            }
            Some(Err(e)) => return Err(self.error(SqlErrorKind::Other, "BEGIN", e)),
            None => {
                self.begin()?;
                self.run_many(sql, params, decltypes)?
            }
        };
        if self.wrote || wrote_before {
            cursor.rows_written = self.conn.total_changes().saturating_sub(before);
        }
        cursor.last_insert_rowid = self.conn.last_insert_rowid();
        Ok(cursor)
    }

    fn begin(&mut self) -> Result<(), SqlError> {
        if !self.open {
            control(&self.conn, &self.ours, Control::Begin)
                .map_err(|e| self.error(SqlErrorKind::Other, "BEGIN", e))?;
            self.open = true;
        }
        Ok(())
    }

    /// Statements separated by `;`, each prepared after the one before has run (so a script
    /// may create a table and fill it): the cursor is the last one's. Parameters bind to a
    /// single statement only.
    fn run_many(
        &mut self,
        sql: &str,
        params: &Params,
        decltypes: bool,
    ) -> Result<Cursor, SqlError> {
        use rusqlite::fallible_iterator::FallibleIterator;
        let mut batch = rusqlite::Batch::new(&self.conn, sql);
        let mut last = Cursor::default();
        let mut wrote = false;
        let mut first = true;
        let outcome = loop {
            let mut stmt = match batch.next() {
                Ok(Some(s)) => s,
                Ok(None) => break Ok(()),
                Err(e) => break Err((SqlErrorKind::Invalid, e)),
            };
            if first && !params.is_empty() && !matches!(batch.next(), Ok(None)) {
                drop(stmt);
                self.wrote |= wrote;
                return Err(SqlError {
                    kind: SqlErrorKind::Invalid,
                    statement: shorten(sql),
                    message: "parameters bind to one statement; run several statements \
                              without parameters"
                        .into(),
                });
            }
            first = false;
            wrote |= !stmt.readonly();
            match collect(&mut stmt, params, decltypes, &mut None) {
                Ok(c) => last = c,
                Err(e) => break Err((SqlErrorKind::Failed, e)),
            }
        };
        self.wrote |= wrote;
        match outcome {
            Ok(()) => Ok(last),
            Err((kind, e)) => Err(self.error(kind, sql, e)),
        }
    }

    fn error(&self, kind: SqlErrorKind, sql: &str, e: rusqlite::Error) -> SqlError {
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (kind, message) = match (&e, refused) {
            (_, Some(why)) if is_code(&e, ffi::ErrorCode::AuthorizationForStatementDenied) => {
                (SqlErrorKind::Refused, why)
            }
            _ if is_code(&e, ffi::ErrorCode::OperationInterrupted) => (
                SqlErrorKind::Interrupted,
                format!(
                    "the statement ran past its deadline of {:?} and was interrupted",
                    self.limits.statement_timeout
                ),
            ),
            _ if is_code(&e, ffi::ErrorCode::DiskFull) => (
                SqlErrorKind::TooLarge,
                format!(
                    "the object's database would grow past its limit of {} bytes",
                    self.limits.max_bytes
                ),
            ),
            _ if is_code(&e, ffi::ErrorCode::ConstraintViolation) => {
                (SqlErrorKind::Constraint, message_of(&e))
            }
            (rusqlite::Error::InvalidParameterCount(_, _), _) => (
                SqlErrorKind::Invalid,
                format!(
                    "{e}: parameters bind to one statement; run several statements without parameters"
                ),
            ),
            _ => (kind, message_of(&e)),
        };
        SqlError {
            kind,
            statement: shorten(sql),
            message,
        }
    }

    /// What a statement takes and answers, without running it.
    pub(crate) fn describe(&mut self, sql: &str) -> Result<Description, SqlError> {
        let stmt = match self.conn.prepare(sql) {
            Ok(s) => s,
            Err(e) => return Err(self.error(SqlErrorKind::Invalid, sql, e)),
        };
        let params = (1..=stmt.parameter_count())
            .map(|i| stmt.parameter_name(i).map(str::to_owned))
            .collect();
        let columns = stmt
            .columns()
            .map(|c| (c.name().to_owned(), c.decl_type().map(str::to_owned)))
            .collect();
        Ok(Description {
            params,
            columns,
            readonly: stmt.readonly(),
            explain: stmt.is_explain() > 0,
        })
    }

    /// The database's size in bytes, this turn's changes included.
    pub(crate) fn size(&mut self) -> Result<u64, SqlError> {
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(|e| self.error(SqlErrorKind::Other, "PRAGMA page_count", e))?;
        let page: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| self.error(SqlErrorKind::Other, "PRAGMA page_size", e))?;
        Ok((pages * page) as u64)
    }

    /// Whether the turn ran a statement that may have changed the database.
    pub(crate) fn turn_wrote(&self) -> bool {
        self.wrote
    }

    /// Ends a turn that succeeded: commits what it may have written and answers the chunks to
    /// store (each changed chunk with its bytes, and chunks past the new end to delete). On
    /// an error the transaction is rolled back.
    pub(crate) fn commit(&mut self) -> Result<Vec<(String, Option<Value>)>, SqlError> {
        if let Some(why) = &self.aborted {
            let err = aborted("COMMIT", why);
            self.rollback();
            return Err(err);
        }
        if !self.wrote {
            // Only reads: the transaction stays open for the next turn.
            return Ok(Vec::new());
        }
        if let Err(e) = control(&self.conn, &self.ours, Control::Commit) {
            let err = self.error(SqlErrorKind::Failed, "COMMIT", e);
            self.rollback();
            return Err(err);
        }
        self.open = false;
        self.wrote = false;
        let mut file = vfs::lock(&self.file);
        let chunks = file.chunks();
        let mut out = Vec::with_capacity(file.dirty.len());
        for i in std::mem::take(&mut file.dirty) {
            if i >= chunks {
                continue;
            }
            let chunk = file.chunk(i);
            if i == 0 {
                if only_counters_differ(&self.stored_first, chunk) {
                    continue;
                }
                self.stored_first = chunk.to_vec();
            }
            out.push((chunk_key(i), Some(Value::from(&*chunk::encode(chunk)))));
        }
        for i in chunks..self.stored_chunks {
            out.push((chunk_key(i), None));
        }
        self.stored_chunks = chunks;
        Ok(out)
    }

    /// Ends a turn that failed: the database is as the last commit left it.
    pub(crate) fn rollback(&mut self) {
        if !(self.wrote || self.aborted.is_some()) {
            // Only reads: nothing to undo; the transaction stays open.
            return;
        }
        if !self.conn.is_autocommit() {
            let _ = control(&self.conn, &self.ours, Control::Rollback);
        }
        self.open = false;
        self.wrote = false;
        self.aborted = None;
        // Pages spilled during the turn were written back as they were: nothing to store.
        vfs::lock(&self.file).dirty.clear();
    }
}

/// Whether two first chunks differ only in the header's change counter (bytes 24..28) and
/// its copy, the version-valid-for number (bytes 92..96).
fn only_counters_differ(stored: &[u8], now: &[u8]) -> bool {
    stored.len() == now.len()
        && now.len() >= 100
        && stored[..24] == now[..24]
        && stored[28..92] == now[28..92]
        && stored[96..] == now[96..]
}

#[derive(Clone, Copy)]
enum Control {
    Begin,
    Commit,
    Rollback,
}

/// Runs the runtime's own transaction statement. Their text carries a secret of this
/// process, so that the statement cache they share with a turn's statements never hands a
/// turn's `COMMIT` one of ours, authorized already.
fn control(conn: &Connection, ours: &AtomicBool, what: Control) -> rusqlite::Result<()> {
    static TEXTS: std::sync::OnceLock<[String; 3]> = std::sync::OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        let secret: u128 = rand::random();
        ["BEGIN", "COMMIT", "ROLLBACK"].map(|s| format!("{s} -- stead {secret:032x}"))
    });
    ours.store(true, Ordering::Relaxed);
    let r = conn
        .prepare_cached(&texts[what as usize])
        .and_then(|mut s| s.raw_execute().map(drop));
    ours.store(false, Ordering::Relaxed);
    r
}

/// Whether a statement SQLite calls read-only still opens or ends a transaction: a
/// savepoint's statements. (BEGIN, COMMIT and ROLLBACK are refused.)
pub(crate) fn opens_transaction(sql: &str) -> bool {
    let mut rest = sql.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    let word = rest
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    ["SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "END", "COMMIT"]
        .iter()
        .any(|w| w.eq_ignore_ascii_case(word))
}

fn aborted(sql: &str, why: &str) -> SqlError {
    SqlError {
        kind: SqlErrorKind::Failed,
        statement: shorten(sql),
        message: format!(
            "an earlier statement of this turn failed and rolled its transaction back ({why}); \
             the turn's SQL changes are undone and it cannot go on"
        ),
    }
}

/// Why the authorizer refuses an action of a turn's statement, if it does.
fn refusal(ctx: &AuthContext<'_>, ours: bool) -> Option<String> {
    match ctx.action {
        AuthAction::Transaction { .. } if !ours => Some(
            "a turn is the transaction: BEGIN, COMMIT and ROLLBACK are refused inside one \
             (SAVEPOINT, RELEASE and ROLLBACK TO give nested transactions)"
                .into(),
        ),
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            Some("ATTACH and DETACH are refused: an object sees its own database only".into())
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let allowed = ALLOWED_PRAGMAS.contains(&name.as_str())
                || (pragma_value.is_none() && READ_ONLY_PRAGMAS.contains(&name.as_str()));
            (!allowed)
                .then(|| format!("PRAGMA {pragma_name} is the runtime's; a turn may not run it"))
        }
        _ => None,
    }
}

fn is_code(e: &rusqlite::Error, code: ffi::ErrorCode) -> bool {
    e.sqlite_error_code() == Some(code)
}

fn message_of(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(err, Some(msg)) => format!("{msg} ({:?})", err.code),
        e => e.to_string(),
    }
}

/// A statement as errors quote it: at most 200 characters.
fn shorten(sql: &str) -> String {
    let sql = sql.trim();
    match sql.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &sql[..i]),
        None => sql.to_owned(),
    }
}

fn bind(stmt: &mut rusqlite::Statement<'_>, params: &Params) -> rusqlite::Result<()> {
    match params {
        Params::None => Ok(()),
        Params::Positional(values) => {
            let expected = stmt.parameter_count();
            if values.len() != expected {
                return Err(rusqlite::Error::InvalidParameterCount(
                    values.len(),
                    expected,
                ));
            }
            for (i, v) in values.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, as_sql(v))?;
            }
            Ok(())
        }
        Params::Named(values) => {
            for (name, v) in values {
                // A name without its sigil matches `:name`, `@name` or `$name`.
                let mut index = stmt.parameter_index(name)?;
                if index.is_none() && !name.starts_with([':', '@', '$', '?']) {
                    for sigil in [':', '@', '$'] {
                        index = stmt.parameter_index(&format!("{sigil}{name}"))?;
                        if index.is_some() {
                            break;
                        }
                    }
                }
                let index =
                    index.ok_or_else(|| rusqlite::Error::InvalidParameterName(name.clone()))?;
                stmt.raw_bind_parameter(index, as_sql(v))?;
            }
            Ok(())
        }
    }
}

/// The statement's column names: those `cached` when they are still the statement's (a
/// schema change may change them), so that a cursor shares them instead of copying them out
/// of SQLite each time.
fn column_names(
    cached: &mut Option<Arc<[String]>>,
    stmt: &rusqlite::Statement<'_>,
) -> Arc<[String]> {
    if stmt.column_count() == 0 {
        static NONE: std::sync::LazyLock<Arc<[String]>> =
            std::sync::LazyLock::new(|| Arc::from([]));
        return NONE.clone();
    }
    if let Some(names) = cached
        && names.len() == stmt.column_count()
        && names
            .iter()
            .enumerate()
            .all(|(i, a)| stmt.column_name(i).is_ok_and(|b| a == b))
    {
        return names.clone();
    }
    let names: Arc<[String]> = stmt.column_names().map(str::to_owned).collect();
    *cached = Some(names.clone());
    names
}

/// The connection, kept at one address for as long as it is open, so that the statements
/// prepared on it ([`Statements`]) may point to it while both move together.
struct Pinned(std::ptr::NonNull<Connection>);

impl Pinned {
    fn new(conn: Connection) -> Self {
        Pinned(std::ptr::NonNull::from(Box::leak(Box::new(conn))))
    }
}

impl std::ops::Deref for Pinned {
    type Target = Connection;
    #[allow(unsafe_code)]
    fn deref(&self) -> &Connection {
        // SAFETY: the pointer is the leaked box's, freed only by `drop`; only shared
        // references are ever made from it.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for Pinned {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the box leaked by `new`, freed once; `SqlDb` drops its statements first.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

// SAFETY: `Connection` is `Send`; the pointer is owned as a box is.
#[allow(unsafe_code)]
unsafe impl Send for Pinned {}

/// A statement prepared once and run many times, with its column names.
struct Prepared {
    stmt: rusqlite::Statement<'static>,
    columns: Option<Arc<[String]>>,
}

/// The statements an object ran lately, by their exact text (at most 64; the connection's
/// own cache has one hash of the text more, and a removal and an insertion per run).
#[derive(Default)]
struct Statements(HashMap<Box<str>, Prepared, foldhash::fast::RandomState>);

// SAFETY: the statements point to the connection of the same `SqlDb`, which moves between
// threads with them and is never shared: neither is used by two threads at once.
#[allow(unsafe_code)]
unsafe impl Send for Statements {}

impl Statements {
    /// `sql` prepared on `conn` (and kept), or `None` if it cannot be prepared as one
    /// statement.
    fn get(&mut self, conn: &Pinned, sql: &str) -> Option<&mut Prepared> {
        if !self.0.contains_key(sql) {
            let stmt = conn
                .prepare_with_flags(sql, rusqlite::PrepFlags::SQLITE_PREPARE_PERSISTENT)
                .ok()?;
            #[allow(unsafe_code)]
            // SAFETY: the statement borrows the connection `conn` points to, which stays at
            // its address until `SqlDb` is dropped; `SqlDb` drops `statements` before
            // `conn`, and never lends a statement out of itself.
            let stmt = unsafe {
                std::mem::transmute::<rusqlite::Statement<'_>, rusqlite::Statement<'static>>(stmt)
            };
            if self.0.len() >= 64 {
                self.0.clear();
            }
            self.0.insert(
                sql.into(),
                Prepared {
                    stmt,
                    columns: None,
                },
            );
        }
        self.0.get_mut(sql)
    }
}

fn collect(
    stmt: &mut rusqlite::Statement<'_>,
    params: &Params,
    want_decltypes: bool,
    cached_columns: &mut Option<Arc<[String]>>,
) -> rusqlite::Result<Cursor> {
    if matches!(params, Params::Named(_)) {
        // Names may leave some parameters unbound: none keeps a value from an earlier run.
        stmt.clear_bindings();
    }
    bind(stmt, params)?;
    let mut rows = Vec::new();
    let mut raw = stmt.raw_query();
    while let Some(row) = raw.next()? {
        // Read after the first step: a statement prepared before a schema change is
        // prepared again by it, and may answer other columns than it did.
        let n = row.as_ref().column_count();
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(value_of(row.get_ref(i)?));
        }
        rows.push(values);
    }
    drop(raw);
    let decltypes = if want_decltypes {
        stmt.columns()
            .map(|c| c.decl_type().map(str::to_owned))
            .collect()
    } else {
        Vec::new()
    };
    let columns = column_names(cached_columns, stmt);
    let scanned = stmt.reset_status(rusqlite::StatementStatus::FullscanStep) as u64;
    // A full scan's steps move between rows: n steps read n + 1 rows.
    let rows_read = (rows.len() as u64).max(if scanned > 0 { scanned + 1 } else { 0 });
    Ok(Cursor {
        columns,
        decltypes,
        rows,
        rows_read,
        rows_written: 0,
        last_insert_rowid: 0,
    })
}

pub(crate) fn as_sql(v: &SqlValue) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::ValueRef;
    rusqlite::types::ToSqlOutput::Borrowed(match v {
        SqlValue::Null => ValueRef::Null,
        SqlValue::Integer(i) => ValueRef::Integer(*i),
        SqlValue::Real(f) => ValueRef::Real(*f),
        SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
        SqlValue::Blob(b) => ValueRef::Blob(b),
    })
}

pub(crate) fn value_of(v: rusqlite::types::ValueRef<'_>) -> SqlValue {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}
