//! The limiter's promises beyond one algorithm: exact under concurrency, exact across a
//! restart, state forgotten once idle, named policies, resets.

use std::time::Duration;

use stead_core::{Durability, Runtime};
use stead_fixtures::TestRuntime;
use stead_ratelimit::{
    Algorithm, Limit, Policies, Policy, RateLimitClient, RateLimitConfig, RateLimiter,
};

const ALL: [Algorithm; 4] = [
    Algorithm::Gcra,
    Algorithm::TokenBucket,
    Algorithm::SlidingWindow,
    Algorithm::FixedWindow,
];

/// A SQLite test runtime whose clock is not on a window boundary, so fixed windows behave
/// like the others within a test.
async fn sqlite() -> TestRuntime {
    TestRuntime::builder()
        .sqlite()
        .starting_at("2026-03-01T00:00:00.25Z")
        .start()
        .await
}

/// The limiter of `rt`, keeping its state durably (`ProcessCrashSafe`).
fn durable(rt: &Runtime) -> RateLimitClient {
    RateLimitClient::with_config(
        rt,
        RateLimitConfig::default().durability(Durability::ProcessCrashSafe),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_on_one_key_get_exactly_the_limit() {
    let rt = sqlite().await;
    let limits = durable(&rt);
    for alg in ALL {
        let limit = Limit::inline(Policy::per_hour(1000).algorithm(alg)).unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (limits, limit) = (limits.clone(), limit.clone());
                tokio::spawn(async move {
                    let mut admitted = 0u32;
                    for _ in 0..50 {
                        if limits.check("hot", &limit, 1).await.unwrap().allowed {
                            admitted += 1;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 1000, "{alg:?}: 3,200 attempts on a limit of 1,000");
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn limits_hold_across_a_restart() {
    let mut rt = sqlite().await;
    for durability in [Durability::ProcessCrashSafe, Durability::Fsync] {
        for alg in ALL {
            let policy = Policy::per_minute(5).algorithm(alg);
            let key = format!("{alg:?}-{durability:?}");
            {
                let limits = RateLimitClient::with_config(
                    &rt,
                    RateLimitConfig::default().durability(durability),
                )
                .unwrap();
                let limit = Limit::inline(policy.clone()).unwrap();
                for _ in 0..3 {
                    assert!(limits.check(&key, &limit, 1).await.unwrap().allowed);
                }
                assert!(limits.check(&key, &limit, 2).await.unwrap().allowed);
            }
            rt = rt.restart().await;
            rt.advance(Duration::from_millis(10)).await;
            let limits = RateLimitClient::with_config(
                &rt,
                RateLimitConfig::default().durability(durability),
            )
            .unwrap();
            let limit = Limit::inline(policy).unwrap();
            let peek = limits.peek(&key, &limit).await.unwrap();
            assert_eq!(peek.remaining, 0, "{key}: the quota stayed spent");
            let d = limits.check(&key, &limit, 1).await.unwrap();
            assert!(!d.allowed, "{key}: a restart forgave nothing");
            assert!(d.retry_after_ms.unwrap() > 0);
            // The next round configures the limiter afresh.
            rt = rt.restart().await;
        }
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sliding_window_reloads_its_log_and_lets_old_entries_go() {
    let rt = sqlite().await;
    let clock = rt.clock.clone();
    let limit = Limit::inline(Policy::per_second(4).algorithm(Algorithm::SlidingWindow)).unwrap();
    {
        let limits = durable(&rt);
        for _ in 0..4 {
            assert!(limits.check("w", &limit, 1).await.unwrap().allowed);
            clock.advance(Duration::from_millis(200)).await;
        }
    }
    // Now at 800 ms: admissions at 0, 200, 400 and 600 ms are all still in the window.
    let rt = rt.restart().await;
    let limits = durable(&rt);
    let d = limits.check("w", &limit, 1).await.unwrap();
    assert_eq!((d.allowed, d.retry_after_ms), (false, Some(200)));
    clock.advance(Duration::from_millis(200)).await;
    // At 1000 ms the first has left: one more fits, and then none.
    assert!(limits.check("w", &limit, 1).await.unwrap().allowed);
    assert!(!limits.check("w", &limit, 1).await.unwrap().allowed);
    clock.advance(Duration::from_millis(400)).await;
    assert!(limits.check("w", &limit, 2).await.unwrap().allowed);
    // After the restart the log holds exactly what is still in the window: 600, 1000, 1400 ×2.
    let rt = rt.restart().await;
    let limits = durable(&rt);
    assert_eq!(limits.peek("w", &limit).await.unwrap().remaining, 0);
    clock.advance(Duration::from_millis(200)).await;
    assert_eq!(limits.peek("w", &limit).await.unwrap().remaining, 1);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_window_log_stored_by_an_earlier_build_is_read_and_moved() {
    let rt = sqlite().await;
    let clock = rt.clock.clone();
    let limit = Limit::inline(Policy::per_second(3).algorithm(Algorithm::SlidingWindow)).unwrap();
    let limits = durable(&rt);
    for _ in 0..3 {
        assert!(limits.check("old", &limit, 1).await.unwrap().allowed);
        clock.advance(Duration::from_millis(100)).await;
    }
    // The object as an earlier build stored it: its log under `w/` with hexadecimal numbers.
    let ns = rt.get_namespace::<RateLimiter>().unwrap().unwrap();
    let name = ns.list_objects(None, 10).await.unwrap().objects[0]
        .name
        .clone()
        .unwrap();
    let stub = ns.get_by_name(&name);
    let mut doc = stub.export().await.unwrap();
    let window: Vec<String> = doc
        .entries
        .keys()
        .filter(|k| k.starts_with("window/"))
        .cloned()
        .collect();
    assert_eq!(window.len(), 3, "{:?}", doc.entries.keys());
    for k in window {
        let v = doc.entries.remove(&k).unwrap();
        let seq: u64 = k["window/".len()..].parse().unwrap();
        doc.entries.insert(format!("w/{seq:016x}"), v);
    }
    stub.import(&doc).await.unwrap();
    let rt = rt.restart().await;
    let limits = durable(&rt);
    // Read: the window is full until the first admission leaves it.
    assert!(!limits.check("old", &limit, 1).await.unwrap().allowed);
    clock.advance(Duration::from_millis(750)).await;
    // At 1,050 ms the admission at 0 ms has left; those at 100 and 200 ms have not.
    assert!(limits.check("old", &limit, 1).await.unwrap().allowed);
    assert!(!limits.check("old", &limit, 1).await.unwrap().allowed);
    // Moved: nothing is left under the old keys.
    let ns = rt.get_namespace::<RateLimiter>().unwrap().unwrap();
    let doc = ns.get_by_name(&name).export().await.unwrap();
    assert!(
        doc.entries.keys().all(|k| !k.starts_with("w/")),
        "{:?}",
        doc.entries.keys()
    );
    assert_eq!(
        doc.entries
            .keys()
            .filter(|k| k.starts_with("window/"))
            .count(),
        3
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_keys_are_forgotten_so_storage_stays_bounded() {
    let rt = sqlite().await;
    let clock = rt.clock.clone();
    let limits = durable(&rt);
    let ns = rt.get_namespace::<RateLimiter>().unwrap().unwrap();
    for alg in ALL {
        let limit = Limit::inline(Policy::per_second(10).algorithm(alg)).unwrap();
        for i in 0..20 {
            limits.check(&format!("ip-{i}"), &limit, 3).await.unwrap();
        }
    }
    assert_eq!(ns.list_objects(None, 1000).await.unwrap().objects.len(), 80);
    // Busy keys stay while they are busy...
    clock.advance(Duration::from_millis(100)).await;
    let busy = Limit::inline(Policy::per_second(10)).unwrap();
    limits.check("ip-0", &busy, 1).await.unwrap();
    assert!(
        !ns.list_objects(None, 1000)
            .await
            .unwrap()
            .objects
            .is_empty()
    );
    // ...and so do idle ones, for a minute...
    clock.advance(Duration::from_secs(2)).await;
    assert_eq!(ns.list_objects(None, 1000).await.unwrap().objects.len(), 80);
    // ...after which, every one being back to a fresh key's state, nothing is stored.
    clock
        .advance(Duration::from_millis(stead_ratelimit::FORGET_AFTER_IDLE_MS))
        .await;
    assert_eq!(ns.list_objects(None, 1000).await.unwrap().objects.len(), 0);
    assert_eq!(rt.pending_alarms().await, 0);
    // A forgotten key starts afresh, exactly as it would have anyway.
    assert_eq!(limits.check("ip-0", &busy, 1).await.unwrap().remaining, 9);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn named_policies_resets_and_configuration() {
    let rt = TestRuntime::memory().await;
    let mut policies = Policies::new();
    policies.insert("api", Policy::per_minute(2)).unwrap();
    policies
        .insert(
            "login",
            Policy::per_hour(3).algorithm(Algorithm::SlidingWindow),
        )
        .unwrap();
    let limits =
        RateLimitClient::with_config(&rt, RateLimitConfig::with_policies(policies.clone()))
            .unwrap();
    // One runtime, one configuration: another set of policies is refused, the same is fine,
    // and a plain client sees the configured ones.
    assert!(RateLimitClient::with_config(&rt, RateLimitConfig::default()).is_err());
    RateLimitClient::with_config(&rt, RateLimitConfig::with_policies(policies)).unwrap();
    assert!(
        RateLimitClient::new(&rt)
            .unwrap()
            .policies()
            .get("api")
            .is_some()
    );

    let api = limits.named("api").unwrap();
    let login = limits.named("login").unwrap();
    let err = limits.named("nope").unwrap_err().to_string();
    assert!(err.contains("api, login"), "{err}");
    for _ in 0..2 {
        assert!(limits.check("alice", &api, 1).await.unwrap().allowed);
        assert!(limits.check("alice", &login, 1).await.unwrap().allowed);
    }
    assert!(!limits.check("alice", &api, 1).await.unwrap().allowed);
    // The same quota under two names is two limiters.
    let other = Limit::inline(Policy::per_minute(2))
        .unwrap()
        .named("other")
        .unwrap();
    assert!(limits.check("alice", &other, 1).await.unwrap().allowed);
    // Reset one policy, then every policy of the key.
    assert!(limits.reset("alice", &api).await.unwrap());
    assert!(!limits.reset("alice", &api).await.unwrap());
    assert!(limits.check("alice", &api, 1).await.unwrap().allowed);
    assert!(limits.check("bob", &api, 1).await.unwrap().allowed);
    assert_eq!(limits.reset_all("alice").await.unwrap(), 3);
    assert_eq!(limits.peek("alice", &login).await.unwrap().remaining, 3);
    assert_eq!(
        limits.peek("bob", &api).await.unwrap().remaining,
        1,
        "bob untouched"
    );
    // Keys are checked like names.
    assert!(limits.check("", &api, 1).await.is_err());
    assert!(limits.check(&"k".repeat(257), &api, 1).await.is_err());
    assert!(limits.check("a\u{1f}b", &api, 1).await.is_err());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_changed_policy_starts_the_key_afresh() {
    let rt = sqlite().await;
    let mut old = Policies::new();
    old.insert("api", Policy::per_minute(2)).unwrap();
    {
        let limits = RateLimitClient::with_config(
            &rt,
            RateLimitConfig::with_policies(old).durability(Durability::ProcessCrashSafe),
        )
        .unwrap();
        let api = limits.named("api").unwrap();
        limits.check("k", &api, 2).await.unwrap();
        assert!(!limits.check("k", &api, 1).await.unwrap().allowed);
    }
    let mut new = Policies::new();
    new.insert(
        "api",
        Policy::per_minute(10).algorithm(Algorithm::FixedWindow),
    )
    .unwrap();
    let rt = rt.restart().await;
    let limits = RateLimitClient::with_config(
        &rt,
        RateLimitConfig::with_policies(new).durability(Durability::ProcessCrashSafe),
    )
    .unwrap();
    let api = limits.named("api").unwrap();
    let d = limits.check("k", &api, 1).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 9));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn by_default_state_is_in_memory_and_a_restart_forgives() {
    let rt = sqlite().await;
    let limit = Limit::inline(Policy::per_hour(1)).unwrap();
    {
        let limits = RateLimitClient::new(&rt).unwrap();
        assert!(limits.check("k", &limit, 1).await.unwrap().allowed);
        assert!(!limits.check("k", &limit, 1).await.unwrap().allowed);
    }
    let rt = rt.restart().await;
    let limits = RateLimitClient::new(&rt).unwrap();
    assert!(limits.check("k", &limit, 1).await.unwrap().allowed);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_memory_state_is_written_back_when_a_limiter_leaves_memory() {
    // The default keeps state in memory and writes it only when the object leaves memory:
    // leaving (idle, or pushed out by the active-object cap) must forgive nothing.
    let rt = TestRuntime::builder()
        .sqlite()
        .starting_at("2026-03-01T00:00:00.25Z")
        .tune(|b| b.max_active_objects(8))
        .start()
        .await;
    let limits = RateLimitClient::new(&rt).unwrap();
    let ns = rt.get_namespace::<RateLimiter>().unwrap().unwrap();
    for alg in ALL {
        let limit = Limit::inline(Policy::per_hour(5).algorithm(alg)).unwrap();
        let key = format!("{alg:?}");
        for _ in 0..5 {
            assert!(limits.check(&key, &limit, 1).await.unwrap().allowed);
            rt.advance(Duration::from_secs(1)).await;
        }
        // Idle past the runtime's idle timeout: the limiter leaves memory.
        rt.advance(Duration::from_secs(61)).await;
        stead_fixtures::eventually("the limiter left memory", || async {
            ns.active_objects() == 0
        })
        .await;
        let d = limits.check(&key, &limit, 1).await.unwrap();
        assert!(!d.allowed, "{key}: leaving memory forgave nothing");
        assert_eq!(limits.peek(&key, &limit).await.unwrap().remaining, 0);
    }
    // Pushed out by the cap: 20 more keys, each admitted once, in an 8-object runtime.
    let limit = Limit::inline(Policy::per_hour(2)).unwrap();
    for i in 0..20 {
        assert!(
            limits
                .check(&format!("k{i}"), &limit, 1)
                .await
                .unwrap()
                .allowed
        );
    }
    for i in 0..20 {
        let k = format!("k{i}");
        assert!(limits.check(&k, &limit, 1).await.unwrap().allowed, "{k}");
        assert!(!limits.check(&k, &limit, 1).await.unwrap().allowed, "{k}");
    }
    // Once every key is back to a fresh key's state, nothing is stored.
    rt.advance(Duration::from_secs(3600 + 61)).await;
    rt.advance(Duration::from_millis(stead_ratelimit::FORGET_AFTER_IDLE_MS))
        .await;
    assert_eq!(ns.list_objects(None, 100).await.unwrap().objects.len(), 0);
    assert_eq!(rt.pending_alarms().await, 0);
    rt.shutdown().await.unwrap();
}
