//! Calls across the nodes of a cluster: a call to an object another node owns travels there
//! as its serialized message, and the serialized reply comes back.
//!
//! A runtime built with a [`Cluster`] asks it where each called object lives
//! ([`Cluster::locate`]). An object of this node is called as always, without serializing
//! anything. Any other is forwarded: the message is serialized (JSON), sent to the owner
//! ([`Cluster::call`]), run there as a local call, and its reply serialized back. A node
//! that no longer owns the object answers [`PeerReply::NotOwner`] with the owner it knows;
//! the caller follows at most two such hops, then waits briefly for the placement to settle
//! (a partition changing hands) and asks again, within the call's deadline.
//!
//! Which messages may cross nodes is declared by the object's class in
//! [`DurableObject::remote`](crate::DurableObject::remote): every node of a cluster runs the
//! same build, so the same declarations. A message not declared is refused with a clear
//! error when its object is elsewhere; its reply type must be serde too.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::backend::ObjectRef;
use crate::error::{Error, Result};
use crate::executor::Stub;
use crate::id::ObjectId;
use crate::object::{DurableObject, Handler, Message};

/// Where an object lives, as the cluster sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On this node: it is called here.
    Here,
    /// On the node at this address.
    At(Arc<str>),
    /// Nobody's for the moment (its partition is changing hands): wait and ask again.
    Unknown,
}

/// The nodes of a cluster, as a runtime sees them: where objects live, and how to reach
/// the others. The PostgreSQL backend's cluster mode provides one.
pub trait Cluster: Send + Sync + 'static {
    /// Where `obj` lives now. Called on every call, so it must be cheap.
    fn locate(&self, obj: &ObjectRef) -> Location;
    /// Sends `call` to the node at `peer` and answers its reply.
    fn call(&self, peer: &str, call: PeerCall) -> BoxFuture<'static, Result<PeerReply>>;
    /// A count that grows each time this node takes objects over from others (a partition
    /// moved here): the runtime then reads the pending alarms it now owns. `None`: never.
    fn takeovers(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// The bearer token the other nodes' peer endpoints expect: a WebSocket accepted here
    /// for an object another node owns is relayed to that owner with it. `None`: such a
    /// socket is closed at once with 1013 (try again later).
    fn secret(&self) -> Option<&str> {
        None
    }
    /// Registers what the runtime does before this node gives objects up (their partition
    /// moves to another node, or the node leaves): the cluster calls `hook` with which
    /// objects leave, and waits for it before it stops serving them. The runtime closes
    /// their WebSockets with 1012 and waits (briefly) for their close turns.
    fn on_handover(&self, hook: Handover) {
        let _ = hook;
    }
}

/// Which objects are about to leave this node.
pub type Leaving = Arc<dyn Fn(&ObjectRef) -> bool + Send + Sync>;

/// What the runtime does before objects leave this node (see [`Cluster::on_handover`]).
pub type Handover = Arc<dyn Fn(Leaving) -> BoxFuture<'static, ()> + Send + Sync>;

/// A call forwarded to the node that owns the object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerCall {
    /// The object's class.
    pub class: Cow<'static, str>,
    /// The object's id.
    pub id: ObjectId,
    /// Its name, when it was called by name (the owner records it as the caller's node
    /// would).
    pub name: Option<String>,
    /// The message's type, as its class declared it.
    pub message: Cow<'static, str>,
    /// The message, serialized (JSON, kept as text: never parsed into a tree on the way).
    pub body: Box<RawValue>,
}

/// What the owner answers to a [`PeerCall`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PeerReply {
    /// The handler's reply, serialized.
    Reply(Box<RawValue>),
    /// This node does not own the object; `owner` is the node it believes does.
    NotOwner {
        /// The owner's address, if known.
        owner: Option<String>,
    },
    /// The call failed before or around the handler (the runtime's error: overloaded,
    /// reset, timed out, refused).
    Failed(Error),
}

/// Decodes a reply forwarded back, into the reply type its message was declared with.
type Decode = fn(&RawValue) -> Result<Box<dyn Any + Send>>;

/// Runs a forwarded message on a local stub and serializes its reply.
type Serve<O> = fn(Stub<O>, Box<RawValue>) -> BoxFuture<'static, Result<Box<RawValue>>>;

/// The messages of a class that may be called from another node: declared in
/// [`DurableObject::remote`](crate::DurableObject::remote).
///
/// ```
/// use std::sync::Arc;
/// use serde::{Deserialize, Serialize};
/// use stead_core::{Context, DurableObject, Handler, Remote, Result};
///
/// struct Counter(i64);
///
/// #[derive(Serialize, Deserialize)]
/// struct Add(i64);
///
/// impl DurableObject for Counter {
///     const CLASS: &'static str = "counter";
///     type Env = ();
///     async fn activate(_ctx: &mut Context, _env: Arc<()>) -> Result<Self> {
///         Ok(Counter(0))
///     }
///     fn remote(remote: &mut Remote<Self>) {
///         remote.message::<Add>();
///     }
/// }
///
/// impl Handler<Add> for Counter {
///     type Reply = Result<i64>;
///     async fn handle(&mut self, msg: Add, _ctx: &mut Context) -> Result<i64> {
///         self.0 += msg.0;
///         Ok(self.0)
///     }
/// }
/// ```
pub struct Remote<O: DurableObject> {
    send: HashMap<TypeId, (&'static str, Decode), foldhash::fast::RandomState>,
    serve: HashMap<&'static str, Serve<O>, foldhash::fast::RandomState>,
}

impl<O: DurableObject> Default for Remote<O> {
    fn default() -> Self {
        Remote {
            send: HashMap::default(),
            serve: HashMap::default(),
        }
    }
}

impl<O: DurableObject> std::fmt::Debug for Remote<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("class", &O::CLASS)
            .field("messages", &self.serve.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<O: DurableObject> Remote<O> {
    /// Declares that `M` may be sent to this class's objects from another node. Its reply
    /// type must be serde as well.
    pub fn message<M: Message>(&mut self) -> &mut Self
    where
        O: Handler<M>,
        <O as Handler<M>>::Reply: Serialize + DeserializeOwned,
    {
        let name = std::any::type_name::<M>();
        self.send.insert(TypeId::of::<M>(), (name, decode::<O, M>));
        self.serve.insert(name, serve::<O, M>);
        self
    }

    pub(crate) fn built() -> Self {
        let mut r = Remote::default();
        O::remote(&mut r);
        r
    }

    /// The declared name and reply decoder of `M`.
    pub(crate) fn sending<M: 'static>(&self) -> Option<(&'static str, Decode)> {
        self.send.get(&TypeId::of::<M>()).copied()
    }

    pub(crate) fn serving(&self, name: &str) -> Option<Serve<O>> {
        self.serve.get(name).copied()
    }
}

fn decode<O: Handler<M>, M: Message>(v: &RawValue) -> Result<Box<dyn Any + Send>>
where
    <O as Handler<M>>::Reply: DeserializeOwned,
{
    serde_json::from_str::<<O as Handler<M>>::Reply>(v.get())
        .map(|r| Box::new(r) as Box<dyn Any + Send>)
        .map_err(Error::Codec)
}

fn serve<O: Handler<M>, M: Message>(
    stub: Stub<O>,
    body: Box<RawValue>,
) -> BoxFuture<'static, Result<Box<RawValue>>>
where
    <O as Handler<M>>::Reply: Serialize,
{
    Box::pin(async move {
        stub.check_name()?;
        let msg: M = serde_json::from_str(body.get())
            .map_err(|e| Error::bad_request(format!("a forwarded message does not decode: {e}")))?;
        // Run here whatever this node's view: the owner checked it was the owner, and a
        // forwarded call is never forwarded again.
        let reply = stub.ask_here(msg).await?;
        serde_json::value::to_raw_value(&reply).map_err(Error::Codec)
    })
}

/// At most this many "not the owner, ask there" answers are followed before waiting.
const MAX_HOPS: usize = 2;

/// How long a forwarded call waits, in all, for a partition that is changing hands.
const SETTLE: Duration = Duration::from_secs(5);

/// After this long without an answer, a forwarded call starts checking where its object is.
const FIRST_CHECK: Duration = Duration::from_millis(500);

/// How often a forwarded call without an answer checks again.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// A forwarded call gives up once its object has been placed on another node than the one
/// it was sent to for this long.
const OWNER_MOVED: Duration = Duration::from_secs(1);

/// Waits for the answer of a call sent to `peer`, until `deadline`; gives up sooner, with
/// [`Error::Timeout`] (the outcome is unknown, as for any timeout), once the object has
/// been placed elsewhere for [`OWNER_MOVED`]: a peer paused or cut off past its leases
/// cannot commit the call any more (its fences refuse it), so its answer can only be a
/// failure, or never come.
async fn answer(
    cluster: &Arc<dyn Cluster>,
    obj: &ObjectRef,
    peer: &Arc<str>,
    sent: BoxFuture<'static, Result<PeerReply>>,
    deadline: tokio::time::Instant,
) -> Result<PeerReply> {
    tokio::pin!(sent);
    let first = tokio::time::Instant::now() + FIRST_CHECK;
    let check = tokio::time::sleep_until(first.min(deadline));
    tokio::pin!(check);
    let mut moved_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            reply = &mut sent => return reply,
            () = &mut check => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(Error::Timeout);
                }
                if matches!(cluster.locate(obj), Location::At(ref p) if p == peer) {
                    moved_since = None;
                } else if now.duration_since(*moved_since.get_or_insert(now)) >= OWNER_MOVED {
                    tracing::warn!(class = obj.class, id = %obj.id, %peer,
                        "a forwarded call went unanswered while its object moved to another node: given up");
                    return Err(Error::Timeout);
                }
                check.as_mut().reset((now + CHECK_EVERY).min(deadline));
            }
        }
    }
}

/// Sends `msg` for `stub`'s object to the node `at`, following the owner as it moves.
pub(crate) async fn forward<O, M>(
    stub: &Stub<O>,
    cluster: &Arc<dyn Cluster>,
    msg: M,
    mut at: Location,
    timeout: Duration,
) -> Result<<O as Handler<M>>::Reply>
where
    O: Handler<M>,
    M: Message,
{
    let ns = stub.inner();
    let Some((name, decode)) = ns.remote.sending::<M>() else {
        return Err(Error::invalid_config(format!(
            "message {} of class {} cannot be called on another node: declare it in {}'s \
             DurableObject::remote (the object is owned by another node of the cluster)",
            std::any::type_name::<M>(),
            O::CLASS,
            O::CLASS,
        )));
    };
    let obj = ObjectRef {
        class: O::CLASS,
        id: stub.id(),
    };
    let body = serde_json::value::to_raw_value(&msg).map_err(Error::Codec)?;
    let mut msg = Some(msg);
    let start = tokio::time::Instant::now();
    let limit = timeout.min(SETTLE);
    let mut hops = 0;
    loop {
        match at {
            Location::Here => {
                // The object came to this node meanwhile.
                let msg = msg.take().expect("sent once");
                return stub.ask_here(msg).await;
            }
            Location::At(peer) => {
                let call = PeerCall {
                    class: Cow::Borrowed(O::CLASS),
                    id: stub.id(),
                    name: stub.name().map(str::to_owned),
                    message: Cow::Borrowed(name),
                    body: body.clone(),
                };
                let sent = cluster.call(&peer, call);
                let reply = answer(cluster, &obj, &peer, sent, start + timeout).await?;
                match reply {
                    PeerReply::Reply(v) => {
                        let reply = decode(&v)?;
                        return Ok(*reply
                            .downcast::<<O as Handler<M>>::Reply>()
                            .expect("a message's decoder answers its reply type"));
                    }
                    PeerReply::Failed(e) => return Err(e),
                    PeerReply::NotOwner { owner } if hops < MAX_HOPS => {
                        hops += 1;
                        at = match owner {
                            Some(o) if *o != *peer => Location::At(o.into()),
                            _ => Location::Unknown,
                        };
                        if !matches!(at, Location::Unknown) {
                            continue;
                        }
                    }
                    PeerReply::NotOwner { .. } => {}
                }
            }
            Location::Unknown => {}
        }
        if start.elapsed() >= limit {
            return Err(Error::storage(format!(
                "no node of the cluster serves object {} of class {} yet (its partition is \
                 changing hands); retry",
                obj.id, obj.class
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        hops = 0;
        at = cluster.locate(&obj);
    }
}
