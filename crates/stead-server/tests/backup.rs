//! `stead backup`: the binary copies the data directory of a server that keeps serving
//! eight writing clients, and a second server starts on the copy with every counter at a
//! value it had, none below what was acknowledged before the copy began.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const COUNTERS: usize = 16;

async fn value(http: &reqwest::Client, base: &str, name: &str) -> i64 {
    let v: serde_json::Value = http
        .get(format!("{base}/counters/{name}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["value"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_serving_server_starts_a_server_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let copy = dest.path().join("copy");
    let (_server, base, _log) = common::spawn_server(dir.path(), &[]);
    let http = reqwest::Client::new();
    // Each counter's largest acknowledged value (increments of one: every value up to the
    // last is one the counter had).
    let acked: Arc<Mutex<Vec<i64>>> = Arc::new(Mutex::new(vec![0; COUNTERS]));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (http, base, acked, done, stop) = (
                http.clone(),
                base.clone(),
                acked.clone(),
                done.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    let n = i % COUNTERS;
                    let r = http
                        .post(format!("{base}/counters/c{n}/increment"))
                        .json(&serde_json::json!({"by": 1}))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    i += 3;
                    // The value right after: at least this one was acknowledged.
                    let v = value(&http, &base, &format!("c{n}")).await;
                    let mut a = acked.lock().unwrap();
                    a[n] = a[n].max(v);
                    drop(a);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let wait_for = |n: u64| {
        let done = done.clone();
        async move {
            for _ in 0..30_000 {
                if done.load(Ordering::SeqCst) >= n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            panic!("the clients did not reach {n} writes");
        }
    };
    wait_for(400).await;
    let before = acked.lock().unwrap().clone();
    let started = done.load(Ordering::SeqCst);
    let (d, c) = (dir.path().to_owned(), copy.clone());
    let out = tokio::task::spawn_blocking(move || {
        common::run_to_exit(Command::new(env!("CARGO_BIN_EXE_stead")).args([
            "--data-dir",
            d.to_str().unwrap(),
            "backup",
            c.to_str().unwrap(),
        ]))
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("shards") && stdout.contains(" ms"),
        "{stdout}"
    );
    println!("{}", stdout.trim());
    // The server kept serving while it ran, and after.
    wait_for(started + 100).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let mut last = Vec::new();
    for n in 0..COUNTERS {
        last.push(value(&http, &base, &format!("c{n}")).await);
    }
    // A second server on the copy (the first still holds its own directory).
    let (_restored, base2, _log2) = common::spawn_server(&copy, &[]);
    for n in 0..COUNTERS {
        let v = value(&http, &base2, &format!("c{n}")).await;
        assert!(
            v >= before[n],
            "c{n}: {v} lost what was acknowledged before ({})",
            before[n]
        );
        assert!(
            v <= last[n],
            "c{n}: {v} is a value it had (at most {})",
            last[n]
        );
    }
    // A destination that is not empty is refused, and nothing in it is touched.
    let again = common::run_to_exit(Command::new(env!("CARGO_BIN_EXE_stead")).args([
        "--data-dir",
        dir.path().to_str().unwrap(),
        "backup",
        copy.to_str().unwrap(),
    ]));
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
}
