//! The seed's brand agent, written in Rust and declared in JSON, driven through the same
//! events and cycles on the manual clock: both emit the seed's commands with the seed's
//! reasons, and the same ones.

#[path = "../examples/brand_agent/agent.rs"]
#[allow(dead_code)]
mod agent;

use std::time::Duration;

use serde_json::{Value, json};
use stead_core::LogQuery;
use stead_fixtures::TestRuntime;
use stead_reactor::{Delivery, Event, ReactorClient};

const HOUR: Duration = Duration::from_secs(3600);

/// What one form decided: (decision type, reason) and (command type, payload), in order.
type Outcome = (Vec<(String, String)>, Vec<(String, Value)>);

async fn outcome(r: &ReactorClient, kind: &str) -> Outcome {
    let decisions = r
        .decisions(kind, "acme", LogQuery::oldest(1000))
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|d| (d.kind, d.reason))
        .collect();
    let commands = r
        .commands(kind, "acme", 0, 1000, Duration::ZERO)
        .await
        .unwrap()
        .commands
        .into_iter()
        .map(|c| (c.kind, c.payload))
        .collect();
    (decisions, commands)
}

async fn send_both(r: &ReactorClient, e: Event) {
    for kind in ["brand-rs", "brand"] {
        let got = r.send(kind, "acme", e.clone()).await.unwrap();
        assert!(!got.duplicate);
    }
}

#[tokio::test]
async fn both_forms_of_the_brand_agent_decide_as_the_seed_does() {
    // The clock starts on the hour: cycles run at every full hour after.
    let t = TestRuntime::memory().await;
    let r = ReactorClient::new(&t).unwrap();
    r.register("brand-rs", agent::BrandAgent, Delivery::pull())
        .unwrap();
    r.define("brand", agent::definition()).await.unwrap();

    // Research: five pieces of content a day at most, top keywords first in priority.
    send_both(
        &r,
        Event::new(
            "r1",
            "research.completed",
            json!({
                "keywords": ["rust", "actors", "durable"],
                "opportunities": ["rust", "sqlite", "wasm", "actors", "queues", "leases", "alarms"],
                "gaps": []
            }),
        ),
    )
    .await;
    // Publishing: promoted only for a top keyword.
    send_both(
        &r,
        Event::new(
            "p1",
            "content.published",
            json!({"contentId": "c-1", "keyword": "rust"}),
        ),
    )
    .await;
    send_both(
        &r,
        Event::new(
            "p2",
            "content.published",
            json!({"contentId": "c-2", "keyword": "misc"}),
        ),
    )
    .await;
    // Engagement: a pivot below 2%, nothing above.
    send_both(
        &r,
        Event::new(
            "m1",
            "engagement.report",
            json!({"avgEngagement": 0.05, "underPerforming": []}),
        ),
    )
    .await;
    send_both(
        &r,
        Event::new(
            "m2",
            "engagement.report",
            json!({"avgEngagement": 0.01, "underPerforming": ["c-2"]}),
        ),
    )
    .await;
    // A competitor: the third new-content move within a week calls for a response.
    for (i, action) in ["new-content", "pricing", "new-content"].iter().enumerate() {
        t.advance(HOUR * 20).await;
        send_both(
            &r,
            Event::new(
                format!("c{i}"),
                "competitor.detected",
                json!({"competitor": "globex", "action": action, "details": {"n": i}}),
            ),
        )
        .await;
    }
    // 60 hours after the research and the publishing, cycles have asked for routine
    // research (past 24 h) and logged a stall (past 48 h), once an hour since.
    t.advance(HOUR).await;

    let (rs, js) = (outcome(&r, "brand-rs").await, outcome(&r, "brand").await);
    assert_eq!(rs, js, "the Rust and the declared agent decide the same");
    let (decisions, commands) = rs;

    let created: Vec<&Value> = commands
        .iter()
        .filter(|(k, _)| k == "content.create")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        created,
        [
            &json!({"brandId": "acme", "keyword": "rust", "priority": 1}),
            &json!({"brandId": "acme", "keyword": "sqlite", "priority": 2}),
            &json!({"brandId": "acme", "keyword": "wasm", "priority": 2}),
            &json!({"brandId": "acme", "keyword": "actors", "priority": 1}),
            &json!({"brandId": "acme", "keyword": "queues", "priority": 2}),
        ]
    );
    let reasons: Vec<&str> = decisions.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        &reasons[..8],
        [
            "Research found opportunity \"rust\" — creating content",
            "Research found opportunity \"sqlite\" — creating content",
            "Research found opportunity \"wasm\" — creating content",
            "Research found opportunity \"actors\" — creating content",
            "Research found opportunity \"queues\" — creating content",
            "Content \"rust\" published — scheduling social promotion",
            "Engagement at 1% — triggering research pivot",
            // Cycles from hour 25 on (the competitor's first move came at hour 20).
            "No research in 25h — requesting routine discovery",
        ]
    );
    assert!(commands.contains(&(
        "social.schedule".into(),
        json!({"brandId": "acme", "contentId": "c-1",
        "platforms": ["twitter", "linkedin"], "timing": "optimal"})
    )));
    assert_eq!(
        commands
            .iter()
            .filter(|(k, _)| k == "social.schedule")
            .count(),
        1
    );
    assert!(commands.contains(&(
        "research.request".into(),
        json!({"brandId": "acme",
        "focus": "engagement-optimization", "context": {"underPerforming": ["c-2"]}})
    )));
    assert!(commands.contains(&("research.request".into(), json!({"brandId": "acme",
        "focus": "competitive-response", "context": {"competitor": "globex", "action": "new-content", "details": {"n": 2}}}))));
    assert!(reasons.contains(&"Competitor \"globex\" published new content — investigating"));
    assert!(reasons.contains(&"No publishing in 49h — pipeline may be stalled"));
    // Hours 25 to 61: a routine-research request every hour; stalls from hour 49.
    let routine = commands
        .iter()
        .filter(|(_, p)| p["focus"] == "routine-discovery")
        .count();
    assert_eq!(routine, 37);
    let stalls = decisions
        .iter()
        .filter(|(k, _)| k == "pipeline-stall")
        .count();
    assert_eq!(stalls, 13);
    t.shutdown().await.unwrap();
}
