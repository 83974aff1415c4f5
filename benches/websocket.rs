//! WebSockets held by objects, measured on the chat example (every message a durable write
//! and a broadcast), with the server in a child process of its own so that its memory is
//! measured apart from the clients':
//!
//! - server memory per idle socket: 10,000 sockets on one room, the room out of memory
//!   (hibernated), the server's resident set size over its size before they connected;
//! - one message broadcast to those 10,000: the time until the last client has it;
//! - one room with 100 senders, each with one message in flight: messages in per second,
//!   and deliveries out (each message reaches all 100).
//!
//! `cargo bench --bench websocket` (`-- --sockets 2000` for a smaller run). Only ever
//! targets 127.0.0.1; every wait is bounded.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/chat.rs"]
mod chat;

/// The same allocator as the `stead` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SERVER_ENV: &str = "STEAD_WS_BENCH_SERVER";
/// Every wait of the bench gives up after this long.
const LIMIT: Duration = Duration::from_secs(120);
const SENDERS: usize = 100;
const MESSAGES_PER_SENDER: usize = 100;

fn main() -> anyhow::Result<()> {
    if std::env::var_os(SERVER_ENV).is_some() {
        return serve();
    }
    let args: Vec<String> = std::env::args().collect();
    let sockets = args
        .iter()
        .position(|a| a == "--sockets")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(10_000), |n| n.parse())?;
    let mut server = Server::start()?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = tokio.block_on(measure(&mut server, sockets));
    let _ = server.child.kill();
    let _ = server.child.wait();
    result
}

/// The child: the chat example on SQLite in a fresh directory, rooms leaving memory after
/// a second without messages; prints its address, then serves until killed.
fn serve() -> anyhow::Result<()> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    tokio.block_on(async {
        let dir = tempfile::tempdir()?;
        let rt = stead::Runtime::builder()
            .sqlite(dir.path())
            .idle_timeout(Duration::from_secs(1))
            .build()
            .await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        axum::serve(listener, chat::app(&rt)?).await?;
        Ok(())
    })
}

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start() -> anyhow::Result<Server> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(SERVER_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut addr = String::new();
        BufReader::new(stdout).read_line(&mut addr)?;
        Ok(Server {
            child,
            addr: addr.trim().to_owned(),
        })
    }

    /// The child's resident set size, in bytes.
    fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?
            .parse::<u64>()?;
        Ok(kib * 1024)
    }

    async fn join(&self, room: &str, name: &str) -> anyhow::Result<Client> {
        let url = format!("ws://{}/rooms/{room}/ws?name={name}", self.addr);
        Ok(tokio_tungstenite::connect_async(url).await?.0)
    }
}

async fn measure(server: &mut Server, sockets: usize) -> anyhow::Result<()> {
    // Let the child settle (its runtime and first allocations) before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss()?;

    let mut clients = Vec::with_capacity(sockets);
    let opening = Instant::now();
    for i in 0..sockets {
        clients.push(server.join("idle", &format!("u{i}")).await?);
    }
    let opened = opening.elapsed();
    // The room leaves memory a second after its last message; the sockets stay open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.rss()?;
    let per_socket = after.saturating_sub(before) as f64 / sockets as f64;

    // Broadcast: every client waits for one message; one of them sends it.
    let received = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(tokio::sync::Notify::new());
    let mut sender = clients.pop().ok_or_else(|| anyhow::anyhow!("no clients"))?;
    let mut readers = Vec::with_capacity(sockets);
    for mut c in clients {
        let (received, all) = (received.clone(), all.clone());
        readers.push(tokio::spawn(async move {
            if let Some(Ok(Message::Text(_))) = c.next().await
                && received.fetch_add(1, Ordering::AcqRel) + 1 == sockets - 1
            {
                all.notify_one();
            }
            c
        }));
    }
    let sent = Instant::now();
    sender.send(Message::text("to everyone")).await?;
    tokio::time::timeout(LIMIT, all.notified()).await?;
    let broadcast = sent.elapsed();
    let mut clients = Vec::with_capacity(sockets);
    for r in readers {
        clients.push(r.await?);
    }
    clients.push(sender);
    let reached = received.load(Ordering::Acquire) + 1;
    drop(clients);

    // Throughput: 100 senders in one room, each with one message in flight (it sends the
    // next once it has seen its last come back), all reading everything.
    let mut members = Vec::with_capacity(SENDERS);
    for i in 0..SENDERS {
        members.push(server.join("busy", &format!("s{i}")).await?);
    }
    let expected = SENDERS * MESSAGES_PER_SENDER;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(SENDERS);
    for (i, mut c) in members.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let me = format!("s{i}");
            let mut got = 0;
            for m in 0..MESSAGES_PER_SENDER {
                let text = format!("{m}");
                c.send(Message::text(text.clone())).await?;
                loop {
                    let Some(Ok(Message::Text(t))) = c.next().await else {
                        anyhow::bail!("connection ended");
                    };
                    got += 1;
                    let said: chat::Said = serde_json::from_str(t.as_str())?;
                    if said.from == me && said.text == text {
                        break;
                    }
                }
            }
            while got < expected {
                match c.next().await {
                    Some(Ok(Message::Text(_))) => got += 1,
                    Some(Ok(_)) => {}
                    _ => anyhow::bail!("connection ended"),
                }
            }
            anyhow::Ok(got)
        }));
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += tokio::time::timeout(LIMIT, t).await???;
    }
    let took = started.elapsed();

    println!("WebSockets on the chat example (server in its own process, SQLite, fsync)");
    println!();
    println!("| measure | figure |");
    println!("|---|---|");
    println!("| idle sockets opened on one room | {sockets} in {opened:.2?} |");
    println!(
        "| server RSS before / after | {:.1} MiB / {:.1} MiB |",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!(
        "| server memory per idle socket (room hibernated) | {:.2} KiB |",
        per_socket / 1024.0
    );
    println!(
        "| one message broadcast to {reached} sockets, until the last has it | {broadcast:.2?} |"
    );
    println!(
        "| {SENDERS} senders in one room: messages in | {:.0}/s ({expected} in {took:.2?}) |",
        expected as f64 / took.as_secs_f64()
    );
    println!(
        "| {SENDERS} senders in one room: deliveries out | {:.0}/s ({delivered} of {}) |",
        delivered as f64 / took.as_secs_f64(),
        expected * SENDERS
    );
    Ok(())
}
