//! Accepting a WebSocket for an object, and the task that holds the connection: it turns
//! what the client sends into turns of the object (or answers it itself: pings, the
//! auto-response), writes what the object's committed turns sent, keeps the connection
//! alive with pings, and reports the close, once, whatever ended it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{
    CloseFrame, Message, Utf8Bytes, WebSocket as Connection, WebSocketUpgrade,
};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::SinkExt;
use serde::Serialize;

use crate::backend::ObjectRef;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::executor::{SocketEvent, Stub};
use crate::http::PeerSocketOpen;
use crate::object::DurableObject;
use crate::remote::{Cluster, Location};
use crate::websocket::hub::{SocketSlot, Stop};
use crate::websocket::{
    Frame, ObjectSockets, SocketShared, WebSocket, WebSocketClose, WebSocketConfig,
    WebSocketMessage, bounded_attachment, check_tags, encode_attachment,
};

/// The read buffer of a connection: small, so that an idle socket costs little (it grows
/// for a larger message and stays at that size).
const READ_BUFFER_BYTES: usize = 1024;
/// How long a close handshake may take before the connection is dropped.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(5);
/// How long the close handshake of a socket whose object moves to another node may take.
const MOVED_HANDSHAKE: Duration = Duration::from_millis(500);
/// How long a close frame the runtime does not wait an answer for may take to leave (to a
/// client that does not read, or one that sent too much).
const PARTING_CLOSE: Duration = Duration::from_millis(100);

impl<O: DurableObject> Stub<O> {
    /// Accepts a WebSocket for this object and returns the `101 Switching Protocols`
    /// response for the handler to return. From then on the runtime holds the connection:
    /// the object's [`on_websocket_open`](DurableObject::on_websocket_open),
    /// `on_websocket_message` and `on_websocket_close` run as turns, and the socket stays
    /// open while the object is out of memory.
    ///
    /// `tags` (at most 10, each at most 256 characters) select sockets in
    /// [`Context::websockets`](crate::Context::websockets); `attachment` (at most 16 KiB as
    /// JSON) is kept with the socket. Fails with [`Error::TooManyWebSockets`] when the
    /// object holds as many as it may, [`Error::BadRequest`] or [`Error::ValueTooLarge`]
    /// for bad tags or attachment, [`Error::ShuttingDown`] once shutdown has begun.
    ///
    /// ```no_run
    /// use axum::extract::{Path, State, ws::WebSocketUpgrade};
    /// use axum::response::{IntoResponse, Response};
    /// use stead_core::{Context, DurableObject, Namespace, Result, WebSocket, WebSocketMessage};
    ///
    /// struct Echo;
    /// impl DurableObject for Echo {
    ///     const CLASS: &'static str = "echo";
    ///     type Env = ();
    ///     async fn activate(_: &mut Context, _: std::sync::Arc<()>) -> Result<Self> { Ok(Echo) }
    ///     async fn on_websocket_message(
    ///         &mut self, ctx: &mut Context, socket: WebSocket, msg: WebSocketMessage,
    ///     ) -> Result<()> {
    ///         socket.send(ctx, msg);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// async fn connect(
    ///     State(echoes): State<Namespace<Echo>>,
    ///     Path(name): Path<String>,
    ///     upgrade: WebSocketUpgrade,
    /// ) -> Response {
    ///     echoes
    ///         .get_by_name(&name)
    ///         .accept_websocket(upgrade, &["echo"], &())
    ///         .into_response()
    /// }
    /// ```
    pub fn accept_websocket<A: Serialize + ?Sized>(
        &self,
        upgrade: WebSocketUpgrade,
        tags: &[&str],
        attachment: &A,
    ) -> Result<Response> {
        let inner = self.inner();
        if inner.shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let checked = check_tags(tags)?;
        let attachment = encode_attachment(attachment)?;
        if let Some((cluster, _)) = self.elsewhere() {
            let open = PeerSocketOpen::new(O::CLASS, self.id(), self.name(), tags, &attachment)?;
            return Ok(self.relay(upgrade, cluster.clone(), open));
        }
        self.accept_here(upgrade, checked, attachment)
    }

    /// Accepts a socket another node relays here (see [`relay`]): on this node, which owns
    /// the object; 503 when it does not (the relaying node asks again where it is).
    pub(crate) fn accept_relayed(
        &self,
        upgrade: WebSocketUpgrade,
        open: PeerSocketOpen,
    ) -> Result<Response> {
        if self.elsewhere().is_some() {
            return Ok(axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response());
        }
        let (tags, attachment) = open.accepted()?;
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        self.accept_here(upgrade, check_tags(&tags)?, bounded_attachment(attachment)?)
    }

    /// Accepts the socket for the object here.
    fn accept_here(
        &self,
        upgrade: WebSocketUpgrade,
        tags: Box<[Box<str>]>,
        attachment: Box<str>,
    ) -> Result<Response> {
        let inner = self.inner();
        let shared = inner.shared.clone();
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let upgrade = self.limited(upgrade);
        let (slot, hub) = SocketSlot::reserve(inner.sockets.clone(), self.id(), shared)?;
        let stub = self.clone();
        // A failed upgrade drops the task, and the slot with it.
        Ok(upgrade.on_upgrade(move |conn| hold(stub, slot, hub, tags, attachment, conn)))
    }

    /// Accepts the socket here and relays it to the node that owns the object.
    fn relay(
        &self,
        upgrade: WebSocketUpgrade,
        cluster: Arc<dyn Cluster>,
        open: PeerSocketOpen,
    ) -> Response {
        let stub = self.clone();
        self.limited(upgrade)
            .on_upgrade(move |conn| relay(stub, cluster, open, conn))
    }

    /// The upgrade with the runtime's message limit and a small read buffer.
    fn limited(&self, upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
        let max = self.inner().shared.config.websocket.max_message_bytes;
        upgrade
            .max_message_size(max)
            .max_frame_size(max)
            .read_buffer_size(READ_BUFFER_BYTES)
    }
}

/// Holds one connection from its upgrade to its close turn.
async fn hold<O: DurableObject>(
    stub: Stub<O>,
    mut slot: SocketSlot,
    hub: Arc<ObjectSockets>,
    tags: Box<[Box<str>]>,
    attachment: Box<str>,
    mut conn: Connection,
) {
    let shared = stub.inner().shared.clone();
    let config = &shared.config.websocket;
    let socket = Arc::new(SocketShared::new(
        tags,
        attachment,
        config.max_queued_messages,
        config.max_queued_bytes,
    ));
    slot.register(&hub, socket.clone());
    let handle = WebSocket {
        shared: socket.clone(),
    };
    // Registered first, then the check: shutdown either finds this socket to stop, or this
    // sees that it has begun. A socket that opens as the runtime shuts down is closed
    // without its object ever hearing of it.
    if shared.closed.load(Ordering::Acquire)
        || stub
            .send_socket_event(SocketEvent::Open(handle.clone()))
            .await
            .is_err()
    {
        slot.unregister();
        let _ = tokio::time::timeout(PARTING_CLOSE, close_with(&mut conn, 1001, SHUTDOWN)).await;
        count_close("shutdown");
        socket.end();
        return;
    }
    let mut held = Held {
        stub: &stub,
        hub: &hub,
        socket: &socket,
        handle: &handle,
        conn: &mut conn,
        clock: shared.clock.clone(),
        config,
    };
    let (close, cause) = held.converse().await;
    count_close(cause);
    // No longer listed, so the close turn does not see it among the open ones.
    slot.unregister();
    if let Err(e) = stub
        .send_socket_event(SocketEvent::Close(handle, close))
        .await
    {
        tracing::warn!(class = O::CLASS, id = %stub.id(), error = %e, "the close of a WebSocket could not be delivered to its object");
    }
    socket.end();
}

const SHUTDOWN: &str = "the server is shutting down";

/// The reason given with 1012 when a socket's object moves to another node.
pub(crate) const MOVED: &str = "the object moved to another node of the cluster: reconnect";

fn count_close(cause: &'static str) {
    metrics::counter!("stead_websocket_closes_total", "cause" => cause).increment(1);
}

/// The state of one held connection.
struct Held<'a, O: DurableObject> {
    stub: &'a Stub<O>,
    hub: &'a ObjectSockets,
    socket: &'a SocketShared,
    handle: &'a WebSocket,
    conn: &'a mut Connection,
    clock: Arc<dyn Clock>,
    config: &'a WebSocketConfig,
}

/// What writing the queue came to.
enum Flushed {
    /// All written; the socket stays open.
    Open,
    /// All written, and the runtime ends the connection for this reason.
    Stop(Stop),
    /// The connection failed.
    Lost,
}

fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn lost(reason: &str) -> WebSocketClose {
    WebSocketClose {
        code: 1006,
        reason: reason.to_owned(),
        was_clean: false,
    }
}

impl<O: DurableObject> Held<'_, O> {
    /// Serves the connection until it ends; says how, and the cause for the metrics.
    async fn converse(&mut self) -> (WebSocketClose, &'static str) {
        let interval = self.config.ping_interval;
        let mut last_seen = self.clock.now();
        let mut pong_due: Option<DateTime<Utc>> = None;
        let mut timer = self.clock.sleep_until(after(last_seen, interval));
        loop {
            tokio::select! {
                () = self.socket.wake.notified() => match self.flush().await {
                    Flushed::Open => {}
                    Flushed::Stop(stop) => return self.stop(stop).await,
                    Flushed::Lost => return (lost("the connection was lost"), "dropped"),
                },
                incoming = self.conn.recv() => {
                    last_seen = self.clock.now();
                    pong_due = None;
                    match incoming {
                        Some(Ok(msg)) => {
                            if let Some(close) = self.receive(msg).await {
                                return close;
                            }
                        }
                        Some(Err(e)) if too_large(&e) => {
                            let reason = "the message is larger than the server accepts";
                            let _ = tokio::time::timeout(PARTING_CLOSE, close_with(self.conn, 1009, reason)).await;
                            let close = WebSocketClose { code: 1009, reason: reason.to_owned(), was_clean: false };
                            return (close, "too_large");
                        }
                        Some(Err(_)) | None => return (lost("the connection was lost"), "dropped"),
                    }
                }
                () = &mut timer => {
                    let now = self.clock.now();
                    match pong_due {
                        Some(due) if now >= due => {
                            return (lost("the client did not answer a ping"), "ping_timeout");
                        }
                        Some(due) => timer = self.clock.sleep_until(due),
                        None if now >= after(last_seen, interval) => {
                            match self.write(Message::Ping(bytes::Bytes::new())).await {
                                Ok(()) => {}
                                Err(Flushed::Stop(stop)) => return self.stop(stop).await,
                                Err(_) => return (lost("the connection was lost"), "dropped"),
                            }
                            let due = after(now, self.config.ping_timeout);
                            pong_due = Some(due);
                            timer = self.clock.sleep_until(due);
                        }
                        None => timer = self.clock.sleep_until(after(last_seen, interval)),
                    }
                }
            }
        }
    }

    /// Handles one message from the client; `Some` when it closed the connection.
    async fn receive(&mut self, msg: Message) -> Option<(WebSocketClose, &'static str)> {
        let message = match msg {
            Message::Text(text) => {
                metrics::counter!("stead_websocket_messages_total", "direction" => "in")
                    .increment(1);
                if let Some(response) = self.hub.auto_response(text.as_str()) {
                    metrics::counter!("stead_websocket_auto_responses_total").increment(1);
                    self.socket.deliver(Frame::Text(response));
                    return None;
                }
                WebSocketMessage::Text(text.as_str().to_owned())
            }
            Message::Binary(data) => {
                metrics::counter!("stead_websocket_messages_total", "direction" => "in")
                    .increment(1);
                WebSocketMessage::Binary(data.to_vec())
            }
            // Pings are answered by the protocol layer; any frame shows the client lives.
            Message::Ping(_) | Message::Pong(_) => return None,
            Message::Close(frame) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (f.code, f.reason.as_str().to_owned())
                });
                // The reply to the client's close is queued by the protocol layer: send it.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE, self.conn.flush()).await;
                let close = WebSocketClose {
                    code,
                    reason,
                    was_clean: true,
                };
                return Some((close, "client"));
            }
        };
        // Refused only as the runtime shuts down: the message is dropped, and the socket
        // is about to close with 1001.
        let _ = self
            .stub
            .send_socket_event(SocketEvent::Message(self.handle.clone(), message))
            .await;
        None
    }

    /// Writes everything queued for the client.
    async fn flush(&mut self) -> Flushed {
        loop {
            let (frames, stop) = self.socket.take();
            if frames.is_empty() {
                return stop.map_or(Flushed::Open, Flushed::Stop);
            }
            let n = frames.len() as u64;
            let conn = &mut *self.conn;
            let sending = async move {
                for frame in frames {
                    conn.feed(to_message(frame)).await?;
                }
                conn.flush().await
            };
            match abortable(self.socket, sending).await {
                Ok(Ok(())) => {
                    metrics::counter!("stead_websocket_messages_total", "direction" => "out")
                        .increment(n);
                }
                Ok(Err(_)) => return Flushed::Lost,
                Err(()) => return Flushed::Stop(Stop::SlowReader),
            }
        }
    }

    /// Writes one message now (a ping).
    async fn write(&mut self, msg: Message) -> Result<(), Flushed> {
        match abortable(self.socket, self.conn.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Flushed::Lost),
            Err(()) => Err(Flushed::Stop(Stop::SlowReader)),
        }
    }

    /// Ends the connection from the runtime's side.
    async fn stop(&mut self, stop: Stop) -> (WebSocketClose, &'static str) {
        let (code, reason, cause): (u16, Arc<str>, _) = match stop {
            Stop::Object(code, reason) => (code, reason, "object"),
            Stop::Shutdown => (1001, Arc::from(SHUTDOWN), "shutdown"),
            Stop::Moved => (1012, Arc::from(MOVED), "moved"),
            Stop::SlowReader => {
                let reason = "the client did not read its messages";
                let _ =
                    tokio::time::timeout(PARTING_CLOSE, close_with(self.conn, 1008, reason)).await;
                let close = WebSocketClose {
                    code: 1008,
                    reason: reason.to_owned(),
                    was_clean: false,
                };
                return (close, "slow_reader");
            }
        };
        let handshake = async {
            close_with(self.conn, code, &reason).await.ok()?;
            // Wait for the client's close frame; what else it sends meanwhile is dropped.
            loop {
                match self.conn.recv().await {
                    Some(Ok(Message::Close(_))) => return Some(()),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                }
            }
        };
        // An object that moves waits little for the client: its close turn must run
        // before the node lets the object go.
        let limit = if cause == "moved" {
            MOVED_HANDSHAKE
        } else {
            CLOSE_HANDSHAKE
        };
        let was_clean = matches!(tokio::time::timeout(limit, handshake).await, Ok(Some(())));
        let close = WebSocketClose {
            code,
            reason: reason.to_string(),
            was_clean,
        };
        (close, cause)
    }
}

/// Runs `fut` unless the socket's queue overflows meanwhile (a client that does not read
/// blocks the write: it is given up on).
async fn abortable<T>(socket: &SocketShared, fut: impl Future<Output = T>) -> Result<T, ()> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            () = socket.wake.notified() => {
                if socket.overflowed() {
                    return Err(());
                }
            }
        }
    }
}

async fn close_with(conn: &mut Connection, code: u16, reason: &str) -> Result<(), axum::Error> {
    conn.send(Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    })))
    .await
}

fn to_message(frame: Frame) -> Message {
    match frame {
        // Made from a `String`, so it is UTF-8; the check costs a scan, not a copy.
        Frame::Text(b) => match Utf8Bytes::try_from(b) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Text(Utf8Bytes::from_static("")),
        },
        Frame::Binary(b) => Message::Binary(b),
        Frame::Close(code, reason) => Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(&*reason),
        })),
    }
}

/// Whether a read failed because the message is over the size limit.
fn too_large(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}

/// How long a relay looks for the object's owner before it gives up with 1013.
const RELAY_SETTLE: Duration = Duration::from_secs(5);

/// The reason given with 1012 when the node that owns a relayed socket's object is gone.
const OWNER_GONE: &str = "the node that holds the object went away: reconnect";

/// Relays a socket accepted here to the node that owns its object, frame by frame, until
/// either side closes it. The owner holds it as any other socket (its turns, hibernation,
/// limits); this node answers the client's pings and pings a silent client, and passes
/// close frames through both ways. A client that vanishes drops the link, so the owner
/// sees 1006; an owner that vanishes closes the client with 1012.
async fn relay<O: DurableObject>(
    stub: Stub<O>,
    cluster: Arc<dyn Cluster>,
    open: PeerSocketOpen,
    mut conn: Connection,
) {
    let shared = stub.inner().shared.clone();
    shared.sockets.started();
    let _counted = Counted(&shared.sockets);
    let obj = ObjectRef {
        class: O::CLASS,
        id: stub.id(),
    };
    let start = tokio::time::Instant::now();
    let mut peer = loop {
        let refused = match cluster.locate(&obj) {
            Location::Here => {
                // The object came here meanwhile: hold the socket here.
                let Ok((tags, attachment)) = open.accepted() else {
                    return;
                };
                let attachment = attachment.into_boxed_str();
                let tags: Box<[Box<str>]> = tags.into_iter().map(String::into_boxed_str).collect();
                match SocketSlot::reserve(stub.inner().sockets.clone(), stub.id(), shared.clone()) {
                    Ok((slot, hub)) => return hold(stub, slot, hub, tags, attachment, conn).await,
                    Err(e) => e.to_string(),
                }
            }
            Location::At(peer) => match connect(&*cluster, &peer, &open).await {
                Ok(link) => break link,
                Err(e) => e,
            },
            Location::Unknown => "no node serves the object yet".to_owned(),
        };
        if start.elapsed() >= RELAY_SETTLE || shared.closed.load(Ordering::Acquire) {
            let reason = format!("the object cannot be reached now: {refused}");
            let reason = truncate(&reason, 123);
            let _ = tokio::time::timeout(PARTING_CLOSE, close_with(&mut conn, 1013, reason)).await;
            count_close("relay_failed");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cause = pump(&shared, &mut conn, &mut peer).await;
    count_close(cause);
}

/// Counts a relayed socket among the runtime's live ones while it lasts.
struct Counted<'a>(&'a crate::shared::SocketCount);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.stopped();
    }
}

type PeerLink =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the relay's link to the owner at `peer`.
async fn connect(
    cluster: &dyn Cluster,
    peer: &str,
    open: &PeerSocketOpen,
) -> std::result::Result<PeerLink, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let Some(secret) = cluster.secret() else {
        return Err("this node cannot relay sockets to other nodes".to_owned());
    };
    let query = serde_urlencoded::to_string(open).map_err(|e| e.to_string())?;
    let mut request = format!("ws://{peer}{}?{query}", super::PEER_SOCKET_PATH)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let bearer = format!("Bearer {secret}")
        .parse()
        .map_err(|_| "the cluster secret is not a header value".to_owned())?;
    request
        .headers_mut()
        .insert(axum::http::header::AUTHORIZATION, bearer);
    match tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async_with_config(request, None, true),
    )
    .await
    {
        Ok(Ok((link, _))) => Ok(link),
        Ok(Err(tungstenite::Error::Http(response))) => {
            Err(format!("the node at {peer} answered {}", response.status()))
        }
        Ok(Err(e)) => Err(format!("the node at {peer}: {e}")),
        Err(_) => Err(format!("the node at {peer} did not answer")),
    }
}

/// Passes frames between the client and the owner until one side ends; says how for the
/// metrics.
async fn pump(
    shared: &crate::shared::Shared,
    conn: &mut Connection,
    peer: &mut PeerLink,
) -> &'static str {
    use futures_util::StreamExt;
    use tungstenite::Message as PeerMessage;
    let clock = shared.clock.clone();
    let config = &shared.config.websocket;
    let mut last_seen = clock.now();
    let mut pong_due: Option<DateTime<Utc>> = None;
    let mut timer = clock.sleep_until(after(last_seen, config.ping_interval));
    let closing = shared.sockets.closing();
    tokio::pin!(closing);
    loop {
        tokio::select! {
            incoming = conn.recv() => {
                last_seen = clock.now();
                pong_due = None;
                let out = match incoming {
                    Some(Ok(Message::Text(t))) => PeerMessage::Text(t.as_str().into()),
                    Some(Ok(Message::Binary(b))) => PeerMessage::Binary(b),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        // The client's close goes to the owner, whose answer ends the link.
                        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, conn.flush()).await;
                        let frame = frame.map(|f| tungstenite::protocol::CloseFrame {
                            code: f.code.into(),
                            reason: f.reason.as_str().into(),
                        });
                        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
                            peer.send(PeerMessage::Close(frame)).await.ok()?;
                            while let Some(Ok(m)) = peer.next().await {
                                if m.is_close() {
                                    break;
                                }
                            }
                            Some(())
                        })
                        .await;
                        return "client";
                    }
                    Some(Err(e)) if too_large(&e) => {
                        let reason = "the message is larger than the server accepts";
                        let _ = tokio::time::timeout(PARTING_CLOSE, close_with(conn, 1009, reason)).await;
                        return "too_large";
                    }
                    // The link is dropped without a close frame: the owner sees 1006.
                    Some(Err(_)) | None => return "dropped",
                };
                if peer.send(out).await.is_err() {
                    let _ = tokio::time::timeout(PARTING_CLOSE, close_with(conn, 1012, OWNER_GONE)).await;
                    return "moved";
                }
            }
            outgoing = peer.next() => {
                let out = match outgoing {
                    Some(Ok(PeerMessage::Text(t))) => Message::Text(t.as_str().into()),
                    Some(Ok(PeerMessage::Binary(b))) => Message::Binary(b),
                    Some(Ok(PeerMessage::Close(frame))) => {
                        // The owner's handshake ends here at once (its close turn need not
                        // wait for the client); the client gets the same close.
                        let _ = tokio::time::timeout(PARTING_CLOSE, peer.flush()).await;
                        let (code, reason) = frame.map_or((1000, String::new()), |f| {
                            (u16::from(f.code), f.reason.as_str().to_owned())
                        });
                        // The owner's node shutting down is not this one's: reconnect.
                        let (code, reason) = if code == 1001 {
                            (1012, OWNER_GONE.to_owned())
                        } else {
                            (code, reason)
                        };
                        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
                            close_with(conn, code, &reason).await.ok()?;
                            loop {
                                match conn.recv().await {
                                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Some(()),
                                    Some(Ok(_)) => {}
                                }
                            }
                        })
                        .await;
                        return if code == 1012 { "moved" } else { "object" };
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        let _ = tokio::time::timeout(PARTING_CLOSE, close_with(conn, 1012, OWNER_GONE)).await;
                        return "moved";
                    }
                };
                if conn.send(out).await.is_err() {
                    return "dropped";
                }
            }
            () = &mut timer => {
                let now = clock.now();
                match pong_due {
                    // A client that does not answer: drop the link, the owner sees 1006.
                    Some(due) if now >= due => return "ping_timeout",
                    Some(due) => timer = clock.sleep_until(due),
                    None if now >= after(last_seen, config.ping_interval) => {
                        if conn.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                            return "dropped";
                        }
                        let due = after(now, config.ping_timeout);
                        pong_due = Some(due);
                        timer = clock.sleep_until(due);
                    }
                    None => timer = clock.sleep_until(after(last_seen, config.ping_interval)),
                }
            }
            () = &mut closing => {
                // This node shuts down: the client hears 1001, the owner a close.
                let _ = tokio::time::timeout(PARTING_CLOSE, close_with(conn, 1001, SHUTDOWN)).await;
                let _ = tokio::time::timeout(PARTING_CLOSE, peer.close(None)).await;
                return "shutdown";
            }
        }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
