//! Online backups of a data directory: a copy of every shard, taken while a runtime (of this
//! process or another) serves the directory, that is itself a data directory a runtime
//! starts on.
//!
//! Per shard, the commit log is read first, then the database is copied by `VACUUM INTO`
//! (one read transaction: the writer goes on committing beside it). Together they hold every
//! write acknowledged before the shard's copy began: a write acknowledged then is either in the
//! database's last commit, which the copy holds, or in the log read before it (the log only
//! loses records to a restart that follows a commit of the database, which the copy then
//! holds). Starting on the copy replays the log records that follow the copied database's
//! position, as after a crash: what it reads is a prefix of the shard's commits, a state that
//! existed. Each object lives in one shard, so every object's state is one it had; shards are
//! copied one after the other, so two objects' states may be from moments apart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::schema::stored_shards;
use super::sql_err;
use crate::error::{Error, Result};

/// What a backup copied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// The shards copied.
    pub shards: usize,
    /// The bytes written (databases and logs).
    pub bytes: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Copies the data directory `dir` into `dest` (which must not exist, or be an empty
/// directory); see the module documentation for what the copy holds. `dir` may be in use by a
/// runtime meanwhile: the copy takes no lock and changes nothing in it. A failed backup
/// removes what it wrote.
pub(crate) fn backup(dir: &Path, dest: &Path) -> Result<BackupReport> {
    let started = Instant::now();
    let first = dir.join("shard-00.db");
    if !first.exists() {
        return Err(Error::invalid_config(format!(
            "{} is not a data directory (it has no shard-00.db)",
            dir.display()
        )));
    }
    let shards = stored_shards(&source(&first)?)?.ok_or_else(|| {
        Error::invalid_config(format!(
            "{} is not an initialised data directory",
            dir.display()
        ))
    })?;
    match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::invalid_config(format!(
                    "the backup's destination {} is not empty",
                    dest.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(Error::storage)?;
        }
        Err(e) => return Err(Error::storage(e)),
    }
    let copied = (0..shards).try_fold(0u64, |bytes, i| Ok(bytes + copy_shard(dir, dest, i)?));
    match copied {
        Ok(bytes) => {
            sync_dir(dest)?;
            Ok(BackupReport {
                shards,
                bytes,
                elapsed: started.elapsed(),
            })
        }
        Err(e) => {
            for i in 0..shards {
                for suffix in ["db", "log"] {
                    let _ = std::fs::remove_file(dest.join(format!("shard-{i:02}.{suffix}")));
                }
            }
            Err(e)
        }
    }
}

/// A connection to a shard of the source, which it only reads.
fn source(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sql_err)?;
    Ok(conn)
}

/// Copies shard `i`: its log as it is now, then its database; the bytes written.
fn copy_shard(dir: &Path, dest: &Path, i: usize) -> Result<u64> {
    let db: PathBuf = dir.join(format!("shard-{i:02}.db"));
    let log = dir.join(format!("shard-{i:02}.log"));
    let log_bytes = match std::fs::read(&log) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::storage(e)),
    };
    let to_db = dest.join(format!("shard-{i:02}.db"));
    let to = to_db
        .to_str()
        .ok_or_else(|| Error::invalid_config("the backup's destination is not UTF-8"))?;
    source(&db)?
        .execute("VACUUM INTO ?1", [to])
        .map_err(sql_err)?;
    let to_log = dest.join(format!("shard-{i:02}.log"));
    std::fs::write(&to_log, &log_bytes).map_err(Error::storage)?;
    let mut bytes = 0;
    for path in [&to_db, &to_log] {
        let f = std::fs::File::open(path).map_err(Error::storage)?;
        f.sync_all().map_err(Error::storage)?;
        bytes += f.metadata().map_err(Error::storage)?.len();
    }
    Ok(bytes)
}

/// Makes the directory's new entries durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::storage)
}
