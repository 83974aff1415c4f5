//! Two `stead` nodes on one PostgreSQL schema: the standby takes over from a killed
//! active node within the lease and a second, with every acknowledged write; a paused
//! node that lost its lease never answers a success again.

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Server, spawn_server};

const LEASE_MS: u64 = 2000;

fn url() -> String {
    std::env::var("STEAD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema name, or `None` (with one line said) when no server answers.
fn fresh_schema() -> Option<String> {
    let reachable = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_ok();
    if !reachable && std::env::var("STEAD_TEST_POSTGRES_URL").is_err() {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: no PostgreSQL at 127.0.0.1:5432"
        );
        return None;
    }
    Some(format!("stead_test_{:016x}", rand::random::<u64>()))
}

fn drop_schema(schema: &str) {
    let _ = Command::new("psql")
        .args([
            &url(),
            "-qc",
            &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        ])
        .output();
}

fn node(dir: &std::path::Path, schema: &str, name: &str) -> (Server, String) {
    let lease = LEASE_MS.to_string();
    let url = url();
    let (server, base, _log) = spawn_server(
        dir,
        &[
            "--backend",
            "postgres",
            "--postgres-url",
            &url,
            "--postgres-schema",
            schema,
            "--lease-duration-ms",
            &lease,
            "--node-id",
            name,
        ],
    );
    (server, base)
}

async fn status(http: &reqwest::Client, url: String) -> u16 {
    match http.get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if status(http, format!("{base}/readyz")).await == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{base} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn increment(http: &reqwest::Client, base: &str) -> Result<(), u16> {
    let r = http
        .post(format!("{base}/counters/c/increment"))
        .json(&serde_json::json!({"by": 1}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|_| 0u16)?;
    if r.status() != 200 {
        return Err(r.status().as_u16());
    }
    let v: serde_json::Value = r.json().await.map_err(|_| 0u16)?;
    assert_eq!(v["applied"], true);
    Ok(())
}

async fn counter(http: &reqwest::Client, base: &str) -> u64 {
    let v: serde_json::Value = http
        .get(format!("{base}/counters/c"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["value"].as_u64().unwrap()
}

async fn lock_token(http: &reqwest::Client, base: &str) -> u64 {
    let r: serde_json::Value = http
        .post(format!("{base}/locks/l/acquire"))
        .json(&serde_json::json!({"holder": "t", "ttl_ms": 60_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["token"].as_u64().unwrap_or_else(|| panic!("{r}"));
    let released = http
        .post(format!("{base}/locks/l/release"))
        .json(&serde_json::json!({"holder": "t", "token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 200);
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_a_killed_node_with_every_acknowledged_write() {
    let Some(schema) = fresh_schema() else { return };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (mut a, base_a) = node(dir.path(), &schema, "a");
    wait_ready(&http, &base_a, Duration::from_secs(10)).await;
    let (_b, base_b) = node(dir.path(), &schema, "b");
    // The standby is alive, not ready, and serves nothing.
    assert_eq!(status(&http, format!("{base_b}/healthz")).await, 200);
    assert_eq!(status(&http, format!("{base_b}/readyz")).await, 503);
    assert_eq!(increment(&http, &base_b).await, Err(503));
    let token_a = lock_token(&http, &base_a).await;

    // Clients write to the active node until it is killed.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (http, base, acked, stop) =
                (http.clone(), base_a.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if increment(&http, &base).await.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill().unwrap();
    let killed = Instant::now();
    let _ = a.wait();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.load(Ordering::Relaxed);
    assert!(acked > 0);

    wait_ready(&http, &base_b, Duration::from_millis(LEASE_MS + 1000)).await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_millis(LEASE_MS + 1000),
        "the standby served {took:?} after the kill"
    );
    // Every acknowledged increment is there (one in flight at the kill may be too).
    let value = counter(&http, &base_b).await;
    assert!(
        value >= acked && value <= acked + 8,
        "{value} stored, {acked} acknowledged"
    );
    assert_eq!(increment(&http, &base_b).await, Ok(()));
    assert_eq!(counter(&http, &base_b).await, value + 1);
    // Fencing tokens keep increasing across the failover.
    let token_b = lock_token(&http, &base_b).await;
    assert!(token_b > token_a, "{token_b} after {token_a}");
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_that_lost_its_lease_never_answers_a_success() {
    let Some(schema) = fresh_schema() else { return };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (a, base_a) = node(dir.path(), &schema, "a");
    wait_ready(&http, &base_a, Duration::from_secs(10)).await;
    let (_b, base_b) = node(dir.path(), &schema, "b");
    assert_eq!(increment(&http, &base_a).await, Ok(()));

    let pid = a.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_ready(&http, &base_b, Duration::from_millis(LEASE_MS + 2000)).await;
    assert_eq!(increment(&http, &base_b).await, Ok(()));
    assert_eq!(counter(&http, &base_b).await, 2);
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );

    // At once and for a while after, the old node answers nothing but errors.
    let start = Instant::now();
    let mut tries = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        let r = increment(&http, &base_a).await;
        assert!(r.is_err(), "the paused node acknowledged a write: {r:?}");
        assert_ne!(status(&http, format!("{base_a}/readyz")).await, 200);
        let read = status(&http, format!("{base_a}/counters/c")).await;
        assert_ne!(read, 200, "the paused node answered a read");
        tries += 1;
    }
    assert!(tries > 3);
    // None of its attempts reached the data.
    assert_eq!(counter(&http, &base_b).await, 2);
    assert_eq!(status(&http, format!("{base_a}/healthz")).await, 200);
    drop(a);
    drop_schema(&schema);
}
