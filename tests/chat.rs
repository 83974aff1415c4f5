//! The chat example over real WebSockets on loopback: history on joining, broadcast to the
//! room, presence by tag, and the history kept across a restart on the same data directory.

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/chat.rs"]
mod example;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use example::Said;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start(dir: &std::path::Path) -> (stead::Runtime, String) {
    let rt = stead::Runtime::builder().sqlite(dir).build().await.unwrap();
    let app = example::app(&rt).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (rt, addr.to_string())
}

async fn join(addr: &str, room: &str, name: &str) -> Client {
    let url = format!("ws://{addr}/rooms/{room}/ws?name={name}");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn said(client: &mut Client) -> Said {
    loop {
        match client.next().await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a chat message, got {other:?}"),
        }
    }
}

async fn say(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
}

fn line(from: &str, text: &str) -> Said {
    Said {
        from: from.to_owned(),
        text: text.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_broadcast_keep_the_last_50_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, addr) = start(dir.path()).await;
    let mut alice = join(&addr, "lobby", "alice").await;
    let mut bob = join(&addr, "lobby", "bob").await;
    let mut elsewhere = join(&addr, "kitchen", "carol").await;

    say(&mut alice, "hi").await;
    assert_eq!(
        said(&mut alice).await,
        line("alice", "hi"),
        "the sender gets it too"
    );
    assert_eq!(said(&mut bob).await, line("alice", "hi"));
    say(&mut elsewhere, "only here").await;
    assert_eq!(said(&mut elsewhere).await, line("carol", "only here"));

    let who: Vec<String> = reqwest::get(format!("http://{addr}/rooms/lobby/who"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who, ["alice", "bob"]);

    for i in 0..60 {
        say(&mut bob, &format!("m{i}")).await;
    }
    for i in 0..60 {
        assert_eq!(said(&mut alice).await, line("bob", &format!("m{i}")));
    }
    // A newcomer gets the last 50, oldest first, then what is said from then on.
    let mut dave = join(&addr, "lobby", "dave").await;
    for i in 10..60 {
        assert_eq!(said(&mut dave).await, line("bob", &format!("m{i}")));
    }
    say(&mut alice, "welcome dave").await;
    assert_eq!(said(&mut dave).await, line("alice", "welcome dave"));

    // A name is required and checked.
    let bad = format!("ws://{addr}/rooms/lobby/ws?name=");
    assert!(tokio_tungstenite::connect_async(bad).await.is_err());

    // Shutdown closes every socket with 1001 (going away); the clients read to the end.
    let readers: Vec<_> = [alice, bob, elsewhere, dave]
        .into_iter()
        .map(|mut c| tokio::spawn(async move { while let Some(Ok(_)) = c.next().await {} }))
        .collect();
    rt.shutdown().await.unwrap();
    for r in readers {
        r.await.unwrap();
    }

    // On the same directory, the room remembers its last 50.
    let (rt, addr) = start(dir.path()).await;
    let mut erin = join(&addr, "lobby", "erin").await;
    let mut history = Vec::new();
    for _ in 0..50 {
        history.push(said(&mut erin).await);
    }
    assert_eq!(history.first(), Some(&line("bob", "m11")));
    assert_eq!(history.last(), Some(&line("alice", "welcome dave")));
    say(&mut erin, "anyone?").await;
    assert_eq!(said(&mut erin).await, line("erin", "anyone?"));
    drop(erin);
    rt.shutdown().await.unwrap();
}
