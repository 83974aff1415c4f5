//! The shard files' schema, its version, and opening a shard's connection.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::*;
use crate::error::{Error, Result};

/// The schema version this code writes; stored in `PRAGMA user_version`. Version 2 added the
/// commit logs beside the databases (and `meta.log_seq`): a build that reads only version 1
/// would ignore a log's acknowledged writes, so it must refuse the directory.
pub(super) const SCHEMA_VERSION: i64 = 2;

pub(super) const SCHEMA: &str = "
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
pub(super) const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS alarms_by_time ON alarms (class, at_ms, id);
";

/// The shard count recorded in an existing shard file.
pub(super) fn stored_shards(conn: &Connection) -> Result<Option<usize>> {
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

pub(super) fn open_conn(path: &Path) -> Result<Connection> {
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

pub(super) fn init_schema(conn: &Connection, shards: usize) -> Result<()> {
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
