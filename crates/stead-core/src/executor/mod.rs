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
mod socket;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::oneshot;

use crate::context::{Context, ReplySlot};
use crate::error::{Error, Result};
use crate::object::{Handler, Message};

pub use namespace::{NamedPage, Namespace, ObjectPage, Stub};
pub(crate) use namespace::{NamespaceDyn, NsInner};
pub(crate) use socket::SocketEvent;

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
            let answer = obj.respond(msg, ctx).await;
            if let Some(value) = answer
                && let Some(slot) = ctx.reply.take()
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
    /// An event of one of the object's WebSockets: a turn with no caller.
    Socket(SocketEvent),
}

impl<O> Envelope<O> {
    fn fail(self, err: Error) {
        match self {
            Envelope::Call(c) => c.fail(err),
            Envelope::Alarm { reply, .. } => {
                let _ = reply.send(AlarmOutcome::Failed);
            }
            Envelope::Socket(event) => {
                tracing::debug!(socket = event.socket().id(), error = %err, "a WebSocket event was not delivered");
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
