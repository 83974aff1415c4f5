//! The sidecar through the real server: a SIGKILL in the middle of large writes leaves the
//! last acknowledged value or the one in flight, whole, never a mix of the two.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Write number `n`: 2 MiB of one letter, and the number itself.
fn value(n: u64) -> String {
    let letter = char::from(b'a' + (n % 26) as u8);
    serde_json::json!({"n": n, "fill": letter.to_string().repeat(2 << 20)}).to_string()
}

#[test]
fn a_sigkill_during_large_writes_leaves_one_whole_value() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..2u64 {
        let (mut child, base, _logs) = common::spawn_server(dir.path(), &[]);
        let url = format!("{base}/sidecars/run/keys/state");
        let acked = Arc::new(AtomicU64::new(0));
        let dead = Arc::new(AtomicBool::new(false));
        let writer = {
            let (acked, dead, url) = (acked.clone(), dead.clone(), url.clone());
            rt.spawn(async move {
                let http = reqwest::Client::new();
                // Bounded: stops at the kill, or after 2,000 writes.
                for n in round * 10_000 + 1..round * 10_000 + 2_000 {
                    if dead.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = http
                        .put(&url)
                        .header("content-type", "application/json")
                        .body(value(n))
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status().is_success() => acked.store(n, Ordering::SeqCst),
                        Ok(resp) => panic!("write {n}: {}", resp.status()),
                        Err(_) => break,
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300 + rand::random::<u64>() % 700));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        dead.store(true, Ordering::SeqCst);
        rt.block_on(writer).unwrap();
        let acked = acked.load(Ordering::SeqCst);
        assert!(
            acked > 0,
            "round {round}: some write was acknowledged before the kill"
        );

        let (mut child, base, _logs) = common::spawn_server(dir.path(), &[]);
        let stored = rt.block_on(async {
            reqwest::get(format!("{base}/sidecars/run/keys/state"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        child.kill().unwrap();
        child.wait().unwrap();
        let v: serde_json::Value = serde_json::from_str(&stored).expect("a whole JSON value");
        let n = v["n"].as_u64().unwrap();
        assert!(
            n == acked || n == acked + 1,
            "round {round}: stored write {n}, last acknowledged {acked}"
        );
        assert!(
            stored == value(n),
            "round {round}: write {n} is stored whole"
        );
        eprintln!("round {round}: {acked} acknowledged at the kill, write {n} stored whole");
    }
}
