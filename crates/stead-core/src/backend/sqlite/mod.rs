//! The embedded default: SQLite (bundled) in WAL mode, split into shard files by object id,
//! with one writer thread per shard doing group commit through a commit log (see
//! [`commit_log`]).

mod apply;
mod backup;
mod commit_log;
mod read;
mod schema;
mod window;
mod writer;

use apply::*;
pub use backup::BackupReport;
use commit_log::CommitLog;
use read::*;
use schema::*;
use writer::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Backend, CommitBatch, Completer, ListOptions, NamedObject, ObjectEntry, ObjectRef, Value,
    unavailable,
};
use crate::clock::lock;
use crate::error::{Error, Result};
use crate::id::ObjectId;

/// At most this many batches go into one transaction.
const MAX_GROUP: usize = 8192;

/// A shard whose writer has this many batches waiting is backlogged: new messages for its
/// objects are refused with `Overloaded` until it catches up (a stalled disk cannot grow the
/// queue past this and what the objects already ran).
const MAX_QUEUED_BATCHES: usize = 4 * MAX_GROUP;

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

fn sql_err(e: rusqlite::Error) -> Error {
    Error::storage(e)
}

impl SqliteBackend {
    /// Copies the data directory `dir` into `dest` (absent or empty) while a runtime may be
    /// serving it, from this process or another: every write acknowledged before the copy
    /// began is in it, every object's state in it is one the object had, and a runtime
    /// starts on it as on any data directory. Blocking (run it on a blocking thread from
    /// async code); it takes no lock and changes nothing in `dir`.
    ///
    /// ```
    /// # let src = tempfile::tempdir().unwrap();
    /// # let dest = tempfile::tempdir().unwrap();
    /// # drop(stead_core::SqliteBackend::open(src.path(), Default::default()).unwrap());
    /// let report = stead_core::SqliteBackend::backup(src.path(), dest.path())?;
    /// println!("{} shards, {} bytes in {:?}", report.shards, report.bytes, report.elapsed);
    /// # Ok::<(), stead_core::Error>(())
    /// ```
    pub fn backup(dir: impl AsRef<Path>, dest: impl AsRef<Path>) -> Result<BackupReport> {
        backup::backup(dir.as_ref(), dest.as_ref())
    }

    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>, opts: SqliteOptions) -> Result<Self> {
        // Before this backend starts SQLite in the process (see the function).
        crate::sql::vfs::configure_sqlite();
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

impl SqliteBackend {
    /// The committed entries of a range, with room for `extra` more than its limit.
    fn list_committed(
        &self,
        shared: &SharedConn,
        obj: &ObjectRef,
        opts: &ListOptions,
        extra: usize,
    ) -> Result<Vec<(String, Value)>> {
        let (lower, upper) = opts.bounds();
        let limit = opts.limit.map_or(-1, |l| {
            l.saturating_add(extra).min(i64::MAX as usize) as i64
        });
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
        let conn = shared.reader()?;
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
        let shared = &self.shard(&obj.id).shared;
        shared.check()?;
        if let Some(v) = window::get(&lock(&shared.window), obj.class, &obj.id, key) {
            return Ok(v);
        }
        let conn = shared.reader()?;
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
        let shared = &self.shard(&obj.id).shared;
        shared.check()?;
        let seen = window::range(&lock(&shared.window), obj.class, &obj.id, opts);
        let over = match seen {
            window::Seen::Decided(entries) => {
                return Ok(window::merge(Vec::new(), entries, opts));
            }
            window::Seen::Over(entries) => entries,
            window::Seen::Absent => Vec::new(),
        };
        // The window may delete some of the rows read: read as many more.
        let committed = self.list_committed(shared, obj, opts, over.len())?;
        Ok(if over.is_empty() {
            committed
        } else {
            window::merge(committed, over, opts)
        })
    }

    async fn load(&self, obj: &ObjectRef, limit: usize) -> Result<Vec<(String, Value)>> {
        let shared = &self.shard(&obj.id).shared;
        shared.check()?;
        if window::contains(&lock(&shared.window), obj.class, &obj.id) {
            // The window's changes are laid over ordered reads.
            return Backend::list(self, obj, &ListOptions::all().limit(limit)).await;
        }
        // No ORDER BY and no bound LIMIT: with either, SQLite prepares the statement again
        // on every run (a new binding could change its plan), which costs more than the
        // read itself. The limit is a constant of the caller, so one statement is cached.
        let conn = shared.reader()?;
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
        let shared = &self.shard(&obj.id).shared;
        shared.check()?;
        if let Some(at) = window::alarm(&lock(&shared.window), obj.class, &obj.id) {
            return Ok(at);
        }
        let conn = shared.reader()?;
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
                        "SELECT at_ms, id FROM alarms INDEXED BY alarms_by_time
                         WHERE class = ?1 AND (at_ms, id) > (?3, ?4) AND at_ms <= ?2
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
                // One index seek per class, rather than a scan of every alarm.
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT class FROM alarms WHERE class > ?1 ORDER BY class LIMIT 1",
                    )
                    .map_err(sql_err)?;
                let mut classes = Vec::new();
                let mut after = String::new();
                while let Some(class) = stmt
                    .query_row(params![after], |r| r.get::<_, String>(0))
                    .optional()
                    .map_err(sql_err)?
                {
                    after.clone_from(&class);
                    classes.push(class);
                }
                Ok(classes)
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
        let shared = &self.shard(&obj.id).shared;
        shared.check()?;
        if let Some(name) = window::name(&lock(&shared.window), obj.class, &obj.id) {
            return Ok(name);
        }
        let conn = shared.reader()?;
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

    fn backlogged(&self, obj: &ObjectRef) -> bool {
        self.shard(&obj.id).shared.queued.load(Ordering::Acquire) >= MAX_QUEUED_BATCHES
    }

    fn submit(&self, batch: CommitBatch) {
        let shard = self.shard(&batch.object.id);
        shard.shared.queued.fetch_add(1, Ordering::AcqRel);
        if let Some(WriterMsg::Commit(b)) = self.send(shard, WriterMsg::Commit(Box::new(batch))) {
            shard.shared.queued.fetch_sub(1, Ordering::AcqRel);
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

#[cfg(test)]
mod tests;
