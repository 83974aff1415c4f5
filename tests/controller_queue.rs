//! The controller example over real HTTP on a real SQLite queue: the worker drains the
//! queue, the seed's table finds 23 for a downstream of 20 per batch, and the decision log
//! explains every change.

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/controller_queue.rs"]
mod example;

use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_drains_the_queue_and_the_log_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let queue = example::Queue::create(&dir.path().join("queue.db"), 400).unwrap();
    let rt = stead::Runtime::builder()
        .sqlite(dir.path().join("stead"))
        .build()
        .await
        .unwrap();
    let base = example::serve(&rt).await.unwrap();
    let url = format!("{base}/controllers/drain");
    let http = example::client();
    let r = http
        .put(&url)
        .json(&json!({"interval_ms": 5, "lease_ms": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    example::worker(&url, &queue, |_| 20).await.unwrap();
    assert_eq!(queue.waiting().unwrap(), 0);
    let state: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(state["totals"]["succeeded"], 400);
    assert_eq!(state["batch_size"], 23, "{state}");
    assert_eq!(state["status"], "running");

    let page: Value = http
        .get(format!("{url}/decisions?limit=100&order=oldest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["next"], Value::Null);
    // Oldest first: configured, then 10 → 15 → 23, each explained.
    let log = page["entries"].as_array().unwrap();
    assert_eq!(log[0]["cause"], "configured");
    let sizes: Vec<(u64, u64)> = log[1..]
        .iter()
        .map(|e| {
            (
                e["before"]["batch_size"].as_u64().unwrap(),
                e["after"]["batch_size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes, [(10, 15), (15, 23)]);
    for e in &log[1..] {
        assert_eq!(e["reason"], "increase");
        assert_eq!(e["success_rate"], 1.0);
    }
    for pair in log.windows(2) {
        assert_eq!(pair[0]["after"], pair[1]["before"]);
    }
    let table = example::format_log(log);
    assert!(table.contains("increase"), "{table}");
    rt.shutdown().await.unwrap();
}
