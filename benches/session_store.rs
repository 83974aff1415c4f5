//! Sessions under load: the same axum app with tower-sessions on its in-memory store, on its
//! SQLite store (WAL; `synchronous=FULL` and `NORMAL`), and on stead's store (memory,
//! process-crash-safe and fsync durability), all in one run. Each of 256 connections keeps
//! its own session cookie and makes requests that load its session, change it (a counter)
//! and save it. Prints requests/s and latency.
//!
//! The SQLite store's SQLite library cannot be linked into one program with stead's, so its
//! app is a program of its own (`benches/peers/session-sqlite`), which this bench builds
//! (`cargo build --release` there, minutes the first time) and starts on 127.0.0.1; if it
//! cannot be built, its rows are left out and the bench says why.
//!
//! `cargo bench --bench session_store` (`-- --seconds 5 --rounds 5` for longer runs,
//! `-- --only "stead, fsync"` for one row).
//! Only ever targets 127.0.0.1, and every run is bounded in time.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use stead::Durability;
use stead::session::{SessionClient, SessionConfig, SteadSessionStore};
use tower_sessions::{Expiry, MemoryStore, Session, SessionManagerLayer, SessionStore};

// Adding slices together is for the load table.
#[allow(dead_code)]
#[path = "support/load.rs"]
mod load;

/// The same allocator as the `stead` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONNECTIONS: usize = 256;

/// Load the session, change it, save it.
async fn visit(session: Session) -> String {
    let n: u64 = session.get("count").await.ok().flatten().unwrap_or(0) + 1;
    let _ = session.insert("count", n).await;
    n.to_string()
}

fn app<S: SessionStore + Clone>(store: S) -> Router {
    let layer = SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30)));
    Router::new().route("/visit", get(visit)).layer(layer)
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/visit")
}

/// One cookie per connection: each connection is one browser with one session.
async fn run(client: &reqwest::Client, url: String, seconds: f64) -> load::Stats {
    let cookies: Arc<Vec<Mutex<Option<String>>>> =
        Arc::new((0..CONNECTIONS).map(|_| Mutex::new(None)).collect());
    load::drive(client, CONNECTIONS, seconds, move |client, conn, _| {
        let (url, cookies) = (url.clone(), cookies.clone());
        async move {
            let cookie = cookies[conn].lock().unwrap().clone();
            let mut req = client.get(url);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let Ok(r) = req.send().await else {
                return false;
            };
            if let Some(set) = r.headers().get("set-cookie").and_then(|v| v.to_str().ok()) {
                let pair = set.split(';').next().unwrap_or_default().to_owned();
                *cookies[conn].lock().unwrap() = Some(pair);
            }
            r.status().is_success() && r.bytes().await.is_ok()
        }
    })
    .await
    .stats()
}

/// The SQLite-store app, started as a child process: its URL and the child (which ends when
/// its standard input closes, or when it is killed).
fn start_peer(db: &std::path::Path, synchronous: &str) -> Option<(String, std::process::Child)> {
    use std::io::BufRead;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/session-sqlite");
    let bin = dir.join("target/release/session-sqlite-peer");
    let mut child = std::process::Command::new(bin)
        .arg(db)
        .arg(synchronous)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).ok()?;
    let url = line.trim().strip_prefix("LISTENING ")?.to_owned();
    Some((url, child))
}

/// Builds the SQLite-store app; answers whether it is there.
fn build_peer() -> bool {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/peers/session-sqlite/Cargo.toml");
    eprintln!("building the SQLite-store app ({})...", manifest.display());
    let ok = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("the SQLite-store app did not build: its rows are left out");
    }
    ok
}

fn main() {
    let args = load::Args::from_env();
    let (seconds, rounds) = (args.seconds, args.rounds);
    let tokio = load::runtime();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let peer_dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    if args.selected("SqliteStore") && build_peer() {
        for (label, sync) in [
            ("tower-sessions SqliteStore, sync=FULL", "full"),
            ("tower-sessions SqliteStore, sync=NORMAL", "normal"),
        ] {
            match start_peer(&peer_dir.path().join(format!("{sync}.db")), sync) {
                Some((url, child)) => peers.push((label, url, child)),
                None => eprintln!("{label}: the app did not start; its row is left out"),
            }
        }
    }
    let (apps, runtimes) = tokio.block_on(async {
        let mut runtimes = Vec::new();
        let mut apps = vec![(
            "tower-sessions MemoryStore (in memory)",
            serve(app(MemoryStore::default())).await,
        )];
        for (i, (label, durability)) in [
            ("stead, memory", Durability::Memory),
            ("stead, process-crash-safe", Durability::ProcessCrashSafe),
            ("stead, fsync", Durability::Fsync),
        ]
        .into_iter()
        .enumerate()
        {
            let rt = stead::Runtime::builder()
                .sqlite(dirs[i].path())
                .build()
                .await
                .unwrap();
            let sessions =
                SessionClient::with_config(&rt, SessionConfig::default().durability(durability))
                    .unwrap();
            apps.push((label, serve(app(SteadSessionStore::new(sessions))).await));
            runtimes.push(rt);
        }
        for (label, url, _) in &peers {
            apps.push((label, url.clone()));
        }
        (apps, runtimes)
    });
    let mut runs: Vec<(&str, Vec<load::Stats>)> = Vec::new();
    for _ in 0..rounds {
        for (name, url) in &apps {
            if !args.selected(name) {
                continue;
            }
            let client = load::client(CONNECTIONS);
            tokio.block_on(run(&client, url.clone(), 0.3));
            let s = tokio.block_on(run(&client, url.clone(), seconds));
            match runs.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(s),
                None => runs.push((name, vec![s])),
            }
        }
    }
    let rows: Vec<(&str, load::Stats)> = runs
        .into_iter()
        .map(|(n, v)| (n, load::median(v)))
        .collect();
    let memory = rows
        .iter()
        .find(|(n, _)| n.starts_with("tower-sessions"))
        .map_or(f64::NAN, |(_, s)| s.rps);
    println!();
    println!(
        "Sessions: {CONNECTIONS} connections over loopback, each its own session (load, change, save per request), median of {rounds} rounds of {seconds} s"
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>7} {:>10} {:>14}",
        "store", "req/s", "p50 ms", "p99 ms", "errors", "CPU µs/op", "vs MemoryStore"
    );
    for (name, s) in &rows {
        println!(
            "{:<40} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>10.1} {:>13.0}%",
            name,
            s.rps,
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.errors,
            s.cpu_per_op.as_secs_f64() * 1e6,
            100.0 * s.rps / memory
        );
    }
    println!(
        "(durability: MemoryStore and \"stead, memory\" keep nothing across a restart; process-crash-safe and SQLite sync=NORMAL survive a crash of the process; fsync and SQLite sync=FULL survive power loss)"
    );
    if !peers.is_empty() {
        println!(
            "(\"CPU µs/op\" counts this process only: the SQLite-store app runs in a process of its own, whose CPU is not in its row)"
        );
    }
    let rps = |name: &str| rows.iter().find(|(n, _)| *n == name).map(|(_, s)| s.rps);
    for (stead, sqlite) in [
        ("stead, fsync", "tower-sessions SqliteStore, sync=FULL"),
        (
            "stead, process-crash-safe",
            "tower-sessions SqliteStore, sync=NORMAL",
        ),
    ] {
        if let (Some(a), Some(b)) = (rps(stead), rps(sqlite)) {
            println!("{stead} vs {sqlite}: {:.1}x (the goal: 2x or more)", a / b);
        }
    }
    for (_, _, mut child) in peers {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    for rt in runtimes {
        tokio.block_on(rt.shutdown()).unwrap();
    }
}
