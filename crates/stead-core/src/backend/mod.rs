//! Storage backends: where objects' key-value data, alarms and the object registry live.
//!
//! The runtime talks to a backend through the [`Backend`] trait. Reads are point lookups and
//! range scans; writes arrive as [`CommitBatch`]es, one per group of turns of one object,
//! which the backend applies atomically and in submission order per object, then completes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::id::ObjectId;

#[cfg(any(test, feature = "test-util"))]
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
    /// Kept in the runtime's process memory only (a namespace on its memory backend): lost
    /// when the process exits. A commit there is a few map updates, done at once.
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
#[non_exhaustive]
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

    /// Every key.
    pub fn all() -> Self {
        ListOptions::default()
    }

    /// The same range, from `start` on (inclusive).
    pub fn start(mut self, start: impl Into<String>) -> Self {
        self.start = Some(start.into());
        self
    }

    /// The same range, before `end` (exclusive).
    pub fn end(mut self, end: impl Into<String>) -> Self {
        self.end = Some(end.into());
        self
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
#[non_exhaustive]
pub struct ObjectEntry {
    /// The object's id.
    pub id: ObjectId,
    /// The name it was addressed by, for objects created with `get_by_name`.
    pub name: Option<String>,
}

impl ObjectEntry {
    /// An entry of the registry.
    pub fn new(id: ObjectId, name: Option<String>) -> Self {
        ObjectEntry { id, name }
    }
}

/// One entry of a registry listing by name: an object created with `get_by_name`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct NamedObject {
    /// The object's id.
    pub id: ObjectId,
    /// Its name.
    pub name: String,
}

impl NamedObject {
    /// An entry of the registry by name.
    pub fn new(id: ObjectId, name: String) -> Self {
        NamedObject { id, name }
    }
}

/// The ownership an activation writes under, for backends that hand objects to one node at
/// a time (a lease, or a partition's epoch in a cluster). The backend gives a token to each
/// activation ([`Backend::fence_token`]); every batch of that activation carries it
/// ([`CommitBatch::fence_token`]); and the backend refuses, in the same transaction as the
/// writes, a batch whose token is no longer current. The object is then reset, and its next
/// activation writes under the current token, so that a node that lost ownership can never
/// commit over the one that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FenceToken {
    /// What the ownership covers (0 when one lease covers everything).
    pub partition: u32,
    /// The ownership's epoch: grows each time the ownership changes hands.
    pub epoch: u64,
}

impl FenceToken {
    /// A token for `partition` at `epoch`.
    pub fn new(partition: u32, epoch: u64) -> Self {
        FenceToken { partition, epoch }
    }
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

/// One activation's writes: set when a commit of it failed (every later commit of that
/// activation is refused, so a turn that built on lost writes can never become durable),
/// with the ownership it writes under.
#[derive(Debug, Default)]
pub(crate) struct Fence(AtomicBool, Option<FenceToken>);

impl Fence {
    /// The fence of an activation that writes under `token`.
    pub(crate) fn new(token: Option<FenceToken>) -> Self {
        Fence(AtomicBool::new(false), token)
    }

    pub(crate) fn token(&self) -> Option<FenceToken> {
        self.1
    }
}

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
    /// The ownership the writing activation holds, when the backend fences writers: the
    /// backend must refuse the batch, in the transaction of its writes, when the token is
    /// no longer current.
    pub fn fence_token(&self) -> Option<FenceToken> {
        self.fence.token()
    }

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
/// the fault-injecting wrapper of `stead_core::testing`; every implementation must pass the conformance suite of
/// `stead_core::testing` (the `test-util` feature).
///
/// Reads are asynchronous and must not wait for a commit in progress (another object's
/// fsync): an object activating reads its data while others commit. A read must see every
/// batch the backend has completed successfully. Commits are asynchronous too:
/// [`submit`](Self::submit) queues and returns at once, and the backend completes each batch
/// once it is durable.
///
/// The runtime holds a backend behind a pointer; every method returns a `Send` future.
pub trait Backend: Send + Sync + 'static {
    /// The committed value of `key`.
    fn get(&self, obj: &ObjectRef, key: &str)
    -> impl Future<Output = Result<Option<Value>>> + Send;
    /// The committed entries in a range, ordered as the options say.
    fn list(
        &self,
        obj: &ObjectRef,
        opts: &ListOptions,
    ) -> impl Future<Output = Result<Vec<(String, Value)>>> + Send;
    /// Up to `limit` committed entries of an object, in any order (a whole small object is
    /// read this way when it activates). By default, [`list`](Self::list).
    fn load(
        &self,
        obj: &ObjectRef,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, Value)>>> + Send {
        let opts = ListOptions {
            limit: Some(limit),
            ..ListOptions::default()
        };
        let obj = *obj;
        async move { self.list(&obj, &opts).await }
    }
    /// The committed alarm of an object (epoch milliseconds).
    fn get_alarm(&self, obj: &ObjectRef) -> impl Future<Output = Result<Option<i64>>> + Send;
    /// Committed alarms of a class, ordered by time then id: those after the cursor `after`
    /// (a `(time, id)` pair, exclusive) and due at or before `until_ms`, at most `limit`. The
    /// runtime reads only alarms that fall due soon this way, so a store with millions of
    /// alarms costs no memory until they do.
    fn due_alarms(
        &self,
        class: &'static str,
        after: Option<(i64, ObjectId)>,
        until_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(i64, ObjectId)>>> + Send;
    /// The classes that have at least one committed alarm, each once.
    fn alarm_classes(&self) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The registry: objects of a class with an id greater than `after`, by id, at most `limit`.
    fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ObjectEntry>>> + Send;
    /// The registry by name: named objects of a class whose name starts with `prefix`, with
    /// a name greater than `after`, ordered by name, at most `limit`.
    fn objects_by_name(
        &self,
        class: &'static str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<NamedObject>>> + Send;
    /// The registered name of an object, if it has one.
    fn object_name(&self, obj: &ObjectRef) -> impl Future<Output = Result<Option<String>>> + Send;
    /// The fencing token an activation of `obj` writes under, if this backend fences
    /// writers (see [`FenceToken`]). Asked once per activation; by default none.
    fn fence_token(&self, obj: &ObjectRef) -> Option<FenceToken> {
        let _ = obj;
        None
    }
    /// Whether the queue that takes `obj`'s commits holds more than the backend's bound
    /// (its store stalls, or falls behind): the runtime then refuses new messages for the
    /// object with [`Error::Overloaded`] until the queue drains, so that a stalled store
    /// never turns into memory growth. By default, never.
    fn backlogged(&self, obj: &ObjectRef) -> bool {
        let _ = obj;
        false
    }
    /// Queues a batch; the backend completes it once it is durable (or failed).
    fn submit(&self, batch: CommitBatch);
    /// Completes once every batch submitted before the call is completed.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;
    /// Flushes, then lets go of the store: the runtime shuts down and another may open the
    /// same data (the SQLite backend releases its directory lock). Later calls may fail.
    /// By default, [`flush`](Self::flush).
    fn close(&self) -> impl Future<Output = Result<()>> + Send {
        self.flush()
    }
}

impl<B: Backend> Backend for Arc<B> {
    fn get(
        &self,
        obj: &ObjectRef,
        key: &str,
    ) -> impl Future<Output = Result<Option<Value>>> + Send {
        (**self).get(obj, key)
    }
    fn list(
        &self,
        obj: &ObjectRef,
        opts: &ListOptions,
    ) -> impl Future<Output = Result<Vec<(String, Value)>>> + Send {
        (**self).list(obj, opts)
    }
    fn load(
        &self,
        obj: &ObjectRef,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, Value)>>> + Send {
        (**self).load(obj, limit)
    }
    fn get_alarm(&self, obj: &ObjectRef) -> impl Future<Output = Result<Option<i64>>> + Send {
        (**self).get_alarm(obj)
    }
    fn due_alarms(
        &self,
        class: &'static str,
        after: Option<(i64, ObjectId)>,
        until_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(i64, ObjectId)>>> + Send {
        (**self).due_alarms(class, after, until_ms, limit)
    }
    fn alarm_classes(&self) -> impl Future<Output = Result<Vec<String>>> + Send {
        (**self).alarm_classes()
    }
    fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ObjectEntry>>> + Send {
        (**self).objects(class, after, limit)
    }
    fn objects_by_name(
        &self,
        class: &'static str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<NamedObject>>> + Send {
        (**self).objects_by_name(class, prefix, after, limit)
    }
    fn object_name(&self, obj: &ObjectRef) -> impl Future<Output = Result<Option<String>>> + Send {
        (**self).object_name(obj)
    }
    fn fence_token(&self, obj: &ObjectRef) -> Option<FenceToken> {
        (**self).fence_token(obj)
    }
    fn backlogged(&self, obj: &ObjectRef) -> bool {
        (**self).backlogged(obj)
    }
    fn submit(&self, batch: CommitBatch) {
        (**self).submit(batch);
    }
    fn flush(&self) -> impl Future<Output = Result<()>> + Send {
        (**self).flush()
    }
    fn close(&self) -> impl Future<Output = Result<()>> + Send {
        (**self).close()
    }
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Backend`] behind a pointer: what the runtime holds. Implemented for every backend.
pub(crate) trait DynBackend: Send + Sync + 'static {
    fn get<'a>(&'a self, obj: &'a ObjectRef, key: &'a str) -> BoxFuture<'a, Result<Option<Value>>>;
    fn list<'a>(
        &'a self,
        obj: &'a ObjectRef,
        opts: &'a ListOptions,
    ) -> BoxFuture<'a, Result<Vec<(String, Value)>>>;
    fn load<'a>(
        &'a self,
        obj: &'a ObjectRef,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Value)>>>;
    fn get_alarm<'a>(&'a self, obj: &'a ObjectRef) -> BoxFuture<'a, Result<Option<i64>>>;
    fn due_alarms(
        &self,
        class: &'static str,
        after: Option<(i64, ObjectId)>,
        until_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(i64, ObjectId)>>>;
    fn alarm_classes(&self) -> BoxFuture<'_, Result<Vec<String>>>;
    fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ObjectEntry>>>;
    fn objects_by_name<'a>(
        &'a self,
        class: &'static str,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<NamedObject>>>;
    fn object_name<'a>(&'a self, obj: &'a ObjectRef) -> BoxFuture<'a, Result<Option<String>>>;
    fn fence_token(&self, obj: &ObjectRef) -> Option<FenceToken>;
    fn backlogged(&self, obj: &ObjectRef) -> bool;
    fn submit(&self, batch: CommitBatch);
    fn close(&self) -> BoxFuture<'_, Result<()>>;
}

impl<B: Backend> DynBackend for B {
    fn get<'a>(&'a self, obj: &'a ObjectRef, key: &'a str) -> BoxFuture<'a, Result<Option<Value>>> {
        Box::pin(Backend::get(self, obj, key))
    }
    fn list<'a>(
        &'a self,
        obj: &'a ObjectRef,
        opts: &'a ListOptions,
    ) -> BoxFuture<'a, Result<Vec<(String, Value)>>> {
        Box::pin(Backend::list(self, obj, opts))
    }
    fn load<'a>(
        &'a self,
        obj: &'a ObjectRef,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Value)>>> {
        Box::pin(Backend::load(self, obj, limit))
    }
    fn get_alarm<'a>(&'a self, obj: &'a ObjectRef) -> BoxFuture<'a, Result<Option<i64>>> {
        Box::pin(Backend::get_alarm(self, obj))
    }
    fn due_alarms(
        &self,
        class: &'static str,
        after: Option<(i64, ObjectId)>,
        until_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(i64, ObjectId)>>> {
        Box::pin(Backend::due_alarms(self, class, after, until_ms, limit))
    }
    fn alarm_classes(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(Backend::alarm_classes(self))
    }
    fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ObjectEntry>>> {
        Box::pin(Backend::objects(self, class, after, limit))
    }
    fn objects_by_name<'a>(
        &'a self,
        class: &'static str,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<NamedObject>>> {
        Box::pin(Backend::objects_by_name(self, class, prefix, after, limit))
    }
    fn object_name<'a>(&'a self, obj: &'a ObjectRef) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(Backend::object_name(self, obj))
    }
    fn fence_token(&self, obj: &ObjectRef) -> Option<FenceToken> {
        Backend::fence_token(self, obj)
    }
    fn backlogged(&self, obj: &ObjectRef) -> bool {
        Backend::backlogged(self, obj)
    }
    fn submit(&self, batch: CommitBatch) {
        Backend::submit(self, batch);
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Backend::close(self))
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
    Flush(tokio::sync::oneshot::Sender<()>),
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
    pub(crate) fn flush(&self, done: tokio::sync::oneshot::Sender<()>) {
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

pub use memory::MemoryBackend;
#[cfg(feature = "sqlite")]
pub use sqlite::{BackupReport, SqliteBackend, SqliteOptions};
