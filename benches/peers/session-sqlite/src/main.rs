//! The session bench's app on tower-sessions' SQLite store: `session-sqlite-peer <db file>
//! <full|normal>` serves it on 127.0.0.1 (an ephemeral port, printed as `LISTENING <url>`)
//! until its standard input closes. WAL mode; `full` syncs every commit (power-loss safe),
//! `normal` only at checkpoints (safe against a crash of the process).

use std::str::FromStr;

use axum::Router;
use axum::routing::get;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::io::AsyncReadExt;
use tower_sessions::{Expiry, Session, SessionManagerLayer};
use tower_sessions_sqlx_store::SqliteStore;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn visit(session: Session) -> String {
    let n: u64 = session.get("count").await.ok().flatten().unwrap_or(0) + 1;
    let _ = session.insert("count", n).await;
    n.to_string()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (db, sync) = (&args[1], &args[2]);
    let synchronous = if sync == "full" {
        SqliteSynchronous::Full
    } else {
        SqliteSynchronous::Normal
    };
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{db}"))
        .expect("a database path")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await
        .expect("the database opens");
    let store = SqliteStore::new(pool);
    store.migrate().await.expect("the session table is created");
    let layer = SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30)));
    let app = Router::new().route("/visit", get(visit)).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    println!(
        "LISTENING http://{}/visit",
        listener.local_addr().expect("an address")
    );
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serving") });
    // Serve until the bench closes our standard input (or ends).
    let mut buf = [0u8; 1];
    let _ = tokio::io::stdin().read(&mut buf).await;
}
