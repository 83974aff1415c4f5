//! Leader election: one leader per term, terms that only grow, replacement of a silent
//! leader, watches, the Elector, and the HTTP surface.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use stead_core::ManualClock;
use stead_fixtures::{TestClient, TestRuntime, eventually};
use stead_leader::{Elector, ElectorConfig, LeaderClient, LeaderError};

async fn setup() -> (TestRuntime, LeaderClient, ManualClock) {
    let rt = TestRuntime::memory().await;
    let leaders = LeaderClient::new(&rt).unwrap();
    let clock = rt.clock.clone();
    (rt, leaders, clock)
}

const TTL: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_one_leader_per_term() {
    let (rt, leaders, clock) = setup().await;
    let seen: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    for round in 0..20 {
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let (leaders, seen) = (leaders.clone(), seen.clone());
                tokio::spawn(async move {
                    let me = format!("n{i}");
                    let r = leaders.campaign("g", &me, TTL).await.unwrap();
                    if r.elected {
                        let mut seen = seen.lock().unwrap();
                        let prev = seen.insert(r.term, me.clone());
                        assert!(
                            prev.is_none() || prev.as_deref() == Some(me.as_str()),
                            "two leaders in term {}",
                            r.term
                        );
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // Alternate between a resignation and a silent leader whose lease lapses.
        let now = leaders.get("g").await.unwrap();
        if round % 2 == 0 {
            leaders
                .resign("g", now.leader.as_deref().unwrap(), now.term)
                .await
                .unwrap();
        } else {
            clock.advance(TTL).await;
        }
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20, "one term per round");
    let terms: Vec<u64> = {
        let mut t: Vec<u64> = seen.keys().copied().collect();
        t.sort();
        t
    };
    assert_eq!(
        terms,
        (1..=20).collect::<Vec<u64>>(),
        "terms grow by one per election"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_leader_is_replaced_after_its_ttl() {
    let (rt, leaders, clock) = setup().await;
    let n1 = leaders.campaign("g", "n1", TTL).await.unwrap();
    clock.advance(Duration::from_secs(6)).await;
    leaders.heartbeat("g", "n1", n1.term).await.unwrap();
    clock.advance(Duration::from_secs(6)).await;
    assert!(
        !leaders.campaign("g", "n2", TTL).await.unwrap().elected,
        "the heartbeat extended it"
    );
    clock.advance(Duration::from_secs(4)).await; // 10 s after the heartbeat: lapsed
    let st = leaders.get("g").await.unwrap();
    assert_eq!(st.leader, None);
    let n2 = leaders.campaign("g", "n2", TTL).await.unwrap();
    assert!(n2.elected && n2.term == n1.term + 1);
    let err = leaders.heartbeat("g", "n1", n1.term).await.unwrap_err();
    assert!(
        matches!(err, LeaderError::NotLeader { ref leader, current_term, .. }
            if leader.as_deref() == Some("n2") && current_term == n2.term),
        "{err}"
    );
    assert!(matches!(
        leaders.resign("g", "n1", n2.term).await,
        Err(LeaderError::NotLeader { .. })
    ));
    assert_eq!(leaders.get("g").await.unwrap().transitions, 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn watches_wake_when_the_term_moves_or_time_runs_out() {
    let (rt, leaders, clock) = setup().await;
    let n1 = leaders.campaign("w", "n1", TTL).await.unwrap();
    let watcher = {
        let leaders = leaders.clone();
        tokio::spawn(async move {
            leaders
                .watch("w", n1.term, Duration::from_secs(60))
                .await
                .unwrap()
        })
    };
    let timed = {
        let leaders = leaders.clone();
        tokio::spawn(async move {
            leaders
                .watch("w", 100, Duration::from_secs(5))
                .await
                .unwrap()
        })
    };
    eventually("both watches wait", || async {
        leaders.get("w").await.unwrap().watchers == 2
    })
    .await;
    assert!(!watcher.is_finished());
    clock.advance(Duration::from_secs(5)).await;
    let t = timed.await.unwrap();
    assert_eq!(
        t.term, n1.term,
        "the timed-out watch answers with the current term"
    );
    assert!(!watcher.is_finished());
    leaders.resign("w", "n1", n1.term).await.unwrap();
    assert!(
        !watcher.is_finished(),
        "a resignation alone does not move the term"
    );
    leaders.campaign("w", "n2", TTL).await.unwrap();
    let w = watcher.await.unwrap();
    assert_eq!((w.term, w.leader.as_deref()), (n1.term + 1, Some("n2")));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn terms_keep_growing_across_restarts() {
    let mut rt = TestRuntime::sqlite().await;
    let mut last = 0;
    for round in 0..3 {
        if round > 0 {
            rt = rt.restart().await;
        }
        let leaders = LeaderClient::new(&rt).unwrap();
        if round > 0 {
            // The lease of the previous round's leader is still live after the restart...
            assert!(!leaders.campaign("r", "other", TTL).await.unwrap().elected);
            rt.advance(TTL).await; // ...until its alarm lapses it.
        }
        let r = leaders
            .campaign("r", &format!("n{round}"), TTL)
            .await
            .unwrap();
        assert!(r.elected && r.term > last);
        last = r.term;
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_elector_leads_renews_and_hands_over_when_stopped() {
    let (rt, leaders, clock) = setup().await;
    let cfg = ElectorConfig::new(
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    )
    .unwrap();
    let mut a = Elector::start(leaders.clone(), "e", "a", cfg);
    let term_a = a.leading().await.unwrap();
    let mut b = Elector::start(leaders.clone(), "e", "b", cfg);
    for _ in 0..30 {
        // Both electors sleep on the clock between their tries.
        eventually("both electors sleep", || async { clock.sleepers() == 2 }).await;
        clock.advance(Duration::from_secs(2)).await;
    }
    eventually("both electors sleep", || async { clock.sleepers() == 2 }).await;
    assert_eq!(
        a.term(),
        Some(term_a),
        "a kept leading for a minute by renewing"
    );
    assert_eq!(b.term(), None);
    a.stop().await; // resigns
    eventually("b sleeps", || async { clock.sleepers() == 1 }).await;
    clock.advance(Duration::from_secs(2)).await;
    eventually("b campaigns and wins", || async { b.term().is_some() }).await;
    let term_b = b.term();
    assert!(term_b.unwrap() > term_a);
    assert_eq!(b.leading().await, term_b);
    b.stop().await;
    assert!(
        ElectorConfig::new(
            Duration::from_secs(5),
            Duration::from_secs(10),
            Duration::from_secs(1)
        )
        .is_err()
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn over_http_with_every_error() {
    let rt = TestRuntime::memory().await;
    let http = TestClient::new(axum::Router::new().nest(
        "/leaders",
        stead_leader::router(&rt).unwrap().unauthenticated(),
    ));
    let post = |path: &str, body: &str| {
        http.post(&format!("/leaders/g/{path}"))
            .header("content-type", "application/json")
            .bytes(body.to_owned())
            .send()
    };
    let r = post("campaign", r#"{"candidate":"n1","ttl_ms":10000}"#)
        .await
        .value();
    assert_eq!(r["elected"], true);
    let term = r["term"].as_u64().unwrap();
    let r = post("campaign", r#"{"candidate":"n2","ttl_ms":10000}"#)
        .await
        .value();
    assert_eq!(
        (r["elected"].as_bool(), r["leader"].as_str()),
        (Some(false), Some("n1"))
    );
    let ok = post(
        "heartbeat",
        &format!(r#"{{"candidate":"n1","term":{term}}}"#),
    )
    .await;
    assert_eq!(ok.status, 200);
    for (path, body, status) in [
        (
            "heartbeat",
            format!(r#"{{"candidate":"n2","term":{term}}}"#),
            409,
        ),
        (
            "resign",
            format!(r#"{{"candidate":"n1","term":{}}}"#, term + 1),
            409,
        ),
        (
            "campaign",
            r#"{"candidate":"n3","ttl_ms":0}"#.to_owned(),
            400,
        ),
        ("campaign", r#"{"candidate":"n3"}"#.to_owned(), 400),
        ("campaign", r#"{"candidate":"","ttl_ms":5}"#.to_owned(), 400),
        (
            "heartbeat",
            r#"{"candidate":"n1","term":"one"}"#.to_owned(),
            400,
        ),
    ] {
        let r = post(path, &body).await;
        assert_eq!(r.status.as_u16(), status, "{path} {body}");
        assert_eq!(r.content_type(), "application/problem+json");
    }
    let watcher = {
        let http = http.clone();
        tokio::spawn(async move {
            http.get(&format!(
                "/leaders/g/watch?after_term={term}&timeout_ms=30000"
            ))
            .send()
            .await
            .value()
        })
    };
    eventually("the watch waits", || async {
        http.get("/leaders/g").send().await.value()["watchers"] == 1
    })
    .await;
    let r = post("resign", &format!(r#"{{"candidate":"n1","term":{term}}}"#)).await;
    assert_eq!(r.status, 200);
    post("campaign", r#"{"candidate":"n2","ttl_ms":10000}"#).await;
    let w: Value = watcher.await.unwrap();
    assert_eq!(
        (w["term"].as_u64(), w["leader"].as_str()),
        (Some(term + 1), Some("n2"))
    );
    let st = http.get("/leaders/g").send().await.value();
    assert_eq!(st["transitions"], 2);
    let bad = http.get("/leaders/g/watch?timeout_ms=9999999").send().await;
    assert_eq!(bad.status, 400);
    let bad = http.get("/leaders/g/watch?after_term=x").send().await;
    assert_eq!(bad.status, 400);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_past_the_cap_are_refused_not_held() {
    let (rt, leaders, _clock) = setup().await;
    let n1 = leaders.campaign("busy", "n1", TTL).await.unwrap();
    let max = stead_core::MAX_PARKED_PER_OBJECT;
    let watches: Vec<_> = (0..=max)
        .map(|_| {
            let leaders = leaders.clone();
            tokio::spawn(async move {
                leaders
                    .watch("busy", n1.term, Duration::from_secs(30))
                    .await
            })
        })
        .collect();
    // One more than the cap: exactly one is refused at once, as an overload to retry.
    eventually("one watch refused", || async {
        watches.iter().filter(|w| w.is_finished()).count() == 1
    })
    .await;
    assert_eq!(leaders.get("busy").await.unwrap().watchers, max);
    for w in watches {
        if w.is_finished() {
            let err = w.await.unwrap().unwrap_err();
            assert!(
                matches!(
                    err,
                    LeaderError::Runtime(stead_core::Error::Overloaded { .. })
                ),
                "{err:?}"
            );
        } else {
            w.abort();
        }
    }
    rt.shutdown().await.unwrap();
}
