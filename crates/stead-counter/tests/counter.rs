//! The counter's promises: exact under concurrency, idempotent within the window, bounded
//! storage, no overflow, fixed shard counts, and the HTTP surface.

use std::time::Duration;

use stead_core::Durability;
use stead_counter::{CounterClient, CounterConfig, CounterError};
use stead_fixtures::TestRuntime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_sum_exactly() {
    let rt = TestRuntime::builder()
        .tune(|b| b.mailbox_capacity(100_000))
        .start()
        .await;
    let counters = CounterClient::new(&rt).unwrap();
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let c = counters.clone();
            tokio::spawn(async move {
                let mut sum = 0i64;
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..10_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let by = (x % 2001) as i64 - 1000;
                    assert!(c.increment("hot", by, None).await.unwrap().applied);
                    sum += by;
                }
                sum
            })
        })
        .collect();
    let mut want = 0i64;
    for t in tasks {
        want += t.await.unwrap();
    }
    let got = counters.get("hot").await.unwrap();
    assert_eq!(got.value, want);
    assert_eq!(got.shards, 16);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_the_published_view_see_every_acknowledged_increment() {
    // The first read of a counter asks its shards; later reads sum what the shards publish
    // after each commit. Every acknowledged increment must show in the next read, under
    // concurrency, after a reset and after the shards leave memory and come back.
    let rt = TestRuntime::sqlite().await;
    let clock = rt.clock.clone();
    let c = CounterClient::new(&rt).unwrap();
    assert_eq!(c.get("v").await.unwrap().value, 0);
    for i in 1..=40 {
        c.increment("v", 1, None).await.unwrap();
        assert_eq!(
            c.get("v").await.unwrap().value,
            i,
            "read after increment {i}"
        );
    }
    // Readers racing writers: never backwards, never beyond what was sent, exact at the end.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    let key = format!("w{w}-{i}");
                    c.increment("v", 1, (i % 2 == 0).then_some(key.as_str()))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..300 {
                let v = c.get("v").await.unwrap().value;
                assert!(v >= last && v <= 840, "read {v} after {last}");
                last = v;
                tokio::task::yield_now().await;
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    reader.await.unwrap();
    assert_eq!(c.get("v").await.unwrap().value, 840);
    assert_eq!(c.reset("v").await.unwrap().value, 0);
    assert_eq!(c.get("v").await.unwrap().value, 0, "the reset is published");
    // The shards leave memory; increments after they come back are published as before.
    clock.advance(Duration::from_secs(3600)).await;
    assert_eq!(rt.active_objects(), 0);
    c.increment("v", 5, None).await.unwrap();
    assert_eq!(c.get("v").await.unwrap().value, 5);
    // A second client of the runtime shares the view.
    let other = CounterClient::new(&rt).unwrap();
    other.increment("v", 2, None).await.unwrap();
    assert_eq!(c.get("v").await.unwrap().value, 7);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_counts_survive_a_restart() {
    let rt = TestRuntime::builder()
        .sqlite()
        .tune(|b| b.durability(Durability::ProcessCrashSafe))
        .start()
        .await;
    let counters = CounterClient::new(&rt).unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let c = counters.clone();
            tokio::spawn(async move {
                for j in 0..300 {
                    c.increment("orders", 1, Some(&format!("t{i}-{j}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rt = rt.restart().await;
    let counters = CounterClient::new(&rt).unwrap();
    assert_eq!(counters.get("orders").await.unwrap().value, 4800);
    // The keys survived too: a retry after the restart still counts once.
    assert!(
        !counters
            .increment("orders", 1, Some("t3-7"))
            .await
            .unwrap()
            .applied
    );
    assert_eq!(counters.get("orders").await.unwrap().value, 4800);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retried_increment_counts_once() {
    let rt = TestRuntime::memory().await;
    let clock = rt.clock.clone();
    let counters = CounterClient::new(&rt).unwrap();
    let mut applied = 0;
    for i in 0..200 {
        let key = format!("req-{i}");
        // Twice at once...
        let (a, b) = tokio::join!(
            counters.increment("c", 2, Some(&key)),
            counters.increment("c", 2, Some(&key))
        );
        applied += u32::from(a.unwrap().applied) + u32::from(b.unwrap().applied);
    }
    assert_eq!(applied, 200, "exactly one of each pair was applied");
    // ...and once more an hour later.
    clock.advance(Duration::from_secs(3600)).await;
    for i in 0..200 {
        assert!(
            !counters
                .increment("c", 2, Some(&format!("req-{i}")))
                .await
                .unwrap()
                .applied
        );
    }
    assert_eq!(counters.get("c").await.unwrap().value, 400);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn at_the_bound_a_new_key_waits_rather_than_a_young_key_being_forgotten() {
    let rt = TestRuntime::sqlite().await;
    let clock = rt.clock.clone();
    let config = CounterConfig::default()
        .default_shards(1)
        .dedup_window(Duration::from_secs(600))
        .max_keys(3);
    let counters = CounterClient::with_config(&rt, config.clone()).unwrap();
    for i in 0..3 {
        counters
            .increment("k", 1, Some(&format!("key-{i}")))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(100)).await;
    }
    // Three remembered, the oldest 300 s old: a fourth waits 300 s and adds nothing.
    match counters.increment("k", 1, Some("key-3")).await {
        Err(CounterError::Remembering(r)) => {
            assert_eq!((r.remembered, r.retry_after_ms), (3, 300_000))
        }
        other => panic!("{other:?}"),
    }
    // Every remembered key is still a duplicate, the oldest too, and after a restart.
    let rt = rt.restart().await;
    let counters = CounterClient::with_config(&rt, config).unwrap();
    for i in 0..3 {
        let again = counters
            .increment("k", 1, Some(&format!("key-{i}")))
            .await
            .unwrap();
        assert!(!again.applied, "key-{i}");
    }
    // Increments without a key are not held back.
    counters.increment("k", 1, None).await.unwrap();
    assert_eq!(counters.get("k").await.unwrap().value, 4);
    // Once the oldest has had its window, it goes and the fourth counts.
    rt.clock.advance(Duration::from_secs(300)).await;
    assert!(
        counters
            .increment("k", 1, Some("key-3"))
            .await
            .unwrap()
            .applied
    );
    assert_eq!(counters.get("k").await.unwrap().value, 5);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn old_keys_are_purged_and_storage_shrinks() {
    let rt = TestRuntime::memory().await;
    let clock = rt.clock.clone();
    let config = CounterConfig::default().dedup_window(Duration::from_secs(600));
    let counters = CounterClient::with_config(&rt, config).unwrap();
    for i in 0..100 {
        counters
            .increment("k", 1, Some(&format!("key-{i}")))
            .await
            .unwrap();
    }
    assert_eq!(counters.remembered_keys("k").await.unwrap(), 100);
    clock.advance(Duration::from_secs(300)).await;
    for i in 100..150 {
        counters
            .increment("k", 1, Some(&format!("key-{i}")))
            .await
            .unwrap();
    }
    // Past the window of the first 100 (and a purge run): only the younger 50 remain.
    clock.advance(Duration::from_secs(400)).await;
    assert_eq!(counters.remembered_keys("k").await.unwrap(), 50);
    // An expired key counts again; a remembered one does not.
    assert!(
        counters
            .increment("k", 1, Some("key-0"))
            .await
            .unwrap()
            .applied
    );
    assert!(
        !counters
            .increment("k", 1, Some("key-120"))
            .await
            .unwrap()
            .applied
    );
    clock.advance(Duration::from_secs(2000)).await;
    assert_eq!(counters.remembered_keys("k").await.unwrap(), 0);
    assert_eq!(counters.get("k").await.unwrap().value, 151);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn overflow_is_an_error_not_a_wrap() {
    let rt = TestRuntime::memory().await;
    let counters = CounterClient::new(&rt).unwrap();
    counters.create("big", 1).await.unwrap();
    counters.increment("big", i64::MAX, None).await.unwrap();
    let err = counters.increment("big", 1, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            CounterError::Overflow {
                by: 1,
                shards: 1,
                ..
            }
        ),
        "{err}"
    );
    counters.increment("big", -1, None).await.unwrap();
    assert_eq!(counters.get("big").await.unwrap().value, i64::MAX - 1);
    counters.increment("big", i64::MIN, None).await.unwrap();
    assert_eq!(counters.get("big").await.unwrap().value, -2);
    // With several shards, each shard's share of the range bounds it: the sum never
    // overflows, whichever shards the increments land on.
    counters.create("wide", 4).await.unwrap();
    for _ in 0..8 {
        let _ = counters.increment("wide", i64::MAX / 8, None).await;
    }
    let v = counters.get("wide").await.unwrap().value;
    assert!(v > 0 && v <= 4 * (i64::MAX / 4), "{v}");
    assert!(matches!(
        counters.increment("wide", i64::MAX, None).await,
        Err(CounterError::Overflow { .. })
    ));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn shard_counts_are_fixed_and_names_validated() {
    let rt = TestRuntime::memory().await;
    let counters = CounterClient::new(&rt).unwrap();
    assert_eq!(counters.create("four", 4).await.unwrap(), 4);
    assert!(matches!(
        counters.create("four", 8).await,
        Err(CounterError::ShardsFixed {
            shards: 4,
            wanted: 8,
            ..
        })
    ));
    assert_eq!(counters.create("four", 4).await.unwrap(), 4);
    counters.increment("four", 1, None).await.unwrap();
    assert_eq!(counters.get("four").await.unwrap().shards, 4);
    assert!(matches!(
        counters.create("zero", 0).await,
        Err(CounterError::Invalid(_))
    ));
    assert!(matches!(
        counters.increment("", 1, None).await,
        Err(CounterError::Invalid(_))
    ));
    assert!(matches!(
        counters.increment(&"n".repeat(257), 1, None).await,
        Err(CounterError::Invalid(_))
    ));
    assert!(matches!(
        counters.increment("ok", 1, Some("")).await,
        Err(CounterError::Invalid(_))
    ));
    assert!(matches!(
        counters.increment("ok", 1, Some(&"k".repeat(257))).await,
        Err(CounterError::Invalid(_))
    ));
    // A counter never used reads as zero and is not created by reading.
    assert_eq!(counters.get("never").await.unwrap().value, 0);
    assert!(
        counters
            .list("never", None, 10)
            .await
            .unwrap()
            .counters
            .is_empty()
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn counters_are_listed_by_prefix() {
    let rt = TestRuntime::memory().await;
    let counters = CounterClient::new(&rt).unwrap();
    for n in ["api/a", "api/b", "api/c", "web/a", "api/d"] {
        counters.increment(n, 1, None).await.unwrap();
    }
    let first = counters.list("api/", None, 3).await.unwrap();
    assert_eq!(first.counters, vec!["api/a", "api/b", "api/c"]);
    let second = counters
        .list("api/", first.next_cursor.as_deref(), 3)
        .await
        .unwrap();
    assert_eq!(second.counters, vec!["api/d"]);
    assert_eq!(second.next_cursor, None);
    rt.shutdown().await.unwrap();
}

mod over_http {
    use serde_json::{Value, json};
    use stead_fixtures::{TestClient, TestResponse, TestRuntime};

    async fn serve() -> (TestClient, TestRuntime) {
        let rt = TestRuntime::memory().await;
        let app = axum::Router::new().nest(
            "/counters",
            stead_counter::router(&rt).unwrap().unauthenticated(),
        );
        (TestClient::new(app), rt)
    }

    fn problem(resp: TestResponse, status: u16) -> String {
        assert_eq!(resp.status.as_u16(), status, "{}", resp.text());
        assert_eq!(resp.content_type(), "application/problem+json");
        resp.value()["detail"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn increment_read_reset_and_list() {
        let (http, rt) = serve().await;
        let inc = |body: Value| http.post("/counters/views/increment").json(&body).send();
        let r = inc(json!({"by": 5, "idempotency_key": "a"})).await.value();
        assert_eq!(r, json!({"applied": true}));
        let r = inc(json!({"by": 5, "idempotency_key": "a"})).await.value();
        assert_eq!(r, json!({"applied": false}));
        inc(json!({})).await;
        let v = http.get("/counters/views").send().await.value();
        assert_eq!(v, json!({"value": 6, "shards": 16}));
        let l = http.get("/counters?prefix=vi").send().await.value();
        assert_eq!(l["counters"], json!(["views"]));
        let v = http.post("/counters/views/reset").send().await.value();
        assert_eq!(v["value"], 0);
        let v = http.get("/counters/views").send().await.value();
        assert_eq!(v["value"], 0);
        rt.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn bad_input_gets_a_precise_400() {
        let (http, rt) = serve().await;
        let post = |path: String, body: &'static str| {
            http.post(&path)
                .header("content-type", "application/json")
                .bytes(body)
                .send()
        };
        let inc = || "/counters/x/increment".to_owned();
        let d = problem(post(inc(), r#"{"by": 1.5}"#).await, 400);
        assert!(d.contains("by"), "{d}");
        let d = problem(post(inc(), r#"{"by": "1"}"#).await, 400);
        assert!(d.contains("by"), "{d}");
        let d = problem(post(inc(), r#"{"by": 1,"#).await, 400);
        assert!(!d.is_empty());
        let d = problem(post(inc(), r#"{"by": 99999999999999999999}"#).await, 400);
        assert!(!d.is_empty());
        let d = problem(post(inc(), r#"{"bye": 1}"#).await, 400);
        assert!(d.contains("bye"), "{d}");
        let long = format!("/counters/{}/increment", "n".repeat(300));
        let d = problem(post(long, r#"{"by": 1}"#).await, 400);
        assert!(d.contains("256"), "{d}");
        let d = problem(post(inc(), r#"{"idempotency_key": ""}"#).await, 400);
        assert!(d.contains("idempotency_key"), "{d}");
        post(inc(), r#"{"by": 1}"#).await;
        let d = problem(post(inc(), r#"{"by": 9223372036854775807}"#).await, 409);
        assert!(d.contains("overflow"), "{d}");
        let d = problem(http.get("/counters?limit=0").send().await, 400);
        assert!(d.contains("limit"), "{d}");
        let put = http.put("/counters/x").json(&json!({"shards": 2}));
        let d = problem(put.send().await, 409);
        assert!(d.contains("16 shards"), "{d}");
        let d = problem(http.delete("/counters/x").send().await, 405);
        assert!(d.contains("DELETE"), "{d}");
        let d = problem(
            http.post(&inc())
                .bytes("{}")
                .without_content_type()
                .send()
                .await,
            415,
        );
        assert!(d.contains("Content-Type"), "{d}");
        rt.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_key_applied_again_after_expiry_is_not_forgotten_by_the_old_purge() {
    let rt = TestRuntime::memory().await;
    let clock = rt.clock.clone();
    let counters = CounterClient::with_config(
        &rt,
        CounterConfig::default().dedup_window(Duration::from_secs(600)),
    )
    .unwrap();
    counters.create("c", 1).await.unwrap();
    counters.increment("c", 1, Some("anchor")).await.unwrap(); // purge every 150 s from now
    clock.advance(Duration::from_secs(1)).await;
    assert!(counters.increment("c", 1, Some("k")).await.unwrap().applied);
    // k expires at 601 s; the purge that removes its old entry runs at 750 s. Time moves in
    // small steps so that the purges run on their grid (150, 300, ... s).
    for _ in 0..699 {
        clock.advance(Duration::from_secs(1)).await;
    }
    assert!(
        counters.increment("c", 1, Some("k")).await.unwrap().applied,
        "expired: counts again"
    );
    for _ in 0..60 {
        clock.advance(Duration::from_secs(1)).await; // the purge of k's first entry runs
    }
    assert!(
        !counters.increment("c", 1, Some("k")).await.unwrap().applied,
        "the second application is still remembered"
    );
    assert_eq!(counters.get("c").await.unwrap().value, 3);
    rt.shutdown().await.unwrap();
}
