//! WebSockets on a cluster: a socket stays on the node its client connected to and is
//! relayed to the node that owns its object; when the object moves, its sockets close with
//! 1012 after their close turns committed on the old owner, and a client that reconnects
//! reaches the object on its new owner.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use stead_core::{
    Context, DurableObject, Handler, Namespace, ObjectRef, Remote, Result, Runtime, WebSocket,
    WebSocketClose, WebSocketMessage,
};
use stead_postgres::{ClusterOptions, PostgresBackend, PostgresCluster, PostgresOptions};
use support::{drop_schema, require_server, url};
use tokio_tungstenite::tungstenite::Message;

const PARTITIONS: u32 = 32;
const SECRET: &str = "the-cluster-secret-of-the-socket-tests";

/// A room: counts what its sockets do, durably.
struct Room;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Stats {
    opens: i64,
    messages: i64,
    closes: i64,
    last_code: u16,
}

async fn stats(ctx: &mut Context) -> Result<Stats> {
    Ok(ctx.storage().get("stats").await?.unwrap_or_default())
}

#[derive(Serialize, Deserialize)]
struct GetStats;

impl DurableObject for Room {
    const CLASS: &'static str = "room";
    type Env = ();

    async fn activate(_: &mut Context, _: Arc<()>) -> Result<Self> {
        Ok(Room)
    }

    fn remote(remote: &mut Remote<Self>) {
        remote.message::<GetStats>();
    }

    async fn on_websocket_open(&mut self, ctx: &mut Context, socket: WebSocket) -> Result<()> {
        let mut s = stats(ctx).await?;
        s.opens += 1;
        ctx.storage().put("stats", &s)?;
        let tags: Vec<&str> = socket.tags().collect();
        let who: String = socket.attachment()?;
        socket.send(ctx, format!("open {} {who} {}", tags.join(","), s.opens));
        Ok(())
    }

    async fn on_websocket_message(
        &mut self,
        ctx: &mut Context,
        socket: WebSocket,
        msg: WebSocketMessage,
    ) -> Result<()> {
        let mut s = stats(ctx).await?;
        s.messages += 1;
        ctx.storage().put("stats", &s)?;
        let text = msg.as_text().unwrap_or("(binary)").to_owned();
        socket.send(ctx, format!("echo {text} {}", s.messages));
        Ok(())
    }

    async fn on_websocket_close(
        &mut self,
        ctx: &mut Context,
        _: WebSocket,
        close: WebSocketClose,
    ) -> Result<()> {
        let mut s = stats(ctx).await?;
        s.closes += 1;
        s.last_code = close.code;
        ctx.storage().put("stats", &s)
    }
}

impl Handler<GetStats> for Room {
    type Reply = Result<Stats>;
    async fn handle(&mut self, _: GetStats, ctx: &mut Context) -> Result<Stats> {
        stats(ctx).await
    }
}

/// A node serving rooms at `/rooms/{name}` and the peer endpoint, on its own port.
struct Node {
    backend: PostgresBackend,
    rt: Runtime,
    rooms: Namespace<Room>,
    address: String,
}

async fn connect_room(
    State(rooms): State<Namespace<Room>>,
    Path(name): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    rooms
        .get_by_name(&name)
        .accept_websocket(upgrade, &["guest", "room"], &format!("visitor-of-{name}"))
        .into_response()
}

async fn node(schema: &str, name: &str) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let backend = PostgresBackend::connect(
        PostgresOptions::new(url())
            .schema(schema)
            .lease_duration(Duration::from_secs(1))
            .node_id(name)
            .cluster(ClusterOptions::new(address.clone()).partitions(PARTITIONS)),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), backend.wait_active())
        .await
        .expect("the node joins")
        .unwrap();
    let rt = Runtime::builder()
        .backend(backend.clone())
        .cluster(PostgresCluster::new(&backend, SECRET).unwrap())
        .build()
        .await
        .unwrap();
    let rooms = rt.namespace::<Room>(()).unwrap();
    let app = axum::Router::new()
        .route("/rooms/{name}", get(connect_room))
        .with_state(rooms.clone())
        .merge(stead_core::http::peer_routes(&rt, SECRET).unwrap());
    tokio::spawn(async move {
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.unwrap();
    });
    Node {
        backend,
        rt,
        rooms,
        address,
    }
}

fn settled(nodes: &[&Node]) -> bool {
    let mut held = 0;
    for n in nodes {
        let v = n.backend.cluster_view().unwrap();
        if v.held.is_empty() || v.moving > 0 {
            return false;
        }
        held += v.held.len();
    }
    held == PARTITIONS as usize
}

async fn until_settled(nodes: &[&Node]) {
    let start = Instant::now();
    while !settled(nodes) {
        assert!(start.elapsed() < Duration::from_secs(15), "not settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which of `nodes` holds room `name`'s partition.
fn owner(nodes: &[&Node], name: &str) -> usize {
    let obj = ObjectRef {
        class: Room::CLASS,
        id: nodes[0].rooms.id_from_name(name),
    };
    let p = nodes[0].backend.partition(&obj);
    nodes
        .iter()
        .position(|n| n.backend.cluster_view().unwrap().held.contains_key(&p))
        .expect("every partition is held")
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(at: &Node, room: &str) -> Client {
    let url = format!("ws://{}/rooms/{room}", at.address);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The next text or close the client receives, within 10 s.
async fn next(c: &mut Client) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("a message within 10 s")
            .expect("the connection is open")
            .expect("a message");
        if m.is_text() || m.is_close() {
            return m;
        }
    }
}

fn text(m: Message) -> String {
    match m {
        Message::Text(t) => t.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_reach_their_object_from_any_node_and_close_with_1012_when_it_moves() {
    require_server();
    let schema = format!("stead_test_{:016x}", rand::random::<u64>());
    let a = node(&schema, "a").await;
    let b = node(&schema, "b").await;
    until_settled(&[&a, &b]).await;

    // Rooms on both nodes; every client connects to `a`: those of `b` are relayed.
    let names: Vec<String> = (0..24).map(|i| format!("room-{i}")).collect();
    let before: Vec<usize> = names.iter().map(|n| owner(&[&a, &b], n)).collect();
    assert!(before.contains(&0) && before.contains(&1), "{before:?}");
    let mut clients = Vec::new();
    for name in &names {
        let mut c = open(&a, name).await;
        // Tags and attachment reach the owner, which answers through the relay.
        assert_eq!(
            text(next(&mut c).await),
            format!("open guest,room visitor-of-{name} 1")
        );
        c.send(Message::text("hi")).await.unwrap();
        assert_eq!(text(next(&mut c).await), "echo hi 1");
        clients.push(c);
    }
    // A second socket of a relayed room, connected to its owner: one object for both.
    let relayed = before.iter().position(|&o| o == 1).unwrap();
    let mut direct = open(&b, &names[relayed]).await;
    assert_eq!(
        text(next(&mut direct).await),
        format!("open guest,room visitor-of-{} 2", names[relayed])
    );
    direct.send(Message::text("yo")).await.unwrap();
    assert_eq!(text(next(&mut direct).await), "echo yo 2");
    direct.close(None).await.unwrap();
    while direct.next().await.is_some() {}

    // A third node joins: the rooms that move close with 1012; the others stay open.
    let c = node(&schema, "c").await;
    until_settled(&[&a, &b, &c]).await;
    let after: Vec<usize> = names.iter().map(|n| owner(&[&a, &b, &c], n)).collect();
    let mut moved = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        if before[i] == after[i] {
            client.send(Message::text("still")).await.unwrap();
            assert_eq!(text(next(client).await), "echo still 2", "{}", names[i]);
            continue;
        }
        moved += 1;
        match next(client).await {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1012, "{}", names[i]);
                assert!(frame.reason.contains("moved"), "{}", frame.reason);
            }
            other => panic!("{}: expected a close, got {other:?}", names[i]),
        }
        // Its close turn committed before the object moved.
        let s = a
            .rooms
            .get_by_name(&names[i])
            .ask(GetStats)
            .await
            .unwrap()
            .unwrap();
        let closes_before = if i == relayed { 1 } else { 0 };
        assert_eq!(s.closes, closes_before + 1, "{}: {s:?}", names[i]);
        assert_eq!(s.last_code, 1012, "{}: {s:?}", names[i]);
        // The client reconnects (to any node) and finds the object where it is now.
        let mut again = open(&a, &names[i]).await;
        let opens = s.opens + 1;
        assert_eq!(
            text(next(&mut again).await),
            format!("open guest,room visitor-of-{} {opens}", names[i])
        );
        *client = again;
    }
    assert!(moved > 0, "no room moved to the new node");
    eprintln!("{moved} of {} rooms moved and reconnected", names.len());

    // A client closing through a relay closes the owner's socket, with its code.
    let i = (0..names.len()).find(|&i| after[i] != 0).unwrap();
    let closes = a
        .rooms
        .get_by_name(&names[i])
        .ask(GetStats)
        .await
        .unwrap()
        .unwrap()
        .closes;
    clients[i]
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4001.into(),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let s = a
            .rooms
            .get_by_name(&names[i])
            .ask(GetStats)
            .await
            .unwrap()
            .unwrap();
        if s.closes == closes + 1 {
            assert_eq!(s.last_code, 4001);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the close did not arrive: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The owner's node shuts down: its own clients hear 1001, relayed ones 1012 (their
    // node is not going away: they reconnect).
    let j = (0..names.len())
        .find(|&j| j != i && after[j] == 1)
        .expect("a room on b");
    clients[j].send(Message::text("last")).await.unwrap();
    assert!(text(next(&mut clients[j]).await).starts_with("echo last"));
    b.rt.shutdown().await.unwrap();
    match next(&mut clients[j]).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1012, "{}", names[j]);
            assert!(frame.reason.contains("went away"), "{}", frame.reason);
        }
        other => panic!("{}: expected a close, got {other:?}", names[j]),
    }

    for n in [&c, &a] {
        n.rt.shutdown().await.unwrap();
    }
    drop_schema(&schema);
}
