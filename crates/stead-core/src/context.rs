//! What a handler sees of its object and turn: identity, storage, time, deferred replies.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::executor::ReplyTx;
use crate::id::ObjectId;
use crate::schedule::Schedules;
use crate::sql::Sql;
use crate::storage::Storage;
use crate::websocket::{Frame, SocketShared, SocketTable, WebSocket, WebSocketMessage};

/// A reply waiting for the output gate: called with `Ok` once the turn that produced it is
/// durable, or with the error that reset the object.
pub(crate) type PendingReply = Box<dyn FnOnce(Result<()>) + Send>;

/// The type-erased reply channel of the message being handled.
pub(crate) trait ReplySlot: Send {
    fn fail(self: Box<Self>, err: Error);
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl<T: Send + 'static> ReplySlot for ReplyTx<Result<T>> {
    fn fail(self: Box<Self>, err: Error) {
        let _ = self.send(Err(err));
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// The handle a handler gets on its object for the length of a turn.
pub struct Context {
    pub(crate) id: ObjectId,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) class: &'static str,
    pub(crate) storage: Storage,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) reply: Option<Box<dyn ReplySlot>>,
    pub(crate) replies: Vec<PendingReply>,
    pub(crate) deferred: Arc<Parked>,
    /// The sockets the runtime holds for the namespace's objects.
    pub(crate) sockets: Arc<SocketTable>,
    /// What this turn sends to sockets, delivered once its writes are durable.
    pub(crate) sends: Vec<(Arc<SocketShared>, Frame)>,
    /// Attachments this turn replaced, with the value each had before: a failed turn puts
    /// them back.
    pub(crate) attachments_before: Vec<(Arc<SocketShared>, Box<str>)>,
}

/// The replies an object holds parked: how many, and the runtime's shutdown flag (a reply
/// still parked when it shuts down fails with [`Error::ShuttingDown`]).
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) count: AtomicUsize,
    pub(crate) closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("class", &self.class)
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

impl Context {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The name the object was addressed by, for objects created by name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The object's class.
    pub fn class(&self) -> &'static str {
        self.class
    }

    /// The object's durable storage.
    pub fn storage(&mut self) -> &mut Storage {
        &mut self.storage
    }

    /// The object's SQL database (SQLite's dialect), in this turn's transaction.
    pub fn sql(&mut self) -> Sql<'_> {
        Sql {
            storage: &mut self.storage,
        }
    }

    /// The object's named jobs (one-shot, interval, cron), run by its `on_schedule` handler.
    pub fn schedules(&mut self) -> Schedules<'_> {
        let now = self.clock.now();
        Schedules::new(&mut self.storage, now)
    }

    /// The current time, from the runtime's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The reply slot of the message being handled, as a [`Deferred`] of the handler's own
    /// reply type (the type the runtime made the slot with: see
    /// [`crate::DeferredHandler`]). For a message sent with `tell` the handle is detached.
    pub(crate) fn take_reply<T: Send + 'static>(&mut self) -> Deferred<T> {
        let tx = self
            .reply
            .take()
            .and_then(|slot| slot.into_any().downcast::<ReplyTx<Result<T>>>().ok())
            .map(|tx| *tx);
        self.deferred.count.fetch_add(1, Ordering::AcqRel);
        Deferred {
            tx,
            parked: self.deferred.clone(),
        }
    }

    /// Runs `f` once this turn's writes are durable, in turn order with the replies the
    /// output gate holds (so before any reply of a later turn is seen). It never runs if the
    /// turn fails or its writes are lost. Use it to publish committed state outside the
    /// object, for example a value that readers in this process may take without a turn.
    ///
    /// ```
    /// use stead_core::{Context, DurableObject, Handler, Result};
    /// use std::sync::{Arc, atomic::{AtomicI64, Ordering}};
    ///
    /// struct Gauge {
    ///     /// The last committed value, for anyone in the process to read without a turn.
    ///     published: Arc<AtomicI64>,
    /// }
    ///
    /// impl DurableObject for Gauge {
    ///     const CLASS: &'static str = "gauge";
    ///     type Env = AtomicI64;
    ///     async fn activate(_ctx: &mut Context, env: Arc<AtomicI64>) -> Result<Self> {
    ///         Ok(Gauge { published: env })
    ///     }
    /// }
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Set(i64);
    ///
    /// impl Handler<Set> for Gauge {
    ///     type Reply = Result<()>;
    ///     async fn handle(&mut self, Set(v): Set, ctx: &mut Context) -> Result<()> {
    ///         ctx.storage().put("v", &v)?;
    ///         let published = self.published.clone();
    ///         ctx.after_commit(move || published.store(v, Ordering::Release));
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.queue_reply(Box::new(move |gate| {
            if gate.is_ok() {
                f();
            }
        }));
    }

    pub(crate) fn queue_reply(&mut self, reply: PendingReply) {
        self.replies.push(reply);
    }

    /// The object's open WebSockets (those with `tag`, if given), in the order they were
    /// accepted, with their tags and attachments. They are listed while the object is out
    /// of memory too: the runtime holds them.
    pub fn websockets(&self, tag: Option<&str>) -> Vec<WebSocket> {
        self.sockets.get(&self.id).map_or_else(Vec::new, |hub| {
            hub.list(tag)
                .into_iter()
                .map(|shared| WebSocket { shared })
                .collect()
        })
    }

    /// Sends `msg` to every open socket of the object (with `tag`, if given) once this
    /// turn's writes are durable, as [`WebSocket::send`] does for one; returns to how many.
    /// The message is encoded once for all of them.
    pub fn broadcast(&mut self, tag: Option<&str>, msg: impl Into<WebSocketMessage>) -> usize {
        let Some(hub) = self.sockets.get(&self.id) else {
            return 0;
        };
        let frame = msg.into().into_frame();
        let sockets = hub.list(tag);
        let n = sockets.len();
        self.sends
            .extend(sockets.into_iter().map(|s| (s, frame.clone())));
        n
    }

    /// Makes the runtime answer the text message `request` with `response` on every socket
    /// of this object, without a turn and without activating the object (a keep-alive
    /// `ping` from a browser, say). It holds while the object has sockets, also out of
    /// memory. Takes effect at once. (Protocol pings are always answered by the runtime.)
    pub fn set_websocket_auto_response(
        &mut self,
        request: impl Into<String>,
        response: impl Into<String>,
    ) {
        let pair = (
            request.into().into_boxed_str(),
            bytes::Bytes::from(response.into()),
        );
        self.sockets.set_auto_response(self.id, Some(pair));
    }

    /// Removes the auto-response set with
    /// [`set_websocket_auto_response`](Self::set_websocket_auto_response).
    pub fn clear_websocket_auto_response(&mut self) {
        self.sockets.set_auto_response(self.id, None);
    }

    /// Puts this turn's socket sends behind the output gate, in one delivery.
    pub(crate) fn queue_sends(&mut self) {
        if self.sends.is_empty() {
            return;
        }
        let sends = std::mem::take(&mut self.sends);
        self.queue_reply(Box::new(move |gate| {
            if gate.is_ok() {
                for (socket, frame) in sends {
                    socket.deliver(frame);
                }
            }
        }));
    }

    /// Forgets what a failed turn would have sent or answered (its callers learn of the
    /// failure when their reply is dropped), and puts back the attachments it replaced.
    pub(crate) fn discard_outputs(&mut self) {
        self.replies.clear();
        self.sends.clear();
        for (socket, before) in self.attachments_before.drain(..).rev() {
            socket.set_attachment(before);
        }
    }

    /// Whether this turn completed replies, sent or replaced an attachment so far.
    pub(crate) fn has_outputs(&self) -> bool {
        !self.replies.is_empty() || !self.sends.is_empty() || !self.attachments_before.is_empty()
    }

    /// The turn succeeded: the attachments it replaced stay.
    pub(crate) fn keep_attachments(&mut self) {
        self.attachments_before.clear();
    }
}

/// The reply of a message handled by a [`crate::DeferredHandler`]. Completing it (in the
/// same turn or a later one) sends the value once that turn is durable (the output gate applies as to any reply). Dropping it fails the
/// caller with [`Error::Reset`] (with [`Error::ShuttingDown`] once the runtime shuts down).
pub struct Deferred<T> {
    tx: Option<ReplyTx<Result<T>>>,
    parked: Arc<Parked>,
}

impl<T: Send + 'static> std::fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T: Send + 'static> Deferred<T> {
    /// Answers the parked caller with `value`, once the current turn is durable.
    pub fn complete(mut self, ctx: &mut Context, value: T) {
        if let Some(tx) = self.tx.take() {
            ctx.queue_reply(Box::new(move |gate| {
                let _ = tx.send(gate.map(|()| value));
            }));
        }
    }

    /// Answers the parked caller with an error, once the current turn is durable.
    pub fn fail(mut self, ctx: &mut Context, err: Error) {
        if let Some(tx) = self.tx.take() {
            ctx.queue_reply(Box::new(move |gate| {
                let _ = tx.send(gate.and(Err(err)));
            }));
        }
    }

    /// Whether nobody waits for the answer any more (the caller gave up, or it was a `tell`).
    pub fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(|tx| tx.is_closed())
    }
}

impl<T> Drop for Deferred<T> {
    fn drop(&mut self) {
        self.parked.count.fetch_sub(1, Ordering::AcqRel);
        if let Some(tx) = self.tx.take() {
            let err = if self.parked.closed.load(Ordering::Acquire) {
                Error::ShuttingDown
            } else {
                Error::Reset
            };
            let _ = tx.send(Err(err));
        }
    }
}
