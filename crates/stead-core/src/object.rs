//! The traits a durable object implements.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::{Context, Deferred};
use crate::error::Result;
use crate::schedule::ScheduledJob;
use crate::websocket::{WebSocket, WebSocketClose, WebSocketMessage};

/// A class of durable objects: addressable, single-threaded, with durable storage and an
/// alarm.
///
/// ```
/// use std::sync::Arc;
/// use stead_core::{Context, DurableObject, Handler, Result};
/// use serde::{Deserialize, Serialize};
///
/// struct Counter { value: i64 }
///
/// impl DurableObject for Counter {
///     const CLASS: &'static str = "counter";
///     type Env = ();
///     async fn activate(ctx: &mut Context, _env: Arc<()>) -> Result<Self> {
///         Ok(Counter { value: ctx.storage().get("value").await?.unwrap_or(0) })
///     }
/// }
///
/// #[derive(Serialize, Deserialize)]
/// struct Add(i64);
///
/// impl Handler<Add> for Counter {
///     type Reply = Result<i64>;
///     async fn handle(&mut self, msg: Add, ctx: &mut Context) -> Result<i64> {
///         self.value += msg.0;
///         ctx.storage().put("value", &self.value)?;
///         Ok(self.value)
///     }
/// }
/// ```
pub trait DurableObject: Sized + Send + 'static {
    /// The class name: part of every id derived from a name, and of every stored row.
    /// Never change it for a class that has data.
    const CLASS: &'static str;

    /// Shared dependencies given to every activation (configuration, clients, ...).
    type Env: Send + Sync + 'static;

    /// Builds the in-memory object when it is first addressed or after eviction; may read
    /// (and write) storage. Runs as a turn of its own.
    fn activate(
        ctx: &mut Context,
        env: Arc<Self::Env>,
    ) -> impl Future<Output = Result<Self>> + Send;

    /// Runs when the alarm set with [`crate::Storage::set_alarm`] falls due. The alarm is
    /// cleared before the call (set a new one to repeat). An error or panic retries the
    /// alarm with exponential backoff.
    fn alarm(
        &mut self,
        ctx: &mut Context,
        info: AlarmInfo,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, info);
        async { Ok(()) }
    }

    /// Runs when a job of [`Context::schedules`] falls due.
    fn on_schedule(
        &mut self,
        ctx: &mut Context,
        job: ScheduledJob,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, job);
        async { Ok(()) }
    }

    /// Runs, as a turn of its own, when a WebSocket accepted for this object (see
    /// `Stub::accept_websocket`, with the `http` feature) is open, before any of its
    /// messages. What it sends (the history of a room, say) is the first the client gets.
    /// An error or panic discards the turn; the socket stays open.
    fn on_websocket_open(
        &mut self,
        ctx: &mut Context,
        socket: WebSocket,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, socket);
        async { Ok(()) }
    }

    /// Runs, as a turn, for each message a client sends on one of the object's sockets
    /// (in the order the client sent them), activating the object if it left memory. An
    /// error or panic discards the turn (its writes and sends); the socket stays open.
    fn on_websocket_message(
        &mut self,
        ctx: &mut Context,
        socket: WebSocket,
        message: WebSocketMessage,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, socket, message);
        async { Ok(()) }
    }

    /// Runs, as a turn, exactly once per socket once it has closed, whichever way: the
    /// client closed it, the connection dropped, a ping went unanswered, the object or the
    /// runtime closed it. The socket is no longer listed by [`Context::websockets`].
    fn on_websocket_close(
        &mut self,
        ctx: &mut Context,
        socket: WebSocket,
        close: WebSocketClose,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, socket, close);
        async { Ok(()) }
    }

    /// Runs, as a turn of its own, when the object is about to leave memory in an orderly
    /// way: idle eviction, the active-object cap, or shutdown. What it writes is committed
    /// before the object leaves, so its next activation reads it.
    ///
    /// For state kept in fields between writes: a namespace of
    /// [`Durability::Memory`](crate::Durability::Memory) can write back here instead of on
    /// every turn, since a crash loses its store anyway. It does not run on a crash, after a
    /// panic, or after a failed commit (which reset the object); a durable object must not
    /// rely on it to keep what it acknowledged. An error or panic discards its writes and
    /// the object leaves all the same. It runs again only after another turn has run.
    fn on_leave(&mut self, ctx: &mut Context) -> impl Future<Output = Result<()>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Declares the messages other nodes of a cluster may send to this class's objects
    /// (see [`Remote`](crate::Remote)). A call to an object another node owns is forwarded
    /// there only for a message declared here. By default, none.
    fn remote(remote: &mut crate::Remote<Self>) {
        let _ = remote;
    }
}

/// A message a durable object can receive: any serde type, so that a later cluster mode can
/// forward it. Calls within one process never serialize.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Message for T {}

/// How an object handles messages of type `M`. Each call is one turn.
///
/// A handler whose reply may have to wait for a later turn (a lock's queue, a watch)
/// implements [`DeferredHandler`] instead, which implements this trait for it.
pub trait Handler<M: Message>: DurableObject {
    /// What the caller gets back (commonly a `Result`). A reply that is a failure (an
    /// `Err`, see [`Outcome`]) discards its turn: nothing the turn wrote is kept.
    type Reply: Outcome;

    /// Handles one message. Storage writes made here commit atomically with the turn; the
    /// reply is held until they are durable.
    fn handle(&mut self, msg: M, ctx: &mut Context) -> impl Future<Output = Self::Reply> + Send;

    /// How the runtime runs a turn of `M`: the reply now, or `None` when it was handed to
    /// a [`Deferred`]. By default, [`handle`](Self::handle)'s answer, now.
    #[doc(hidden)]
    fn respond(
        &mut self,
        msg: M,
        ctx: &mut Context,
    ) -> impl Future<Output = Option<Self::Reply>> + Send {
        async move { Some(self.handle(msg, ctx).await) }
    }
}

/// How an object handles messages of type `M` whose reply may come in a later turn: the
/// handler gets the caller's reply as a [`Deferred`] typed by its own `Reply`, and completes
/// it now or keeps it (in a queue of waiters, say) to complete in a later turn. Each call is
/// one turn. Implementing this implements [`Handler`], so callers `ask` as for any message.
///
/// ```
/// use std::sync::Arc;
/// use stead_core::{Context, Deferred, DeferredHandler, DurableObject, Handler, Result};
///
/// /// Answers `Wait` once a `Ring` has come.
/// struct Bell { waiting: Vec<Deferred<String>> }
///
/// impl DurableObject for Bell {
///     const CLASS: &'static str = "bell";
///     type Env = ();
///     async fn activate(_: &mut Context, _: Arc<()>) -> Result<Self> {
///         Ok(Bell { waiting: Vec::new() })
///     }
/// }
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Wait;
///
/// impl DeferredHandler<Wait> for Bell {
///     type Reply = String;
///     async fn handle(&mut self, _: Wait, _: &mut Context, reply: Deferred<String>) {
///         self.waiting.push(reply); // answered by a later turn
///     }
/// }
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ring;
///
/// impl Handler<Ring> for Bell {
///     type Reply = usize;
///     async fn handle(&mut self, _: Ring, ctx: &mut Context) -> usize {
///         let n = self.waiting.len();
///         for reply in self.waiting.drain(..) {
///             reply.complete(ctx, "ding".to_owned());
///         }
///         n
///     }
/// }
/// ```
pub trait DeferredHandler<M: Message>: DurableObject {
    /// What the caller gets back (commonly a `Result`). The turn of a deferred handler
    /// commits whatever the reply (it may answer in a later turn); one that must discard
    /// its writes returns before making them.
    type Reply: Outcome;

    /// Handles one message; the caller is answered when `reply` is completed (in this turn
    /// or a later one, once that turn's writes are durable). Dropping `reply` unanswered
    /// fails the caller with [`crate::Error::Reset`].
    fn handle(
        &mut self,
        msg: M,
        ctx: &mut Context,
        reply: Deferred<Self::Reply>,
    ) -> impl Future<Output = ()> + Send;
}

impl<O: DeferredHandler<M>, M: Message> Handler<M> for O {
    type Reply = <O as DeferredHandler<M>>::Reply;

    /// Not called by the runtime, which calls [`DeferredHandler::handle`] (through
    /// `respond`) for such a message: there is no reply to give here.
    async fn handle(&mut self, _msg: M, _ctx: &mut Context) -> Self::Reply {
        // The runtime dispatches through `respond` alone; only a direct call comes here.
        unreachable!("a DeferredHandler answers through the reply it is given")
    }

    async fn respond(&mut self, msg: M, ctx: &mut Context) -> Option<Self::Reply> {
        let reply = ctx.take_reply::<Self::Reply>();
        DeferredHandler::handle(self, msg, ctx, reply).await;
        None
    }
}

/// What a reply says of its turn: whether it reports a failure, in which case the turn
/// keeps nothing.
///
/// The rule of the runtime: a turn whose reply is a failure commits nothing. Its storage
/// writes, alarm and schedule changes, WebSocket sends and attachment changes are
/// discarded, exactly as when the handler panics; the caller gets the reply (the `Err`) as
/// it is. If the turn had changed anything, the in-memory object is dropped too and
/// activated again from durable state by its next message, so that no field computed from
/// the discarded writes survives.
///
/// `Result<T, E>` is a failure when it is `Err`; every other reply type of the standard
/// library is never one. A reply type of your own says so with an empty `impl` (or
/// overrides [`is_failure`](Outcome::is_failure)).
///
/// A handler that must record something *and* refuse answers with an `Ok` that carries the
/// refusal (say `Ok(Decision::Denied { .. })`): an `Ok` commits.
///
/// ```
/// use stead_core::Outcome;
///
/// /// A reply that carries a refusal as a value: it always commits.
/// #[derive(Debug)]
/// enum Admission { Admitted, Refused { reason: String } }
/// impl Outcome for Admission {}
///
/// assert!(!Admission::Refused { reason: "full".into() }.is_failure());
/// assert!(Err::<(), _>("no").is_failure());
/// assert!(!Ok::<_, String>(1).is_failure());
/// ```
pub trait Outcome: Send + 'static {
    /// Whether this reply reports a failure, so that its turn must keep nothing. `false`
    /// unless overridden.
    fn is_failure(&self) -> bool {
        false
    }
}

impl<T: Send + 'static, E: Send + 'static> Outcome for Result<T, E> {
    fn is_failure(&self) -> bool {
        self.is_err()
    }
}

/// Reply types that are never failures.
macro_rules! never_failures {
    ($($t:ty),* $(,)?) => { $(impl Outcome for $t {})* };
}

never_failures!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String,
    &'static str,
    serde_json::Value,
    DateTime<Utc>,
    std::time::Duration,
    crate::id::ObjectId,
);

impl<T: Send + 'static> Outcome for Option<T> {}
impl<T: Send + 'static> Outcome for Vec<T> {}
impl<T: Send + 'static + ?Sized> Outcome for Box<T> {}
impl<T: Send + Sync + 'static + ?Sized> Outcome for Arc<T> {}
impl<K: Send + 'static, V: Send + 'static> Outcome for std::collections::BTreeMap<K, V> {}
impl<K: Send + 'static, V: Send + 'static, S: Send + 'static> Outcome
    for std::collections::HashMap<K, V, S>
{
}
impl<A: Send + 'static, B: Send + 'static> Outcome for (A, B) {}
impl<A: Send + 'static, B: Send + 'static, C: Send + 'static> Outcome for (A, B, C) {}

/// What an alarm handler is told about the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AlarmInfo {
    /// When the alarm was set to go off.
    pub scheduled_at: DateTime<Utc>,
    /// 0 on the first delivery, then 1, 2, ... on retries after failures.
    pub retry_count: u32,
}
