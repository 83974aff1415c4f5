//! Leader election: two nodes, one leader; when it stops, the other takes over with a
//! greater term.
//!
//! Run with `cargo run --example leader`.

// ANCHOR: example
use std::time::Duration;

use stead::Runtime;
use stead::leader::{Elector, ElectorConfig, LeaderClient};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rt = Runtime::builder().memory().build().await?;
    let leaders = LeaderClient::new(&rt)?;
    // Short timings for the demo; the defaults are 15 s / 10 s / 2 s.
    let timing = ElectorConfig::new(
        Duration::from_millis(1500),
        Duration::from_millis(1000),
        Duration::from_millis(200),
    )?;

    let mut node1 = Elector::start(leaders.clone(), "scheduler", "node-1", timing);
    let term1 = node1.leading().await.expect("node-1 is elected");
    println!("node-1 leads term {term1}");

    let mut node2 = Elector::start(leaders.clone(), "scheduler", "node-2", timing);
    tokio::time::sleep(Duration::from_millis(600)).await;
    println!("node-2 leading? {:?}", node2.term());

    node1.stop().await; // resigns
    let term2 = node2.leading().await.expect("node-2 takes over");
    println!("node-2 leads term {term2}");
    assert!(term2 > term1);

    let now = leaders.get("scheduler").await?;
    println!(
        "leader {:?}, term {}, {} transitions",
        now.leader, now.term, now.transitions
    );
    node2.stop().await;
    rt.shutdown().await?;
    Ok(())
}
// ANCHOR_END: example
