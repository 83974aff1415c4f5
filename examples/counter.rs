//! Sharded counters: many writers, exact reads, retries counted once.
//!
//! Run with `cargo run --example counter`.

// ANCHOR: example
use stead::Runtime;
use stead::counter::CounterClient;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = Runtime::builder().sqlite(dir.path()).build().await?;
    let counters = CounterClient::new(&rt)?;

    // A thousand concurrent writers on one name: no lost update, no hot spot.
    let writers: Vec<_> = (0..1000)
        .map(|i| {
            let c = counters.clone();
            tokio::spawn(
                async move { c.increment("downloads", 1, Some(&format!("req-{i}"))).await },
            )
        })
        .collect();
    for w in writers {
        w.await??;
    }
    // A client that timed out and retried request 7 does not count twice.
    let retry = counters.increment("downloads", 1, Some("req-7")).await?;
    println!("retry applied: {}", retry.applied);

    let total = counters.get("downloads").await?;
    println!("downloads = {} (over {} shards)", total.value, total.shards);
    assert_eq!(total.value, 1000);
    rt.shutdown().await?;
    Ok(())
}
// ANCHOR_END: example
