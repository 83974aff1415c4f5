//! A lock with fencing tokens: a worker that pauses past its lease is fenced off by the
//! resource, instead of overwriting the new holder's work.
//!
//! Run with `cargo run --example lock`.

// ANCHOR: example
use std::time::Duration;

use stead::Runtime;
use stead::lock::{AcquireOptions, LockClient};

/// A store that refuses writes carrying a token older than the newest it has seen.
#[derive(Default)]
struct FencedStore {
    highest_token: u64,
    value: String,
}

impl FencedStore {
    fn write(&mut self, token: u64, value: &str) -> Result<(), String> {
        if token < self.highest_token {
            return Err(format!(
                "token {token} is older than {}",
                self.highest_token
            ));
        }
        self.highest_token = token;
        self.value = value.to_owned();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rt = Runtime::builder().memory().build().await?;
    let locks = LockClient::new(&rt)?;
    let mut store = FencedStore::default();

    // Worker 1 takes the lock with a short lease, then stalls (a GC pause, a slow disk...).
    let w1 = locks
        .try_acquire(
            "report",
            &AcquireOptions::new("worker-1", Duration::from_millis(200)),
        )
        .await?;
    let w1_token = w1.token.expect("free lock");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Its lease lapsed: worker 2 gets the lock, with a greater token, and writes.
    let w2 = locks
        .acquire(
            "report",
            AcquireOptions::new("worker-2", Duration::from_secs(10)),
        )
        .await?;
    store
        .write(w2.token(), "written by worker 2")
        .map_err(anyhow::Error::msg)?;

    // Worker 1 wakes up and tries to write with its old token: refused.
    let late = store.write(w1_token, "written by worker 1");
    println!("worker 1's late write: {late:?}");
    assert!(late.is_err());
    println!("store holds: {:?}", store.value);
    w2.release().await?;
    rt.shutdown().await?;
    Ok(())
}
// ANCHOR_END: example
