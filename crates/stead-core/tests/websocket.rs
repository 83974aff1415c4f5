//! WebSockets held by objects, over real connections on loopback: turns in order, the
//! output gate, the close handler once on every path, hibernation, the auto-response,
//! backpressure and limits.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use common::{Kind, harness_with};
use stead_core::{
    Context, DurableObject, Handler, Namespace, Result, RuntimeBuilder, WebSocket, WebSocketClose,
    WebSocketConfig, WebSocketMessage,
};
use stead_fixtures::eventually;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the rooms saw, for the tests to check.
#[derive(Default)]
struct Seen {
    activations: AtomicUsize,
    opens: AtomicUsize,
    closes: Mutex<Vec<WebSocketClose>>,
}

impl Seen {
    fn closes(&self) -> Vec<WebSocketClose> {
        self.closes.lock().unwrap().clone()
    }
}

/// A room whose clients drive it with text commands.
struct Room {
    seen: Arc<Seen>,
}

impl DurableObject for Room {
    const CLASS: &'static str = "ws-room";
    type Env = Arc<Seen>;

    async fn activate(ctx: &mut Context, env: Arc<Arc<Seen>>) -> Result<Self> {
        // Reads its store, so that a store that cannot be read keeps it from activating.
        let _: Option<u64> = ctx.storage().get("count").await?;
        env.activations.fetch_add(1, Ordering::SeqCst);
        Ok(Room {
            seen: Arc::clone(&env),
        })
    }

    async fn on_websocket_open(&mut self, _: &mut Context, _: WebSocket) -> Result<()> {
        self.seen.opens.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn on_websocket_message(
        &mut self,
        ctx: &mut Context,
        socket: WebSocket,
        msg: WebSocketMessage,
    ) -> Result<()> {
        let text = match msg {
            WebSocketMessage::Text(t) => t,
            WebSocketMessage::Binary(b) => {
                socket.send(ctx, b);
                return Ok(());
            }
        };
        let (cmd, arg) = text.split_once(':').unwrap_or((&text, ""));
        match cmd {
            "echo" => socket.send(ctx, arg),
            "count" => {
                let n: u64 = ctx.storage().get("count").await?.unwrap_or(0) + 1;
                ctx.storage().put("count", &n)?;
                socket.send(ctx, format!("count {n}"));
            }
            "broadcast" => {
                ctx.broadcast(None, arg);
            }
            "each" => {
                for s in ctx.websockets(None) {
                    let n: u64 = s.attachment()?;
                    s.send(ctx, format!("{arg} {n}"));
                }
            }
            "tagged" => {
                let n = ctx.websockets(Some(arg)).len();
                socket.send(ctx, format!("{n}"));
            }
            "attach" => {
                let n: u64 = arg.parse().unwrap();
                socket.set_attachment(ctx, &n)?;
            }
            "close" => {
                socket.send(ctx, "last words");
                socket.close(ctx, 4000, "bye")?;
            }
            "auto" => ctx.set_websocket_auto_response("ping", "pong"),
            "big" => {
                let n: usize = arg.parse().unwrap();
                ctx.broadcast(None, "x".repeat(n));
            }
            "fail" => return Err(stead_core::Error::bad_request("asked to fail")),
            "attachfail" => {
                let n: u64 = arg.parse().unwrap();
                socket.set_attachment(ctx, &n)?;
                return Err(stead_core::Error::bad_request("asked to fail"));
            }
            other => socket.send(ctx, format!("unknown {other}")),
        }
        Ok(())
    }

    async fn on_websocket_close(
        &mut self,
        ctx: &mut Context,
        _socket: WebSocket,
        close: WebSocketClose,
    ) -> Result<()> {
        let n: u64 = ctx.storage().get("closes").await?.unwrap_or(0) + 1;
        ctx.storage().put("closes", &n)?;
        self.seen.closes.lock().unwrap().push(close);
        Ok(())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Closes;

impl Handler<Closes> for Room {
    type Reply = Result<u64>;
    async fn handle(&mut self, _: Closes, ctx: &mut Context) -> Result<u64> {
        Ok(ctx.storage().get("closes").await?.unwrap_or(0))
    }
}

#[derive(serde::Deserialize)]
struct Join {
    /// Tags, separated by commas.
    #[serde(default)]
    tags: String,
    #[serde(default)]
    n: u64,
}

async fn connect_route(
    State(rooms): State<Namespace<Room>>,
    Path(name): Path<String>,
    Query(join): Query<Join>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let tags: Vec<&str> = join.tags.split(',').filter(|t| !t.is_empty()).collect();
    match rooms
        .get_by_name(&name)
        .accept_websocket(upgrade, &tags, &join.n)
    {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

struct Server {
    h: common::Harness,
    seen: Arc<Seen>,
    rooms: Namespace<Room>,
    addr: std::net::SocketAddr,
}

/// A builder tune that changes the WebSocket settings.
fn websockets(
    change: impl FnOnce(&mut WebSocketConfig),
) -> impl FnOnce(RuntimeBuilder) -> RuntimeBuilder {
    let mut ws = WebSocketConfig::default();
    change(&mut ws);
    move |b| b.websocket(ws)
}

async fn serve(kind: Kind, tune: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder) -> Server {
    let h = harness_with(kind, tune).await;
    let seen = Arc::new(Seen::default());
    let rooms = h.rt.namespace::<Room>(seen.clone()).unwrap();
    let app = axum::Router::new()
        .route("/rooms/{name}", axum::routing::get(connect_route))
        .with_state(rooms.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        h,
        seen,
        rooms,
        addr,
    }
}

impl Server {
    async fn join(&self, room: &str, query: &str) -> Client {
        let url = format!("ws://{}/rooms/{room}?{query}", self.addr);
        let (client, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(resp.status(), 101);
        client
    }

    /// Waits for the first close turn and returns what it was told.
    async fn first_close(&self) -> WebSocketClose {
        eventually("a close turn ran", || async {
            !self.seen.closes().is_empty()
        })
        .await;
        self.seen.closes()[0].clone()
    }

    async fn closes_in(&self, room: &str) -> u64 {
        self.rooms.get_by_name(room).call(Closes).await.unwrap()
    }
}

async fn next_text(client: &mut Client) -> String {
    loop {
        match client.next().await {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads up to the server's close frame, then on to the end of the connection (which sends
/// the client's close reply).
async fn next_close(client: &mut Client) -> Option<CloseFrame> {
    let frame = loop {
        match client.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    while let Some(Ok(_)) = client.next().await {}
    frame
}

async fn say(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
}

#[tokio::test]
async fn messages_are_turns_in_order_and_a_clean_close_runs_the_handler_once() {
    let s = serve(Kind::Sqlite, |b| b).await;
    let mut a = s.join("r1", "tags=a").await;
    let mut b = s.join("r1", "tags=b,both").await;
    for i in 0..100 {
        say(&mut a, &format!("echo:{i}")).await;
    }
    for i in 0..100 {
        assert_eq!(next_text(&mut a).await, i.to_string());
    }
    // Turns of two sockets interleave one at a time: the count is exact.
    for _ in 0..20 {
        say(&mut a, "count").await;
        say(&mut b, "count").await;
    }
    let mut last = Vec::new();
    for _ in 0..20 {
        last.push(next_text(&mut a).await);
        last.push(next_text(&mut b).await);
    }
    assert!(last.contains(&"count 40".to_owned()), "{last:?}");
    say(&mut a, "tagged:both").await;
    assert_eq!(next_text(&mut a).await, "1");
    say(&mut a, "broadcast:hello").await;
    assert_eq!(next_text(&mut a).await, "hello");
    assert_eq!(next_text(&mut b).await, "hello");
    // A binary message comes back as it went.
    a.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        a.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );

    a.close(Some(CloseFrame {
        code: 1000.into(),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    let close = s.first_close().await;
    assert_eq!(
        (close.code, close.reason.as_str(), close.was_clean),
        (1000, "done", true)
    );
    // The closed socket is no longer listed; the close turn's write is durable.
    say(&mut b, "tagged:a").await;
    assert_eq!(next_text(&mut b).await, "0");
    assert_eq!(s.closes_in("r1").await, 1);
    drop(b);
    eventually("the second close", || async { s.seen.closes().len() == 2 }).await;
    assert_eq!(s.seen.closes().len(), 2, "each socket closes once");
    s.h.rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_reset_runs_the_close_handler_once_as_abnormal() {
    let s = serve(Kind::Memory, |b| b).await;
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    // Closing with linger 0 resets the connection instead of closing it.
    tcp.set_zero_linger().unwrap();
    let url = format!("ws://{}/rooms/r2", s.addr);
    let (mut client, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .unwrap();
    say(&mut client, "echo:hi").await;
    assert_eq!(next_text(&mut client).await, "hi");
    drop(client);
    let close = s.first_close().await;
    assert_eq!((close.code, close.was_clean), (1006, false));
    s.h.rt.shutdown().await.unwrap();
    assert_eq!(s.seen.closes().len(), 1, "and only once");
}

#[tokio::test]
async fn an_unanswered_ping_closes_the_socket_on_the_manual_clock() {
    let s = serve(Kind::Memory, |b| b).await;
    // This client is never read from, so it never answers the server's ping.
    let mut silent = s.join("r3", "").await;
    let mut lively = s.join("r3", "").await;
    say(&mut silent, "echo:x").await;
    assert_eq!(next_text(&mut silent).await, "x");
    say(&mut lively, "echo:y").await;
    assert_eq!(next_text(&mut lively).await, "y");
    s.h.clock.advance(Duration::from_secs(30)).await; // the pings go out
    // The lively client reads its ping (which answers it), then a message, whose echo
    // shows that the server has read the answer too.
    loop {
        if let Message::Ping(_) = lively.next().await.unwrap().unwrap() {
            break;
        }
    }
    say(&mut lively, "echo:alive").await;
    assert_eq!(next_text(&mut lively).await, "alive");
    s.h.clock.advance(Duration::from_secs(31)).await; // the silent one is past its deadline
    eventually("the silent socket closed", || async {
        !s.seen.closes().is_empty()
    })
    .await;
    let closes = s.seen.closes();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!((closes[0].code, closes[0].was_clean), (1006, false));
    assert!(closes[0].reason.contains("ping"), "{closes:?}");
    // The socket that answered is still open.
    say(&mut lively, "echo:still").await;
    assert_eq!(next_text(&mut lively).await, "still");
    drop((silent, lively));
    s.h.rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_object_closes_a_socket_after_what_it_sent_before() {
    let s = serve(Kind::Memory, |b| b).await;
    let mut client = s.join("r4", "").await;
    say(&mut client, "close").await;
    assert_eq!(next_text(&mut client).await, "last words");
    let frame = next_close(&mut client).await.unwrap();
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4000, "bye")
    );
    let close = s.first_close().await;
    assert_eq!(
        (close.code, close.reason.as_str(), close.was_clean),
        (4000, "bye", true)
    );
    s.h.rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001_and_runs_their_close_turns() {
    let s = serve(Kind::Sqlite, |b| b).await;
    let mut clients = Vec::new();
    for room in ["r5a", "r5a", "r5b"] {
        let mut c = s.join(room, "").await;
        say(&mut c, "echo:ready").await;
        assert_eq!(next_text(&mut c).await, "ready");
        clients.push(c);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { next_close(&mut c).await }))
        .collect();
    s.h.rt.shutdown().await.unwrap();
    for r in readers {
        let frame = r.await.unwrap().unwrap();
        assert_eq!(u16::from(frame.code), 1001);
    }
    let closes = s.seen.closes();
    assert_eq!(closes.len(), 3, "{closes:?}");
    assert!(closes.iter().all(|c| c.code == 1001 && c.was_clean));
}

#[tokio::test]
async fn a_send_leaves_only_after_its_turn_is_durable_and_never_if_the_commit_fails() {
    let s = serve(Kind::FaultyMemory, |b| b).await;
    let faulty = s.h.faulty.clone().unwrap();
    let mut client = s.join("r6", "").await;
    say(&mut client, "count").await;
    assert_eq!(next_text(&mut client).await, "count 1");

    // The next commit is held: the send that follows its write waits for it.
    faulty.stall_commit(faulty.submitted() + 1);
    say(&mut client, "count").await;
    eventually("the commit is held", || async { faulty.held() == 1 }).await;
    let early = tokio::time::timeout(Duration::from_millis(200), client.next()).await;
    assert!(
        early.is_err(),
        "a send left before its write was durable: {early:?}"
    );
    faulty.release();
    assert_eq!(next_text(&mut client).await, "count 2");

    // The next commit fails: its send never leaves (nor would those of turns pipelined
    // behind it: the object resets); a turn after the failure is heard again.
    let failing = faulty.submitted() + 1;
    faulty.fail_commit(failing);
    say(&mut client, "count").await;
    eventually("the commit failed", || async {
        faulty.submitted() >= failing
    })
    .await;
    say(&mut client, "echo:after").await;
    assert_eq!(next_text(&mut client).await, "after");
    say(&mut client, "count").await;
    assert_eq!(
        next_text(&mut client).await,
        "count 3",
        "the failed turn left nothing"
    );
    // A handler's error discards its turn; the socket stays open.
    say(&mut client, "fail").await;
    say(&mut client, "echo:still open").await;
    assert_eq!(next_text(&mut client).await, "still open");
    drop(client);
    s.h.rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_reader_is_closed_and_does_not_delay_the_others() {
    let s = serve(
        Kind::Memory,
        websockets(|ws| ws.max_queued_bytes = 1024 * 1024),
    )
    .await;
    let mut slow = s.join("r7", "").await;
    say(&mut slow, "echo:joined").await;
    assert_eq!(next_text(&mut slow).await, "joined");
    let mut fast = s.join("r7", "").await;
    // 200 broadcasts of 256 KiB: far more than the slow client's socket buffers and queue
    // hold, all of it read by the fast one.
    for _ in 0..200 {
        say(&mut fast, "big:262144").await;
        let got = next_text(&mut fast).await;
        assert_eq!(got.len(), 262_144);
    }
    eventually("the slow reader was closed", || async {
        s.seen.closes().iter().any(|c| c.code == 1008)
    })
    .await;
    assert_eq!(s.seen.closes().len(), 1);
    say(&mut fast, "echo:alive").await;
    assert_eq!(next_text(&mut fast).await, "alive");
    drop((slow, fast));
    s.h.rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn hibernation_keeps_a_thousand_sockets_open_while_the_object_leaves_memory() {
    // No pings in the way (the clients are not read while the clock moves); objects leave
    // memory after the default idle timeout of 60 s.
    let no_pings = websockets(|ws| ws.ping_interval = Duration::from_secs(24 * 3600));
    let s = serve(Kind::Sqlite, no_pings).await;
    let mut clients = Vec::new();
    for n in 0..1000 {
        clients.push(s.join("big-room", &format!("n={n}")).await);
    }
    eventually("every socket opened", || async {
        s.rooms.get_by_name("big-room").call(Closes).await.is_ok() && s.h.rt.active_objects() == 1
    })
    .await;
    assert_eq!(s.seen.activations.load(Ordering::SeqCst), 1);
    s.h.clock.advance(Duration::from_secs(61)).await;
    assert_eq!(s.h.rt.active_objects(), 0, "the object left memory");
    // The next message activates it again; it still holds all 1,000 sockets, each with
    // its attachment.
    say(&mut clients[0], "each:hello").await;
    for (n, c) in clients.iter_mut().enumerate() {
        assert_eq!(next_text(c).await, format!("hello {n}"));
    }
    assert_eq!(s.seen.activations.load(Ordering::SeqCst), 2);
    assert!(s.seen.closes().is_empty());
    drop(clients);
    s.h.rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_auto_response_answers_without_activating_the_object() {
    // No pings in the way (the clients are not read while the clock moves); objects leave
    // memory after the default idle timeout of 60 s.
    let no_pings = websockets(|ws| ws.ping_interval = Duration::from_secs(24 * 3600));
    let s = serve(Kind::Memory, no_pings).await;
    let mut client = s.join("r9", "").await;
    say(&mut client, "auto").await;
    say(&mut client, "echo:set").await;
    assert_eq!(next_text(&mut client).await, "set");
    s.h.clock.advance(Duration::from_secs(61)).await;
    assert_eq!(s.h.rt.active_objects(), 0);
    let activations = s.seen.activations.load(Ordering::SeqCst);
    for _ in 0..10_000 {
        client.feed(Message::text("ping")).await.unwrap();
    }
    client.flush().await.unwrap();
    for _ in 0..10_000 {
        assert_eq!(next_text(&mut client).await, "pong");
    }
    assert_eq!(s.seen.activations.load(Ordering::SeqCst), activations);
    assert_eq!(s.h.rt.active_objects(), 0);
    drop(client);
    s.h.rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn limits_are_refused_or_closed_clearly() {
    let s = serve(
        Kind::Memory,
        websockets(|ws| {
            ws.max_per_object = 2;
            ws.max_message_bytes = 1024;
        }),
    )
    .await;
    let mut first = s.join("r10", "").await;
    let second = s.join("r10", "").await;
    // A third is refused before the upgrade, with a problem body.
    let url = format!("ws://{}/rooms/r10", s.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("too-many-websockets"), "{body}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Eleven tags are too many.
    let tags: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    let url = format!("ws://{}/rooms/r10b?tags={}", s.addr, tags.join(","));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A message over the limit closes the socket with 1009.
    say(&mut first, &"x".repeat(2000)).await;
    let frame = next_close(&mut first).await.unwrap();
    assert_eq!(u16::from(frame.code), 1009);
    eventually("the close turn ran", || async {
        s.seen.closes().len() == 1
    })
    .await;
    assert_eq!(s.seen.closes()[0].code, 1009);
    // Its place is free again.
    let third = s.join("r10", "").await;
    drop((first, second, third));
    s.h.rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_turn_puts_back_the_attachment_it_replaced() {
    let s = serve(Kind::Memory, |b| b).await;
    let mut a = s.join("attach", "n=7").await;
    say(&mut a, "each:n").await;
    assert_eq!(next_text(&mut a).await, "n 7");
    say(&mut a, "attachfail:99").await;
    say(&mut a, "each:n").await;
    assert_eq!(
        next_text(&mut a).await,
        "n 7",
        "the failed turn's attachment is gone"
    );
    say(&mut a, "attach:8").await;
    say(&mut a, "each:n").await;
    assert_eq!(next_text(&mut a).await, "n 8");
    s.h.rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_close_whose_object_cannot_activate_runs_once_it_can() {
    let no_pings = websockets(|ws| ws.ping_interval = Duration::from_secs(24 * 3600));
    let s = serve(Kind::FaultyMemory, no_pings).await;
    let faulty = s.h.faulty.clone().unwrap();
    let mut a = s.join("flaky", "").await;
    say(&mut a, "count").await;
    assert_eq!(next_text(&mut a).await, "count 1");
    // The object leaves memory; while its store cannot be read, the client closes.
    s.h.clock.advance(Duration::from_secs(61)).await;
    assert_eq!(s.h.rt.active_objects(), 0);
    faulty.fail_reads(true);
    drop(a);
    // The close cannot run (the object cannot activate): it waits for a retry.
    for _ in 0..50 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(s.seen.closes().is_empty());
    faulty.fail_reads(false);
    // The retry comes on the runtime's clock, and the close handler runs, once.
    for _ in 0..6 {
        s.h.clock.advance(Duration::from_secs(2)).await;
        if !s.seen.closes().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("the close turn ran", || async {
        !s.seen.closes().is_empty()
    })
    .await;
    assert_eq!(s.closes_in("flaky").await, 1);
    s.h.rt.shutdown().await.unwrap();
    assert_eq!(s.seen.closes().len(), 1);
}
