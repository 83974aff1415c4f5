//! The executor: one task per active object, a bounded mailbox, one turn at a time, the
//! output gate, and the namespaces and stubs through which objects are addressed.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::FutureExt;
use tokio::sync::{Notify, oneshot};
use tracing::Instrument;

use crate::backend::{Ack, AckSink, Durability, DynBackend, NamedObject, ObjectEntry, ObjectRef};
use crate::clock::{from_ms, lock, to_ms};
use crate::context::{Context, PendingReply, ReplySlot};
use crate::error::{Error, Result};
use crate::id::{IdHashState, ObjectId};
use crate::object::{AlarmInfo, DurableObject, Handler, Message};
use crate::runtime::Shared;
use crate::schedule::{self, ScheduledJob};
use crate::storage::{ALARM_RETRY_KEY, Storage, StorageLimits};

/// How many lock shards the table of active objects is split into.
const TABLE_SHARDS: usize = 64;
/// At most this many turns run back to back before their writes are submitted.
const MAX_TURNS_PER_BATCH: usize = 256;

/// What a delivered alarm came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlarmOutcome {
    /// Ran (or was not due any more).
    Done,
    /// Could not be delivered (the object could not activate or read its storage); the
    /// scheduler tries again later.
    Failed,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message on its way to an object, with its reply channel.
trait Call<O>: Send {
    fn call<'a>(self: Box<Self>, obj: &'a mut O, ctx: &'a mut Context) -> BoxFuture<'a, ()>;
    fn fail(self: Box<Self>, err: Error);
    fn message_type(&self) -> &'static str;
}

struct Request<M, R> {
    msg: M,
    reply: Option<oneshot::Sender<Result<R>>>,
}

impl<O, M> Call<O> for Request<M, <O as Handler<M>>::Reply>
where
    O: Handler<M>,
    M: Message,
{
    fn call<'a>(self: Box<Self>, obj: &'a mut O, ctx: &'a mut Context) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Request { msg, reply } = *self;
            ctx.reply = reply.map(|tx| Box::new(tx) as Box<dyn ReplySlot>);
            let value = obj.handle(msg, ctx).await;
            if let Some(slot) = ctx.reply.take()
                && let Ok(tx) = slot
                    .into_any()
                    .downcast::<oneshot::Sender<Result<<O as Handler<M>>::Reply>>>()
            {
                ctx.queue_reply(Box::new(move |gate| {
                    let _ = tx.send(gate.map(|()| value));
                }));
            }
        })
    }

    fn fail(self: Box<Self>, err: Error) {
        if let Some(tx) = self.reply {
            let _ = tx.send(Err(err));
        }
    }

    fn message_type(&self) -> &'static str {
        std::any::type_name::<M>()
    }
}

enum Envelope<O> {
    Call(Box<dyn Call<O>>),
    Alarm {
        reply: oneshot::Sender<AlarmOutcome>,
    },
}

impl<O> Envelope<O> {
    fn fail(self, err: Error) {
        match self {
            Envelope::Call(c) => c.fail(err),
            Envelope::Alarm { reply, .. } => {
                let _ = reply.send(AlarmOutcome::Failed);
            }
        }
    }
}

/// An object's inbox and its controls, shared between its task and the runtime. Messages
/// are pushed only under the table lock, so an object can leave the table only with an empty
/// inbox.
pub(crate) struct Mailbox<O> {
    last_used_ms: AtomicI64,
    evict: AtomicBool,
    evicted: Mutex<Vec<oneshot::Sender<bool>>>,
    notify: Notify,
    inbox: Mutex<Inbox<O>>,
}

struct Inbox<O> {
    messages: VecDeque<Envelope<O>>,
    /// Acks the task has not seen yet: it counts its outstanding commits with them.
    acks: Vec<Ack>,
    /// The task found the inbox empty and sleeps: the next push must wake it. While the task
    /// runs it reads the inbox again before it sleeps, so pushes then need not notify.
    waiting: bool,
    /// The sleeping task waits for acks (to finish a reset, or to stop): acks must wake it.
    /// Otherwise an ack does not: it releases the replies it covers itself (see `gate`), and
    /// the task reads it whenever it next runs.
    wants_acks: bool,
    /// The output gate: replies held with the seq of the write each waits for, in seq order.
    /// The ack that covers a reply sends it where the ack arrives, so that a reply costs no
    /// extra run of the object's task.
    gate: VecDeque<(u64, PendingReply)>,
    /// The highest seq acknowledged.
    acked: u64,
    /// A commit failed and the object has not reset yet: held replies have failed, and
    /// replies put behind the gate until the reset fail at once.
    failed: bool,
    /// Acks sending released replies right now, outside the lock. Meanwhile a reply is not
    /// sent ahead of them, even if its write is acknowledged: it goes behind the gate, and
    /// they send it after theirs (replies and `after_commit` calls keep turn order).
    releasing: usize,
}

/// Replies to send once the inbox lock is released (a reply may run code that sends to
/// this very object).
type Released = Vec<(PendingReply, Result<()>)>;

impl<O> Inbox<O> {
    /// Puts a turn's reply behind the gate, or releases it if its write is already
    /// acknowledged (or lost).
    fn hold(&mut self, seq: u64, reply: PendingReply, out: &mut Released) {
        if self.failed {
            out.push((reply, Err(Error::Reset)));
        } else if seq <= self.acked && self.releasing == 0 {
            out.push((reply, Ok(())));
        } else {
            self.gate.push_back((seq, reply));
        }
    }

    /// Takes the held replies the acknowledged seq already covers.
    fn covered(&mut self, out: &mut Released) {
        while self.gate.front().is_some_and(|(s, _)| *s <= self.acked) {
            if let Some((_, reply)) = self.gate.pop_front() {
                out.push((reply, Ok(())));
            }
        }
    }

    /// Releases what `ack` covers: every reply up to its seq, or all of them with an error
    /// when the commit failed.
    fn release(&mut self, ack: &Ack, out: &mut Released) {
        if self.failed {
            return;
        }
        if ack.ok {
            self.acked = self.acked.max(ack.seq);
            self.covered(out);
        } else {
            self.failed = true;
            out.extend(self.gate.drain(..).map(|(_, r)| (r, Err(Error::Reset))));
        }
    }
}

fn send_released(released: Released) {
    for (reply, result) in released {
        reply(result);
    }
}

impl<O: DurableObject> AckSink for Mailbox<O> {
    fn ack(&self, ack: Ack) {
        let mut released = Vec::new();
        let wake = {
            let mut inbox = lock(&self.inbox);
            inbox.release(&ack, &mut released);
            if !released.is_empty() {
                inbox.releasing += 1;
            }
            inbox.acks.push(ack);
            let wake = inbox.waiting && (inbox.wants_acks || !ack.ok);
            if wake {
                inbox.waiting = false;
            }
            wake
        };
        if wake {
            self.notify.notify_one();
        }
        while !released.is_empty() {
            send_released(std::mem::take(&mut released));
            // Replies held meanwhile behind these went to the gate: send them too, in order.
            // (After a failure the gate stays empty: there is nothing to cover.)
            let mut inbox = lock(&self.inbox);
            inbox.covered(&mut released);
            if released.is_empty() {
                inbox.releasing -= 1;
            }
        }
    }
}

/// One lock shard of the table of active objects.
type TableShard<O> = Mutex<HashMap<ObjectId, Arc<Mailbox<O>>, IdHashState>>;

pub(crate) trait NamespaceDyn: Send + Sync + 'static {
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
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
}

pub(crate) struct NsInner<O: DurableObject> {
    shared: Arc<Shared>,
    env: Arc<O::Env>,
    backend: Arc<dyn DynBackend>,
    durability: Durability,
    table: Box<[TableShard<O>]>,
    metrics: HotMetrics,
}

/// Metric handles of the hot path, registered once per namespace rather than looked up on
/// every turn.
struct HotMetrics {
    turns: metrics::Counter,
    turn_seconds: metrics::Histogram,
    mailbox_depth: metrics::Histogram,
    /// A moving average of turn length in nanoseconds (each turn weighs 1/16), for the
    /// `Retry-After` of an overloaded object.
    turn_nanos: AtomicU64,
}

impl HotMetrics {
    fn record_turn(&self, took: std::time::Duration) {
        self.turns.increment(1);
        self.turn_seconds.record(took.as_secs_f64());
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.turn_nanos.load(Ordering::Relaxed);
        let new = old - old / 16 + sample / 16;
        self.turn_nanos.store(new, Ordering::Relaxed);
    }

    /// About how long a mailbox `depth` deep takes to drain: the hint an overloaded caller
    /// gets, between 1 ms and 5 s.
    fn drain_time(&self, depth: usize) -> std::time::Duration {
        let nanos = self
            .turn_nanos
            .load(Ordering::Relaxed)
            .saturating_mul(depth as u64);
        std::time::Duration::from_nanos(nanos).clamp(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_secs(5),
        )
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
                turns: metrics::counter!("stead_turns_total", "class" => O::CLASS),
                turn_seconds: metrics::histogram!("stead_turn_seconds", "class" => O::CLASS),
                mailbox_depth: metrics::histogram!("stead_mailbox_depth", "class" => O::CLASS),
                turn_nanos: AtomicU64::new(0),
            },
        }
    }

    fn shard(&self, id: &ObjectId) -> &TableShard<O> {
        &self.table[id.as_bytes()[31] as usize % TABLE_SHARDS]
    }

    /// Hands an envelope to the object's task, activating it if needed.
    fn send(
        self: &Arc<Self>,
        id: ObjectId,
        name: &Option<Arc<str>>,
        env: Envelope<O>,
    ) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            env.fail(Error::ShuttingDown);
            return Err(Error::ShuttingDown);
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
                    inbox: Mutex::new(Inbox {
                        messages: VecDeque::new(),
                        acks: Vec::new(),
                        waiting: false,
                        wants_acks: false,
                        gate: VecDeque::new(),
                        acked: 0,
                        failed: false,
                        releasing: 0,
                    }),
                });
                let actor = Actor::new(self.clone(), id, name.clone(), mailbox.clone());
                self.shared.object_started();
                tokio::spawn(actor.run());
                v.insert(mailbox)
            }
        };
        let mut inbox = lock(&mailbox.inbox);
        let depth = inbox.messages.len();
        if depth >= self.shared.config.mailbox_capacity {
            drop(inbox);
            metrics::counter!("stead_overloaded_total", "class" => O::CLASS).increment(1);
            let retry_after = self.metrics.drain_time(depth);
            let err = || Error::Overloaded {
                class: O::CLASS,
                retry_after,
            };
            env.fail(err());
            return Err(err());
        }
        inbox.messages.push_back(env);
        let wake = std::mem::take(&mut inbox.waiting);
        drop(inbox);
        self.metrics.mailbox_depth.record(depth as f64);
        if wake {
            mailbox.notify.notify_one();
        }
        Ok(())
    }
}

impl<O: DurableObject> NamespaceDyn for NsInner<O> {
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
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
}

fn request_evict<O>(mailbox: &Mailbox<O>) -> oneshot::Receiver<bool> {
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

/// The task of one active object.
struct Actor<O: DurableObject> {
    ns: Arc<NsInner<O>>,
    id: ObjectId,
    mailbox: Arc<Mailbox<O>>,
    instance: Option<O>,
    ctx: Context,
    name_known: bool,
    /// Replies of this run's turns for the output gate, with the seq of the write each
    /// waits for; they move to the inbox's gate before their batch is submitted.
    held: Vec<(u64, PendingReply)>,
    next_seq: u64,
    last_write: u64,
    outstanding: usize,
    /// A commit failed: take no messages until every outstanding commit has answered.
    resetting: bool,
}

impl<O: DurableObject> Actor<O> {
    fn new(
        ns: Arc<NsInner<O>>,
        id: ObjectId,
        name: Option<Arc<str>>,
        mailbox: Arc<Mailbox<O>>,
    ) -> Self {
        let shared = &ns.shared;
        let obj = ObjectRef {
            class: O::CLASS,
            id,
        };
        let limits = StorageLimits {
            max_value_bytes: shared.config.max_value_bytes,
            cache_bytes: shared.config.cache_bytes_per_object,
        };
        let storage = Storage::new(obj, name.clone(), ns.backend.clone(), ns.durability, limits);
        let ctx = Context {
            id,
            name: name.clone(),
            class: O::CLASS,
            storage,
            clock: shared.clock.clone(),
            reply: None,
            replies: Vec::new(),
            deferred: Arc::new(AtomicUsize::new(0)),
            closed: shared.closed.clone(),
        };
        Actor {
            name_known: name.is_some(),
            ns,
            id,
            mailbox,
            instance: None,
            ctx,
            held: Vec::new(),
            next_seq: 1,
            last_write: 0,
            outstanding: 0,
            resetting: false,
        }
    }

    async fn run(mut self) {
        let mut messages: VecDeque<Envelope<O>> = VecDeque::new();
        let mut acks: Vec<Ack> = Vec::new();
        loop {
            if self.resetting && self.outstanding == 0 {
                self.ctx.storage.reset();
                self.resetting = false;
                // Nothing is pending any more: later replies need not wait.
                let mut inbox = lock(&self.mailbox.inbox);
                inbox.failed = false;
                inbox.acked = inbox.acked.max(self.last_write);
            }
            {
                let mut inbox = lock(&self.mailbox.inbox);
                std::mem::swap(&mut acks, &mut inbox.acks);
                // Messages are taken only once every ack is seen: a failed commit must reset
                // the object before it runs another turn.
                if acks.is_empty() && !self.resetting && !inbox.messages.is_empty() {
                    if inbox.messages.len() <= MAX_TURNS_PER_BATCH {
                        std::mem::swap(&mut messages, &mut inbox.messages);
                    } else {
                        messages.extend(inbox.messages.drain(..MAX_TURNS_PER_BATCH));
                    }
                }
            }
            if !acks.is_empty() {
                for ack in acks.drain(..) {
                    self.on_ack(ack);
                }
                continue;
            }
            if !messages.is_empty() {
                self.mailbox
                    .last_used_ms
                    .store(to_ms(self.ns.shared.clock.now()), Ordering::Relaxed);
                self.decline_eviction();
                // Boxed so that the task of an idle object stays small: a turn's futures
                // live only while it runs.
                Box::pin(self.process_all(&mut messages)).await;
                if messages.capacity() > 64 {
                    messages = VecDeque::new();
                }
                self.submit();
                continue;
            }
            let stopping = self.ns.shared.closed.load(Ordering::Acquire);
            if (stopping || self.mailbox.evict.load(Ordering::Acquire)) && self.try_leave(stopping)
            {
                break;
            }
            {
                // Sleep only on an inbox seen empty under its lock, and say so: the next push
                // (or ack, when acks are awaited) then notifies (a permit stored before the
                // wait wakes it at once). Messages wait out a reset only while commits are
                // outstanding (their acks will wake this); once none are, the loop's top
                // resets and takes them. Stopping waits for every outstanding commit. A failed
                // commit is taken at once, before the task sleeps.
                let can_take = !self.resetting || self.outstanding == 0;
                let wants_acks = self.resetting || (stopping && self.outstanding > 0);
                let mut inbox = lock(&self.mailbox.inbox);
                if ((wants_acks || inbox.failed) && !inbox.acks.is_empty())
                    || (can_take && !inbox.messages.is_empty())
                {
                    continue;
                }
                inbox.waiting = true;
                inbox.wants_acks = wants_acks;
            }
            self.mailbox.notify.notified().await;
        }
    }

    /// Leaves the table if the object is idle; returns whether it did.
    fn try_leave(&mut self, stopping: bool) -> bool {
        let busy = self.outstanding > 0
            || self.resetting
            || (!stopping && self.ctx.deferred.load(Ordering::Acquire) > 0);
        if busy {
            if !stopping {
                self.decline_eviction();
            }
            return false;
        }
        // The instance goes first: the moment the table forgets this object, a new message
        // may start another activation, and two instances must never be alive at once. If
        // a message slips in meanwhile, it activates the object again from its storage
        // (every write is acknowledged, so that is exact).
        self.instance = None;
        let mut table = lock(self.ns.shard(&self.id));
        if !lock(&self.mailbox.inbox).messages.is_empty() {
            return false;
        }
        table.remove(&self.id);
        drop(table);
        // Counted out before anyone hears that it left.
        self.ns.shared.object_stopped();
        for tx in lock(&self.mailbox.evicted).drain(..) {
            let _ = tx.send(true);
        }
        true
    }

    fn decline_eviction(&self) {
        if self.mailbox.evict.swap(false, Ordering::AcqRel) {
            for tx in lock(&self.mailbox.evicted).drain(..) {
                let _ = tx.send(false);
            }
        }
    }

    async fn process_all(&mut self, messages: &mut VecDeque<Envelope<O>>) {
        for env in messages.drain(..) {
            self.process(env).await;
        }
    }

    async fn process(&mut self, env: Envelope<O>) {
        if self.instance.is_none()
            && let Err(e) = self.activate().await
        {
            env.fail(e);
            return;
        }
        let Some(instance) = self.instance.as_mut() else {
            env.fail(Error::Reset);
            return;
        };
        match env {
            Envelope::Call(call) => {
                let span = tracing::debug_span!("turn", class = O::CLASS, id = %self.id, message = call.message_type());
                let started = Instant::now();
                let turn = AssertUnwindSafe(call.call(instance, &mut self.ctx)).catch_unwind();
                let result = turn.instrument(span).await;
                self.ns.metrics.record_turn(started.elapsed());
                match result {
                    Ok(()) => self.end_turn().await,
                    Err(panic) => self.panicked(panic),
                }
            }
            Envelope::Alarm { reply } => self.run_alarm(reply).await,
        }
    }

    async fn activate(&mut self) -> Result<()> {
        self.ctx.storage.claim_fence_token();
        if !self.name_known {
            let obj = ObjectRef {
                class: O::CLASS,
                id: self.id,
            };
            if let Some(name) = self.ns.backend.object_name(&obj).await? {
                let name: Arc<str> = Arc::from(name);
                self.ctx.name = Some(name.clone());
                self.ctx.storage.set_name(Some(name));
            }
            self.name_known = true;
        }
        let started = Instant::now();
        let env = self.ns.env.clone();
        let result = AssertUnwindSafe(O::activate(&mut self.ctx, env))
            .catch_unwind()
            .await;
        metrics::histogram!("stead_activation_seconds", "class" => O::CLASS)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(obj)) => {
                self.instance = Some(obj);
                self.end_turn().await;
                Ok(())
            }
            Ok(Err(e)) => {
                self.ctx.storage.rollback();
                self.ctx.replies.clear();
                Err(e)
            }
            Err(panic) => {
                self.ctx.storage.rollback();
                self.ctx.replies.clear();
                Err(Error::Panicked {
                    message: panic_message(&panic),
                })
            }
        }
    }

    /// Closes a successful turn: recomputes the alarm if needed, folds the writes into the
    /// outgoing batch, and puts the turn's replies behind the output gate.
    async fn end_turn(&mut self) {
        if self.ctx.storage.alarm_inputs_changed()
            && let Err(e) = self.recompute_alarm().await
        {
            self.ctx.storage.rollback();
            // The turn's own reply gets the error itself; replies it completed for earlier
            // callers learn that their turn was discarded.
            let mut err = Some(e);
            for r in self.ctx.replies.drain(..).rev() {
                r(Err(err.take().unwrap_or(Error::Reset)));
            }
            return;
        }
        let seq = self.next_seq;
        let end = self.ctx.storage.end_turn(seq);
        if end.wrote {
            self.next_seq += 1;
            self.last_write = seq;
        }
        if let Some(alarm) = end.alarm {
            self.ns.shared.alarms.set(O::CLASS, self.id, alarm);
        }
        // Replies go through the gate even when their write is acknowledged already, so that
        // they never pass replies an ack is still sending.
        for reply in self.ctx.replies.drain(..) {
            self.held.push((self.last_write, reply));
        }
    }

    async fn recompute_alarm(&mut self) -> Result<()> {
        let user = self.ctx.storage.user_alarm_ms().await?;
        let jobs = schedule::load(&mut self.ctx.storage).await?;
        let effective = match (user, schedule::earliest(&jobs)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.ctx.storage.set_effective_alarm(effective).await
    }

    /// A handler panicked: its writes are discarded, its caller told, and the in-memory
    /// object dropped; the next message activates it again from storage. Earlier turns are
    /// unaffected.
    fn panicked(&mut self, panic: Box<dyn Any + Send>) {
        let message = panic_message(&panic);
        tracing::error!(class = O::CLASS, id = %self.id, %message, "handler panicked; object reset");
        metrics::counter!("stead_panics_total", "class" => O::CLASS).increment(1);
        self.ctx.storage.rollback();
        self.ctx.replies.clear();
        if let Some(slot) = self.ctx.reply.take() {
            slot.fail(Error::Panicked { message });
        }
        self.instance = None;
    }

    fn submit(&mut self) {
        self.hold_replies();
        if self.resetting {
            return;
        }
        self.flush_writes();
    }

    /// Moves this run's held replies behind the inbox's gate, where acks release them. It
    /// comes before their batch is submitted, so that its ack finds them there.
    fn hold_replies(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut released = Vec::new();
        {
            let mut inbox = lock(&self.mailbox.inbox);
            for (seq, reply) in self.held.drain(..) {
                inbox.hold(seq, reply, &mut released);
            }
        }
        send_released(released);
    }

    /// Submits every pending write, if there are any.
    fn flush_writes(&mut self) {
        self.hold_replies();
        if let Some(batch) = self.ctx.storage.take_batch(self.mailbox.clone()) {
            self.outstanding += 1;
            self.ns.backend.submit(batch);
        }
    }

    fn on_ack(&mut self, ack: Ack) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if self.resetting {
            return;
        }
        if ack.ok {
            if let Some(alarm) = self.ctx.storage.acked(ack.seq) {
                self.ns.shared.alarms.durable(O::CLASS, self.id, alarm);
            }
        } else {
            // The ack itself failed every reply held behind the gate.
            tracing::warn!(class = O::CLASS, id = %self.id, "commit failed; object reset");
            self.instance = None;
            self.resetting = true;
        }
    }

    /// Delivers what is due: the user's alarm and each due job, every one in a turn of its
    /// own (a failure retries that one alone, with its own backoff, kept in storage).
    async fn run_alarm(&mut self, reply: oneshot::Sender<AlarmOutcome>) {
        let now_ms = to_ms(self.ctx.clock.now());
        let due = match self.due_at(now_ms).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(class = O::CLASS, id = %self.id, error = %e, "could not read the alarm");
                let _ = reply.send(AlarmOutcome::Failed);
                return;
            }
        };
        if let Some(first) = due.iter().map(|d| d.at_ms).min() {
            metrics::histogram!("stead_alarm_lag_seconds", "class" => O::CLASS)
                .record((now_ms - first).max(0) as f64 / 1000.0);
        }
        for item in due {
            if self.instance.is_none()
                && let Err(e) = self.activate().await
            {
                tracing::warn!(class = O::CLASS, id = %self.id, error = %e, "could not activate the object for its alarm");
                let _ = reply.send(AlarmOutcome::Failed);
                return;
            }
            if let Err(e) = self.run_due(item.what, now_ms).await {
                tracing::error!(class = O::CLASS, id = %self.id, error = %e, "could not read the alarm");
                let _ = reply.send(AlarmOutcome::Failed);
                return;
            }
        }
        // The next delivery, whatever the turns did to the alarm.
        match self.ctx.storage.effective_alarm().await {
            Ok(next) => self.ns.shared.alarms.set(O::CLASS, self.id, next),
            Err(e) => {
                tracing::error!(class = O::CLASS, id = %self.id, error = %e, "could not read the alarm");
                let _ = reply.send(AlarmOutcome::Failed);
                return;
            }
        }
        // Answered once the turns' writes are durable.
        self.ctx.queue_reply(Box::new(move |_| {
            let _ = reply.send(AlarmOutcome::Done);
        }));
        self.end_turn().await;
    }

    /// What is due at `now_ms`, earliest first: the user's alarm and every due job.
    async fn due_at(&mut self, now_ms: i64) -> Result<Vec<DueItem>> {
        let storage = &mut self.ctx.storage;
        let mut due = Vec::new();
        if let Some(at) = storage.user_alarm_ms().await?.filter(|t| *t <= now_ms) {
            due.push(DueItem {
                at_ms: at,
                what: Due::Alarm,
            });
        }
        for (name, rec) in schedule::load(storage).await? {
            if rec.next_ms <= now_ms {
                due.push(DueItem {
                    at_ms: rec.next_ms,
                    what: Due::Job(name),
                });
            }
        }
        due.sort_by_key(|d| d.at_ms);
        Ok(due)
    }

    /// Runs one due item as a turn. It is read again first: an earlier item's turn may
    /// have changed or removed it. `Err` only when storage could not be read.
    async fn run_due(&mut self, what: Due, now_ms: i64) -> Result<()> {
        let Some(instance) = self.instance.as_mut() else {
            return Err(Error::Reset);
        };
        let ctx = &mut self.ctx;
        let max_retries = self.ns.shared.config.alarm_max_retries;
        let (result, retry, label) = match &what {
            Due::Alarm => {
                let Some(at) = ctx.storage.user_alarm_ms().await?.filter(|t| *t <= now_ms) else {
                    return Ok(());
                };
                let state: AlarmRetry =
                    ctx.storage
                        .get_internal(ALARM_RETRY_KEY)
                        .await?
                        .unwrap_or(AlarmRetry {
                            retry: 0,
                            scheduled_at_ms: at,
                        });
                // Cleared before the call: the handler sets a new one to repeat.
                ctx.storage.delete_alarm();
                let info = AlarmInfo {
                    scheduled_at: from_ms(state.scheduled_at_ms),
                    retry_count: state.retry,
                };
                let span = tracing::debug_span!("alarm", class = O::CLASS, id = %self.id, retry = state.retry);
                let run = AssertUnwindSafe(instance.alarm(ctx, info)).catch_unwind();
                (run.instrument(span).await, state.retry, "alarm".to_owned())
            }
            Due::Job(name) => {
                let Some(rec) = ctx
                    .storage
                    .get_internal::<schedule::JobRecord>(&schedule::key(name))
                    .await?
                    .filter(|r| r.next_ms <= now_ms)
                else {
                    return Ok(());
                };
                // Moved on before the call, so the handler may cancel or replace the job.
                schedule::advance(&mut ctx.storage, name, &rec, now_ms)?;
                let job = ScheduledJob {
                    name: name.clone(),
                    kind: rec.kind.clone(),
                    scheduled_at: from_ms(rec.slot_ms()),
                    retry_count: rec.retry,
                };
                let span = tracing::debug_span!("scheduled_job", class = O::CLASS, id = %self.id, job = %name, retry = rec.retry);
                let run = AssertUnwindSafe(instance.on_schedule(ctx, job)).catch_unwind();
                (
                    run.instrument(span).await,
                    rec.retry,
                    format!("job {name:?}"),
                )
            }
        };
        let error = match result {
            Ok(Ok(())) => {
                self.end_turn().await;
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => {
                self.instance = None;
                panic_message(&panic)
            }
        };
        // The failed turn leaves nothing behind but its retry, recorded in a turn of its own.
        self.ctx.storage.rollback();
        self.ctx.replies.clear();
        metrics::counter!("stead_alarm_failures_total", "class" => O::CLASS).increment(1);
        let storage = &mut self.ctx.storage;
        if retry < max_retries {
            tracing::warn!(class = O::CLASS, id = %self.id, what = %label, retry, %error, "failed; will retry");
            let backoff = self
                .ns
                .shared
                .config
                .alarm_first_retry
                .saturating_mul(2u32.saturating_pow(retry.min(30)));
            let retry_at =
                now_ms.saturating_add(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX));
            match &what {
                Due::Alarm => {
                    let scheduled_at_ms = storage
                        .get_internal::<AlarmRetry>(ALARM_RETRY_KEY)
                        .await?
                        .map_or(storage.user_alarm_ms().await?.unwrap_or(now_ms), |r| {
                            r.scheduled_at_ms
                        });
                    storage.set_alarm_ms(retry_at)?;
                    storage.put_internal(
                        ALARM_RETRY_KEY.to_owned(),
                        &AlarmRetry {
                            retry: retry + 1,
                            scheduled_at_ms,
                        },
                    )?;
                }
                Due::Job(name) => {
                    if let Some(rec) = storage
                        .get_internal::<schedule::JobRecord>(&schedule::key(name))
                        .await?
                    {
                        schedule::retry_later(storage, name, &rec, retry_at)?;
                    }
                }
            }
        } else {
            tracing::error!(class = O::CLASS, id = %self.id, what = %label, retries = retry, %error, "failed for the last time; dropped");
            metrics::counter!("stead_alarms_dropped_total", "class" => O::CLASS).increment(1);
            match &what {
                Due::Alarm => storage.delete_alarm(),
                Due::Job(name) => {
                    if let Some(rec) = storage
                        .get_internal::<schedule::JobRecord>(&schedule::key(name))
                        .await?
                    {
                        schedule::advance(storage, name, &rec, now_ms)?;
                    }
                }
            }
        }
        self.end_turn().await;
        Ok(())
    }
}

/// A user alarm that failed: how often, and when it was first due.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct AlarmRetry {
    retry: u32,
    scheduled_at_ms: i64,
}

/// One thing due at an alarm delivery.
struct DueItem {
    at_ms: i64,
    what: Due,
}

enum Due {
    Alarm,
    Job(String),
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
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
        }
    }

    /// A stub for the object called `name`; inside it, [`Context::name`] returns the name.
    pub fn get_by_name(&self, name: &str) -> Stub<O> {
        Stub {
            ns: self.inner.clone(),
            id: self.id_from_name(name),
            name: Some(Arc::from(name)),
            timeout: None,
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
}

impl<O: DurableObject> Clone for Stub<O> {
    fn clone(&self) -> Self {
        Stub {
            ns: self.ns.clone(),
            id: self.id,
            name: self.name.clone(),
            timeout: self.timeout,
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
        let (tx, rx) = oneshot::channel();
        let request: Request<M, <O as Handler<M>>::Reply> = Request {
            msg,
            reply: Some(tx),
        };
        self.ns
            .send(self.id, &self.name, Envelope::Call(Box::new(request)))?;
        let shared = &self.ns.shared;
        let timeout = self.timeout.unwrap_or(shared.config.ask_timeout);
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
        let request: Request<M, <O as Handler<M>>::Reply> = Request { msg, reply: None };
        self.ns
            .send(self.id, &self.name, Envelope::Call(Box::new(request)))
    }
}
