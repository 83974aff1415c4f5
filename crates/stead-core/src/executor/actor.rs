//! The task of one active object: it takes messages in batches, runs each as a turn,
//! submits the writes, and holds the replies behind the gate.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Instant;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::backend::{Ack, ObjectRef};
use crate::clock::{earliest, lock, to_ms};
use crate::context::{Context, Parked, PendingReply};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::object::DurableObject;
use crate::schedule;
use crate::storage::{Storage, StorageLimits};

use super::mailbox::{Inbox, Mailbox, Slot, send_released};
use super::namespace::NsInner;
use super::{Answer, Envelope, MAX_COMMITS_IN_FLIGHT, MAX_TURNS_PER_BATCH, panic_message};

/// What a round of an object's task came to.
enum Step {
    /// Go round again.
    Again,
    /// Sleep until notified; whether messages may be taken, and whether acks must wake it.
    Sleep { can_take: bool, wants_acks: bool },
    /// The object left the table: the task ends.
    Left,
}

/// The task of one active object.
pub(super) struct Actor<O: DurableObject> {
    pub(super) ns: Arc<NsInner<O>>,
    pub(super) id: ObjectId,
    pub(super) mailbox: Arc<Mailbox<O>>,
    pub(super) instance: Option<O>,
    pub(super) ctx: Context,
    pub(super) name_known: bool,
    /// Replies of this run's turns for the output gate, with the seq of the write each
    /// waits for; they move to the inbox's gate before their batch is submitted.
    pub(super) held: Vec<(u64, PendingReply)>,
    pub(super) next_seq: u64,
    pub(super) last_write: u64,
    pub(super) outstanding: usize,
    /// A commit failed: take no messages until every outstanding commit has answered.
    pub(super) resetting: bool,
    /// `on_leave` ran, and no turn has run since.
    pub(super) left_cleanly: bool,
}

impl<O: DurableObject> Actor<O> {
    pub(super) fn new(
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
            sql: shared.sql_limits.clone(),
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
            deferred: Arc::new(Parked {
                count: AtomicUsize::new(0),
                closed: shared.closed.clone(),
            }),
            sockets: ns.sockets.clone(),
            sends: Vec::new(),
            attachments_before: Vec::new(),
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
            left_cleanly: false,
        }
    }

    /// The object's task: turns, acks, leaving. While it sleeps with nothing to do, the
    /// object waits in its inbox, where a caller may take it to run a turn in the caller's
    /// own task ([`run_inline`](Self::run_inline)), with no task woken for it.
    pub(super) async fn run(mut actor: Box<Self>) {
        let mailbox = actor.mailbox.clone();
        let mut messages: VecDeque<Envelope<O>> = VecDeque::new();
        let mut acks: Vec<Ack> = Vec::new();
        loop {
            let (can_take, wants_acks) = match actor.step(&mut messages, &mut acks).await {
                Step::Again => continue,
                Step::Left => return,
                Step::Sleep {
                    can_take,
                    wants_acks,
                } => (can_take, wants_acks),
            };
            {
                // Sleep only on an inbox seen empty under its lock, and say so: the next push
                // (or ack, when acks are awaited) then notifies (a permit stored before the
                // wait wakes it at once). The object stays in the inbox meanwhile.
                let mut inbox = lock(&mailbox.inbox);
                if ((wants_acks || inbox.failed) && !inbox.acks.is_empty())
                    || (can_take && !inbox.messages.is_empty())
                {
                    continue;
                }
                inbox.waiting = true;
                inbox.wants_acks = wants_acks;
                inbox.slot = Slot::Idle(actor);
            }
            actor = loop {
                mailbox.notify.notified().await;
                let slot = {
                    let mut inbox = lock(&mailbox.inbox);
                    let slot = std::mem::replace(&mut inbox.slot, Slot::Away);
                    if !matches!(slot, Slot::Away) {
                        inbox.waiting = false;
                    }
                    slot
                };
                match slot {
                    Slot::Idle(actor) => break actor,
                    Slot::Turn(turn) => break turn.await,
                    // A caller is running a turn of the object: it gives the object back,
                    // and wakes this task if there is anything for it to do.
                    Slot::Away => {}
                }
            };
        }
    }

    /// One round of the task: takes acks and messages, runs turns, submits their writes,
    /// or leaves; says whether to go round again, to sleep, or that the object left.
    async fn step(&mut self, messages: &mut VecDeque<Envelope<O>>, acks: &mut Vec<Ack>) -> Step {
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
            std::mem::swap(acks, &mut inbox.acks);
            // Messages are taken only once every ack is seen (a failed commit must reset
            // the object before it runs another turn), and only while the object has room
            // for another commit in flight: a stalled store stops its intake here, and
            // its full mailbox refuses callers with `Overloaded`.
            if acks.is_empty()
                && !self.resetting
                && self.outstanding < MAX_COMMITS_IN_FLIGHT
                && !inbox.messages.is_empty()
            {
                if inbox.messages.len() <= MAX_TURNS_PER_BATCH {
                    std::mem::swap(messages, &mut inbox.messages);
                } else {
                    messages.extend(inbox.messages.drain(..MAX_TURNS_PER_BATCH));
                }
            }
        }
        if !acks.is_empty() {
            for ack in acks.drain(..) {
                self.on_ack(ack);
            }
            return Step::Again;
        }
        if !messages.is_empty() {
            self.begin_turns();
            // Boxed so that the task of an idle object stays small: a turn's futures
            // live only while it runs.
            Box::pin(self.process_all(messages)).await;
            if messages.capacity() > 64 {
                *messages = VecDeque::new();
            }
            self.submit();
            return Step::Again;
        }
        let stopping = self.ns.shared.closed.load(Ordering::Acquire);
        if stopping || self.mailbox.evict.load(Ordering::Acquire) {
            if !self.left_cleanly && self.instance.is_some() && !self.resetting {
                // The object writes back what it keeps in fields; its commit is awaited
                // like any other before the object may leave.
                Box::pin(self.on_leave()).await;
                self.submit();
                return Step::Again;
            }
            // Waiting for on_leave's commit: leave once it is acknowledged.
            let flushing = self.left_cleanly && self.outstanding > 0 && !self.resetting;
            if !flushing && self.try_leave(stopping) {
                return Step::Left;
            }
        }
        // Messages wait out a reset only while commits are outstanding (their acks will
        // wake the task); once none are, the next round resets and takes them. Stopping
        // waits for every outstanding commit. A failed commit is taken at once, before the
        // task sleeps.
        let full = self.outstanding >= MAX_COMMITS_IN_FLIGHT;
        let leaving = self.left_cleanly && self.mailbox.evict.load(Ordering::Acquire);
        Step::Sleep {
            can_take: (!self.resetting || self.outstanding == 0) && !full,
            wants_acks: self.resetting || full || ((stopping || leaving) && self.outstanding > 0),
        }
    }

    /// Runs one turn of an idle object in the caller's task: the object was taken from its
    /// inbox with the acks that came while it slept (all of them successes; see
    /// `NsInner::try_send`). The turn is the same as on the object's task: in order (the
    /// inbox was empty), alone (the object is out of the inbox), its writes submitted and
    /// its reply held behind the output gate. A turn that cannot finish at once (it awaits a
    /// read, another object, a timer) is handed to the object's task to finish, so that the
    /// caller going away never cuts a turn short.
    pub(super) async fn run_inline(mut actor: Box<Self>, acks: Vec<Ack>, env: Envelope<O>) {
        let mailbox = actor.mailbox.clone();
        let mut turn = Box::pin(async move {
            for ack in acks {
                actor.on_ack(ack);
            }
            actor.begin_turns();
            actor.process(env).await;
            actor.submit();
            actor
        });
        // One poll, which cannot be interrupted: the caller's future is not dropped in it.
        let polled = std::future::poll_fn(|cx| Poll::Ready(turn.as_mut().poll(cx))).await;
        let slot = match polled {
            Poll::Ready(actor) => Slot::Idle(actor),
            Poll::Pending => Slot::Turn(turn),
        };
        let wake = {
            let mut inbox = lock(&mailbox.inbox);
            let wake = match &slot {
                Slot::Idle(actor) => actor.needs_task(&inbox),
                _ => true,
            };
            inbox.slot = slot;
            inbox.waiting = !wake;
            inbox.wants_acks = false;
            wake
        };
        if wake {
            mailbox.notify.notify_one();
        }
    }

    /// Marks the object used now and keeps it from leaving: turns are about to run.
    fn begin_turns(&mut self) {
        self.mailbox
            .last_used_ms
            .store(to_ms(self.ns.shared.clock.now()), Ordering::Relaxed);
        self.decline_eviction();
    }

    /// Whether the object, idle after a turn run by a caller, has anything for its task to
    /// do (messages, a failed commit, a reset, a full pipeline, leaving, stopping).
    fn needs_task(&self, inbox: &Inbox<O>) -> bool {
        !inbox.messages.is_empty()
            || inbox.failed
            || inbox.acks.iter().any(|a| !a.ok)
            || self.resetting
            || self.outstanding >= MAX_COMMITS_IN_FLIGHT
            || self.mailbox.evict.load(Ordering::Acquire)
            || self.ns.shared.closed.load(Ordering::Acquire)
    }

    /// Leaves the table if the object is idle; returns whether it did.
    pub(super) fn try_leave(&mut self, stopping: bool) -> bool {
        let busy = self.outstanding > 0
            || self.resetting
            || (!stopping && self.ctx.deferred.count.load(Ordering::Acquire) > 0);
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

    pub(super) fn decline_eviction(&self) {
        if self.mailbox.evict.swap(false, Ordering::AcqRel) {
            for tx in lock(&self.mailbox.evicted).drain(..) {
                let _ = tx.send(false);
            }
        }
    }

    pub(super) async fn process_all(&mut self, messages: &mut VecDeque<Envelope<O>>) {
        for env in messages.drain(..) {
            self.process(env).await;
        }
    }

    pub(super) async fn process(&mut self, env: Envelope<O>) {
        self.left_cleanly = false;
        // Every turn, reads included, runs only under the ownership its activation holds.
        if self.resetting || (self.instance.is_some() && !self.ctx.storage.fence_current()) {
            self.fence_moved();
            if self.resetting {
                // Commits of the old activation are still out: they fail, and so does this
                // turn, rather than read past them.
                self.refuse(env, Error::Reset);
                return;
            }
            // Nothing of the old activation is out: the turn runs on a fresh activation,
            // from durable state under the current ownership.
        }
        // Activation and the kinds of turn other than calls are boxed, so that a call's
        // turn (which a caller may run in its own task, boxed there) stays small.
        if self.instance.is_none()
            && let Err(e) = Box::pin(self.activate()).await
        {
            self.refuse(env, e);
            return;
        }
        let Some(instance) = self.instance.as_mut() else {
            self.refuse(env, Error::Reset);
            return;
        };
        match env {
            Envelope::Call(call) => {
                let span = tracing::debug_span!("turn", class = O::CLASS, id = %self.id, message = call.message_type());
                let started = Instant::now();
                let turn = AssertUnwindSafe(call.call(instance, &mut self.ctx)).catch_unwind();
                let result = turn.instrument(span).await;
                let took = started.elapsed();
                self.ns.metrics.record_turn(took);
                self.mailbox.pace.record(took);
                match result {
                    Ok(Answer {
                        reply,
                        failed: false,
                    }) => {
                        if let Some(reply) = reply {
                            self.ctx.queue_reply(reply);
                        }
                        self.end_turn().await;
                    }
                    Ok(Answer {
                        reply,
                        failed: true,
                    }) => {
                        self.discard_turn();
                        // The refusal still waits for the writes it may have read.
                        if let Some(reply) = reply {
                            self.held.push((self.last_write, reply));
                        }
                    }
                    Err(panic) => self.panicked(panic),
                }
            }
            other => Box::pin(self.process_other(other)).await,
        }
    }

    /// A turn that is not a call: an alarm, a socket event, an export, a query from
    /// outside, an import.
    async fn process_other(&mut self, env: Envelope<O>) {
        match env {
            Envelope::Call(_) => unreachable!("calls are processed inline"),
            Envelope::Alarm { reply } => self.run_alarm(reply).await,
            Envelope::Socket(event, _) => self.run_socket(event).await,
            Envelope::Export { reply } => {
                let doc = self.ctx.storage.export_document().await;
                // Held behind the writes it may have read, as any reply.
                self.ctx.queue_reply(Box::new(move |gate: Result<()>| {
                    let _ = reply.send(gate.and(doc));
                }));
                self.end_turn().await;
            }
            Envelope::Query(q) => {
                let super::OutsideQuery {
                    sql,
                    params,
                    writes,
                    reply,
                } = *q;
                let cursor = self
                    .ctx
                    .storage
                    .query_from_outside(&sql, params, writes)
                    .await;
                if cursor.is_err() {
                    self.discard_turn();
                    let _ = reply.send(cursor);
                    return;
                }
                self.ctx.queue_reply(Box::new(move |gate: Result<()>| {
                    let _ = reply.send(gate.and(cursor));
                }));
                self.end_turn().await;
                if writes {
                    // The object's fields may describe what the statement changed.
                    self.instance = None;
                }
            }
            Envelope::Import { doc, reply } => {
                if let Err(e) = self.ctx.storage.import_document(&doc) {
                    self.discard_turn();
                    let _ = reply.send(Err(e));
                    return;
                }
                self.ctx.queue_reply(Box::new(move |gate: Result<()>| {
                    let _ = reply.send(gate);
                }));
                self.end_turn().await;
                // The instance's fields describe what was replaced: it activates again,
                // from what was imported, on its next message.
                self.instance = None;
            }
        }
    }

    /// Answers a message that could not run (the object could not activate, or was reset
    /// under it). A socket event has no caller to retry it: the runtime tries it again
    /// later, as it does a failed alarm, so that every open and close reaches the object.
    pub(super) fn refuse(&self, env: Envelope<O>, err: Error) {
        match env {
            Envelope::Socket(event, tried) => {
                super::socket::retry_later(
                    &self.ns,
                    self.id,
                    self.ctx.name.clone(),
                    event,
                    tried,
                    &err,
                );
            }
            env => env.fail(err),
        }
    }

    /// Runs the object's `on_leave` as a turn; on an error or a panic its writes are
    /// discarded (the object leaves all the same).
    pub(super) async fn on_leave(&mut self) {
        self.left_cleanly = true;
        let Some(instance) = self.instance.as_mut() else {
            return;
        };
        let result = AssertUnwindSafe(instance.on_leave(&mut self.ctx))
            .catch_unwind()
            .await;
        let failure = match result {
            Ok(Ok(())) => return self.end_turn().await,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("panicked: {}", panic_message(&panic)),
        };
        tracing::warn!(class = O::CLASS, id = %self.id, error = %failure, "on_leave failed; its writes are discarded");
        self.discard_turn();
    }

    /// The activation's ownership moved on (a lease changed hands, even back to this
    /// node): the in-memory object and everything it read are dropped, and the next
    /// activation starts from durable state under the current ownership, once the old
    /// one's commits have answered.
    pub(super) fn fence_moved(&mut self) {
        if self.instance.take().is_some() {
            tracing::info!(class = O::CLASS, id = %self.id, "ownership moved; object reset");
        }
        if self.outstanding > 0 {
            self.resetting = true;
        } else {
            self.ctx.storage.reset();
        }
    }

    pub(super) async fn activate(&mut self) -> Result<()> {
        if !self.ctx.storage.fence_current() && self.outstanding > 0 {
            // Commits of the old ownership are still out: wait for them before reading.
            self.resetting = true;
            return Err(Error::Reset);
        }
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
                self.ctx.discard_outputs();
                Err(e)
            }
            Err(panic) => {
                self.ctx.storage.rollback();
                self.ctx.discard_outputs();
                Err(Error::Panicked {
                    message: panic_message(&panic),
                })
            }
        }
    }

    /// Closes a successful turn: recomputes the alarm if needed, folds the writes into the
    /// outgoing batch, and puts the turn's replies behind the output gate.
    pub(super) async fn end_turn(&mut self) {
        let alarm = if self.ctx.storage.alarm_inputs_changed() {
            Box::pin(self.recompute_alarm()).await
        } else {
            Ok(())
        };
        // The SQL transaction commits last: whatever fails before it rolls it back instead.
        if let Err(e) = alarm.and_then(|()| self.ctx.storage.commit_sql()) {
            // The turn's own reply gets the error itself; replies it completed for earlier
            // callers learn that their turn was discarded (the turn changed its alarm
            // inputs, so the discard also drops the object).
            let mut err = Some(e);
            for r in self.ctx.replies.drain(..).rev() {
                r(Err(err.take().unwrap_or(Error::Reset)));
            }
            self.discard_turn();
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
        self.ctx.queue_sends();
        self.ctx.keep_attachments();
        // Replies go through the gate even when their write is acknowledged already, so that
        // they never pass replies an ack is still sending.
        for reply in self.ctx.replies.drain(..) {
            self.held.push((self.last_write, reply));
        }
    }

    pub(super) async fn recompute_alarm(&mut self) -> Result<()> {
        let user = self.ctx.storage.user_alarm_ms().await?;
        let jobs = schedule::load(&mut self.ctx.storage).await?;
        let effective = earliest(user, schedule::earliest(&jobs));
        self.ctx.storage.set_effective_alarm(effective).await
    }

    /// A turn failed (its reply is an error, or its handler returned one): it keeps
    /// nothing. Its writes, alarm and schedule changes, sends and attachment changes are
    /// discarded, and replies it completed for earlier callers fail with `Reset`. If it had
    /// changed anything, the in-memory object is dropped as well (its fields may hold what
    /// was discarded): the next message activates it again from durable state.
    pub(super) fn discard_turn(&mut self) {
        metrics::counter!("stead_turns_discarded_total", "class" => O::CLASS).increment(1);
        let changed = self.ctx.storage.turn_changed() || self.ctx.has_outputs();
        self.ctx.storage.rollback();
        for r in self.ctx.replies.drain(..) {
            r(Err(Error::Reset));
        }
        self.ctx.discard_outputs();
        if changed {
            self.instance = None;
        }
    }

    /// A handler panicked: its writes are discarded, its caller told, and the in-memory
    /// object dropped; the next message activates it again from storage. Earlier turns are
    /// unaffected.
    pub(super) fn panicked(&mut self, panic: Box<dyn Any + Send>) {
        let message = panic_message(&panic);
        tracing::error!(class = O::CLASS, id = %self.id, %message, "handler panicked; object reset");
        metrics::counter!("stead_panics_total", "class" => O::CLASS).increment(1);
        self.ctx.storage.rollback();
        self.ctx.discard_outputs();
        if let Some(slot) = self.ctx.reply.take() {
            slot.fail(Error::Panicked { message });
        }
        self.instance = None;
    }

    pub(super) fn submit(&mut self) {
        self.hold_replies();
        if self.resetting {
            return;
        }
        self.flush_writes();
    }

    /// Moves this run's held replies behind the inbox's gate, where acks release them. It
    /// comes before their batch is submitted, so that its ack finds them there.
    pub(super) fn hold_replies(&mut self) {
        self.hold_replies_timing(None);
    }

    /// [`hold_replies`](Self::hold_replies), and, under the same lock, marks the commit of
    /// `timed` (the seq it covers) to be timed if none in flight is (one at a time is timed,
    /// from here to its ack).
    fn hold_replies_timing(&mut self, timed: Option<u64>) {
        if self.held.is_empty() && timed.is_none() {
            return;
        }
        let mut released = Vec::new();
        {
            let mut inbox = lock(&self.mailbox.inbox);
            for (seq, reply) in self.held.drain(..) {
                inbox.hold(seq, reply, &mut released);
            }
            if let Some(seq) = timed
                && inbox.timed.1 == 0
            {
                inbox.timed = (seq, self.mailbox.commit_timing.now());
            }
        }
        send_released(released);
    }

    /// Submits every pending write, if there are any.
    pub(super) fn flush_writes(&mut self) {
        let batch = self.ctx.storage.take_batch(self.mailbox.clone());
        let timed = batch
            .as_ref()
            .and_then(|b| b.ack.as_ref().map(|(seq, _)| *seq));
        self.hold_replies_timing(timed);
        if let Some(batch) = batch {
            self.outstanding += 1;
            self.ns.backend.submit(batch);
        }
    }

    pub(super) fn on_ack(&mut self, ack: Ack) {
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
}
