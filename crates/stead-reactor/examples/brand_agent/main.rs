//! The brand agent of the reactor chapter, both ways: written in Rust (`agent.rs`) and
//! declared in JSON (`brand.json`). Both take the same events and decide the same.
//!
//! `cargo run -p stead-reactor --example brand_agent` runs a short scenario through each
//! and prints the decisions and the commands in their outboxes.

mod agent;

use serde_json::json;
use stead_reactor::{Delivery, Event, ReactorClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = stead_core::Runtime::builder().memory().build().await?;
    let reactors = ReactorClient::new(&rt)?;
    reactors.register("brand-rs", agent::BrandAgent, Delivery::pull())?;
    reactors.define("brand", agent::definition()).await?;
    let events = [
        Event::new(
            "r1",
            "research.completed",
            json!({
                "keywords": ["rust", "actors", "durable"],
                "opportunities": ["rust", "sqlite", "wasm", "actors", "queues", "leases", "alarms"],
                "gaps": []
            }),
        ),
        Event::new(
            "p1",
            "content.published",
            json!({"contentId": "c-1", "keyword": "rust"}),
        ),
        Event::new(
            "m1",
            "engagement.report",
            json!({"avgEngagement": 0.01, "underPerforming": ["c-2"], "topPerforming": ["c-1"]}),
        ),
    ];
    for kind in ["brand-rs", "brand"] {
        for e in &events {
            reactors.send(kind, "acme", e.clone()).await?;
        }
        println!("== {kind}");
        for d in reactors
            .decisions(kind, "acme", stead_core::LogQuery::oldest(100))
            .await?
            .entries
        {
            println!("  {:<16} {}", d.kind, d.reason);
        }
        let page = reactors
            .commands(kind, "acme", 0, 100, std::time::Duration::ZERO)
            .await?;
        for c in page.commands {
            println!("  -> {} {}", c.kind, c.payload);
        }
    }
    rt.shutdown().await?;
    Ok(())
}
