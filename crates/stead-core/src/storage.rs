//! The storage an object sees inside a turn: a sorted key-value space with read-your-writes,
//! backed by a per-object cache, the object's writes not yet acknowledged, and the backend.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{
    AlarmChange, CommitBatch, Durability, DynBackend, Fence, ListOptions, ObjectRef, Value,
};
use crate::clock::{from_ms, to_ms};
use crate::error::{Error, Result};
use crate::sql::{SQL_PREFIX, SqlDb, SqlLimits, chunk_key, vfs::CHUNK};

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 2048;
/// Keys starting with this byte belong to the runtime (alarms, schedules); user keys may not.
pub(crate) const INTERNAL: char = '\0';
/// Where the user's own alarm time is kept (epoch ms), apart from the schedules.
pub(crate) const USER_ALARM_KEY: &str = "\0alarm";
/// Where a failing user alarm keeps its retry count and the time it was first due.
pub(crate) const ALARM_RETRY_KEY: &str = "\0alarm-retry";
/// The prefix of schedule entries.
pub(crate) const SCHEDULE_PREFIX: &str = "\0sched/";
/// The first key a user can have.
const FIRST_USER_KEY: &str = "\u{1}";
/// An object with at most this many stored entries (its alarm and schedules included) is
/// read whole by its first storage access, in one range read; every later read is answered
/// from memory.
const PREFETCH_ENTRIES: usize = 64;

/// Limits that apply to an object's storage.
#[derive(Debug, Clone)]
pub(crate) struct StorageLimits {
    pub(crate) max_value_bytes: usize,
    pub(crate) cache_bytes: usize,
    pub(crate) sql: Arc<SqlLimits>,
}

/// An object's durable key-value storage, as seen from inside a turn.
///
/// Keys are strings of 1 to 2048 bytes, ordered by their bytes; values are any serde type,
/// stored as JSON, at most 128 KiB by default. Reads see this turn's own writes. Writes are
/// buffered and never block; they commit with the turn, atomically, or not at all.
///
/// One rule says which calls are `async`: a call that reads (or answers with what it found,
/// as [`delete`](Self::delete) does) may have to reach the store, so it is `async`; a call
/// that only writes is buffered in the turn, so it is not.
pub struct Storage {
    obj: ObjectRef,
    name: Option<Arc<str>>,
    backend: Arc<dyn DynBackend>,
    durability: Durability,
    limits: StorageLimits,

    // This turn's changes.
    turn: BTreeMap<String, Option<Value>>,
    turn_cleared: bool,
    turn_alarm_dirty: bool,
    turn_alarm: Option<Option<i64>>,

    // Changes of finished turns that are not yet acknowledged durable, with the seq of the
    // turn that last wrote them.
    unacked: BTreeMap<String, (Option<Value>, u64)>,
    unacked_alarm: Option<(Option<i64>, u64)>,
    cleared_seq: Option<u64>,
    // What changed since the last batch was submitted: the entries of `unacked` written
    // by turns after `submitted` (the last turn that batch held), the clear, the alarm.
    submitted: u64,
    dirty_clear: bool,
    dirty_alarm: bool,
    last_seq: u64,

    // Committed values (None: known absent). Evictable.
    cache: HashMap<String, Option<Value>>,
    cache_bytes: usize,
    /// The cache holds every committed entry, so a key it lacks is absent.
    complete: bool,
    /// Whether the whole-object read was tried in this activation.
    prefetched: bool,
    committed_alarm: Option<Option<i64>>,
    registered: bool,
    fence: Arc<Fence>,
    /// The committed store is known to have no schedule entries (saves a range scan whenever
    /// the alarm changes). Says nothing of this turn's writes or unacknowledged ones.
    committed_no_schedules: bool,
    /// The object's SQL database, once a turn of this activation used it. Its committed
    /// state always equals what storage holds (written, unacknowledged or committed), so
    /// dropping it is always safe: the next use reads it back.
    sql: Option<Box<SqlDb>>,
    /// This turn committed SQL changes into its writes (a rollback must drop the database).
    sql_flushed: bool,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("object", &self.obj)
            .field("durability", &self.durability)
            .field("turn_writes", &self.turn.len())
            .field("unacknowledged", &self.unacked.len())
            .finish()
    }
}

/// What a finished turn left for the object to do.
pub(crate) struct TurnEnd {
    pub(crate) wrote: bool,
    pub(crate) alarm: Option<Option<i64>>,
}

impl Storage {
    pub(crate) fn new(
        obj: ObjectRef,
        name: Option<Arc<str>>,
        backend: Arc<dyn DynBackend>,
        durability: Durability,
        limits: StorageLimits,
    ) -> Self {
        Storage {
            obj,
            name,
            backend,
            durability,
            limits,
            turn: BTreeMap::new(),
            turn_cleared: false,
            turn_alarm_dirty: false,
            turn_alarm: None,
            unacked: BTreeMap::new(),
            unacked_alarm: None,
            cleared_seq: None,
            submitted: 0,
            dirty_clear: false,
            dirty_alarm: false,
            last_seq: 0,
            cache: HashMap::new(),
            cache_bytes: 0,
            complete: false,
            prefetched: false,
            committed_alarm: None,
            registered: false,
            fence: Arc::new(Fence::default()),
            committed_no_schedules: false,
            sql: None,
            sql_flushed: false,
        }
    }

    pub(crate) fn set_name(&mut self, name: Option<Arc<str>>) {
        self.name = name;
    }

    /// Whether the ownership this activation writes under is still the backend's (from
    /// the node's own view of its leases: no round trip).
    pub(crate) fn fence_current(&self) -> bool {
        self.backend.fence_token(&self.obj) == self.fence.token()
    }

    /// Asks the backend which ownership a new activation writes under. A new token also
    /// forgets everything the object had in memory (read under the old ownership, it may be
    /// stale): the caller makes sure no commit of the old one is outstanding.
    pub(crate) fn claim_fence_token(&mut self) {
        let token = self.backend.fence_token(&self.obj);
        if token != self.fence.token() {
            self.reset();
            self.fence = Arc::new(Fence::new(token));
        }
    }

    // ----- public API -------------------------------------------------------------------

    /// How durable this object's acknowledged writes are (its namespace's durability).
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The value stored at `key`, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        check_user_key(key)?;
        self.get_raw(key).await?.map(|v| decode(&v)).transpose()
    }

    /// The values stored at several keys; absent keys are left out of the map.
    pub async fn get_many<T: DeserializeOwned>(
        &mut self,
        keys: &[&str],
    ) -> Result<BTreeMap<String, T>> {
        let mut out = BTreeMap::new();
        for k in keys {
            check_user_key(k)?;
            if let Some(v) = self.get_raw(k).await? {
                out.insert((*k).to_owned(), decode(&v)?);
            }
        }
        Ok(out)
    }

    /// The entries in a range, decoded as `T`, in key order (or reverse order).
    pub async fn list<T: DeserializeOwned>(
        &mut self,
        opts: ListOptions,
    ) -> Result<Vec<(String, T)>> {
        let mut opts = opts;
        if opts.start.as_deref().is_none_or(|s| s < FIRST_USER_KEY) {
            opts.start = Some(FIRST_USER_KEY.to_owned());
        }
        self.list_raw(&opts)
            .await?
            .into_iter()
            .map(|(k, v)| Ok((k, decode(&v)?)))
            .collect()
    }

    /// Stores `value` at `key`.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        check_user_key(key)?;
        let v = self.encode(value)?;
        self.turn.insert(key.to_owned(), Some(v));
        Ok(())
    }

    /// Stores several entries; all are validated before any is written.
    pub fn put_many<T: Serialize>(&mut self, entries: &[(&str, T)]) -> Result<()> {
        let mut encoded = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            check_user_key(k)?;
            encoded.push(((*k).to_owned(), self.encode(v)?));
        }
        for (k, v) in encoded {
            self.turn.insert(k, Some(v));
        }
        Ok(())
    }

    /// Deletes `key`, whether or not it exists. Blind: it reads nothing, so a loop of
    /// deletes costs no round trip to the store (read with [`get`](Self::get) first to
    /// learn whether it existed).
    pub fn delete(&mut self, key: &str) -> Result<()> {
        check_user_key(key)?;
        self.turn.insert(key.to_owned(), None);
        Ok(())
    }

    /// Deletes every key, the alarm and every schedule of the object.
    pub fn delete_all(&mut self) {
        // The database goes too; a later statement of the turn starts an empty one.
        self.sql = None;
        self.turn.clear();
        self.turn_cleared = true;
        self.turn_alarm_dirty = true;
    }

    /// Whether this turn has written, deleted or changed the alarm or schedules so far.
    pub(crate) fn turn_changed(&self) -> bool {
        !self.turn.is_empty()
            || self.turn_cleared
            || self.turn_alarm_dirty
            || self.sql.as_ref().is_some_and(|db| db.turn_wrote())
    }

    /// Discards every write this turn has made so far, its SQL changes included.
    pub fn rollback(&mut self) {
        if std::mem::take(&mut self.sql_flushed) {
            self.sql = None;
        } else if let Some(db) = self.sql.as_mut() {
            db.rollback();
        }
        self.turn.clear();
        self.turn_cleared = false;
        self.turn_alarm_dirty = false;
        self.turn_alarm = None;
    }

    /// Sets the object's alarm: its `alarm` handler runs at or after `at` (at least once,
    /// even across restarts). Replaces any earlier alarm.
    pub fn set_alarm(&mut self, at: DateTime<Utc>) -> Result<()> {
        self.set_alarm_ms(to_ms(at))
    }

    pub(crate) fn set_alarm_ms(&mut self, at_ms: i64) -> Result<()> {
        let v = self.encode(&at_ms)?;
        self.turn.insert(USER_ALARM_KEY.to_owned(), Some(v));
        // A new alarm starts with no retries.
        self.turn.insert(ALARM_RETRY_KEY.to_owned(), None);
        self.turn_alarm_dirty = true;
        Ok(())
    }

    /// The time the alarm is set for, if any.
    pub async fn alarm(&mut self) -> Result<Option<DateTime<Utc>>> {
        Ok(self.user_alarm_ms().await?.map(from_ms))
    }

    /// Sets the alarm to `at`, or removes it when `at` is `None`.
    pub fn replace_alarm(&mut self, at: Option<DateTime<Utc>>) -> Result<()> {
        match at {
            Some(at) => self.set_alarm(at),
            None => {
                self.delete_alarm();
                Ok(())
            }
        }
    }

    /// Removes the alarm.
    pub fn delete_alarm(&mut self) {
        self.turn.insert(USER_ALARM_KEY.to_owned(), None);
        self.turn.insert(ALARM_RETRY_KEY.to_owned(), None);
        self.turn_alarm_dirty = true;
    }

    // ----- runtime-internal -------------------------------------------------------------

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Value> {
        let bytes = serde_json::to_vec(value).map_err(Error::Codec)?;
        if bytes.len() > self.limits.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size: bytes.len(),
                max: self.limits.max_value_bytes,
            });
        }
        Ok(Value::from(bytes))
    }

    pub(crate) async fn user_alarm_ms(&mut self) -> Result<Option<i64>> {
        self.get_raw(USER_ALARM_KEY)
            .await?
            .map(|v| decode::<i64>(&v))
            .transpose()
    }

    pub(crate) async fn get_internal<T: DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>> {
        self.get_raw(key).await?.map(|v| decode(&v)).transpose()
    }

    /// Whether the object is known to have no schedule entries: none committed (or a clear
    /// hides them), and none written by this turn or by turns not yet acknowledged.
    pub(crate) fn known_without_schedules(&self) -> bool {
        let committed_hidden =
            self.committed_no_schedules || self.turn_cleared || self.cleared_seq.is_some();
        committed_hidden && !self.overlay_has_prefix(SCHEDULE_PREFIX)
    }

    /// Records that a scan found no schedule entries. Only the committed store's emptiness is
    /// remembered, and only when no pending write could have hidden an entry of it (a delete
    /// that a rollback may still discard).
    pub(crate) fn set_known_without_schedules(&mut self) {
        if !self.turn_cleared
            && self.cleared_seq.is_none()
            && !self.overlay_has_prefix(SCHEDULE_PREFIX)
        {
            self.committed_no_schedules = true;
        }
    }

    /// Whether this turn or an unacknowledged one wrote (or deleted) a key with `prefix`.
    fn overlay_has_prefix(&self, prefix: &str) -> bool {
        let from = (Bound::Included(prefix), Bound::Unbounded);
        let starts = |m: Option<&String>| m.is_some_and(|k| k.starts_with(prefix));
        starts(self.turn.range::<str, _>(from).next().map(|(k, _)| k))
            || starts(self.unacked.range::<str, _>(from).next().map(|(k, _)| k))
    }

    pub(crate) fn put_internal<T: Serialize>(&mut self, key: String, value: &T) -> Result<()> {
        let v = self.encode(value)?;
        self.turn.insert(key, Some(v));
        self.turn_alarm_dirty = true;
        Ok(())
    }

    pub(crate) fn delete_internal(&mut self, key: String) {
        self.turn.insert(key, None);
        self.turn_alarm_dirty = true;
    }

    pub(crate) async fn list_internal<T: DeserializeOwned>(
        &mut self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        self.list_raw(&ListOptions::prefix(prefix))
            .await?
            .into_iter()
            .map(|(k, v)| Ok((k, decode(&v)?)))
            .collect()
    }

    /// Whether the turn touched the alarm or the schedules, so the effective alarm must be
    /// recomputed.
    pub(crate) fn alarm_inputs_changed(&self) -> bool {
        self.turn_alarm_dirty
    }

    /// Sets the alarm the backend keeps (the earliest of the user's alarm and the schedules).
    pub(crate) async fn set_effective_alarm(&mut self, at: Option<i64>) -> Result<()> {
        if self.effective_alarm().await? != at || self.turn_cleared {
            self.turn_alarm = Some(at);
        }
        Ok(())
    }

    /// The alarm the backend keeps, with this turn's and unacknowledged changes applied.
    pub(crate) async fn effective_alarm(&mut self) -> Result<Option<i64>> {
        if let Some(a) = self.turn_alarm {
            return Ok(a);
        }
        if self.turn_cleared {
            return Ok(None);
        }
        if let Some((a, _)) = self.unacked_alarm {
            return Ok(a);
        }
        if self.cleared_seq.is_some() {
            return Ok(None);
        }
        if self.committed_alarm.is_none() {
            self.prefetch().await?;
        }
        match self.committed_alarm {
            Some(a) => Ok(a),
            None => {
                let a = self.backend.get_alarm(&self.obj).await?;
                self.committed_alarm = Some(a);
                Ok(a)
            }
        }
    }

    /// Reads the whole object in one range read when it is small, so that later reads need
    /// no backend: the cache becomes complete, and an object without alarm entries is known
    /// to have no alarm and no schedules. Tried once per activation.
    async fn prefetch(&mut self) -> Result<()> {
        if self.prefetched {
            return Ok(());
        }
        self.prefetched = true;
        let entries = self.backend.load(&self.obj, PREFETCH_ENTRIES + 1).await?;
        if entries.len() > PREFETCH_ENTRIES {
            return Ok(());
        }
        // Complete unless inserting overflows the cache budget (which empties it and says so).
        self.complete = true;
        for (k, v) in entries {
            if !self.cache.contains_key(&k) && !k.starts_with(SQL_PREFIX) {
                self.cache_insert(k, Some(v));
            }
        }
        let no_alarm_entries = !self.cache.keys().any(|k| k.starts_with(INTERNAL));
        if self.complete && no_alarm_entries {
            // The backend's alarm is the earliest of the user's alarm and the schedules,
            // written in the same transactions as they are: with neither, there is none.
            self.committed_no_schedules = true;
            if self.committed_alarm.is_none() {
                self.committed_alarm = Some(None);
            }
        }
        Ok(())
    }

    async fn get_raw(&mut self, key: &str) -> Result<Option<Value>> {
        if let Some(v) = self.turn.get(key) {
            return Ok(v.clone());
        }
        if self.turn_cleared {
            return Ok(None);
        }
        if let Some((v, _)) = self.unacked.get(key) {
            return Ok(v.clone());
        }
        if self.cleared_seq.is_some() {
            return Ok(None);
        }
        if let Some(v) = self.cache.get(key) {
            return Ok(v.clone());
        }
        if !self.prefetched {
            self.prefetch().await?;
            if let Some(v) = self.cache.get(key) {
                return Ok(v.clone());
            }
        }
        if self.complete {
            return Ok(None);
        }
        let v = self.backend.get(&self.obj, key).await?;
        self.cache_insert(key.to_owned(), v.clone());
        Ok(v)
    }

    fn cache_insert(&mut self, key: String, v: Option<Value>) {
        let size = key.len() + v.as_ref().map_or(0, |v| v.len()) + 48;
        if self.cache_bytes + size > self.limits.cache_bytes {
            self.cache.clear();
            self.cache_bytes = 0;
            self.complete = false;
            if size > self.limits.cache_bytes {
                return;
            }
        }
        if let Some(old) = self.cache.insert(key, v) {
            self.cache_bytes = self.cache_bytes.saturating_sub(old.map_or(0, |o| o.len()));
        } else {
            self.cache_bytes += size;
        }
    }

    async fn list_raw(&mut self, opts: &ListOptions) -> Result<Vec<(String, Value)>> {
        let limit = opts.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (lower, upper) = opts.bounds();
        if upper.as_ref().is_some_and(|u| *u <= lower) {
            return Ok(Vec::new());
        }
        let range = |lower: &str, upper: Option<&str>| {
            (
                Bound::Included(lower.to_owned()),
                upper.map_or(Bound::Unbounded, |u| Bound::Excluded(u.to_owned())),
            )
        };
        let r = range(&lower, upper.as_deref());
        let mut merged: BTreeMap<String, Option<Value>> = BTreeMap::new();
        if !self.turn_cleared {
            let overlay =
                self.unacked.range(r.clone()).count() + self.turn.range(r.clone()).count();
            if self.cleared_seq.is_none() {
                self.prefetch().await?;
                if self.complete {
                    for (k, v) in &self.cache {
                        if let Some(v) = v
                            && opts.contains(k)
                        {
                            merged.insert(k.clone(), Some(v.clone()));
                        }
                    }
                } else {
                    let mut backend_opts = opts.clone();
                    backend_opts.limit = opts.limit.map(|l| l.saturating_add(overlay));
                    for (k, v) in self.backend.list(&self.obj, &backend_opts).await? {
                        merged.insert(k, Some(v));
                    }
                }
            }
            for (k, (v, _)) in self.unacked.range(r.clone()) {
                merged.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in self.turn.range(r) {
            merged.insert(k.clone(), v.clone());
        }
        let live = merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)));
        Ok(if opts.reverse {
            live.rev().take(limit).collect()
        } else {
            live.take(limit).collect()
        })
    }

    /// Folds this turn's changes into the unacknowledged set under `seq`.
    pub(crate) fn end_turn(&mut self, seq: u64) -> TurnEnd {
        self.sql_flushed = false;
        let wrote = self.turn_cleared || !self.turn.is_empty() || self.turn_alarm.is_some();
        if self.turn_cleared {
            self.unacked.clear();
            self.cache.clear();
            self.cache_bytes = 0;
            // Cleared: once the clear is acknowledged, the cache holds all there is.
            self.complete = true;
            self.prefetched = true;
            self.cleared_seq = Some(seq);
            self.dirty_clear = true;
            self.registered = false;
            if self.turn_alarm.is_none() {
                self.turn_alarm = Some(None);
            }
        }
        for (k, v) in std::mem::take(&mut self.turn) {
            self.unacked.insert(k, (v, seq));
        }
        let alarm = self.turn_alarm.take();
        if let Some(a) = alarm {
            self.unacked_alarm = Some((a, seq));
            self.dirty_alarm = true;
        }
        self.turn_cleared = false;
        self.turn_alarm_dirty = false;
        if wrote {
            self.last_seq = seq;
        }
        TurnEnd { wrote, alarm }
    }

    /// The batch of everything written since the last one, if anything was.
    pub(crate) fn take_batch(
        &mut self,
        ack: Arc<dyn crate::backend::AckSink>,
    ) -> Option<CommitBatch> {
        if self.last_seq == self.submitted && !self.dirty_clear && !self.dirty_alarm {
            return None;
        }
        let submitted = std::mem::replace(&mut self.submitted, self.last_seq);
        let writes: Vec<(String, Option<Value>)> = self
            .unacked
            .iter()
            .filter(|(_, (_, s))| *s > submitted)
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        let alarm = match self.unacked_alarm {
            Some((a, _)) if self.dirty_alarm => AlarmChange::to(a),
            _ => AlarmChange::Keep,
        };
        let register = if !self.registered
            && (matches!(alarm, AlarmChange::Set(_)) || writes.iter().any(|(_, v)| v.is_some()))
        {
            self.registered = true;
            Some(self.name.clone())
        } else {
            None
        };
        let batch = CommitBatch {
            object: self.obj,
            clear: self.dirty_clear,
            writes,
            alarm,
            register,
            durability: self.durability,
            fence: self.fence.clone(),
            ack: Some((self.last_seq, ack)),
        };
        self.dirty_clear = false;
        self.dirty_alarm = false;
        Some(batch)
    }

    /// Everything up to `seq` is durable: move it into the committed cache. Returns the
    /// alarm that became durable, if one did.
    pub(crate) fn acked(&mut self, seq: u64) -> Option<Option<i64>> {
        if self.cleared_seq.is_some_and(|c| c <= seq) {
            self.cleared_seq = None;
        }
        let mut alarm = None;
        if let Some((a, s)) = self.unacked_alarm
            && s <= seq
        {
            self.committed_alarm = Some(a);
            self.unacked_alarm = None;
            alarm = Some(a);
        }
        // One pass that moves entries instead of cloning keys; usually everything is acked.
        for (k, (v, s)) in std::mem::take(&mut self.unacked) {
            if s <= seq {
                if v.is_some() && k.starts_with(SCHEDULE_PREFIX) {
                    self.committed_no_schedules = false;
                }
                // A database's chunks are kept by the database itself, never cached twice.
                if !k.starts_with(SQL_PREFIX) {
                    self.cache_insert(k, v);
                }
            } else {
                self.unacked.insert(k, (v, s));
            }
        }
        alarm
    }

    /// Forgets everything in memory (after a reset): the next read goes to the backend.
    pub(crate) fn reset(&mut self) {
        self.turn.clear();
        self.turn_cleared = false;
        self.turn_alarm_dirty = false;
        self.turn_alarm = None;
        self.unacked.clear();
        self.unacked_alarm = None;
        self.cleared_seq = None;
        self.submitted = self.last_seq;
        self.dirty_clear = false;
        self.dirty_alarm = false;
        self.cache.clear();
        self.cache_bytes = 0;
        self.complete = false;
        self.prefetched = false;
        self.committed_alarm = None;
        self.registered = false;
        self.fence = Arc::new(Fence::default());
        self.committed_no_schedules = false;
        self.sql = None;
        self.sql_flushed = false;
    }

    // ----- the SQL database -------------------------------------------------------------

    /// The object's database, read from storage by its first use in an activation.
    pub(crate) async fn sql_db(&mut self) -> Result<&mut SqlDb> {
        if self.sql.is_none() {
            // Opening reads from the backend: its future is large, so it is boxed, and a
            // statement on an open database (every one but the first) never builds it.
            Box::pin(self.open_sql()).await?;
        }
        Ok(self.sql.as_mut().expect("opened above"))
    }

    #[cold]
    async fn open_sql(&mut self) -> Result<()> {
        let chunks = self.sql_chunks().await?;
        self.sql = Some(Box::new(
            SqlDb::open(chunks, *self.limits.sql).map_err(Error::Sql)?,
        ));
        Ok(())
    }

    /// The stored chunks of the database, this turn's and unacknowledged writes applied.
    /// Never from the cache: chunks are not cached (the open database holds them).
    async fn sql_chunks(&mut self) -> Result<Vec<(String, Value)>> {
        let opts = ListOptions::prefix(SQL_PREFIX);
        let (lower, upper) = opts.bounds();
        let r = (
            Bound::Included(lower),
            upper.map_or(Bound::Unbounded, Bound::Excluded),
        );
        let mut merged: BTreeMap<String, Option<Value>> = BTreeMap::new();
        if !self.turn_cleared {
            if self.cleared_seq.is_none() {
                for (k, v) in self.backend.list(&self.obj, &opts).await? {
                    merged.insert(k, Some(v));
                }
            }
            for (k, (v, _)) in self.unacked.range(r.clone()) {
                merged.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in self.turn.range(r) {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// Runs one statement for an operator, from outside the object's code: one that reads
    /// only (checked before it runs), or, with `writes`, any.
    pub(crate) async fn query_from_outside(
        &mut self,
        sql: &str,
        params: crate::Params,
        writes: bool,
    ) -> Result<crate::Cursor> {
        let db = self.sql_db().await?;
        if writes {
            return db.exec(sql, &params, true).map_err(Error::Sql);
        }
        let d = db.describe(sql).map_err(Error::Sql)?;
        if !d.readonly || crate::sql::opens_transaction(sql) {
            return Err(Error::bad_request(
                "only statements that read are run from outside the object (SELECT, read-only PRAGMAs, EXPLAIN)",
            ));
        }
        db.exec(sql, &params, true).map_err(Error::Sql)
    }

    /// Commits the turn's SQL transaction, if it has one, into the turn's writes. On an
    /// error the SQL changes are rolled back and the caller discards the turn.
    pub(crate) fn commit_sql(&mut self) -> Result<()> {
        let Some(db) = self.sql.as_mut() else {
            return Ok(());
        };
        let chunks = db.commit().map_err(Error::Sql)?;
        if !chunks.is_empty() {
            self.sql_flushed = true;
            for (k, v) in chunks {
                self.turn.insert(k, v);
            }
        }
        Ok(())
    }
}

/// One object as a document: what [`Stub::export`](crate::Stub::export) answers and
/// [`Stub::import`](crate::Stub::import) takes, to restore an object or fork it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct ObjectDocument {
    /// The object's class.
    pub class: String,
    /// The name it was exported from, if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// Its storage: every key and its value.
    pub entries: BTreeMap<String, serde_json::Value>,
    /// Its alarm, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<DateTime<Utc>>,
    /// Its schedules, by job name, as the runtime keeps them (kind and next run).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schedules: BTreeMap<String, serde_json::Value>,
    /// Its SQL database, if it has one: the database file, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

/// Checks a document before it is imported: keys an object could have written, schedules
/// the runtime can read, values within the value limit is checked as they are written.
pub(crate) fn check_import(doc: &ObjectDocument) -> Result<()> {
    let bad = |what: String| Err(Error::bad_request(what));
    for k in doc.entries.keys() {
        if let Err(e) = check_user_key(k) {
            return bad(format!("entry {k:?}: {e}"));
        }
    }
    if let Some(file) = &doc.sql {
        decode_sql(file)?;
    }
    for (name, job) in &doc.schedules {
        if let Err(e) = crate::schedule::check_name(name) {
            return bad(format!("schedule {name:?}: {e}"));
        }
        if let Err(e) = serde_json::from_value::<crate::schedule::JobRecord>(job.clone()) {
            return bad(format!("schedule {name:?}: {e}"));
        }
    }
    Ok(())
}

impl Storage {
    /// Everything the object holds, as a document (its class and name left for the caller).
    pub(crate) async fn export_document(&mut self) -> Result<ObjectDocument> {
        let mut doc = ObjectDocument {
            class: String::new(),
            name: None,
            entries: BTreeMap::new(),
            alarm: None,
            schedules: BTreeMap::new(),
            sql: None,
        };
        // The database as committed by earlier turns (this turn's open transaction aside).
        let chunks = self.sql_chunks().await?;
        if !chunks.is_empty() {
            let mut file = Vec::with_capacity(chunks.len() * CHUNK);
            for (k, v) in chunks {
                let chunk = crate::sql::chunk::decode(&v).ok_or_else(|| {
                    Error::storage(format!("a stored SQL chunk is damaged: {k:?}"))
                })?;
                file.extend_from_slice(&chunk);
            }
            use base64::Engine as _;
            doc.sql = Some(base64::engine::general_purpose::STANDARD.encode(file));
        }
        for (k, v) in self.list_raw(&ListOptions::all()).await? {
            let value: serde_json::Value = decode(&v)?;
            if let Some(job) = k.strip_prefix(SCHEDULE_PREFIX) {
                doc.schedules.insert(job.to_owned(), value);
            } else if k.starts_with(SQL_PREFIX) {
                continue;
            } else if k == USER_ALARM_KEY {
                doc.alarm = value.as_i64().map(from_ms);
            } else if !k.starts_with(INTERNAL) {
                doc.entries.insert(k, value);
            }
        }
        Ok(doc)
    }

    /// Replaces everything the object holds with `doc` (checked by [`check_import`]), in
    /// this turn.
    pub(crate) fn import_document(&mut self, doc: &ObjectDocument) -> Result<()> {
        self.delete_all();
        for (k, v) in &doc.entries {
            let v = self.encode(v)?;
            self.turn.insert(k.clone(), Some(v));
        }
        for (name, job) in &doc.schedules {
            let v = self.encode(job)?;
            self.turn.insert(crate::schedule::key(name), Some(v));
        }
        if let Some(at) = doc.alarm {
            self.set_alarm_ms(to_ms(at))?;
        }
        if let Some(file) = &doc.sql {
            for (i, chunk) in decode_sql(file)?.chunks(CHUNK).enumerate() {
                self.turn
                    .insert(chunk_key(i as u32), Some(Value::from(chunk)));
            }
        }
        self.turn_alarm_dirty = true;
        Ok(())
    }
}

/// A document's database file: base64 of a SQLite database.
fn decode_sql(file: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(file)
        .map_err(|e| Error::bad_request(format!("sql: not base64: {e}")))?;
    if bytes.is_empty() {
        return Ok(bytes);
    }
    if !bytes.starts_with(b"SQLite format 3\0") {
        return Err(Error::bad_request("sql: not a SQLite database file"));
    }
    if !bytes.len().is_multiple_of(CHUNK) || bytes.get(16..18) != Some(&[0x10, 0x00][..]) {
        return Err(Error::bad_request(
            "sql: a database of 4096-byte pages is expected (the page size every object uses)",
        ));
    }
    Ok(bytes)
}

fn decode<T: DeserializeOwned>(v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(Error::Codec)
}

fn check_user_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            reason: "keys may not be empty",
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidKey {
            reason: "keys may be at most 2048 bytes",
        });
    }
    if key.starts_with(INTERNAL) {
        return Err(Error::InvalidKey {
            reason: "keys starting with a NUL character are reserved",
        });
    }
    Ok(())
}
