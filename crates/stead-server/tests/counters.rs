//! The counter pattern through the real server: data kept across a restart, and nothing
//! acknowledged lost when the server is killed with SIGKILL mid-run.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use stead_server::Config;

#[tokio::test]
async fn counts_survive_a_restart_and_are_in_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_path_buf();
    let server = stead_server::start(config.clone()).await.unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    for _ in 0..10 {
        let r = http
            .post(format!("{base}/counters/visits/increment"))
            .json(&serde_json::json!({"by": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let spec: serde_json::Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/counters",
        "/counters/{name}",
        "/counters/{name}/increment",
        "/counters/{name}/reset",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    server.shutdown().await.unwrap();

    let server = stead_server::start(config).await.unwrap();
    let base = format!("http://{}", server.addr());
    let v: serde_json::Value = http
        .get(format!("{base}/counters/visits"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["value"], 30);
    server.shutdown().await.unwrap();
}

#[test]
fn a_sigkilled_server_loses_no_acknowledged_increment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, _logs) = common::spawn_server(dir.path(), &[]);
    let acked = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (acked, in_flight, dead, base) =
                (acked.clone(), in_flight.clone(), dead.clone(), base.clone());
            rt.spawn(async move {
                let http = reqwest::Client::new();
                // Bounded: stops at the kill, or after 20,000 requests at most.
                for _ in 0..20_000 {
                    if dead.load(Ordering::SeqCst) {
                        break;
                    }
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let r = http
                        .post(format!("{base}/counters/crash/increment"))
                        .json(&serde_json::json!({"by": 1}))
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status() == 200 => {
                            acked.fetch_add(1, Ordering::SeqCst);
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                        }
                        // The server died under this request: it may or may not have counted.
                        _ => break,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400 + rand_ms()));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    dead.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for c in clients {
            c.await.unwrap();
        }
    });
    let acked = acked.load(Ordering::SeqCst);
    let unknown = in_flight.load(Ordering::SeqCst);
    assert!(
        acked > 0,
        "the server acknowledged something before the kill"
    );

    let (mut child, base, _logs) = common::spawn_server(dir.path(), &[]);
    let value = rt.block_on(async {
        let v: serde_json::Value = reqwest::get(format!("{base}/counters/crash"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["value"].as_u64().unwrap()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(value >= acked, "stored {value} < acknowledged {acked}");
    assert!(
        value <= acked + unknown,
        "stored {value} > acknowledged {acked} + in flight {unknown}"
    );
    eprintln!(
        "crash over HTTP: {acked} acknowledged, {unknown} in flight at the kill, {value} stored"
    );
}

fn rand_ms() -> u64 {
    rand::random::<u64>() % 400
}
