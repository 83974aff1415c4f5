//! The executor: one task per active object, a bounded mailbox, one turn at a time, the
//! output gate, and the namespaces and stubs through which objects are addressed.
//!
//! Its rooms: `mailbox` (the inbox and the output gate, a small state machine), `actor` (the
//! task of one object: turns, activation, commits), `alarm` (delivering what is due, each
//! item in a turn of its own), `namespace` (the table of active objects, and the public
//! `Namespace` and `Stub`).

mod actor;
mod alarm;
mod mailbox;
mod namespace;
mod reply;
mod socket;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::oneshot;

use crate::context::{Context, PendingReply, ReplySlot};
use crate::error::{Error, Result};
use crate::object::{Handler, Message, Outcome};

pub use namespace::{NamedPage, Namespace, ObjectPage, Stub};
pub(crate) use namespace::{NamespaceDyn, NsInner};
pub(crate) use reply::{Deadlines, ReplyTx, sweep_loop};
pub(crate) use socket::SocketEvent;

/// How many lock shards the table of active objects is split into.
const TABLE_SHARDS: usize = 64;
/// At most this many turns run back to back before their writes are submitted.
const MAX_TURNS_PER_BATCH: usize = 256;
/// At most this many commit batches of one object are in flight: at the cap the object takes
/// no more messages until an acknowledgement comes back, so a stalled store holds at most
/// this many batches (of at most [`MAX_TURNS_PER_BATCH`] turns) per object in memory.
const MAX_COMMITS_IN_FLIGHT: usize = 64;

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

/// What a call's turn came to: its own reply (if anyone waits for it and it answered now),
/// and whether that reply is a failure (the turn then keeps nothing).
struct Answer {
    reply: Option<PendingReply>,
    failed: bool,
}

/// A message on its way to an object, with its reply channel.
trait Call<O>: Send {
    fn call<'a>(self: Box<Self>, obj: &'a mut O, ctx: &'a mut Context) -> BoxFuture<'a, Answer>;
    fn fail(self: Box<Self>, err: Error);
    fn message_type(&self) -> &'static str;
}

struct Request<M, R> {
    msg: M,
    reply: Option<ReplyTx<Result<R>>>,
}

impl<O, M> Call<O> for Request<M, <O as Handler<M>>::Reply>
where
    O: Handler<M>,
    M: Message,
{
    fn call<'a>(self: Box<Self>, obj: &'a mut O, ctx: &'a mut Context) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let Request { msg, reply } = *self;
            ctx.reply = reply.map(|tx| Box::new(tx) as Box<dyn ReplySlot>);
            let Some(value) = obj.respond(msg, ctx).await else {
                // Deferred: answered through the handle it was given.
                return Answer {
                    reply: None,
                    failed: false,
                };
            };
            let failed = value.is_failure();
            let reply = ctx.reply.take().and_then(|slot| {
                let tx = slot
                    .into_any()
                    .downcast::<ReplyTx<Result<<O as Handler<M>>::Reply>>>()
                    .ok()?;
                Some(Box::new(move |gate: Result<()>| {
                    let _ = tx.send(gate.map(|()| value));
                }) as PendingReply)
            });
            Answer { reply, failed }
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
    /// An event of one of the object's WebSockets: a turn with no caller, with how often
    /// its delivery was tried before.
    Socket(SocketEvent, u32),
    /// Everything the object holds, as a document (a turn that reads).
    Export {
        reply: ReplyTx<Result<crate::ObjectDocument>>,
    },
    /// A SQL statement on the object's database, from outside the object: one that only
    /// reads, or (`writes`) any, for an operator.
    Query(Box<OutsideQuery>),
    /// Replace everything the object holds with a document (a turn that writes, after
    /// which the object activates again from what it holds).
    Import {
        doc: Box<crate::ObjectDocument>,
        reply: ReplyTx<Result<()>>,
    },
}

/// A statement from outside the object (boxed: a message waits in a mailbox as large as its
/// largest kind).
struct OutsideQuery {
    sql: String,
    params: crate::Params,
    writes: bool,
    reply: ReplyTx<Result<crate::Cursor>>,
}

impl<O> Envelope<O> {
    fn fail(self, err: Error) {
        match self {
            Envelope::Call(c) => c.fail(err),
            Envelope::Alarm { reply, .. } => {
                let _ = reply.send(AlarmOutcome::Failed);
            }
            Envelope::Socket(event, _) => {
                tracing::debug!(socket = event.socket().id(), error = %err, "a WebSocket event was not delivered");
            }
            Envelope::Export { reply } => {
                let _ = reply.send(Err(err));
            }
            Envelope::Query(q) => {
                let _ = q.reply.send(Err(err));
            }
            Envelope::Import { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
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
