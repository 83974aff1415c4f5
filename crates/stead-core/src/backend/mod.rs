//! Storage backends: where objects' key-value data, alarms and the object registry live.
//!
//! The runtime talks to a backend through the [`Backend`] trait. Reads are point lookups and
//! range scans; writes arrive as [`CommitBatch`]es, one per group of turns of one object,
//! which the backend applies atomically and in submission order per object, then completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::id::ObjectId;

pub(crate) mod fault;
pub(crate) mod memory;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// A stored value: the serde encoding of what a handler put.
pub type Value = Arc<[u8]>;

/// How durable an acknowledged write is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Durability {
    /// Acknowledged means on disk: every commit is fsynced (the default).
    #[default]
    Fsync,
    /// Acknowledged survives a crash of the process but not of the machine: a commit is
    /// written to the operating system without an fsync of its own.
    ProcessCrashSafe,
    /// Kept in memory only: lost when the process exits. Replies wait for no commit, and an
    /// object hands its writes to the process-wide memory store in bulk (every 64 pending
    /// keys, or when it leaves memory).
    Memory,
}

/// Which object a backend call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// The class ([`crate::DurableObject::CLASS`]).
    pub class: &'static str,
    /// The object's id.
    pub id: ObjectId,
}

/// A key range to scan: the intersection of a prefix, `start..end`, at most `limit` entries,
/// in ascending (or with `reverse`, descending) byte order of the keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys that start with this.
    pub prefix: Option<String>,
    /// Only keys `>= start`.
    pub start: Option<String>,
    /// Only keys `< end`.
    pub end: Option<String>,
    /// At most this many entries.
    pub limit: Option<usize>,
    /// Descending order (the last `limit` keys of the range).
    pub reverse: bool,
}

impl ListOptions {
    /// All keys with this prefix.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        ListOptions {
            prefix: Some(prefix.into()),
            ..Default::default()
        }
    }

    /// The same range, at most `limit` entries.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The same range in descending order.
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }

    /// The effective `[lower, upper)` bounds of the range; `None` upper means unbounded.
    pub fn bounds(&self) -> (String, Option<String>) {
        let mut lower = self.start.clone().unwrap_or_default();
        let mut upper = self.end.clone();
        if let Some(p) = &self.prefix {
            if *p > lower {
                lower = p.clone();
            }
            if let Some(pu) = prefix_upper_bound(p) {
                upper = Some(match upper {
                    Some(u) if u < pu => u,
                    _ => pu,
                });
            }
        }
        (lower, upper)
    }

    /// Whether `key` lies in the range (ignoring `limit`).
    pub fn contains(&self, key: &str) -> bool {
        let (lower, upper) = self.bounds();
        key >= lower.as_str() && upper.as_deref().is_none_or(|u| key < u)
    }
}

/// The smallest string greater than every string that starts with `prefix`, if one exists.
/// UTF-8 keeps code point order in byte order, so bumping the last char that can be bumped
/// gives the bound.
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let mut next = c as u32 + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(n) = char::from_u32(next) {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// One entry of an object registry listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectEntry {
    /// The object's id.
    pub id: ObjectId,
    /// The name it was addressed by, for objects created with `get_by_name`.
    pub name: Option<String>,
}

/// What a commit does to an object's alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlarmChange {
    /// Leaves it as it is.
    #[default]
    Keep,
    /// Sets it to this time (epoch milliseconds).
    Set(i64),
    /// Removes it.
    Clear,
}

impl AlarmChange {
    /// The change that leaves the alarm at `at` (`None`: no alarm).
    pub fn to(at: Option<i64>) -> Self {
        at.map_or(AlarmChange::Clear, AlarmChange::Set)
    }

    /// Applies the change to an alarm.
    pub fn apply(self, alarm: &mut Option<i64>) {
        match self {
            AlarmChange::Keep => {}
            AlarmChange::Set(at) => *alarm = Some(at),
            AlarmChange::Clear => *alarm = None,
        }
    }
}

/// Set when a commit of an activation failed: every later commit of that activation is
/// refused, so a turn that built on lost writes can never become durable.
#[derive(Debug, Default)]
pub(crate) struct Fence(AtomicBool);

/// The acknowledgement of a commit, sent back to the object that submitted it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    pub(crate) seq: u64,
    pub(crate) ok: bool,
}

/// Where a commit's acknowledgement goes: the inbox of the object that submitted it.
pub(crate) trait AckSink: Send + Sync + 'static {
    fn ack(&self, ack: Ack);
}

/// The writes of one or more consecutive turns of one object, to be applied atomically.
///
/// A backend must apply batches of the same object in the order it received them, and must
/// call [`complete`](Self::complete) exactly once per batch (dropping a batch completes it
/// as failed). Batches of different objects may be grouped into one transaction.
pub struct CommitBatch {
    /// The object written.
    pub object: ObjectRef,
    /// Delete every key, the alarm and the registry entry before applying `writes`.
    pub clear: bool,
    /// Puts (`Some`) and deletes (`None`), at most one per key.
    pub writes: Vec<(String, Option<Value>)>,
    /// What the turns did to the alarm.
    pub alarm: AlarmChange,
    /// Ensure the object is in the registry, with this name if it has one.
    pub register: Option<Option<Arc<str>>>,
    /// The durability the writer must give this batch.
    pub durability: Durability,
    pub(crate) fence: Arc<Fence>,
    pub(crate) ack: Option<(u64, Arc<dyn AckSink>)>,
}

impl std::fmt::Debug for CommitBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitBatch")
            .field("object", &self.object)
            .field("clear", &self.clear)
            .field("writes", &self.writes.len())
            .field("alarm", &self.alarm)
            .field("durability", &self.durability)
            .finish()
    }
}

impl CommitBatch {
    /// Whether an earlier batch of the same activation failed: such a batch must not be
    /// applied; complete it with an error.
    pub fn is_fenced(&self) -> bool {
        self.fence.0.load(Ordering::Acquire)
    }

    /// Reports the outcome to the object. A failure fences every later batch of the same
    /// activation.
    pub fn complete(mut self, result: Result<()>) {
        self.finish(result.is_ok());
    }

    /// Fences the activation now, before the failure is reported.
    pub(crate) fn fence_now(&self) {
        self.fence.0.store(true, Ordering::Release);
    }

    fn finish(&mut self, ok: bool) {
        if !ok {
            self.fence.0.store(true, Ordering::Release);
        }
        if let Some((seq, tx)) = self.ack.take() {
            tx.ack(Ack { seq, ok });
        }
    }
}

impl Drop for CommitBatch {
    fn drop(&mut self) {
        if self.ack.is_some() {
            self.finish(false);
        }
    }
}

/// A place to keep objects' data. Implemented by the memory and SQLite backends and by
/// [`FaultyBackend`]; every implementation must pass the conformance
/// suite in `tests/conformance.rs`.
///
/// Reads are synchronous and expected to be fast (a memory lookup or a cached SQLite page);
/// commits are asynchronous: [`submit`](Self::submit) queues and returns at once.
pub trait Backend: Send + Sync + 'static {
    /// The committed value of `key`.
    fn get(&self, obj: &ObjectRef, key: &str) -> Result<Option<Value>>;
    /// The committed entries in a range, ordered as the options say.
    fn list(&self, obj: &ObjectRef, opts: &ListOptions) -> Result<Vec<(String, Value)>>;
    /// Up to `limit` committed entries of an object, in any order (a whole small object is
    /// read this way when it activates). By default, [`list`](Self::list).
    fn load(&self, obj: &ObjectRef, limit: usize) -> Result<Vec<(String, Value)>> {
        self.list(
            obj,
            &ListOptions {
                limit: Some(limit),
                ..ListOptions::default()
            },
        )
    }
    /// The committed alarm of an object (epoch milliseconds).
    fn get_alarm(&self, obj: &ObjectRef) -> Result<Option<i64>>;
    /// Every committed alarm of a class.
    fn alarms(&self, class: &'static str) -> Result<Vec<(ObjectId, i64)>>;
    /// The classes that have at least one committed alarm, each once.
    fn alarm_classes(&self) -> Result<Vec<String>>;
    /// The registry: objects of a class with an id greater than `after`, by id, at most `limit`.
    fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectEntry>>;
    /// The registry by name: named objects of a class whose name starts with `prefix`, with
    /// a name greater than `after`, ordered by name, at most `limit`.
    fn objects_by_name(
        &self,
        class: &'static str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectEntry>>;
    /// The registered name of an object, if it has one.
    fn object_name(&self, obj: &ObjectRef) -> Result<Option<String>>;
    /// Queues a batch; the backend completes it once it is durable (or failed).
    fn submit(&self, batch: CommitBatch);
    /// Blocks until every batch submitted before the call is completed.
    fn flush(&self) -> Result<()>;
    /// Flushes, then lets go of the store: the runtime shuts down and another may open the
    /// same data (the SQLite backend releases its directory lock). Later calls may fail.
    /// By default, [`flush`](Self::flush).
    fn close(&self) -> Result<()> {
        self.flush()
    }
}

/// Hands completed commit groups from a writer thread to a task on the tokio runtime, so
/// that waking the objects happens on a worker thread (a cheap local wake-up) rather than
/// from outside the runtime (a remote wake-up and often a futex call per object).
pub(crate) struct Completer {
    tx: Option<mpsc::UnboundedSender<Completion>>,
}

pub(crate) enum Completion {
    Group(Vec<CommitBatch>, bool),
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl Completer {
    /// A completer on the current tokio runtime, or one that completes inline without one.
    pub(crate) fn new() -> Self {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Completer { tx: None };
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Completion>();
        handle.spawn(async move {
            while let Some(c) = rx.recv().await {
                complete(c);
            }
        });
        Completer { tx: Some(tx) }
    }

    /// Reports a group's outcome. A failed group is fenced at once, before the writer
    /// goes on to the next group.
    pub(crate) fn finish(&self, batches: Vec<CommitBatch>, ok: bool) {
        if !ok {
            for b in &batches {
                b.fence_now();
            }
        }
        self.send(Completion::Group(batches, ok));
    }

    /// Answers `done` once every group reported before it is completed.
    pub(crate) fn flush(&self, done: std::sync::mpsc::SyncSender<()>) {
        self.send(Completion::Flush(done));
    }

    fn send(&self, c: Completion) {
        match &self.tx {
            Some(tx) => {
                if let Err(mpsc::error::SendError(c)) = tx.send(c) {
                    complete(c);
                }
            }
            None => complete(c),
        }
    }
}

fn complete(c: Completion) {
    match c {
        Completion::Group(batches, ok) => {
            for b in batches {
                b.complete(if ok { Ok(()) } else { Err(Error::Reset) });
            }
        }
        Completion::Flush(done) => {
            let _ = done.send(());
        }
    }
}

pub(crate) fn unavailable(what: &'static str) -> Error {
    Error::storage(std::io::Error::other(what))
}

pub use fault::FaultyBackend;
pub use memory::MemoryBackend;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteBackend, SqliteOptions};
