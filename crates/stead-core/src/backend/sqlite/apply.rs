//! Applying a group's changes to the open transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rusqlite::{Connection, params};

use super::super::{AlarmChange, CommitBatch, Value};
use crate::id::{IdHashState, ObjectId};

/// One batch's changes as the writer applies them: taken from a [`CommitBatch`], or read
/// back from the commit log.
pub(super) struct Change<'a> {
    pub(super) class: &'a str,
    pub(super) id: ObjectId,
    pub(super) clear: bool,
    pub(super) writes: Vec<(String, Option<Value>)>,
    pub(super) alarm: AlarmChange,
    pub(super) register: Option<Option<Arc<str>>>,
}

impl Change<'static> {
    /// Takes the changes out of a batch (which keeps its acknowledgement).
    pub(super) fn take(b: &mut CommitBatch) -> Self {
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
pub(super) struct ObjectOps {
    pub(super) clear: bool,
    /// The writes in the order they were made. When several batches of the object are in
    /// the group, a key may appear more than once: the last write wins.
    pub(super) writes: Vec<(String, Option<Value>)>,
    pub(super) batches: usize,
    pub(super) alarm: AlarmChange,
    pub(super) register: Option<Option<Arc<str>>>,
}

/// One group's changes, by object, as applied.
pub(super) type Applied<'a> = Vec<((&'a str, ObjectId), ObjectOps)>;

/// Applies one group's changes inside the connection's transaction; returns them by object,
/// for the caller to fold into the open window's changes (which reads lay over the
/// committed database).
pub(super) fn apply<'a>(
    conn: &Connection,
    changes: impl IntoIterator<Item = Change<'a>>,
) -> rusqlite::Result<Applied<'a>> {
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
    drop((upsert, delete));
    Ok(ops)
}
