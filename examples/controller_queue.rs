//! An adaptive controller draining a queue table in SQLite through a worker that speaks
//! HTTP: the worker leases a batch, takes that many rows, sends each to a downstream that
//! handles 20 items per batch (the rest fail and stay queued), and reports what happened.
//! The controller finds the batch size on its own; the run ends by printing its decision
//! log.
//!
//! `cargo run --example controller_queue`

// ANCHOR: imports
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
// ANCHOR_END: imports

// ANCHOR: queue
/// A queue table: rows wait until an item is done.
#[derive(Debug)]
pub struct Queue {
    db: Mutex<rusqlite::Connection>,
}

impl Queue {
    /// A queue in `path` holding `items` rows.
    pub fn create(path: &std::path::Path, items: u32) -> anyhow::Result<Queue> {
        let db = rusqlite::Connection::open(path)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0)",
        )?;
        let tx = db.unchecked_transaction()?;
        for i in 0..items {
            tx.execute(
                "INSERT INTO queue (payload) VALUES (?1)",
                [format!("item-{i}")],
            )?;
        }
        tx.commit()?;
        Ok(Queue { db: Mutex::new(db) })
    }

    /// Up to `limit` waiting rows, oldest first.
    pub fn take(&self, limit: u32) -> anyhow::Result<Vec<i64>> {
        let db = self.db.lock().unwrap();
        let mut q =
            db.prepare_cached("SELECT id FROM queue WHERE done = 0 ORDER BY id LIMIT ?1")?;
        let ids = q.query_map([limit], |r| r.get(0))?;
        Ok(ids.collect::<Result<_, _>>()?)
    }

    /// Marks rows done.
    pub fn finish(&self, ids: &[i64]) -> anyhow::Result<()> {
        let db = self.db.lock().unwrap();
        let tx = db.unchecked_transaction()?;
        for id in ids {
            tx.execute("UPDATE queue SET done = 1 WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Rows still waiting.
    pub fn waiting(&self) -> anyhow::Result<i64> {
        let db = self.db.lock().unwrap();
        Ok(
            db.query_row("SELECT count(*) FROM queue WHERE done = 0", [], |r| {
                r.get(0)
            })?,
        )
    }
}
// ANCHOR_END: queue

// ANCHOR: worker
/// The downstream: it handles `capacity` items per batch, quickly; beyond that it refuses,
/// slowly. (A real worker calls an API here and times each call.)
fn call_downstream(position: u32, capacity: u32) -> (bool, u64) {
    if position < capacity {
        (true, 8)
    } else {
        (false, 40)
    }
}

/// A worker over HTTP: lease, do, report, until the queue is empty. What it knows of the
/// controller is its URL. `capacity` says how many items per batch the downstream handles,
/// given how many the worker has done so far.
pub async fn worker(
    url: &str,
    queue: &Queue,
    capacity: impl Fn(usize) -> u32,
) -> anyhow::Result<()> {
    let http = client();
    let mut done_so_far = 0;
    loop {
        // A write says it is JSON, even without a body.
        let r = http
            .post(format!("{url}/lease"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .send()
            .await?;
        let status = r.status().as_u16();
        let body: Value = r.json().await?;
        if status == 429 || status == 409 {
            // Not due yet, or the circuit is open: come back when it says.
            let wait = body["retry_after_ms"].as_u64().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            continue;
        }
        anyhow::ensure!(status == 200, "lease refused: {body}");
        let lease_id = body["lease_id"].as_str().context("lease_id")?;
        let batch_size = u32::try_from(body["batch_size"].as_u64().context("batch_size")?)?;

        let rows = queue.take(batch_size)?;
        let mut results = Vec::new();
        let mut done = Vec::new();
        let capacity = capacity(done_so_far);
        for (position, id) in rows.iter().enumerate() {
            let (ok, latency_ms) = call_downstream(position as u32, capacity);
            if ok {
                done.push(*id);
            }
            results.push(json!({ "ok": ok, "latency_ms": latency_ms }));
        }
        queue.finish(&done)?;
        done_so_far += done.len();
        let r = http
            .post(format!("{url}/report"))
            .json(&json!({ "lease_id": lease_id, "results": results }))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "report refused: {}",
            r.text().await?
        );
        if rows.is_empty() {
            return Ok(());
        }
    }
}
// ANCHOR_END: worker

/// The token the worker shows (in a real deployment, a secret from the environment).
pub const TOKEN: &str = "example-worker-token";

/// An HTTP client that shows the token on every request.
pub fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {TOKEN}").parse().expect("a header value");
    headers.insert(reqwest::header::AUTHORIZATION, bearer);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// Serves every stead pattern on 127.0.0.1 (an ephemeral port) to holders of the token;
/// the base URL.
pub async fn serve(rt: &stead::Runtime) -> anyhow::Result<String> {
    let app: axum::Router = axum::Router::new().merge(stead::router(rt)?.bearer([TOKEN])?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// The decision log as a table (entries given oldest first).
pub fn format_log(entries: &[Value]) -> String {
    let mut out = String::from(
        "seq  cause        reason       status    batch      interval  success  outcome\n",
    );
    for e in entries {
        let batch = &e["batch"];
        let outcome = if batch.is_object() {
            format!("{}/{} ok", batch["succeeded"], batch["leased"])
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{:<4} {:<12} {:<12} {:<9} {:>3} → {:<4} {:>6} ms  {:>7}  {}\n",
            e["seq"].as_u64().unwrap_or(0),
            e["cause"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or("-"),
            e["after"]["status"].as_str().unwrap_or(""),
            e["before"]["batch_size"].as_u64().unwrap_or(0),
            e["after"]["batch_size"].as_u64().unwrap_or(0),
            e["after"]["interval_ms"].as_u64().unwrap_or(0),
            e["success_rate"]
                .as_f64()
                .map(|r| format!("{:.0}%", r * 100.0))
                .unwrap_or_default(),
            outcome,
        ));
    }
    out
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = Queue::create(&dir.path().join("queue.db"), 700)?;
    let rt = stead::Runtime::builder()
        .sqlite(dir.path().join("stead"))
        .build()
        .await?;
    let base = serve(&rt).await?;
    let url = format!("{base}/controllers/drain");

    // ANCHOR: configure
    let http = client(); // shows the token
    let r = http
        .put(&url)
        .json(&json!({ "policy": "thresholds", "interval_ms": 100, "lease_ms": 5000 }))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{}", r.text().await?);
    // ANCHOR_END: configure

    // The downstream handles 20 items per batch, until it degrades to 8 after 400 items.
    worker(&url, &queue, |done| if done < 400 { 20 } else { 8 }).await?;
    let state: Value = http.get(&url).send().await?.json().await?;
    let log: Value = http
        .get(format!("{url}/decisions?limit=100&order=oldest"))
        .send()
        .await?
        .json()
        .await?;
    let log = log["entries"].as_array().cloned().unwrap_or_default();
    println!(
        "drained: {} rows waiting, {} items done, {} failed and retried\n",
        queue.waiting()?,
        state["totals"]["succeeded"],
        state["totals"]["failed"]
    );
    print!("{}", format_log(&log));
    rt.shutdown().await?;
    Ok(())
}
