//! Group commit: one writer task per partition of object ids, each taking every batch that
//! is pending and committing them in one transaction, fenced by the leases it writes under.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use deadpool_postgres::Pool;
use stead_core::{AlarmChange, CommitBatch, Durability, Error, ObjectId, Result};
use tokio::sync::{mpsc, oneshot};

use crate::lease::Owner;
use crate::schema::Sql;
use crate::{pg_err, unavailable};

/// At most this many batches go into one transaction.
pub(crate) const MAX_GROUP: usize = 4096;

pub(crate) enum WriterMsg {
    Commit(CommitBatch),
    Flush(oneshot::Sender<()>),
}

/// What a writer works with.
#[derive(Debug)]
pub(crate) struct WriterCtx {
    pub(crate) pool: Pool,
    pub(crate) sql: Arc<Sql>,
    pub(crate) owner: Owner,
}

/// A writer with this many batches waiting is backlogged: new messages for its objects
/// are refused with `Overloaded` until it catches up.
pub(crate) const MAX_QUEUED: usize = 4 * MAX_GROUP;

/// Takes groups off the queue until every sender is gone; `queued` counts the batches
/// waiting in it.
pub(crate) async fn run(
    ctx: Arc<WriterCtx>,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    queued: Arc<AtomicUsize>,
) {
    let mut batches = Vec::new();
    let mut flushes = Vec::new();
    while let Some(msg) = rx.recv().await {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Commit(b) => {
                    queued.fetch_sub(1, Ordering::AcqRel);
                    batches.push(b);
                }
                WriterMsg::Flush(done) => flushes.push(done),
            }
            if batches.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !batches.is_empty() {
            commit(&ctx, std::mem::take(&mut batches)).await;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Commits a group, then completes each batch: all succeed or all fail, except batches
/// written under an epoch the node no longer holds, which fail alone.
async fn commit(ctx: &WriterCtx, batches: Vec<CommitBatch>) {
    let (live, fenced): (Vec<_>, Vec<_>) = batches.into_iter().partition(|b| !b.is_fenced());
    for b in fenced {
        b.complete(Err(Error::Reset));
    }
    // A batch of an activation that started under another epoch (before its partition's
    // lease changed hands, even back to this node), or of a partition this node no longer
    // holds, never commits.
    let (live, stale): (Vec<_>, Vec<_>) = live.into_iter().partition(|b| {
        b.fence_token()
            .is_some_and(|t| ctx.owner.committing(t.partition) == Some(t.epoch))
    });
    for b in stale {
        b.complete(Err(Error::Reset));
    }
    if live.is_empty() {
        return;
    }
    // The epoch each partition written commits under (one per partition: every batch
    // kept matched the epoch held when the group formed).
    let mut held: Vec<(i32, i64)> = live
        .iter()
        .filter_map(|b| b.fence_token())
        .map(|t| (t.partition as i32, t.epoch as i64))
        .collect();
    held.sort_unstable();
    held.dedup();
    match write(ctx, &held, &live).await {
        Ok(()) => {
            for b in live {
                b.complete(Ok(()));
            }
        }
        Err(e) => {
            tracing::warn!(error = ?e, batches = live.len(), "a commit failed; its objects reset");
            fail(live, e);
        }
    }
}

/// Fails every batch with the group's error (its PostgreSQL error shared, cause and
/// SQLSTATE included).
fn fail(batches: Vec<CommitBatch>, e: Error) {
    let shared = crate::error::carried(&e).cloned();
    for b in batches {
        b.complete(Err(match &shared {
            Some(p) => Error::storage(p.clone()),
            None => unavailable(e.to_string()),
        }));
    }
}

/// One object's changes within a group, the batches folded in order.
#[derive(Default)]
struct ObjectOps<'a> {
    /// The partition the object belongs to (0 with one lease).
    partition: i32,
    clear: bool,
    writes: HashMap<&'a str, Option<&'a [u8]>>,
    alarm: AlarmChange,
    register: Option<Option<&'a str>>,
}

/// Objects, one array per column.
#[derive(Default)]
struct Rows<'a> {
    class: Vec<&'a str>,
    id: Vec<&'a [u8]>,
}

impl<'a> Rows<'a> {
    fn push(&mut self, class: &'a str, id: &'a [u8]) {
        self.class.push(class);
        self.id.push(id);
    }
}

/// The group's changes as one array per column, for statements that unnest them.
#[derive(Default)]
struct Columns<'a> {
    clear: Rows<'a>,
    upsert: Rows<'a>,
    upsert_key: Vec<&'a [u8]>,
    upsert_value: Vec<&'a [u8]>,
    delete: Rows<'a>,
    delete_key: Vec<&'a [u8]>,
    alarm_set: Rows<'a>,
    alarm_at: Vec<i64>,
    alarm_partition: Vec<i32>,
    alarm_clear: Rows<'a>,
    register: Rows<'a>,
    register_name: Vec<Option<&'a [u8]>>,
}

fn fold(batches: &[CommitBatch]) -> Columns<'_> {
    let mut order: Vec<(&str, &ObjectId)> = Vec::new();
    let mut ops: HashMap<(&str, &ObjectId), ObjectOps<'_>> = HashMap::new();
    for b in batches {
        let key = (b.object.class, &b.object.id);
        let o = ops.entry(key).or_insert_with(|| {
            order.push(key);
            ObjectOps {
                partition: b.fence_token().map_or(0, |t| t.partition as i32),
                ..ObjectOps::default()
            }
        });
        if b.clear {
            o.clear = true;
            o.writes.clear();
            o.alarm = AlarmChange::Clear;
            o.register = None;
        }
        for (k, v) in &b.writes {
            o.writes.insert(k.as_str(), v.as_deref());
        }
        if b.alarm != AlarmChange::Keep {
            o.alarm = b.alarm;
        }
        if let Some(name) = &b.register {
            o.register = Some(name.as_deref());
        }
    }
    let mut c = Columns::default();
    for key in order {
        let Some(o) = ops.remove(&key) else { continue };
        let (class, id) = (key.0, &key.1.as_bytes()[..]);
        if o.clear {
            c.clear.push(class, id);
        }
        for (k, v) in o.writes {
            match v {
                Some(v) => {
                    c.upsert.push(class, id);
                    c.upsert_key.push(k.as_bytes());
                    c.upsert_value.push(v);
                }
                // After a clear in the same group, the key is gone already.
                None if o.clear => {}
                None => {
                    c.delete.push(class, id);
                    c.delete_key.push(k.as_bytes());
                }
            }
        }
        match o.alarm {
            AlarmChange::Set(at) => {
                c.alarm_set.push(class, id);
                c.alarm_at.push(at);
                c.alarm_partition.push(o.partition);
            }
            // A clear removed the alarm already.
            AlarmChange::Clear if !o.clear => {
                c.alarm_clear.push(class, id);
            }
            AlarmChange::Clear | AlarmChange::Keep => {}
        }
        if let Some(name) = o.register {
            c.register.push(class, id);
            c.register_name.push(name.map(str::as_bytes));
        }
    }
    c
}

/// The group's transaction: the lease check first (shared locks on the partitions it
/// writes, held against a takeover until the commit, then their epochs read), then every
/// change, then the commit.
async fn write(ctx: &WriterCtx, held: &[(i32, i64)], batches: &[CommitBatch]) -> Result<()> {
    let c = fold(batches);
    let mut client = ctx.pool.get().await.map_err(crate::no_connection)?;
    let tx = client.transaction().await.map_err(pg_err)?;
    // Process-crash-safe durability: PostgreSQL acknowledges before its WAL is flushed
    // (a crash of the PostgreSQL server may lose the last moments; one of stead's does not).
    if batches
        .iter()
        .all(|b| b.durability == Durability::ProcessCrashSafe)
    {
        tx.batch_execute("SET LOCAL synchronous_commit TO OFF")
            .await
            .map_err(pg_err)?;
    }
    let sql = &ctx.sql;
    let partitions: Vec<i32> = held.iter().map(|(p, _)| *p).collect();
    // Prepared once per connection, like every statement of the commit; both leave at
    // once, and the check runs once the locks are held.
    let (hold_stmt, check_stmt) = tokio::try_join!(
        tx.prepare_cached(&sql.lease_hold),
        tx.prepare_cached(&sql.lease_check),
    )
    .map_err(pg_err)?;
    let holder = ctx.owner.holder();
    let hold: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&partitions, &sql.lock_space];
    let check: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&holder, &partitions];
    let (locked, checked) =
        tokio::join!(tx.query(&hold_stmt, &hold), tx.query(&check_stmt, &check),);
    locked.map_err(pg_err)?;
    let mut found: Vec<(i32, i64)> = checked
        .map_err(pg_err)?
        .iter()
        .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
        .collect();
    found.sort_unstable();
    if found != held {
        return Err(unavailable(
            "this node no longer holds the lease it writes under",
        ));
    }
    if let Some(audit) = &sql.audit {
        let epochs: Vec<i64> = held.iter().map(|(_, e)| *e).collect();
        tx.execute(&audit.commit, &[&partitions, &epochs, &ctx.owner.holder()])
            .await
            .map_err(pg_err)?;
    }
    if !c.clear.class.is_empty() {
        for stmt in [&sql.clear_kv, &sql.clear_alarms, &sql.clear_objects] {
            let stmt = tx.prepare_cached(stmt).await.map_err(pg_err)?;
            tx.execute(&stmt, &[&c.clear.class, &c.clear.id])
                .await
                .map_err(pg_err)?;
        }
    }
    if !c.upsert.class.is_empty() {
        let stmt = tx.prepare_cached(&sql.upsert).await.map_err(pg_err)?;
        tx.execute(
            &stmt,
            &[
                &c.upsert.class,
                &c.upsert.id,
                &c.upsert_key,
                &c.upsert_value,
            ],
        )
        .await
        .map_err(pg_err)?;
    }
    if !c.delete.class.is_empty() {
        let stmt = tx.prepare_cached(&sql.delete).await.map_err(pg_err)?;
        tx.execute(&stmt, &[&c.delete.class, &c.delete.id, &c.delete_key])
            .await
            .map_err(pg_err)?;
    }
    if !c.alarm_set.class.is_empty() {
        let stmt = tx.prepare_cached(&sql.set_alarms).await.map_err(pg_err)?;
        tx.execute(
            &stmt,
            &[
                &c.alarm_set.class,
                &c.alarm_set.id,
                &c.alarm_at,
                &c.alarm_partition,
            ],
        )
        .await
        .map_err(pg_err)?;
    }
    if !c.alarm_clear.class.is_empty() {
        let stmt = tx.prepare_cached(&sql.clear_alarms).await.map_err(pg_err)?;
        tx.execute(&stmt, &[&c.alarm_clear.class, &c.alarm_clear.id])
            .await
            .map_err(pg_err)?;
    }
    if !c.register.class.is_empty() {
        let stmt = tx.prepare_cached(&sql.register).await.map_err(pg_err)?;
        tx.execute(
            &stmt,
            &[&c.register.class, &c.register.id, &c.register_name],
        )
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)
}
