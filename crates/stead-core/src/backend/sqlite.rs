//! The embedded default: SQLite (bundled) in WAL mode, split into shard files by object id,
//! with one writer thread per shard doing group commit through a commit log (see
//! [`commit_log`]).

mod commit_log;

use commit_log::CommitLog;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{
    AlarmChange, Backend, CommitBatch, Completer, Durability, ListOptions, NamedObject,
    ObjectEntry, ObjectRef, Value, unavailable,
};
use crate::clock::lock;
use crate::error::{Error, Result};
use crate::id::{IdHashState, ObjectId};

/// The schema version this code writes; stored in `PRAGMA user_version`. Version 2 added the
/// commit logs beside the databases (and `meta.log_seq`): a build that reads only version 1
/// would ignore a log's acknowledged writes, so it must refuse the directory.
const SCHEMA_VERSION: i64 = 2;
/// At most this many batches go into one transaction.
const MAX_GROUP: usize = 8192;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    class TEXT NOT NULL, id BLOB NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (class, id, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarms (
    class TEXT NOT NULL, id BLOB NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (class, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    class TEXT NOT NULL, id BLOB NOT NULL, name TEXT,
    PRIMARY KEY (class, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_by_name ON objects (class, name) WHERE name IS NOT NULL;
";

/// Indexes added after a schema version, created when missing (a build without them keeps
/// them up to date, as SQLite maintains every index).
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS alarms_by_time ON alarms (class, at_ms, id);
";

/// Options of the SQLite backend.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How many shard files (and writer threads) to split objects over. Fixed when the data
    /// directory is created: `None` takes the directory's count, or for a new directory one
    /// writer per two cores (at most 8); a count that differs from an existing directory's
    /// is refused.
    pub shards: Option<usize>,
}

impl SqliteOptions {
    /// The same options with this many shard files.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }
}

/// One writer per two cores, at most 8: each writer is mostly waiting on fsync, and fewer
/// writers make larger groups per commit.
fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .clamp(1, 8)
}

/// The shard count recorded in an existing shard file.
fn stored_shards(conn: &Connection) -> Result<Option<usize>> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql_err)?;
    if version == 0 {
        return Ok(None);
    }
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'shards'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql_err)?;
    Ok(stored.and_then(|s| s.parse().ok()))
}

/// SQLite storage in a directory of shard files (`shard-00.db`, ...).
///
/// One process at a time: opening takes an exclusive lock on the file `LOCK` in the
/// directory, held until the backend is dropped; a second open, from this process or another,
/// fails at once with [`Error::InvalidConfig`] naming the directory and the holder's pid.
pub struct SqliteBackend {
    shards: Vec<Shard>,
    dir: PathBuf,
    /// Released by [`Backend::close`] (or when dropped, after `Drop` stopped the writers).
    lock: Mutex<Option<DirLock>>,
}

/// The exclusive lock on a data directory: an advisory lock on `dir/LOCK`, which also holds
/// the pid of the process that has it (for the error a second process gets). The operating
/// system releases the lock when the process ends, however it ends, so a crash leaves no
/// stale lock behind.
#[derive(Debug)]
struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock> {
        use std::io::{Read, Seek, Write};
        let path = dir.join("LOCK");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::storage)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("process {holder}")
                };
                return Err(Error::invalid_config(format!(
                    "the data directory {} is in use by {by}: one runtime per data directory (stop the other one, or choose another directory)",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::storage(e)),
        }
        // Only the holder writes its pid; a failure to write it loses nothing but a hint.
        let pid = std::process::id().to_string();
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(std::io::SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        Ok(DirLock { _file: file })
    }
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("dir", &self.dir)
            .field("shards", &self.shards.len())
            .finish()
    }
}

struct Shard {
    /// Shared by every caller without a lock (a `Sender` is `Sync`); `Stop` ends the writer.
    writer: Sender<WriterMsg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Dropping the sender stops the checkpointer.
    checkpointer: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    shared: Arc<SharedConn>,
}

/// What a shard's writer shares with readers.
///
/// The writer keeps a transaction open for up to a window (see [`Writer`]); every
/// acknowledged write is in it or committed. Reads of an object that has writes in the open
/// window go through the writer's connection, which sees them; every other read goes through
/// a reader connection of its own, on the committed state, and never waits for the window's
/// commit (its page writes and fsync).
struct SharedConn {
    conn: Mutex<Connection>,
    /// Set when a group failed and the writer could not take it back out of the log: the
    /// shard then refuses reads and writes until the process restarts (see [`Writer::fail`]).
    broken: AtomicBool,
    /// Set once the backend is closed: the directory may belong to another runtime now.
    closed: AtomicBool,
    /// Objects with writes in the open window; emptied once a window has committed.
    in_window: Mutex<HashSet<ObjectId, IdHashState>>,
    /// Idle reader connections.
    readers: Mutex<Vec<Connection>>,
    /// The shard's database file, for new reader connections.
    path: PathBuf,
    /// Lets a test hold the window's commit while the writer holds its connection.
    #[cfg(any(test, feature = "test-util"))]
    hold: CommitHold,
}

/// At most this many idle reader connections are kept per shard.
const MAX_IDLE_READERS: usize = 8;

impl SharedConn {
    fn new(conn: Connection, path: PathBuf) -> Self {
        SharedConn {
            conn: Mutex::new(conn),
            broken: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            in_window: Mutex::new(HashSet::default()),
            readers: Mutex::new(Vec::new()),
            path,
            #[cfg(any(test, feature = "test-util"))]
            hold: CommitHold::default(),
        }
    }

    fn check(&self) -> Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(unavailable(BROKEN));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(unavailable("the SQLite store is closed"));
        }
        Ok(())
    }

    /// A connection for reading object `id`: the writer's when the open window has writes
    /// of it, else a reader's.
    fn read_for(&self, id: &ObjectId) -> Result<ReadConn<'_>> {
        self.check()?;
        if lock(&self.in_window).contains(id) {
            return Ok(ReadConn::Writer(lock(&self.conn)));
        }
        let idle = lock(&self.readers).pop();
        let conn = match idle {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        Ok(ReadConn::Reader(self, Some(conn)))
    }

    /// The writer's connection, which sees every acknowledged write (for scans over many
    /// objects; callers run them off the async workers).
    fn read_all(&self) -> Result<MutexGuard<'_, Connection>> {
        self.check()?;
        Ok(lock(&self.conn))
    }
}

/// A connection lent for one read.
enum ReadConn<'a> {
    Writer(MutexGuard<'a, Connection>),
    /// Goes back to the shard's idle readers when dropped.
    Reader(&'a SharedConn, Option<Connection>),
}

impl std::ops::Deref for ReadConn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            ReadConn::Writer(c) => c,
            // Always `Some` until dropped.
            ReadConn::Reader(_, c) => c.as_ref().unwrap_or_else(|| unreachable!()),
        }
    }
}

impl Drop for ReadConn<'_> {
    fn drop(&mut self) {
        if let ReadConn::Reader(shared, conn) = self
            && let Some(conn) = conn.take()
        {
            let mut idle = lock(&shared.readers);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

/// A reader connection on a shard's database: read-only, on the committed state.
fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql_err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// A switch a test turns on to make the writer wait, before a window's commit, holding its
/// connection (as a slow fsync would).
#[cfg(any(test, feature = "test-util"))]
#[derive(Default)]
struct CommitHold {
    held: Mutex<bool>,
    changed: std::sync::Condvar,
    /// How many commits are waiting on the switch right now.
    waiting: std::sync::atomic::AtomicUsize,
}

#[cfg(any(test, feature = "test-util"))]
impl CommitHold {
    fn set(&self, held: bool) {
        *lock(&self.held) = held;
        self.changed.notify_all();
    }

    fn wait(&self) {
        let mut held = lock(&self.held);
        self.waiting.fetch_add(1, Ordering::AcqRel);
        while *held {
            held = self.changed.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

const BROKEN: &str =
    "this storage shard failed and could not recover; restart the process to replay its commit log";

/// How often the checkpointer folds the WAL back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// WAL pages after which the writer checkpoints by itself (a backstop for when the
/// checkpointer cannot keep up); 64 MiB of 4 KiB pages.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// Runs passive checkpoints beside the writer, so that commits never wait for the WAL to be
/// copied into the database file (and, in `Fsync` mode, for that file's fsync).
fn checkpoint_loop(conn: Connection, stop: Receiver<()>) {
    loop {
        match stop.recv_timeout(CHECKPOINT_EVERY) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpoint failed; the writer's own checkpoints take over");
        }
    }
}

enum WriterMsg {
    Commit(CommitBatch),
    Flush(tokio::sync::oneshot::Sender<()>),
    /// The backend is dropped: finish what came before, then end.
    Stop,
}

fn sql_err(e: rusqlite::Error) -> Error {
    Error::storage(e)
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql_err)?;
    Ok(conn)
}

fn init_schema(conn: &Connection, shards: usize) -> Result<()> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql_err)?;
    match version {
        0 => {
            conn.execute_batch(SCHEMA).map_err(sql_err)?;
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('shards', ?1)",
                params![shards.to_string()],
            )
            .map_err(sql_err)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql_err)?;
        }
        // Version 1 had no commit log: nothing moves, and the log starts empty.
        1 => conn
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql_err)?,
        SCHEMA_VERSION => {}
        other => {
            return Err(Error::storage(std::io::Error::other(format!(
                "data was written by a newer stead (schema version {other}, this build reads {SCHEMA_VERSION})"
            ))));
        }
    }
    conn.execute_batch(INDEXES).map_err(sql_err)?;
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'shards'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql_err)?;
    if stored.as_deref() != Some(shards.to_string().as_str()) {
        return Err(Error::storage(std::io::Error::other(format!(
            "the data directory was created with {} shards, not {shards}; open it with the same shard count",
            stored.as_deref().unwrap_or("an unknown number of")
        ))));
    }
    Ok(())
}

impl SqliteBackend {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>, opts: SqliteOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if opts.shards.is_some_and(|n| n == 0 || n > 256) {
            return Err(Error::invalid_config(
                "the SQLite shard count must be between 1 and 256",
            ));
        }
        std::fs::create_dir_all(&dir).map_err(Error::storage)?;
        let dir_lock = DirLock::acquire(&dir)?;
        // An existing directory keeps its shard count; asking for another is refused before
        // anything is touched.
        let first = dir.join("shard-00.db");
        let existing = if first.exists() {
            stored_shards(&open_conn(&first)?)?
        } else {
            None
        };
        let count = match (existing, opts.shards) {
            (Some(have), Some(want)) if have != want => {
                return Err(Error::invalid_config(format!(
                    "the data directory {} was created with {have} shards, not {want}; open it with the same shard count (or none)",
                    dir.display()
                )));
            }
            (Some(have), _) => have,
            (None, want) => want.unwrap_or_else(default_shards),
        };
        let mut shards = Vec::with_capacity(count);
        for i in 0..count {
            let path = dir.join(format!("shard-{i:02}.db"));
            let wconn = open_conn(&path)?;
            init_schema(&wconn, count)?;
            wconn
                .pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
                .map_err(sql_err)?;
            wconn
                .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
                .map_err(sql_err)?;
            // The writer's statements and every read's share this connection's cache of
            // prepared statements: room for all of them, so none is prepared again.
            wconn.set_prepared_statement_cache_capacity(64);
            let log_path = dir.join(format!("shard-{i:02}.log"));
            // The file's name, then the error and each of its causes.
            let in_log = |e: &dyn std::error::Error| {
                let causes = std::iter::successors(Some(e), |e| e.source());
                let text = causes.fold(log_path.display().to_string(), |t, c| format!("{t}: {c}"));
                Error::storage(std::io::Error::other(text))
            };
            let log = CommitLog::open(&log_path).map_err(|e| in_log(&e))?;
            let writer = Writer::start(wconn, log, path.clone()).map_err(|e| in_log(&e))?;
            let shared = writer.shared.clone();
            let cconn = open_conn(&path)?;
            let (stop_tx, stop_rx) = std::sync::mpsc::channel();
            let checkpointer = std::thread::Builder::new()
                .name(format!("stead-checkpoint-{i}"))
                .spawn(move || checkpoint_loop(cconn, stop_rx))
                .map_err(Error::storage)?;
            let (tx, rx) = std::sync::mpsc::channel();
            let completer = Completer::new();
            let thread = std::thread::Builder::new()
                .name(format!("stead-writer-{i}"))
                .spawn(move || writer.run(rx, completer))
                .map_err(Error::storage)?;
            shards.push(Shard {
                writer: tx,
                thread: Mutex::new(Some(thread)),
                checkpointer: Mutex::new(Some((stop_tx, checkpointer))),
                shared,
            });
        }
        Ok(SqliteBackend {
            shards,
            dir,
            lock: Mutex::new(Some(dir_lock)),
        })
    }

    fn shard(&self, id: &ObjectId) -> &Shard {
        let b = id.as_bytes();
        let n = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        &self.shards[(n % self.shards.len() as u64) as usize]
    }

    /// Sends to the shard's writer; gives the message back if the writer has stopped.
    fn send(&self, shard: &Shard, msg: WriterMsg) -> Option<WriterMsg> {
        shard.writer.send(msg).err().map(|e| e.0)
    }
}

impl SqliteBackend {
    /// Runs `query` on every shard's writer connection (which sees every acknowledged
    /// write) on a blocking thread, and gathers the rows.
    async fn scan_shards<T: Send + 'static>(
        &self,
        query: impl Fn(&Connection) -> Result<Vec<T>> + Send + 'static,
    ) -> Result<Vec<T>> {
        let shards: Vec<Arc<SharedConn>> = self.shards.iter().map(|s| s.shared.clone()).collect();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for shard in shards {
                out.extend(query(&*shard.read_all()?)?);
            }
            Ok(out)
        })
        .await
        .map_err(Error::storage)?
    }

    /// Makes every shard's writer wait, before its next window commit, while holding its
    /// connection (as a slow fsync would), until [`release_commits`](Self::release_commits).
    /// Returns once a commit is being held.
    #[cfg(any(test, feature = "test-util"))]
    pub fn hold_commits(&self) {
        for s in &self.shards {
            s.shared.hold.set(true);
        }
    }

    /// How many window commits are held right now by [`hold_commits`](Self::hold_commits).
    #[cfg(any(test, feature = "test-util"))]
    pub fn commits_held(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.shared.hold.waiting.load(Ordering::Acquire))
            .sum()
    }

    /// Lets held commits go on.
    #[cfg(any(test, feature = "test-util"))]
    pub fn release_commits(&self) {
        for s in &self.shards {
            s.shared.hold.set(false);
        }
    }

    /// Asks every shard to commit its open window now, without waiting for it.
    #[cfg(any(test, feature = "test-util"))]
    pub fn start_commit(&self) {
        for s in &self.shards {
            let (tx, _rx) = tokio::sync::oneshot::channel();
            let _ = self.send(s, WriterMsg::Flush(tx));
        }
    }
}

/// Rows of a registry query (selecting `id, name`).
fn registry_rows(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<(ObjectId, Option<String>)>> {
    let mut stmt = conn.prepare_cached(sql).map_err(sql_err)?;
    let rows = stmt
        .query_map(args, |r| {
            let id: Vec<u8> = r.get(0)?;
            let name: Option<String> = r.get(1)?;
            Ok((id, name))
        })
        .map_err(sql_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name) = row.map_err(sql_err)?;
        out.push((blob_id(&id)?, name));
    }
    Ok(out)
}

impl SqliteBackend {
    /// Stops the writers (each finishes what was sent before) and the checkpointers, and
    /// marks every shard closed. Idempotent.
    fn stop(&self) {
        for s in &self.shards {
            let _ = s.writer.send(WriterMsg::Stop);
        }
        for s in &self.shards {
            if let Some(t) = lock(&s.thread).take() {
                let _ = t.join();
            }
            if let Some((stop, t)) = lock(&s.checkpointer).take() {
                drop(stop);
                let _ = t.join();
            }
            s.shared.closed.store(true, Ordering::Release);
        }
    }
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Backend for SqliteBackend {
    async fn get(&self, obj: &ObjectRef, key: &str) -> Result<Option<Value>> {
        let conn = self.shard(&obj.id).shared.read_for(&obj.id)?;
        let mut stmt = conn
            .prepare_cached("SELECT value FROM kv WHERE class = ?1 AND id = ?2 AND key = ?3")
            .map_err(sql_err)?;
        stmt.query_row(params![obj.class, &obj.id.as_bytes()[..], key], |r| {
            let v: Vec<u8> = r.get(0)?;
            Ok(Value::from(v))
        })
        .optional()
        .map_err(sql_err)
    }

    async fn list(&self, obj: &ObjectRef, opts: &ListOptions) -> Result<Vec<(String, Value)>> {
        let (lower, upper) = opts.bounds();
        let limit = opts.limit.map_or(-1, |l| l.min(i64::MAX as usize) as i64);
        let sql = match (upper.is_some(), opts.reverse) {
            (true, false) => {
                "SELECT key, value FROM kv WHERE class = ?1 AND id = ?2 AND key >= ?3 AND key < ?4 ORDER BY key ASC LIMIT ?5"
            }
            (true, true) => {
                "SELECT key, value FROM kv WHERE class = ?1 AND id = ?2 AND key >= ?3 AND key < ?4 ORDER BY key DESC LIMIT ?5"
            }
            (false, false) => {
                "SELECT key, value FROM kv WHERE class = ?1 AND id = ?2 AND key >= ?3 AND ?4 IS NULL ORDER BY key ASC LIMIT ?5"
            }
            (false, true) => {
                "SELECT key, value FROM kv WHERE class = ?1 AND id = ?2 AND key >= ?3 AND ?4 IS NULL ORDER BY key DESC LIMIT ?5"
            }
        };
        let conn = self.shard(&obj.id).shared.read_for(&obj.id)?;
        let mut stmt = conn.prepare_cached(sql).map_err(sql_err)?;
        let rows = stmt
            .query_map(
                params![obj.class, &obj.id.as_bytes()[..], lower, upper, limit],
                |r| {
                    let k: String = r.get(0)?;
                    let v: Vec<u8> = r.get(1)?;
                    Ok((k, Value::from(v)))
                },
            )
            .map_err(sql_err)?;
        rows.collect::<std::result::Result<_, _>>().map_err(sql_err)
    }

    async fn load(&self, obj: &ObjectRef, limit: usize) -> Result<Vec<(String, Value)>> {
        // No ORDER BY and no bound LIMIT: with either, SQLite prepares the statement again
        // on every run (a new binding could change its plan), which costs more than the
        // read itself. The limit is a constant of the caller, so one statement is cached.
        let conn = self.shard(&obj.id).shared.read_for(&obj.id)?;
        let sql = format!("SELECT key, value FROM kv WHERE class = ?1 AND id = ?2 LIMIT {limit}");
        let mut stmt = conn.prepare_cached(&sql).map_err(sql_err)?;
        let rows = stmt
            .query_map(params![obj.class, &obj.id.as_bytes()[..]], |r| {
                let k: String = r.get(0)?;
                let v: Vec<u8> = r.get(1)?;
                Ok((k, Value::from(v)))
            })
            .map_err(sql_err)?;
        rows.collect::<std::result::Result<_, _>>().map_err(sql_err)
    }

    async fn get_alarm(&self, obj: &ObjectRef) -> Result<Option<i64>> {
        let conn = self.shard(&obj.id).shared.read_for(&obj.id)?;
        let mut stmt = conn
            .prepare_cached("SELECT at_ms FROM alarms WHERE class = ?1 AND id = ?2")
            .map_err(sql_err)?;
        stmt.query_row(params![obj.class, &obj.id.as_bytes()[..]], |r| r.get(0))
            .optional()
            .map_err(sql_err)
    }

    async fn due_alarms(
        &self,
        class: &'static str,
        after: Option<(i64, ObjectId)>,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, ObjectId)>> {
        let (after_ms, after_id) = match after {
            Some((at, id)) => (at, id.as_bytes().to_vec()),
            None => (i64::MIN, Vec::new()),
        };
        let lim = limit.min(i64::MAX as usize) as i64;
        let mut out = self
            .scan_shards(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT at_ms, id FROM alarms WHERE class = ?1 AND at_ms <= ?2
                         AND (at_ms > ?3 OR (at_ms = ?3 AND id > ?4))
                         ORDER BY at_ms, id LIMIT ?5",
                    )
                    .map_err(sql_err)?;
                let rows = stmt
                    .query_map(params![class, until_ms, after_ms, after_id, lim], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .map_err(sql_err)?;
                let mut out = Vec::new();
                for row in rows {
                    let (at, id) = row.map_err(sql_err)?;
                    out.push((at, blob_id(&id)?));
                }
                Ok(out)
            })
            .await?;
        out.sort_unstable();
        out.truncate(limit);
        Ok(out)
    }

    async fn alarm_classes(&self) -> Result<Vec<String>> {
        let classes = self
            .scan_shards(|conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT DISTINCT class FROM alarms")
                    .map_err(sql_err)?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(sql_err)?;
                rows.collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(sql_err)
            })
            .await?;
        let unique: std::collections::BTreeSet<String> = classes.into_iter().collect();
        Ok(unique.into_iter().collect())
    }

    async fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectEntry>> {
        let after = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
        let lim = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .scan_shards(move |conn| {
                registry_rows(
                    conn,
                    "SELECT id, name FROM objects WHERE class = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                    params![class, after, lim],
                )
            })
            .await?;
        let mut out: Vec<ObjectEntry> = rows
            .into_iter()
            .map(|(id, name)| ObjectEntry::new(id, name))
            .collect();
        out.sort_by_key(|o| o.id);
        out.truncate(limit);
        Ok(out)
    }

    async fn objects_by_name(
        &self,
        class: &'static str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<NamedObject>> {
        let lower = match after {
            Some(a) if a >= prefix => format!("{a}\0"),
            _ => prefix.to_owned(),
        };
        let upper = super::prefix_upper_bound(prefix);
        let lim = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .scan_shards(move |conn| {
                registry_rows(
                    conn,
                    "SELECT id, name FROM objects WHERE class = ?1 AND name IS NOT NULL
                     AND name >= ?2 AND (?3 IS NULL OR name < ?3) ORDER BY name LIMIT ?4",
                    params![class, lower, upper, lim],
                )
            })
            .await?;
        let mut out: Vec<NamedObject> = rows
            .into_iter()
            .filter_map(|(id, name)| name.map(|n| NamedObject::new(id, n)))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.truncate(limit);
        Ok(out)
    }

    async fn object_name(&self, obj: &ObjectRef) -> Result<Option<String>> {
        let conn = self.shard(&obj.id).shared.read_for(&obj.id)?;
        let mut stmt = conn
            .prepare_cached("SELECT name FROM objects WHERE class = ?1 AND id = ?2")
            .map_err(sql_err)?;
        Ok(stmt
            .query_row(params![obj.class, &obj.id.as_bytes()[..]], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()
            .map_err(sql_err)?
            .flatten())
    }

    fn submit(&self, batch: CommitBatch) {
        let shard = self.shard(&batch.object.id);
        if let Some(WriterMsg::Commit(b)) = self.send(shard, WriterMsg::Commit(batch)) {
            tracing::error!("commit refused: the storage writer has stopped");
            b.complete(Err(unavailable("the storage writer has stopped")));
        }
    }

    async fn flush(&self) -> Result<()> {
        let mut waits = Vec::new();
        for s in &self.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if self.send(s, WriterMsg::Flush(tx)).is_none() {
                waits.push(rx);
            }
        }
        for rx in waits {
            rx.await
                .map_err(|_| unavailable("the storage writer stopped during a flush"))?;
        }
        Ok(())
    }

    /// Flushes, stops the writer threads (joining them: they have nothing left to do) and
    /// releases the directory.
    async fn close(&self) -> Result<()> {
        let flushed = self.flush().await;
        self.stop();
        lock(&self.lock).take();
        flushed
    }
}

fn blob_id(b: &[u8]) -> Result<ObjectId> {
    let bytes: [u8; 32] = b
        .try_into()
        .map_err(|_| unavailable("corrupt object id in storage"))?;
    Ok(ObjectId::from_bytes(bytes))
}

/// How long the writer's SQLite transaction stays open: every group in between is durable
/// in the commit log only, and the transaction's pages are written (and the WAL synced) once
/// per window rather than once per group.
const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// A window also ends once its log records reach this size, which bounds the log, the
/// transaction and a replay.
const COMMIT_LOG_BYTES: u64 = 16 << 20;
/// The writer connection's page cache (KiB): a busy window's pages (at 25,000 writes per
/// second to distinct pages, about 5 MiB) stay in memory until the commit; beyond it SQLite
/// spills pages into the WAL early, which is correct, only slower.
const WRITER_CACHE_KIB: i64 = 32 << 10;

/// One batch's changes as the writer applies them: taken from a [`CommitBatch`], or read
/// back from the commit log.
struct Change<'a> {
    class: &'a str,
    id: ObjectId,
    clear: bool,
    writes: Vec<(String, Option<Value>)>,
    alarm: AlarmChange,
    register: Option<Option<Arc<str>>>,
}

impl Change<'static> {
    /// Takes the changes out of a batch (which keeps its acknowledgement).
    fn take(b: &mut CommitBatch) -> Self {
        Change {
            class: b.object.class,
            id: b.object.id,
            clear: b.clear,
            writes: std::mem::take(&mut b.writes),
            alarm: b.alarm,
            register: b.register.take(),
        }
    }
}

/// All the changes of one object within one group of batches.
#[derive(Default)]
struct ObjectOps {
    clear: bool,
    /// The writes in the order they were made. When several batches of the object are in
    /// the group, a key may appear more than once: the last write wins.
    writes: Vec<(String, Option<Value>)>,
    batches: usize,
    alarm: AlarmChange,
    register: Option<Option<Arc<str>>>,
}

/// A shard's writer thread and what it owns.
struct Writer {
    shared: Arc<SharedConn>,
    log: CommitLog,
    /// The last log record the database has committed (`meta.log_seq`).
    committed: u64,
    /// The open transaction: when it began, and the last log record applied to it.
    open: Option<(Instant, u64)>,
    /// After a failed commit, when the next may be tried (whatever the log's size: each try
    /// replays the whole window).
    retry_at: Option<Instant>,
}

impl Writer {
    /// Takes over a shard's connection, applies and commits what its log holds beyond the
    /// database, and leaves the log ready for new records.
    fn start(conn: Connection, log: CommitLog, path: PathBuf) -> Result<Writer> {
        let committed = conn
            .query_row("SELECT value FROM meta WHERE key = 'log_seq'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(sql_err)?
            .map_or(Ok(0), |v| v.parse::<u64>())
            .map_err(|_| unavailable("corrupt log position in storage"))?;
        let mut w = Writer {
            shared: Arc::new(SharedConn::new(conn, path)),
            log,
            committed,
            open: None,
            retry_at: None,
        };
        let shared = Arc::clone(&w.shared);
        let replayed = w.replay(&lock(&shared.conn), None)?;
        if replayed > 0 {
            tracing::info!(groups = replayed, "replayed the commit log");
        }
        w.commit().map_err(sql_err)?;
        Ok(w)
    }

    /// Applies the log records after the committed one (within the first `limit` bytes of
    /// the log, or all of it) to a new transaction, left open; returns how many there were.
    /// The caller holds the connection, so that no read sees the state in between.
    fn replay(&mut self, conn: &Connection, limit: Option<u64>) -> Result<usize> {
        let records = self
            .log
            .records_after(self.committed, limit)
            .map_err(Error::storage)?;
        self.log.position(
            records.end(),
            records.last_seq().unwrap_or(self.committed) + 1,
        );
        let Some(last) = records.last_seq() else {
            return Ok(0);
        };
        let groups = records.decoded().map_err(Error::storage)?;
        let count = groups.len();
        let applied = conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
            groups
                .into_iter()
                .try_for_each(|changes| apply(conn, changes))
        });
        if let Err(e) = applied {
            rollback(conn);
            return Err(sql_err(e));
        }
        self.open = Some((Instant::now(), last));
        Ok(count)
    }

    /// Commits the open transaction, recording the last log record it holds; the log then
    /// starts again from its beginning.
    fn commit(&mut self) -> rusqlite::Result<()> {
        let Some((_, last)) = self.open else {
            return Ok(());
        };
        let shared = Arc::clone(&self.shared);
        let conn = lock(&shared.conn);
        #[cfg(any(test, feature = "test-util"))]
        shared.hold.wait();
        let started = Instant::now();
        let done = conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('log_seq', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute(params![last.to_string()]))
            .and_then(|_| conn.execute_batch("COMMIT"));
        // Reads and new groups of the shard wait for this (the pages' writes and an fsync).
        metrics::histogram!("stead_window_commit_seconds").record(started.elapsed().as_secs_f64());
        self.open = None;
        match &done {
            Ok(()) => {
                // Committed: every reader connection sees the window now.
                lock(&shared.in_window).clear();
                self.committed = last;
                self.log.restart();
                self.retry_at = None;
            }
            // Every group of the window is still in the log: apply them again, to be
            // committed with the next window.
            Err(_) => {
                rollback(&conn);
                self.recover(&conn, self.log.end());
                self.retry_at = Some(Instant::now() + COMMIT_EVERY);
            }
        }
        done
    }

    /// Re-applies the log's first `limit` bytes after a failed transaction; if even that
    /// fails, the shard is broken.
    fn recover(&mut self, conn: &Connection, limit: u64) {
        if self.shared.broken.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.replay(conn, Some(limit)) {
            self.fail(&e);
        }
    }

    /// Marks the shard broken: the database no longer holds every acknowledged write (or a
    /// failed group could not be taken back out of the log), so it refuses reads and writes
    /// rather than serve a wrong state. A restart replays the log.
    fn fail(&self, e: &dyn std::fmt::Display) {
        tracing::error!(error = %e, "{BROKEN}");
        self.shared.broken.store(true, Ordering::Release);
    }

    /// Logs, syncs (when a batch asks for `Fsync`) and applies one group; `false` if it
    /// failed, in which case nothing of it is kept.
    fn write_group(&mut self, batches: &mut [CommitBatch]) -> bool {
        if self.shared.broken.load(Ordering::Acquire) {
            return false;
        }
        let start = self.log.end();
        let fsync = batches.iter().any(|b| b.durability == Durability::Fsync);
        // A record that failed to be written whole counts for nothing: its checksum fails,
        // and the next record overwrites it. One written but not synced is taken back.
        let seq = match self.log.append(batches) {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(error = %e, "writing the commit log failed");
                return false;
            }
        };
        if fsync && let Err(e) = self.log.sync() {
            tracing::error!(error = %e, "syncing the commit log failed");
            self.take_back(start);
            return false;
        }
        let shared = Arc::clone(&self.shared);
        // Before the writes: from here on, reads of these objects see the window.
        {
            let mut in_window = lock(&shared.in_window);
            for b in batches.iter() {
                in_window.insert(b.object.id);
            }
        }
        let conn = lock(&shared.conn);
        let began = match self.open {
            Some(_) => Ok(()),
            None => conn.execute_batch("BEGIN IMMEDIATE"),
        };
        let applied = began.and_then(|()| apply(&conn, batches.iter_mut().map(Change::take)));
        match applied {
            Ok(()) => {
                let since = self.open.map_or_else(Instant::now, |(t, _)| t);
                self.open = Some((since, seq));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "applying a commit group failed");
                // The whole window is rolled back; every group before this one is
                // applied again from the log, with the connection held throughout.
                rollback(&conn);
                self.open = None;
                self.take_back(start);
                self.recover(&conn, start);
                false
            }
        }
    }

    /// Takes the group that started at `start` back out of the log.
    fn take_back(&mut self, start: u64) {
        if let Err(e) = self.log.undo(start) {
            self.fail(&e);
        }
    }

    /// When the open transaction's window ends by time.
    fn deadline(&self) -> Option<Instant> {
        self.open.map(|(since, _)| since + COMMIT_EVERY)
    }

    /// Whether the open transaction's window is over.
    fn window_over(&self) -> bool {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        self.deadline()
            .is_some_and(|d| Instant::now() >= d || self.log.end() >= COMMIT_LOG_BYTES)
    }

    /// Ends the window, logging a failure (the window's groups stay in the log).
    fn end_window(&mut self) {
        if let Err(e) = self.commit() {
            tracing::error!(error = %e, "committing the storage transaction failed; its groups stay in the commit log");
            metrics::counter!("stead_commit_failures_total").increment(1);
        }
    }

    fn run(mut self, rx: Receiver<WriterMsg>, completer: Completer) {
        let group_size = metrics::histogram!("stead_commit_batch_size");
        let commit_seconds = metrics::histogram!("stead_commit_seconds");
        let mut stop = false;
        let mut pace = Duration::ZERO;
        while !stop {
            if !pace.is_zero() {
                std::thread::sleep(pace);
            }
            let first = match next_message(&rx, self.deadline()) {
                Next::Msg(m) => m,
                Next::Idle => {
                    self.end_window();
                    pace = Duration::ZERO;
                    continue;
                }
                Next::Closed => break,
            };
            let mut batches = Vec::new();
            let mut flushes = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Commit(b) if b.is_fenced() => b.complete(Err(Error::Reset)),
                    WriterMsg::Commit(b) => batches.push(b),
                    WriterMsg::Flush(tx) => flushes.push(tx),
                    WriterMsg::Stop => stop = true,
                }
                if batches.len() < MAX_GROUP && !stop {
                    next = rx.try_recv().ok();
                }
            }
            if !batches.is_empty() {
                let started = Instant::now();
                let ok = self.write_group(&mut batches);
                let took = started.elapsed();
                group_size.record(batches.len() as f64);
                commit_seconds.record(took.as_secs_f64());
                pace = pace_after(batches.len(), took);
                if !ok {
                    tracing::error!(
                        batches = batches.len(),
                        "commit failed; the objects involved are reset"
                    );
                    metrics::counter!("stead_commit_failures_total").increment(1);
                }
                completer.finish(batches, ok);
            }
            if stop || !flushes.is_empty() || self.window_over() {
                self.end_window();
            }
            for f in flushes {
                completer.flush(f);
            }
        }
        self.end_window();
    }
}

/// Rolls back the connection's transaction, if one is open.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "rollback failed");
    }
}

/// A group of at least this many batches means many writers at once: the writer then paces
/// itself (see [`pace_after`]).
const PACE_MIN_GROUP: usize = 8;
/// The longest the writer paces itself between two groups.
const PACE_MAX: Duration = Duration::from_millis(1);

/// How long the writer sleeps before it gathers the next group, after writing `group`
/// batches in `took`.
///
/// With many writers at once, the work of the next group is already on its way: the
/// callers just answered are sending their next turns. Sleeping for as long as the last
/// group took (at most [`PACE_MAX`]) frees the core for the tasks that produce that work,
/// and lets the next group grow, so that each write pays a smaller part of the log write
/// and its sync. A lone writer (or a few) never waits: the rule applies only after a group
/// of [`PACE_MIN_GROUP`] or more. The wait adds at most one group's duration to a reply.
fn pace_after(group: usize, took: Duration) -> Duration {
    if group >= PACE_MIN_GROUP {
        took.min(PACE_MAX)
    } else {
        Duration::ZERO
    }
}

/// How long the writer looks for more work, yielding its core, before it sleeps.
const WRITER_LINGER: Duration = Duration::from_micros(50);

enum Next {
    Msg(WriterMsg),
    /// The deadline passed with nothing to do.
    Idle,
    /// Every sender is gone.
    Closed,
}

/// The next message, waiting at most until `deadline`. After a group more work usually
/// follows within microseconds: while it does, the writer picks it up without being woken
/// (a futex call on the committing side and a context switch here).
fn next_message(rx: &Receiver<WriterMsg>, deadline: Option<Instant>) -> Next {
    let linger = Instant::now() + WRITER_LINGER;
    loop {
        match rx.try_recv() {
            Ok(msg) => return Next::Msg(msg),
            Err(TryRecvError::Disconnected) => return Next::Closed,
            Err(TryRecvError::Empty) if Instant::now() < linger => {
                std::thread::yield_now();
            }
            Err(TryRecvError::Empty) => break,
        }
    }
    let got = match deadline {
        Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    };
    match got {
        Ok(msg) => Next::Msg(msg),
        Err(RecvTimeoutError::Timeout) => Next::Idle,
        Err(RecvTimeoutError::Disconnected) => Next::Closed,
    }
}

/// Applies one group's changes inside the connection's transaction.
fn apply<'a>(
    conn: &Connection,
    changes: impl IntoIterator<Item = Change<'a>>,
) -> rusqlite::Result<()> {
    // Gather per object, keeping the order of clears and writes.
    let changes = changes.into_iter();
    let n = changes.size_hint().0;
    let mut index: HashMap<(&str, ObjectId), usize, IdHashState> =
        HashMap::with_capacity_and_hasher(n, Default::default());
    let mut ops: Vec<((&str, ObjectId), ObjectOps)> = Vec::with_capacity(n);
    for mut c in changes {
        let i = *index.entry((c.class, c.id)).or_insert_with(|| {
            ops.push(((c.class, c.id), ObjectOps::default()));
            ops.len() - 1
        });
        let o = &mut ops[i].1;
        o.batches += 1;
        if c.clear {
            o.clear = true;
            o.writes.clear();
            o.alarm = AlarmChange::Clear;
            o.register = None;
        }
        if o.writes.is_empty() {
            o.writes = c.writes;
        } else {
            o.writes.append(&mut c.writes);
        }
        if c.alarm != AlarmChange::Keep {
            o.alarm = c.alarm;
        }
        if let Some(r) = c.register {
            o.register = Some(r);
        }
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO kv (class, id, key, value) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (class, id, key) DO UPDATE SET value = excluded.value",
    )?;
    let mut delete =
        conn.prepare_cached("DELETE FROM kv WHERE class = ?1 AND id = ?2 AND key = ?3")?;
    for ((class, id), o) in &ops {
        let id = &id.as_bytes()[..];
        if o.clear {
            conn.prepare_cached("DELETE FROM kv WHERE class = ?1 AND id = ?2")?
                .execute(params![class, id])?;
            conn.prepare_cached("DELETE FROM objects WHERE class = ?1 AND id = ?2")?
                .execute(params![class, id])?;
        }
        // One batch holds at most one write per key; of several, the last write of a key
        // is the one to apply.
        let mut written = HashSet::new();
        for (k, v) in o.writes.iter().rev() {
            if o.batches > 1 && !written.insert(k.as_str()) {
                continue;
            }
            match v {
                Some(v) => upsert.execute(params![class, id, k, &v[..]])?,
                None => delete.execute(params![class, id, k])?,
            };
        }
        match o.alarm {
            AlarmChange::Set(at) => {
                conn.prepare_cached(
                    "INSERT INTO alarms (class, id, at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (class, id) DO UPDATE SET at_ms = excluded.at_ms",
                )?
                .execute(params![class, id, at])?;
            }
            AlarmChange::Clear => {
                conn.prepare_cached("DELETE FROM alarms WHERE class = ?1 AND id = ?2")?
                    .execute(params![class, id])?;
            }
            AlarmChange::Keep => {}
        }
        if let Some(name) = &o.register {
            conn.prepare_cached(
                "INSERT INTO objects (class, id, name) VALUES (?1, ?2, ?3)
                 ON CONFLICT (class, id) DO UPDATE SET name = coalesce(objects.name, excluded.name)",
            )?
            .execute(params![class, id, name.as_deref()])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of object `[id; 32]` of class `test`.
    pub(super) fn batch(id: u8, clear: bool, writes: &[(&str, Option<&str>)]) -> CommitBatch {
        CommitBatch {
            object: ObjectRef {
                class: "test",
                id: ObjectId::from_bytes([id; 32]),
            },
            clear,
            writes: writes
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(|v| Value::from(v.as_bytes()))))
                .collect(),
            alarm: AlarmChange::Keep,
            register: None,
            durability: Durability::ProcessCrashSafe,
            fence_token: None,
            fence: Arc::default(),
            ack: None,
        }
    }

    fn contents(conn: &Connection, id: u8) -> Vec<(String, String)> {
        let mut stmt = conn
            .prepare("SELECT key, value FROM kv WHERE class = 'test' AND id = ?1 ORDER BY key")
            .unwrap();
        stmt.query_map(params![&[id; 32][..]], |r| {
            let v: Vec<u8> = r.get(1)?;
            Ok((r.get(0)?, String::from_utf8(v).unwrap()))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    #[test]
    fn a_group_applies_its_batches_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_conn(&dir.path().join("shard-00.db")).unwrap();
        init_schema(&conn, 1).unwrap();
        apply(
            &conn,
            vec![Change::take(&mut batch(3, false, &[("gone", Some("x"))]))],
        )
        .unwrap();
        let mut group = [
            batch(1, false, &[("a", Some("1")), ("b", Some("2"))]),
            batch(2, false, &[("a", Some("only"))]),
            batch(1, false, &[("a", Some("3")), ("b", None)]),
            batch(3, true, &[("new", Some("y"))]),
            batch(1, false, &[("c", Some("4")), ("a", Some("5"))]),
            batch(3, false, &[("new", Some("z"))]),
        ];
        apply(&conn, group.iter_mut().map(Change::take)).unwrap();
        let s = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        // The last write of a key wins, a delete included.
        assert_eq!(contents(&conn, 1), vec![s("a", "5"), s("c", "4")]);
        assert_eq!(contents(&conn, 2), vec![s("a", "only")]);
        // A clear drops what was stored before it, not what came after it.
        assert_eq!(contents(&conn, 3), vec![s("new", "z")]);
    }

    /// A shard's writer on `dir`, as a backend opens it (replaying the log).
    fn writer(dir: &Path) -> Writer {
        let conn = open_conn(&dir.join("shard-00.db")).unwrap();
        init_schema(&conn, 1).unwrap();
        let log = CommitLog::open(&dir.join("shard-00.log")).unwrap();
        Writer::start(conn, log, dir.join("shard-00.db")).unwrap()
    }

    /// What the database file holds, read by a connection of its own (so without the
    /// writer's open transaction).
    fn committed(dir: &Path, id: u8) -> Vec<(String, String)> {
        contents(&open_conn(&dir.join("shard-00.db")).unwrap(), id)
    }

    fn write(w: &mut Writer, group: &mut [CommitBatch]) -> bool {
        for b in group.iter_mut() {
            b.durability = Durability::Fsync;
        }
        w.write_group(group)
    }

    /// Makes every write of the key `boom` fail inside SQLite (until the trigger is dropped),
    /// so that a group's apply fails on demand.
    fn fail_writes_of_boom(w: &Writer) {
        lock(&w.shared.conn)
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON kv WHEN NEW.key = 'boom'
                 BEGIN SELECT RAISE(ABORT, 'injected'); END;",
            )
            .unwrap();
    }

    fn s(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn acknowledged_groups_of_an_open_window_are_replayed_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("1"))])]));
        assert!(write(
            &mut w,
            &mut [
                batch(1, false, &[("a", Some("2")), ("b", Some("3"))]),
                batch(2, false, &[("x", Some("y"))])
            ]
        ));
        // Reads go through the writer's connection and see the open window.
        assert_eq!(
            contents(&lock(&w.shared.conn), 1),
            vec![s("a", "2"), s("b", "3")]
        );
        // The database file does not hold them yet: only the log does.
        assert_eq!(committed(dir.path(), 1), vec![]);
        // A crash: the writer goes without committing (its transaction is rolled back).
        drop(w);
        assert_eq!(committed(dir.path(), 1), vec![]);
        let w = writer(dir.path());
        // Opening replayed the log and committed it.
        assert!(w.open.is_none());
        assert_eq!(w.committed, 2);
        assert_eq!(committed(dir.path(), 1), vec![s("a", "2"), s("b", "3")]);
        assert_eq!(committed(dir.path(), 2), vec![s("x", "y")]);
    }

    #[test]
    fn a_committed_window_is_not_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        assert!(write(
            &mut w,
            &mut [batch(1, false, &[("a", Some("1")), ("b", Some("1"))])]
        ));
        w.commit().unwrap();
        assert_eq!(committed(dir.path(), 1), vec![s("a", "1"), s("b", "1")]);
        // The next window overwrites the log from its start; the old record behind it must
        // not be applied again over the newer writes.
        assert!(write(&mut w, &mut [batch(1, false, &[("b", None)])]));
        w.commit().unwrap();
        assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("2"))])]));
        drop(w);
        let w = writer(dir.path());
        assert_eq!(w.committed, 3);
        assert_eq!(committed(dir.path(), 1), vec![s("a", "2")]);
    }

    #[test]
    fn a_failed_group_is_taken_back_and_the_window_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        fail_writes_of_boom(&w);
        assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("1"))])]));
        // The group fails as a whole, the other object's batch included.
        assert!(!write(
            &mut w,
            &mut [
                batch(2, false, &[("c", Some("3"))]),
                batch(1, false, &[("boom", Some("x"))])
            ]
        ));
        // The window's earlier group is still there; the failed one left nothing.
        assert_eq!(contents(&lock(&w.shared.conn), 1), vec![s("a", "1")]);
        assert_eq!(contents(&lock(&w.shared.conn), 2), vec![]);
        assert!(!w.shared.broken.load(Ordering::Acquire));
        drop(w);
        // Its log record (synced before the failure) is never replayed either.
        open_conn(&dir.path().join("shard-00.db"))
            .unwrap()
            .execute_batch("DROP TRIGGER boom")
            .unwrap();
        let mut w = writer(dir.path());
        assert_eq!(committed(dir.path(), 1), vec![s("a", "1")]);
        assert_eq!(committed(dir.path(), 2), vec![]);
        // And the writer goes on where it was.
        assert!(write(&mut w, &mut [batch(2, false, &[("c", Some("4"))])]));
        drop(w);
        writer(dir.path());
        assert_eq!(committed(dir.path(), 2), vec![s("c", "4")]);
    }

    #[test]
    fn a_version_1_directory_is_upgraded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-00.db");
        let conn = open_conn(&path).unwrap();
        init_schema(&conn, 1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let mut w = writer(dir.path());
        assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("1"))])]));
        drop(w);
        let conn = open_conn(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = init_schema(&conn, 1).unwrap_err();
        let text = format!("{:?}", std::error::Error::source(&err));
        assert!(text.contains("newer stead"), "{text}");
    }

    #[test]
    fn a_log_record_that_does_not_parse_stops_the_shard_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        SqliteBackend::open(dir.path(), SqliteOptions { shards: Some(1) }).unwrap();
        // A record that passes its checksum (so is no torn write) but whose body is not a
        // group: a bug or a foreign file, which must not be skipped silently.
        let (body, seq) = (b"xx", 1u64);
        let mut record = Vec::new();
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        let mut summed = seq.to_le_bytes().to_vec();
        summed.extend_from_slice(body);
        record.extend_from_slice(&crc32fast::hash(&summed).to_le_bytes());
        record.extend_from_slice(&summed);
        std::fs::write(dir.path().join("shard-00.log"), &record).unwrap();
        let err = SqliteBackend::open(dir.path(), SqliteOptions::default()).unwrap_err();
        let text = format!("{err} {:?}", std::error::Error::source(&err));
        assert!(
            text.contains("shard-00.log") && text.contains("malformed"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_commit_keeps_the_window_and_commits_it_later() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        // A deferred foreign key makes COMMIT itself fail while a violating row is in the
        // transaction: the one way to fail a commit on demand.
        lock(&w.shared.conn)
            .execute_batch(
                "PRAGMA foreign_keys = ON;
                 CREATE TABLE parent (id INTEGER PRIMARY KEY);
                 CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
            )
            .unwrap();
        assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("1"))])]));
        lock(&w.shared.conn)
            .execute_batch("INSERT INTO child (p) VALUES (7)")
            .unwrap();
        assert!(w.commit().is_err());
        // The acknowledged group is applied again from the log (the stray row, which the
        // log never held, is gone) and the shard goes on.
        assert!(!w.shared.broken.load(Ordering::Acquire));
        assert_eq!(contents(&lock(&w.shared.conn), 1), vec![s("a", "1")]);
        assert_eq!(committed(dir.path(), 1), vec![]);
        // The next try waits for a window, however large the log.
        assert!(!w.window_over());
        assert!(write(&mut w, &mut [batch(1, false, &[("b", Some("2"))])]));
        w.commit().unwrap();
        assert_eq!(committed(dir.path(), 1), vec![s("a", "1"), s("b", "2")]);
        assert_eq!(w.committed, 2);
    }

    /// A group of batches: (object, clear, writes of key numbers); a write of `None` deletes.
    type GroupSpec = Vec<(u8, bool, Vec<(u8, Option<u8>)>)>;

    /// One step of [`the_writer_agrees_with_a_model_across_crashes`].
    #[derive(Debug, Clone)]
    enum Step {
        Group(GroupSpec),
        /// A group with a batch whose apply fails: the whole group must leave nothing.
        FailingGroup(GroupSpec),
        Commit,
        Crash,
    }

    #[test]
    fn the_writer_agrees_with_a_model_across_crashes() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        use std::collections::BTreeMap;

        let write = (0u8..4, prop::option::of(0u8..10));
        let batch_ = (
            0u8..3,
            prop::bool::weighted(0.1),
            prop::collection::vec(write, 0..4),
        );
        let group = prop::collection::vec(batch_, 1..4);
        let step = prop_oneof![
            6 => group.clone().prop_map(Step::Group),
            1 => group.prop_map(Step::FailingGroup),
            2 => Just(Step::Commit),
            2 => Just(Step::Crash),
        ];
        let mut runner = TestRunner::new(Config {
            cases: 48,
            ..Config::default()
        });
        let result = runner.run(&prop::collection::vec(step, 1..24), |steps| {
            let dir = tempfile::tempdir().unwrap();
            let mut w = writer(dir.path());
            fail_writes_of_boom(&w);
            let mut model: BTreeMap<(u8, String), String> = BTreeMap::new();
            let to_batches = |g: &GroupSpec| -> Vec<CommitBatch> {
                g.iter()
                    .map(|(id, clear, writes)| {
                        // At most one write per key in a batch, as the runtime sends them.
                        let mut seen = HashSet::new();
                        let writes: Vec<(String, Option<String>)> = writes
                            .iter()
                            .filter(|(k, _)| seen.insert(*k))
                            .map(|(k, v)| (format!("k{k}"), v.map(|v| format!("v{v}"))))
                            .collect();
                        let borrowed: Vec<(&str, Option<&str>)> = writes
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_deref()))
                            .collect();
                        let mut b = batch(*id, *clear, &borrowed);
                        b.durability = Durability::ProcessCrashSafe;
                        b
                    })
                    .collect()
            };
            for step in steps {
                // After a commit, or a crash and the replay that follows it, the database
                // file itself holds the model too.
                let settled = matches!(step, Step::Commit | Step::Crash);
                match step {
                    Step::Group(g) => {
                        let mut batches = to_batches(&g);
                        prop_assert!(w.write_group(&mut batches));
                        // Batches apply in order: a clear drops what came before it.
                        for b in &to_batches(&g) {
                            let id = b.object.id.as_bytes()[0];
                            if b.clear {
                                model.retain(|(o, _), _| *o != id);
                            }
                            for (k, v) in &b.writes {
                                match v {
                                    Some(v) => {
                                        model.insert(
                                            (id, k.clone()),
                                            String::from_utf8(v.to_vec()).unwrap(),
                                        );
                                    }
                                    None => {
                                        model.remove(&(id, k.clone()));
                                    }
                                }
                            }
                        }
                    }
                    Step::FailingGroup(g) => {
                        let mut batches = to_batches(&g);
                        batches.push(batch(0, false, &[("boom", Some("x"))]));
                        prop_assert!(!w.write_group(&mut batches));
                    }
                    Step::Commit => w.commit().unwrap(),
                    Step::Crash => {
                        drop(w);
                        w = writer(dir.path());
                    }
                }
                prop_assert!(!w.shared.broken.load(Ordering::Acquire));
                let conn = lock(&w.shared.conn);
                for id in 0..3u8 {
                    let want: Vec<(String, String)> = model
                        .iter()
                        .filter(|((o, _), _)| *o == id)
                        .map(|((_, k), v)| (k.clone(), v.clone()))
                        .collect();
                    prop_assert_eq!(contents(&conn, id), want.clone());
                    if settled {
                        prop_assert_eq!(committed(dir.path(), id), want);
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    #[test]
    fn a_group_whose_log_write_fails_leaves_the_numbering_intact() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("shard-00.log");
        let mut w = writer(dir.path());
        assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("1"))])]));
        w.log.fail_writes(&log, true);
        assert!(!write(&mut w, &mut [batch(1, false, &[("b", Some("2"))])]));
        w.log.fail_writes(&log, false);
        assert!(write(&mut w, &mut [batch(1, false, &[("c", Some("3"))])]));
        drop(w);
        // Both acknowledged groups are replayed: the one after the failure did not reuse
        // the number of the one before it.
        writer(dir.path());
        assert_eq!(committed(dir.path(), 1), vec![s("a", "1"), s("c", "3")]);
    }
}
