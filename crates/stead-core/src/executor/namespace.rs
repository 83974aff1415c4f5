//! The table of active objects of a class, and the public handles on it: `Namespace` and
//! `Stub`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use crate::backend::{Durability, DynBackend, NamedObject, ObjectEntry, ObjectRef};
use crate::clock::{lock, to_ms};
use crate::error::{Error, Result};
use crate::id::{IdHashState, ObjectId};
use crate::object::{DurableObject, Handler, Message};
use crate::shared::Shared;
use crate::websocket::SocketTable;

use super::actor::Actor;
use super::mailbox::{CommitTiming, Inbox, Mailbox, TurnPace};
use super::reply::{NoReply, ReplyRx};
use super::{AlarmOutcome, BoxFuture, Envelope, Request, TABLE_SHARDS};

/// The `Retry-After` of a message refused because the store's commit queue is backlogged.
const BACKLOG_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// One lock shard of the table of active objects.
type TableShard<O> = Mutex<HashMap<ObjectId, Arc<Mailbox<O>>, IdHashState>>;

/// An idle object taken from its inbox, for its caller to run one turn of it: the object,
/// the (successful) acks that came while it slept, and the envelope of the turn.
pub(super) struct Taken<O: DurableObject> {
    pub(super) actor: Box<Actor<O>>,
    pub(super) acks: Vec<crate::backend::Ack>,
    pub(super) env: Envelope<O>,
}

pub(crate) trait NamespaceDyn: Send + Sync + 'static {
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// Runs a call forwarded from another node of the cluster (see [`crate::remote`]).
    fn serve_peer(self: Arc<Self>, call: crate::PeerCall) -> BoxFuture<'static, crate::PeerReply>;
    fn deliver_alarm(self: Arc<Self>, id: ObjectId) -> BoxFuture<'static, AlarmOutcome>;
    /// Asks every object idle since before `cutoff_ms` to leave memory; the receivers say
    /// whether each did.
    fn evict_idle(&self, cutoff_ms: i64) -> Vec<oneshot::Receiver<bool>>;
    fn last_used(&self, out: &mut Vec<(i64, ObjectId)>);
    fn evict(&self, id: ObjectId) -> Option<oneshot::Receiver<bool>>;
    fn stop_all(&self);
    fn active(&self) -> usize;
    /// The backend the namespace's objects live in.
    fn backend(&self) -> Arc<dyn DynBackend>;
    /// Closes every WebSocket of the namespace's objects as the runtime shuts down.
    fn stop_sockets(&self);
    /// Accepts a WebSocket another node relays to one of its objects, when this node owns
    /// it (503 otherwise: the relay asks again).
    #[cfg(feature = "http")]
    fn accept_peer_socket(
        self: Arc<Self>,
        open: crate::http::PeerSocketOpen,
        upgrade: axum::extract::ws::WebSocketUpgrade,
    ) -> Result<axum::response::Response>;
    /// Closes with 1012 the WebSockets of the objects `leaving` selects (they move to
    /// another node of the cluster), and resolves once their close turns have run and
    /// those objects have left memory.
    fn hand_over_sockets(self: Arc<Self>, leaving: crate::Leaving) -> BoxFuture<'static, ()>;
    /// The class of the namespace's objects.
    fn class(&self) -> &'static str;
    /// The turns its objects have run since the runtime started.
    fn turns(&self) -> u64;
    /// Commits timed so far, and their latency summed in nanoseconds.
    fn commit_latency(&self) -> (u64, u64);
    /// The WebSockets its objects hold open.
    fn open_websockets(&self) -> usize;
    /// The names of its objects that start with `prefix`, in order, at most `limit`.
    fn find(
        self: Arc<Self>,
        prefix: String,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<String>>>;
    /// The object `name` as a document (see [`Stub::export`]).
    fn export_named(
        self: Arc<Self>,
        name: String,
    ) -> BoxFuture<'static, Result<crate::ObjectDocument>>;
    /// Replaces what the object `name` holds with `doc` (see [`Stub::import`]).
    fn import_named(
        self: Arc<Self>,
        name: String,
        doc: crate::ObjectDocument,
    ) -> BoxFuture<'static, Result<()>>;
    /// How many objects of the class hold something, counted up to `up_to` (one more means
    /// "more than that").
    fn count(self: Arc<Self>, up_to: usize) -> BoxFuture<'static, Result<usize>>;
    /// A read-only statement on the SQL database of the object `name` (see [`Stub::query`]).
    fn query_named(
        self: Arc<Self>,
        name: String,
        sql: String,
        params: crate::Params,
        writes: bool,
    ) -> BoxFuture<'static, Result<crate::Cursor>>;
}

pub(crate) struct NsInner<O: DurableObject> {
    pub(crate) shared: Arc<Shared>,
    pub(super) env: Arc<O::Env>,
    pub(super) backend: Arc<dyn DynBackend>,
    pub(super) durability: Durability,
    pub(super) table: Box<[TableShard<O>]>,
    pub(super) metrics: HotMetrics,
    /// The WebSockets held for the namespace's objects (in or out of memory).
    pub(crate) sockets: Arc<SocketTable>,
    /// The messages other nodes of a cluster may send its objects.
    pub(crate) remote: crate::remote::Remote<O>,
}

/// Metric handles of the hot path, registered once per namespace rather than looked up on
/// every turn.
pub(super) struct HotMetrics {
    /// Turns run, for the runtime's own figures (the inspector's turns per second).
    turn_count: std::sync::atomic::AtomicU64,
    /// Commits timed by the namespace's objects (see [`CommitTiming`]).
    commit_timing: Arc<CommitTiming>,
    turns: metrics::Counter,
    turn_seconds: metrics::Histogram,
    mailbox_depth: metrics::Histogram,
}

impl HotMetrics {
    pub(super) fn record_turn(&self, took: std::time::Duration) {
        self.turn_count.fetch_add(1, Ordering::Relaxed);
        self.turns.increment(1);
        self.turn_seconds.record(took.as_secs_f64());
    }
}

impl<O: DurableObject> NsInner<O> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        env: Arc<O::Env>,
        backend: Arc<dyn DynBackend>,
        durability: Durability,
    ) -> Self {
        NsInner {
            shared,
            env,
            backend,
            durability,
            table: (0..TABLE_SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            metrics: HotMetrics {
                turn_count: std::sync::atomic::AtomicU64::new(0),
                commit_timing: Arc::default(),
                turns: metrics::counter!("stead_turns_total", "class" => O::CLASS),
                turn_seconds: metrics::histogram!("stead_turn_seconds", "class" => O::CLASS),
                mailbox_depth: metrics::histogram!("stead_mailbox_depth", "class" => O::CLASS),
            },
            sockets: Arc::default(),
            remote: crate::remote::Remote::built(),
        }
    }

    pub(super) fn shard(&self, id: &ObjectId) -> &TableShard<O> {
        &self.table[id.as_bytes()[31] as usize % TABLE_SHARDS]
    }

    /// Hands an envelope to the object's task, activating it if needed; a refused envelope
    /// is failed with the error.
    pub(super) fn send(
        self: &Arc<Self>,
        id: ObjectId,
        name: &Option<Arc<str>>,
        env: Envelope<O>,
    ) -> Result<()> {
        self.try_send(id, name, env, false)
            .map(|_| ())
            .map_err(|(err, env)| self.refused(err, env))
    }

    /// Hands an envelope to the object, or, when the object is idle (its task asleep with
    /// nothing to do, its inbox empty), takes the object for the caller to run the turn in
    /// its own task ([`Actor::run_inline`]); a refused envelope is failed with the error.
    pub(super) fn send_or_take(
        self: &Arc<Self>,
        id: ObjectId,
        name: &Option<Arc<str>>,
        env: Envelope<O>,
    ) -> Result<Option<Taken<O>>> {
        let take = self.shared.config.inline_turns;
        self.try_send(id, name, env, take)
            .map_err(|(err, env)| self.refused(err, env))
    }

    /// Fails a refused envelope with the error its caller gets.
    fn refused(&self, err: Error, env: Envelope<O>) -> Error {
        let again = match &err {
            Error::Overloaded { class, retry_after } => Error::Overloaded {
                class,
                retry_after: *retry_after,
            },
            _ => Error::ShuttingDown,
        };
        env.fail(again);
        err
    }

    /// Hands an envelope to the object, waiting while its mailbox is full (on real time:
    /// this is backpressure, not the object's time); a refused envelope comes back with the
    /// error.
    pub(super) async fn send_waiting(
        self: &Arc<Self>,
        id: ObjectId,
        name: &Option<Arc<str>>,
        mut env: Envelope<O>,
    ) -> Result<(), (Error, Envelope<O>)> {
        loop {
            match self.try_send(id, name, env, false) {
                Err((Error::Overloaded { retry_after, .. }, back)) => {
                    tokio::time::sleep(retry_after).await;
                    env = back;
                }
                sent => return sent.map(|_| ()),
            }
        }
    }

    /// Like `send`, but a refused envelope comes back with the error (`Overloaded` or
    /// `ShuttingDown`), for the caller to try again. With `take`, an idle object is taken
    /// instead, for the caller to run the turn (see [`send_or_take`](Self::send_or_take)).
    pub(super) fn try_send(
        self: &Arc<Self>,
        id: ObjectId,
        name: &Option<Arc<str>>,
        env: Envelope<O>,
        take: bool,
    ) -> Result<Option<Taken<O>>, (Error, Envelope<O>)> {
        // As the runtime shuts down, the close turns of its sockets still run (until it
        // stops waiting for them); nothing else does. Only then is the envelope looked at.
        if self.shared.closed.load(Ordering::Acquire)
            && (!matches!(env, Envelope::Socket(super::SocketEvent::Close(..), _))
                || self.shared.sockets.is_done())
        {
            return Err((Error::ShuttingDown, env));
        }
        if self.backend.backlogged(&ObjectRef {
            class: O::CLASS,
            id,
        }) {
            metrics::counter!("stead_overloaded_total", "class" => O::CLASS).increment(1);
            let err = Error::Overloaded {
                class: O::CLASS,
                retry_after: BACKLOG_RETRY_AFTER,
            };
            return Err((err, env));
        }
        let table = &mut *lock(self.shard(&id));
        let mailbox = match table.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mailbox = Arc::new(Mailbox {
                    last_used_ms: AtomicI64::new(to_ms(self.shared.clock.now())),
                    evict: AtomicBool::new(false),
                    evicted: Mutex::new(Vec::new()),
                    notify: Notify::new(),
                    inbox: Mutex::new(Inbox::new()),
                    pace: TurnPace::default(),
                    commit_timing: self.metrics.commit_timing.clone(),
                });
                let actor = Box::new(Actor::new(self.clone(), id, name.clone(), mailbox.clone()));
                self.shared.object_started();
                tokio::spawn(Actor::run(actor));
                v.insert(mailbox)
            }
        };
        let mut inbox = lock(&mailbox.inbox);
        // An idle object is taken for the caller to run the turn (the runtime is not
        // stopping: that was refused above).
        if take && let Some((actor, acks)) = inbox.take_idle(mailbox.evict.load(Ordering::Acquire))
        {
            return Ok(Some(Taken { actor, acks, env }));
        }
        let depth = inbox.messages.len();
        if depth >= self.shared.config.mailbox_capacity {
            drop(inbox);
            metrics::counter!("stead_overloaded_total", "class" => O::CLASS).increment(1);
            let retry_after = mailbox.pace.drain_time(depth);
            let err = Error::Overloaded {
                class: O::CLASS,
                retry_after,
            };
            return Err((err, env));
        }
        inbox.messages.push_back(env);
        let wake = std::mem::take(&mut inbox.waiting);
        drop(inbox);
        self.metrics.mailbox_depth.record(depth as f64);
        if wake {
            mailbox.notify.notify_one();
        }
        Ok(None)
    }
}

impl<O: DurableObject> NamespaceDyn for NsInner<O> {
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn serve_peer(self: Arc<Self>, call: crate::PeerCall) -> BoxFuture<'static, crate::PeerReply> {
        use crate::remote::{Location, PeerReply};
        Box::pin(async move {
            let ns = Namespace::from_inner(self);
            let stub = match ns.peer_stub(call.id, call.name.as_deref()) {
                Ok(stub) => stub,
                Err(e) => return PeerReply::Failed(e),
            };
            // Only the owner runs it; another answers with the owner it knows.
            if let Some(cluster) = &ns.inner.shared.cluster {
                let obj = ObjectRef {
                    class: O::CLASS,
                    id: call.id,
                };
                match cluster.locate(&obj) {
                    Location::Here => {}
                    Location::At(owner) => {
                        return PeerReply::NotOwner {
                            owner: Some(owner.to_string()),
                        };
                    }
                    Location::Unknown => return PeerReply::NotOwner { owner: None },
                }
            }
            let Some(serve) = ns.inner.remote.serving(&call.message) else {
                return PeerReply::Failed(Error::bad_request(format!(
                    "message {} is not declared callable from another node by class {}",
                    call.message,
                    O::CLASS
                )));
            };
            match serve(stub, call.body).await {
                Ok(v) => PeerReply::Reply(v),
                Err(e) => PeerReply::Failed(e),
            }
        })
    }

    fn deliver_alarm(self: Arc<Self>, id: ObjectId) -> BoxFuture<'static, AlarmOutcome> {
        Box::pin(deliver_alarm(self, id))
    }

    fn evict_idle(&self, cutoff_ms: i64) -> Vec<oneshot::Receiver<bool>> {
        let mut out = Vec::new();
        for shard in self.table.iter() {
            for slot in lock(shard).values() {
                if slot.last_used_ms.load(Ordering::Relaxed) <= cutoff_ms {
                    out.push(request_evict(slot));
                }
            }
        }
        out
    }

    fn last_used(&self, out: &mut Vec<(i64, ObjectId)>) {
        for shard in self.table.iter() {
            for (id, slot) in lock(shard).iter() {
                out.push((slot.last_used_ms.load(Ordering::Relaxed), *id));
            }
        }
    }

    fn evict(&self, id: ObjectId) -> Option<oneshot::Receiver<bool>> {
        lock(self.shard(&id))
            .get(&id)
            .map(|slot| request_evict(slot))
    }

    fn stop_all(&self) {
        for shard in self.table.iter() {
            for slot in lock(shard).values() {
                slot.notify.notify_one();
            }
        }
    }

    fn active(&self) -> usize {
        self.table.iter().map(|s| lock(s).len()).sum()
    }

    fn backend(&self) -> Arc<dyn DynBackend> {
        self.backend.clone()
    }

    fn stop_sockets(&self) {
        self.sockets
            .stop_all(&crate::websocket::hub::Stop::Shutdown);
    }

    #[cfg(feature = "http")]
    fn accept_peer_socket(
        self: Arc<Self>,
        open: crate::http::PeerSocketOpen,
        upgrade: axum::extract::ws::WebSocketUpgrade,
    ) -> Result<axum::response::Response> {
        let stub = Namespace::from_inner(self).peer_stub(open.id, open.name.as_deref())?;
        stub.check_name()?;
        stub.accept_relayed(upgrade, open)
    }

    fn hand_over_sockets(self: Arc<Self>, leaving: crate::Leaving) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let which = |id: &ObjectId| {
                leaving(&ObjectRef {
                    class: O::CLASS,
                    id: *id,
                })
            };
            let stopped = self
                .sockets
                .stop_where(&which, &crate::websocket::hub::Stop::Moved);
            futures_util::future::join_all(stopped.iter().map(|(_, s)| s.ended())).await;
            // Their close turns were queued as the sockets ended: the objects leave once
            // those have run and committed.
            let mut ids: Vec<ObjectId> = stopped.into_iter().map(|(id, _)| id).collect();
            ids.sort_unstable();
            ids.dedup();
            let evicted = ids.into_iter().filter_map(|id| self.evict(id));
            futures_util::future::join_all(evicted).await;
        })
    }

    fn class(&self) -> &'static str {
        O::CLASS
    }

    fn turns(&self) -> u64 {
        self.metrics.turn_count.load(Ordering::Relaxed)
    }

    fn commit_latency(&self) -> (u64, u64) {
        (
            self.metrics.commit_timing.commits.load(Ordering::Relaxed),
            self.metrics.commit_timing.nanos.load(Ordering::Relaxed),
        )
    }

    fn open_websockets(&self) -> usize {
        self.sockets.open()
    }

    fn find(
        self: Arc<Self>,
        prefix: String,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<String>>> {
        Box::pin(async move {
            let page = Namespace::from_inner(self)
                .list_by_name(&prefix, None, limit)
                .await?;
            Ok(page.objects.into_iter().map(|o| o.name).collect())
        })
    }

    fn export_named(
        self: Arc<Self>,
        name: String,
    ) -> BoxFuture<'static, Result<crate::ObjectDocument>> {
        Box::pin(async move {
            Namespace::from_inner(self)
                .get_by_name(&name)
                .export()
                .await
        })
    }

    fn import_named(
        self: Arc<Self>,
        name: String,
        doc: crate::ObjectDocument,
    ) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            Namespace::from_inner(self)
                .get_by_name(&name)
                .import(&doc)
                .await
        })
    }

    fn query_named(
        self: Arc<Self>,
        name: String,
        sql: String,
        params: crate::Params,
        writes: bool,
    ) -> BoxFuture<'static, Result<crate::Cursor>> {
        Box::pin(async move {
            let stub = Namespace::from_inner(self).get_by_name(&name);
            if writes {
                stub.execute_from_outside(&sql, params).await
            } else {
                stub.query(&sql, params).await
            }
        })
    }

    fn count(self: Arc<Self>, up_to: usize) -> BoxFuture<'static, Result<usize>> {
        Box::pin(async move {
            let page = self
                .backend
                .objects(O::CLASS, None, up_to.saturating_add(1))
                .await?;
            Ok(page.len())
        })
    }
}

fn request_evict<O: DurableObject>(mailbox: &Mailbox<O>) -> oneshot::Receiver<bool> {
    let (tx, rx) = oneshot::channel();
    lock(&mailbox.evicted).push(tx);
    mailbox.evict.store(true, Ordering::Release);
    mailbox.notify.notify_one();
    rx
}

/// Delivers an alarm to object `id` of a namespace, waiting (on the runtime's clock) for
/// room in its mailbox.
pub(crate) async fn deliver_alarm<O: DurableObject>(
    ns: Arc<NsInner<O>>,
    id: ObjectId,
) -> AlarmOutcome {
    loop {
        let (tx, rx) = oneshot::channel();
        match ns.send(id, &None, Envelope::Alarm { reply: tx }) {
            Ok(()) => return rx.await.unwrap_or(AlarmOutcome::Failed),
            Err(Error::Overloaded { retry_after, .. }) => {
                let clock = &ns.shared.clock;
                let wait = chrono::Duration::from_std(retry_after).unwrap_or(chrono::Duration::MAX);
                let at = clock
                    .now()
                    .checked_add_signed(wait)
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
                clock.sleep_until(at).await;
            }
            Err(_) => return AlarmOutcome::Failed,
        }
    }
}

/// The objects of one class, with the environment they share. Cheap to clone.
pub struct Namespace<O: DurableObject> {
    inner: Arc<NsInner<O>>,
}

impl<O: DurableObject> Clone for Namespace<O> {
    fn clone(&self) -> Self {
        Namespace {
            inner: self.inner.clone(),
        }
    }
}

impl<O: DurableObject> std::fmt::Debug for Namespace<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("class", &O::CLASS)
            .finish()
    }
}

/// One page of a namespace's object registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ObjectPage {
    /// The objects, ordered by id.
    pub objects: Vec<ObjectEntry>,
    /// Pass this as the cursor to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// One page of a namespace's named objects, by name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NamedPage {
    /// The objects, ordered by name.
    pub objects: Vec<NamedObject>,
    /// Pass this as the cursor to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

impl<O: DurableObject> Namespace<O> {
    pub(crate) fn from_inner(inner: Arc<NsInner<O>>) -> Self {
        Namespace { inner }
    }

    /// The id of the object called `name`: the same on every run and machine.
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        ObjectId::from_name(O::CLASS, name)
    }

    /// A fresh random id.
    pub fn unique_id(&self) -> ObjectId {
        ObjectId::random()
    }

    /// Parses an id from its 64-hex-character form.
    pub fn id_from_string(&self, hex: &str) -> Result<ObjectId> {
        ObjectId::parse(hex)
    }

    /// A stub for the object with this id.
    pub fn get(&self, id: ObjectId) -> Stub<O> {
        Stub {
            ns: self.inner.clone(),
            id,
            name: None,
            timeout: None,
            refused: None,
        }
    }

    /// A stub for the object called `name`; inside it, [`crate::Context::name`] returns the name.
    ///
    /// The name is checked ([`crate::validate_object_name`]: 1 to 4096 bytes, no NUL): a
    /// stub for a name that breaks the rule answers every call with [`Error::BadRequest`]
    /// and never creates the object.
    pub fn get_by_name(&self, name: &str) -> Stub<O> {
        let refused = crate::validate_object_name(name).err().map(Arc::new);
        Stub {
            ns: self.inner.clone(),
            id: self.id_from_name(name),
            name: Some(Arc::from(name)),
            timeout: None,
            refused,
        }
    }

    /// Objects of this class that have stored something, ordered by id, with the names they
    /// were created by: `limit` at most, after `cursor` (a `next_cursor` from an earlier page).
    pub async fn list_objects(&self, cursor: Option<&str>, limit: usize) -> Result<ObjectPage> {
        let after = cursor.map(ObjectId::parse).transpose()?;
        let limit = limit.max(1);
        let mut objects = self
            .inner
            .backend
            .objects(O::CLASS, after, limit + 1)
            .await?;
        let next_cursor = if objects.len() > limit {
            objects.truncate(limit);
            objects.last().map(|o| o.id.to_string())
        } else {
            None
        };
        Ok(ObjectPage {
            objects,
            next_cursor,
        })
    }

    /// Named objects of this class that have stored something, whose name starts with
    /// `prefix`, ordered by name: `limit` at most, after `cursor` (a `next_cursor` from an
    /// earlier page, which is the last name of that page).
    pub async fn list_by_name(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<NamedPage> {
        let limit = limit.max(1);
        let mut objects = self
            .inner
            .backend
            .objects_by_name(O::CLASS, prefix, cursor, limit + 1)
            .await?;
        let next_cursor = if objects.len() > limit {
            objects.truncate(limit);
            objects.last().map(|o| o.name.clone())
        } else {
            None
        };
        Ok(NamedPage {
            objects,
            next_cursor,
        })
    }

    /// Sends a message (made by `msg` for each) to every one of `stubs` at once and waits
    /// for all the replies, in the order of the stubs. The caller is woken once, when every
    /// one has answered, rather than once per answer (which matters to an HTTP handler,
    /// whose every wake-up polls the server's whole stack). Fails with the first runtime
    /// error among them.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use stead_core::{Context, DurableObject, Handler, Runtime};
    /// # struct Shard;
    /// # impl DurableObject for Shard {
    /// #     const CLASS: &'static str = "shard";
    /// #     type Env = ();
    /// #     async fn activate(_: &mut Context, _: Arc<()>) -> stead_core::Result<Self> { Ok(Shard) }
    /// # }
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct Size;
    /// # impl Handler<Size> for Shard {
    /// #     type Reply = u64;
    /// #     async fn handle(&mut self, _: Size, _: &mut Context) -> u64 { 1 }
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let rt = Runtime::builder().memory().build().await?;
    /// let shards = rt.namespace::<Shard>(())?;
    /// let stubs: Vec<_> = (0..4).map(|i| shards.get_by_name(&format!("s{i}"))).collect();
    /// let sizes = shards.ask_all(&stubs, || Size).await?;
    /// assert_eq!(sizes.iter().sum::<u64>(), 4);
    /// # rt.shutdown().await }).unwrap();
    /// ```
    pub async fn ask_all<'a, M: Message>(
        &self,
        stubs: impl IntoIterator<Item = &'a Stub<O>>,
        msg: impl Fn() -> M,
    ) -> Result<Vec<<O as Handler<M>>::Reply>>
    where
        O: Handler<M>,
    {
        crate::join::join_all(stubs.into_iter().map(|stub| stub.ask(msg())))
            .await
            .into_iter()
            .collect()
    }

    /// How many objects of this class are in memory.
    pub fn active_objects(&self) -> usize {
        self.inner.active()
    }

    /// The stub another node of the cluster names: by `name` when it has one (which must
    /// give `id`), else by `id`.
    fn peer_stub(&self, id: ObjectId, name: Option<&str>) -> Result<Stub<O>> {
        let stub = match name {
            Some(name) => self.get_by_name(name),
            None => self.get(id),
        };
        if stub.id != id {
            return Err(Error::bad_request(
                "the id another node sent is not its name's",
            ));
        }
        Ok(stub)
    }

    /// Whether the runtime is a node of a cluster: a call to one of the namespace's objects
    /// may run on another node.
    pub fn in_cluster(&self) -> bool {
        self.inner.shared.cluster.is_some()
    }

    /// The shared environment.
    pub fn env(&self) -> &Arc<O::Env> {
        &self.inner.env
    }
}

/// A handle on one object: send it messages with [`ask`](Self::ask) or [`tell`](Self::tell).
/// Cheap to clone; holding one does not keep the object in memory.
pub struct Stub<O: DurableObject> {
    ns: Arc<NsInner<O>>,
    id: ObjectId,
    name: Option<Arc<str>>,
    /// Overrides the runtime's `ask_timeout`.
    timeout: Option<std::time::Duration>,
    /// Why the name is refused, for a stub made with a name that breaks the rule.
    refused: Option<Arc<crate::InvalidInput>>,
}

impl<O: DurableObject> Clone for Stub<O> {
    fn clone(&self) -> Self {
        Stub {
            ns: self.ns.clone(),
            id: self.id,
            name: self.name.clone(),
            timeout: self.timeout,
            refused: self.refused.clone(),
        }
    }
}

impl<O: DurableObject> std::fmt::Debug for Stub<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stub")
            .field("class", &O::CLASS)
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

impl<O: DurableObject> Stub<O> {
    /// Hands one of the object's socket events to it, waiting (on real time: this is
    /// backpressure on the connection, not the object's time) while its mailbox is full.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn send_socket_event(&self, event: super::SocketEvent) -> Result<()> {
        self.check_name()?;
        self.ns
            .send_waiting(self.id, &self.name, Envelope::Socket(event, 0))
            .await
            .map_err(|(e, _)| e)
    }

    /// Refuses a call through a stub whose name breaks the rule.
    pub(crate) fn check_name(&self) -> Result<()> {
        match &self.refused {
            Some(e) => Err((**e).clone().into()),
            None => Ok(()),
        }
    }

    /// The namespace's shared parts.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn inner(&self) -> &Arc<NsInner<O>> {
        &self.ns
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The name, for stubs made with [`Namespace::get_by_name`].
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The same stub with its own deadline for replies, instead of the runtime's
    /// [`ask_timeout`](crate::RuntimeConfig::ask_timeout).
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends `msg` and waits for the reply, which arrives only once the turn's writes are
    /// durable.
    ///
    /// The outer `Result` is the runtime's: [`Error::Overloaded`] at once when the mailbox is
    /// full, [`Error::Timeout`] when no reply came within the deadline (a call cycle, A asks
    /// B which asks A, ends this way: a turn must never wait on its own object),
    /// [`Error::Reset`], [`Error::ShuttingDown`]. A handler that returns a `Result` is
    /// easier to call with [`call`](Self::call).
    pub async fn ask<M: Message>(&self, msg: M) -> Result<<O as Handler<M>>::Reply>
    where
        O: Handler<M>,
    {
        self.check_name()?;
        if let Some((cluster, at)) = self.elsewhere() {
            let timeout = self.timeout.unwrap_or(self.ns.shared.config.ask_timeout);
            // Boxed: the common call never builds the forwarding future.
            let forwarded: BoxFuture<'_, Result<<O as Handler<M>>::Reply>> =
                Box::pin(crate::remote::forward(self, cluster, msg, at, timeout));
            return forwarded.await;
        }
        self.ask_here(msg).await
    }

    /// The cluster and where the object is, when it is on another node of a cluster.
    pub(crate) fn elsewhere(
        &self,
    ) -> Option<(&Arc<dyn crate::remote::Cluster>, crate::remote::Location)> {
        let cluster = self.ns.shared.cluster.as_ref()?;
        let obj = ObjectRef {
            class: O::CLASS,
            id: self.id,
        };
        let at = cluster.locate(&obj);
        (at != crate::remote::Location::Here).then_some((cluster, at))
    }

    /// [`ask`](Self::ask) on this node, wherever the cluster places the object (the name
    /// checked by the caller): a call forwarded here, or one whose object came here.
    pub(crate) async fn ask_here<M: Message>(&self, msg: M) -> Result<<O as Handler<M>>::Reply>
    where
        O: Handler<M>,
    {
        let (tx, rx) = super::reply::channel();
        let request: Request<M, <O as Handler<M>>::Reply> = Request {
            msg,
            reply: Some(tx),
        };
        if let Some(taken) =
            self.ns
                .send_or_take(self.id, &self.name, Envelope::Call(Box::new(request)))?
        {
            Actor::run_inline(taken.actor, taken.acks, taken.env).await;
        }
        self.wait(rx).await
    }

    /// Waits for a reply, within the stub's deadline.
    async fn wait<T: Send + 'static>(&self, mut rx: ReplyRx<Result<T>>) -> Result<T> {
        // A turn run in this task that wrote nothing has answered already: no deadline to
        // set.
        if let Some(reply) = rx.try_recv() {
            return reply.unwrap_or(Err(Error::Reset));
        }
        let shared = &self.ns.shared;
        let timeout = self.timeout.unwrap_or(shared.config.ask_timeout);
        if shared.clock.as_manual().is_none() {
            // Real time: a place in the runtime's deadline wheel, taken out when the reply
            // comes (no timer of its own; this is on every call's path).
            // Awaited by reference: the receiver (and so its cell) outlives the watch, whose
            // drop tells its place from a later call's by the cell's address.
            let _watch = shared.deadlines.watch(&rx, timeout);
            return match (&mut rx).await {
                Ok(reply) => reply,
                Err(NoReply::Expired) => Err(Error::Timeout),
                Err(NoReply::Dropped) => Err(Error::Reset),
            };
        }
        let deadline = shared
            .clock
            .now()
            .checked_add_signed(
                chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX),
            )
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let expired = shared.clock.sleep_until(deadline);
        tokio::select! {
            biased;
            reply = rx => reply.unwrap_or(Err(Error::Reset)),
            () = expired => Err(Error::Timeout),
        }
    }

    /// The object as a document: every entry of its storage (JSON), its alarm and its
    /// schedules, read in a turn of its own (after the turns before it, and answered once
    /// their writes are durable). Import it under the same name to restore the object, or
    /// under another to fork it ([`import`](Self::import)).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # use std::sync::Arc;
    /// # use stead_core::{Context, DurableObject, Handler, Runtime};
    /// # struct Note;
    /// # impl DurableObject for Note {
    /// #     const CLASS: &'static str = "note";
    /// #     type Env = ();
    /// #     async fn activate(_: &mut Context, _: Arc<()>) -> stead_core::Result<Self> { Ok(Note) }
    /// # }
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct Write(String);
    /// # impl Handler<Write> for Note {
    /// #     type Reply = stead_core::Result<()>;
    /// #     async fn handle(&mut self, w: Write, ctx: &mut Context) -> stead_core::Result<()> {
    /// #         ctx.storage().put("text", &w.0)
    /// #     }
    /// # }
    /// let rt = Runtime::builder().memory().build().await?;
    /// let notes = rt.namespace::<Note>(())?;
    /// notes.get_by_name("draft").call(Write("hello".into())).await?;
    /// let doc = notes.get_by_name("draft").export().await?;
    /// assert_eq!(doc.entries["text"], "hello");
    /// notes.get_by_name("copy").import(&doc).await?; // a fork
    /// # rt.shutdown().await?;
    /// # Ok::<(), stead_core::Error>(()) }).unwrap();
    /// ```
    pub async fn export(&self) -> Result<crate::ObjectDocument> {
        self.check_name()?;
        let (tx, rx) = super::reply::channel();
        self.ns
            .send(self.id, &self.name, Envelope::Export { reply: tx })?;
        let mut doc = self.wait(rx).await?;
        doc.class = O::CLASS.to_owned();
        doc.name = self.name.as_deref().map(str::to_owned);
        Ok(doc)
    }

    /// Runs one statement that only reads (`SELECT`, a read-only `PRAGMA`, `EXPLAIN`) on the
    /// object's SQL database, in a turn of the object: what an operator's console or the
    /// inspector uses to look at an object's tables from outside. A statement that could
    /// write is [`Error::BadRequest`] and does not run; the cursor carries the declared
    /// types of the columns.
    pub async fn query(
        &self,
        sql: &str,
        params: impl Into<crate::Params>,
    ) -> Result<crate::Cursor> {
        self.outside(sql, params.into(), false).await
    }

    /// A statement from outside the object, in a turn of its own.
    async fn outside(
        &self,
        sql: &str,
        params: crate::Params,
        writes: bool,
    ) -> Result<crate::Cursor> {
        self.check_name()?;
        let (tx, rx) = super::reply::channel();
        self.ns.send(
            self.id,
            &self.name,
            Envelope::Query(Box::new(super::OutsideQuery {
                sql: sql.to_owned(),
                params,
                writes,
                reply: tx,
            })),
        )?;
        self.wait(rx).await
    }

    /// Runs any statement on the object's SQL database, in a turn of the object, for an
    /// operator: it goes around the object's own code and rules (a console's write). The
    /// object in memory is dropped after it, and activates again from what it holds.
    pub(crate) async fn execute_from_outside(
        &self,
        sql: &str,
        params: crate::Params,
    ) -> Result<crate::Cursor> {
        self.outside(sql, params, true).await
    }

    /// Replaces everything the object holds with `doc` (an [`export`](Self::export) of an
    /// object of the same class, this one or another): its storage, alarm and schedules, in
    /// one turn, answered once durable. The object in memory is then dropped, and activates
    /// from what was imported on its next message. A document of another class, or with an
    /// entry no object could have written, is [`Error::BadRequest`] and changes nothing.
    pub async fn import(&self, doc: &crate::ObjectDocument) -> Result<()> {
        self.check_name()?;
        if doc.class != O::CLASS {
            return Err(Error::bad_request(format!(
                "a document of class {:?} cannot be imported into class {:?}",
                doc.class,
                O::CLASS
            )));
        }
        crate::storage::check_import(doc)?;
        let (tx, rx) = super::reply::channel();
        let doc = Box::new(doc.clone());
        self.ns
            .send(self.id, &self.name, Envelope::Import { doc, reply: tx })?;
        self.wait(rx).await
    }

    /// Sends `msg` to a handler whose reply is a `Result<T, E>` and flattens the two
    /// layers: the runtime's failures ([`Error::Overloaded`], [`Error::Timeout`],
    /// [`Error::Reset`], [`Error::ShuttingDown`], ...) arrive through `E: From<Error>`, so a
    /// caller matches one error type and can still tell them from the handler's own.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use stead_core::{Context, DurableObject, Handler, Runtime};
    /// #[derive(Debug, thiserror::Error)]
    /// enum VaultError {
    ///     #[error("the vault is empty")]
    ///     Empty,
    ///     #[error(transparent)]
    ///     Runtime(#[from] stead_core::Error),
    /// }
    ///
    /// struct Vault;
    /// impl DurableObject for Vault {
    ///     const CLASS: &'static str = "vault";
    ///     type Env = ();
    ///     async fn activate(_: &mut Context, _: Arc<()>) -> stead_core::Result<Self> { Ok(Vault) }
    /// }
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Withdraw(u64);
    /// impl Handler<Withdraw> for Vault {
    ///     type Reply = Result<u64, VaultError>;
    ///     async fn handle(&mut self, _: Withdraw, _: &mut Context) -> Result<u64, VaultError> {
    ///         Err(VaultError::Empty)
    ///     }
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let rt = Runtime::builder().memory().build().await?;
    /// let vault = rt.namespace::<Vault>(())?.get_by_name("main");
    /// match vault.call(Withdraw(10)).await {
    ///     Err(VaultError::Empty) => {}                 // the handler's own outcome
    ///     Err(VaultError::Runtime(e)) => return Err(e), // overloaded, timed out, ...
    ///     Ok(_) => unreachable!(),
    /// }
    /// # rt.shutdown().await }).unwrap();
    /// ```
    pub async fn call<M: Message, T, E>(&self, msg: M) -> Result<T, E>
    where
        O: Handler<M, Reply = Result<T, E>>,
        E: From<Error>,
    {
        self.ask(msg).await.map_err(E::from)?
    }

    /// Sends `msg` without waiting: it is handled (and its writes committed) like any other
    /// message, and the reply is dropped.
    pub fn tell<M: Message>(&self, msg: M) -> Result<()>
    where
        O: Handler<M>,
    {
        self.check_name()?;
        if let Some((cluster, at)) = self.elsewhere() {
            // Sent to the owner in the background; the reply (or failure) is dropped, as a
            // local `tell`'s is.
            let (stub, cluster) = (self.clone(), cluster.clone());
            let timeout = self.timeout.unwrap_or(self.ns.shared.config.ask_timeout);
            tokio::spawn(async move {
                let sent = crate::remote::forward(&stub, &cluster, msg, at, timeout).await;
                if let Err(e) = sent {
                    tracing::warn!(class = O::CLASS, id = %stub.id, error = %e,
                        "a message told to an object on another node was not delivered");
                }
            });
            return Ok(());
        }
        let request: Request<M, <O as Handler<M>>::Reply> = Request { msg, reply: None };
        self.ns
            .send(self.id, &self.name, Envelope::Call(Box::new(request)))
    }
}
