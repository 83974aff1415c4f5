//! Reads: a reader connection on the committed state, with the open window's changes laid
//! over it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

use super::super::unavailable;
use super::*;
use crate::clock::lock;
use crate::error::Result;
use crate::id::ObjectId;

use super::window::Window;

/// What a shard's writer shares with readers.
///
/// The writer keeps a transaction open for up to a window (see [`Writer`]); every
/// acknowledged write is in it or committed. Reads go through reader connections of their
/// own, on the committed state, with the window's changes laid over it: they never wait
/// for the window's commit (its page writes and fsync).
pub(super) struct SharedConn {
    pub(super) conn: Mutex<Connection>,
    /// Set when a group failed and the writer could not take it back out of the log: the
    /// shard then refuses reads and writes until the process restarts (see [`Writer::fail`]).
    pub(super) broken: AtomicBool,
    /// Set once the backend is closed: the directory may belong to another runtime now.
    pub(super) closed: AtomicBool,
    /// The open window's changes, by object: reads lay them over the committed database.
    /// Emptied once the window has committed.
    pub(super) window: Mutex<Window>,
    /// Batches submitted to the writer and not yet taken up by it.
    pub(super) queued: AtomicUsize,
    /// Idle reader connections.
    pub(super) readers: Mutex<Vec<Connection>>,
    /// The shard's database file, for new reader connections.
    pub(super) path: PathBuf,
    /// Lets a test hold the window's commit while the writer holds its connection.
    #[cfg(any(test, feature = "test-util"))]
    pub(super) hold: CommitHold,
}

/// At most this many idle reader connections are kept per shard.
pub(super) const MAX_IDLE_READERS: usize = 8;

impl SharedConn {
    pub(super) fn new(conn: Connection, path: PathBuf) -> Self {
        SharedConn {
            conn: Mutex::new(conn),
            broken: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            window: Mutex::new(Window::default()),
            queued: AtomicUsize::new(0),
            readers: Mutex::new(Vec::new()),
            path,
            #[cfg(any(test, feature = "test-util"))]
            hold: CommitHold::default(),
        }
    }

    pub(super) fn check(&self) -> Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(unavailable(BROKEN));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(unavailable("the SQLite store is closed"));
        }
        Ok(())
    }

    /// A reader connection, on the committed database (never the writer's: a read does
    /// not wait for the window's commit). Reads of an object lay the window's changes over
    /// what it reads (see [`super::window`]).
    pub(super) fn reader(&self) -> Result<ReadConn<'_>> {
        self.check()?;
        let idle = lock(&self.readers).pop();
        let conn = match idle {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        Ok(ReadConn {
            shared: self,
            conn: Some(conn),
        })
    }

    /// The writer's connection, which sees every acknowledged write (for scans over many
    /// objects; callers run them off the async workers).
    pub(super) fn read_all(&self) -> Result<MutexGuard<'_, Connection>> {
        self.check()?;
        Ok(lock(&self.conn))
    }
}

/// A reader connection lent for one read; it goes back to the shard's idle readers when
/// dropped.
pub(super) struct ReadConn<'a> {
    shared: &'a SharedConn,
    /// Always `Some` until dropped.
    conn: Option<Connection>,
}

impl std::ops::Deref for ReadConn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for ReadConn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = lock(&self.shared.readers);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

/// A reader connection on a shard's database: read-only, on the committed state.
pub(super) fn open_reader(path: &Path) -> Result<Connection> {
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
pub(super) struct CommitHold {
    pub(super) held: Mutex<bool>,
    pub(super) changed: std::sync::Condvar,
    /// How many commits are waiting on the switch right now.
    pub(super) waiting: std::sync::atomic::AtomicUsize,
}

#[cfg(any(test, feature = "test-util"))]
impl CommitHold {
    pub(super) fn set(&self, held: bool) {
        *lock(&self.held) = held;
        self.changed.notify_all();
    }

    pub(super) fn wait(&self) {
        let mut held = lock(&self.held);
        self.waiting.fetch_add(1, Ordering::AcqRel);
        while *held {
            held = self.changed.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) const BROKEN: &str =
    "this storage shard failed and could not recover; restart the process to replay its commit log";

/// Rows of a registry query (selecting `id, name`).
pub(super) fn registry_rows(
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

pub(super) fn blob_id(b: &[u8]) -> Result<ObjectId> {
    let bytes: [u8; 32] = b
        .try_into()
        .map_err(|_| unavailable("corrupt object id in storage"))?;
    Ok(ObjectId::from_bytes(bytes))
}
