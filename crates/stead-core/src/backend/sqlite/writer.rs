//! A shard's writer thread: group commit through the commit log, and the window
//! transaction that folds groups into the database.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

use super::super::{CommitBatch, Completer, Durability, unavailable};
use super::window::{Window, fold_all};
use super::*;
use crate::clock::lock;
use crate::error::{Error, Result};

/// How often the checkpointer folds the WAL back into the database file.
pub(super) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// WAL pages after which the writer checkpoints by itself (a backstop for when the
/// checkpointer cannot keep up); 64 MiB of 4 KiB pages.
pub(super) const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// Runs passive checkpoints beside the writer, so that commits never wait for the WAL to be
/// copied into the database file (and, in `Fsync` mode, for that file's fsync).
pub(super) fn checkpoint_loop(conn: Connection, stop: Receiver<()>) {
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

pub(super) enum WriterMsg {
    /// Boxed: the channel then moves a pointer, and its blocks of slots (allocated zeroed,
    /// one per 31 messages) stay small.
    Commit(Box<CommitBatch>),
    Flush(tokio::sync::oneshot::Sender<()>),
    /// The backend is dropped: finish what came before, then end.
    Stop,
}

/// How long the writer's SQLite transaction stays open: every group in between is durable
/// in the commit log only, and the transaction's pages are written (and the WAL synced) once
/// per window rather than once per group.
pub(super) const COMMIT_EVERY: Duration = Duration::from_millis(50);

/// A window also ends once its log records reach this size, which bounds the log, the
/// transaction and a replay.
pub(super) const COMMIT_LOG_BYTES: u64 = 16 << 20;

/// The writer connection's page cache (KiB): a busy window's pages (at 25,000 writes per
/// second to distinct pages, about 5 MiB) stay in memory until the commit; beyond it SQLite
/// spills pages into the WAL early, which is correct, only slower.
pub(super) const WRITER_CACHE_KIB: i64 = 32 << 10;

/// A shard's writer thread and what it owns.
pub(super) struct Writer {
    pub(super) shared: Arc<SharedConn>,
    pub(super) log: CommitLog,
    /// The last log record the database has committed (`meta.log_seq`).
    pub(super) committed: u64,
    /// The open transaction: when it began, and the last log record applied to it.
    pub(super) open: Option<(Instant, u64)>,
    /// After a failed commit, when the next may be tried (whatever the log's size: each try
    /// replays the whole window).
    pub(super) retry_at: Option<Instant>,
}

impl Writer {
    /// Takes over a shard's connection, applies and commits what its log holds beyond the
    /// database, and leaves the log ready for new records.
    pub(super) fn start(conn: Connection, log: CommitLog, path: PathBuf) -> Result<Writer> {
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
    pub(super) fn replay(&mut self, conn: &Connection, limit: Option<u64>) -> Result<usize> {
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
        let mut window = Window::default();
        let applied = conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
            groups.into_iter().try_for_each(|changes| {
                fold_all(&mut window, apply(conn, changes)?);
                Ok(())
            })
        });
        if let Err(e) = applied {
            rollback(conn);
            return Err(sql_err(e));
        }
        // The window is now exactly these groups (until this moment the one it replaces,
        // a superset of what was acknowledged, answered reads).
        *lock(&self.shared.window) = window;
        self.open = Some((Instant::now(), last));
        Ok(count)
    }

    /// Commits the open transaction, recording the last log record it holds; the log then
    /// starts again from its beginning.
    pub(super) fn commit(&mut self) -> rusqlite::Result<()> {
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
                lock(&shared.window).clear();
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
    pub(super) fn recover(&mut self, conn: &Connection, limit: u64) {
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
    pub(super) fn fail(&self, e: &dyn std::fmt::Display) {
        tracing::error!(error = %e, "{BROKEN}");
        self.shared.broken.store(true, Ordering::Release);
    }

    /// Logs, syncs (when a batch asks for `Fsync`) and applies one group; `false` if it
    /// failed, in which case nothing of it is kept.
    pub(super) fn write_group(&mut self, batches: &mut [CommitBatch]) -> bool {
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
        let conn = lock(&shared.conn);
        let began = match self.open {
            Some(_) => Ok(()),
            None => conn.execute_batch("BEGIN IMMEDIATE"),
        };
        let applied = began.and_then(|()| apply(&conn, batches.iter_mut().map(Change::take)));
        match applied {
            Ok(applied) => {
                // Before the acknowledgements: from here on, reads see the group.
                fold_all(&mut lock(&shared.window), applied);
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
    pub(super) fn take_back(&mut self, start: u64) {
        if let Err(e) = self.log.undo(start) {
            self.fail(&e);
        }
    }

    /// When the open transaction's window ends by time.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.open.map(|(since, _)| since + COMMIT_EVERY)
    }

    /// Whether the open transaction's window is over.
    pub(super) fn window_over(&self) -> bool {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        self.deadline()
            .is_some_and(|d| Instant::now() >= d || self.log.end() >= COMMIT_LOG_BYTES)
    }

    /// Ends the window, logging a failure (the window's groups stay in the log).
    pub(super) fn end_window(&mut self) {
        if let Err(e) = self.commit() {
            tracing::error!(error = %e, "committing the storage transaction failed; its groups stay in the commit log");
            metrics::counter!("stead_commit_failures_total").increment(1);
        }
    }

    pub(super) fn run(mut self, rx: Receiver<WriterMsg>, completer: Completer) {
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
                if matches!(msg, WriterMsg::Commit(_)) {
                    self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                }
                match msg {
                    WriterMsg::Commit(b) if b.is_fenced() => b.complete(Err(Error::Reset)),
                    WriterMsg::Commit(b) => batches.push(*b),
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
pub(super) fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "rollback failed");
    }
}

/// A group of at least this many batches means many writers at once: the writer then paces
/// itself (see [`pace_after`]).
pub(super) const PACE_MIN_GROUP: usize = 8;

/// The longest the writer paces itself between two groups.
pub(super) const PACE_MAX: Duration = Duration::from_millis(1);

/// How long the writer sleeps before it gathers the next group, after writing `group`
/// batches in `took`.
///
/// With many writers at once, the work of the next group is already on its way: the
/// callers just answered are sending their next turns. Sleeping for as long as the last
/// group took (at most [`PACE_MAX`]) frees the core for the tasks that produce that work,
/// and lets the next group grow, so that each write pays a smaller part of the log write
/// and its sync. A lone writer (or a few) never waits: the rule applies only after a group
/// of [`PACE_MIN_GROUP`] or more. The wait adds at most one group's duration to a reply.
pub(super) fn pace_after(group: usize, took: Duration) -> Duration {
    if group >= PACE_MIN_GROUP {
        took.min(PACE_MAX)
    } else {
        Duration::ZERO
    }
}

/// How long the writer looks for more work, yielding its core, before it sleeps.
pub(super) const WRITER_LINGER: Duration = Duration::from_micros(50);

pub(super) enum Next {
    Msg(WriterMsg),
    /// The deadline passed with nothing to do.
    Idle,
    /// Every sender is gone.
    Closed,
}

/// The next message, waiting at most until `deadline`. After a group more work usually
/// follows within microseconds: while it does, the writer picks it up without being woken
/// (a futex call on the committing side and a context switch here).
pub(super) fn next_message(rx: &Receiver<WriterMsg>, deadline: Option<Instant>) -> Next {
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
