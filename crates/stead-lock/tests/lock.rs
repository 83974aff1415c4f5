//! The lock's promises: mutual exclusion (or at most N for a semaphore), strictly increasing
//! fencing tokens across expiries and restarts, expiry by alarm, a fair queue, and the HTTP
//! surface with every error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stead_core::{Clock, ManualClock};
use stead_fixtures::{TestRuntime, eventually, start_time};
use stead_lock::{AcquireOptions, LockClient, LockError};

async fn setup() -> (TestRuntime, LockClient, ManualClock) {
    let rt = TestRuntime::builder()
        // Some tests move time in a loop that races the objects on other threads: a call's
        // deadline on that clock could pass before the object runs. No test here is about
        // deadlines.
        .tune(|b| b.ask_timeout(Duration::from_secs(24 * 3600)))
        .start()
        .await;
    let locks = LockClient::new(&rt).unwrap();
    let clock = rt.clock.clone();
    (rt, locks, clock)
}

fn opts(holder: &str, ttl_s: u64) -> AcquireOptions {
    AcquireOptions::new(holder, Duration::from_secs(ttl_s))
}

#[tokio::test]
async fn one_holder_at_a_time_and_tokens_only_grow() {
    let (rt, locks, _clock) = setup().await;
    let a = locks.try_acquire("m", &opts("a", 10)).await.unwrap();
    assert!(a.acquired);
    let b = locks.try_acquire("m", &opts("b", 10)).await.unwrap();
    assert!(!b.acquired);
    assert_eq!(b.holder.as_deref(), Some("a"));
    assert_eq!(b.retry_after_ms, Some(10_000));
    // Asking again for a held lease returns it (a safe retry), not a second one.
    assert_eq!(
        locks.try_acquire("m", &opts("a", 10)).await.unwrap().token,
        a.token
    );
    let ta = a.token.unwrap();
    // Wrong holder and stale token are conflicts, never silent successes.
    assert!(matches!(
        locks.release("m", "b", ta).await,
        Err(LockError::NotHolder { .. })
    ));
    assert!(matches!(
        locks.release("m", "a", ta + 1).await,
        Err(LockError::StaleToken { current, .. }) if current == ta
    ));
    assert!(matches!(
        locks.renew("m", "b", ta, Duration::from_secs(5)).await,
        Err(LockError::NotHolder { .. })
    ));
    locks.release("m", "a", ta).await.unwrap();
    assert!(
        matches!(
            locks.release("m", "a", ta).await,
            Err(LockError::NotHolder { .. })
        ),
        "twice"
    );
    let b = locks.try_acquire("m", &opts("b", 10)).await.unwrap();
    assert!(b.token.unwrap() > ta);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn leases_expire_by_alarm_unless_renewed() {
    let (rt, locks, clock) = setup().await;
    let a = locks.try_acquire("e", &opts("a", 10)).await.unwrap();
    let ta = a.token.unwrap();
    clock.advance(Duration::from_secs(8)).await;
    let lease = locks
        .renew("e", "a", ta, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        lease.expires_at,
        start_time() + chrono::Duration::seconds(18)
    );
    clock.advance(Duration::from_secs(9)).await;
    assert_eq!(locks.state("e").await.unwrap().holders.len(), 1, "renewed");
    clock.advance(Duration::from_secs(1)).await;
    assert!(
        locks.state("e").await.unwrap().holders.is_empty(),
        "expired at 18 s"
    );
    assert!(!locks.validate("e", ta).await.unwrap().valid);
    assert!(matches!(
        locks.renew("e", "a", ta, Duration::from_secs(10)).await,
        Err(LockError::NotHolder { .. })
    ));
    let b = locks.try_acquire("e", &opts("b", 10)).await.unwrap();
    assert!(b.token.unwrap() > ta);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn waiters_are_served_in_order_and_time_out() {
    let (rt, locks, clock) = setup().await;
    let a = locks.try_acquire("q", &opts("a", 30)).await.unwrap();
    let wait = |h: &'static str, secs: u64| {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks
                .try_acquire("q", &opts(h, 30).wait(Duration::from_secs(secs)))
                .await
                .unwrap()
        })
    };
    let b = wait("b", 60);
    eventually("1 waiting", || async {
        locks.state("q").await.unwrap().waiters == 1
    })
    .await;
    let c = wait("c", 60);
    eventually("2 waiting", || async {
        locks.state("q").await.unwrap().waiters == 2
    })
    .await;
    let d = wait("d", 5);
    eventually("3 waiting", || async {
        locks.state("q").await.unwrap().waiters == 3
    })
    .await;
    // d gives up after 5 s, without polling.
    clock.advance(Duration::from_secs(5)).await;
    let d = d.await.unwrap();
    assert!(!d.acquired);
    assert_eq!(d.holder.as_deref(), Some("a"));
    // a releases: b, who came first, gets it; c still waits.
    locks.release("q", "a", a.token.unwrap()).await.unwrap();
    let b = b.await.unwrap();
    assert!(b.acquired);
    assert!(b.token > a.token);
    assert!(!c.is_finished());
    // b's lease lapses: c gets it by alarm.
    clock.advance(Duration::from_secs(30)).await;
    let c = c.await.unwrap();
    assert!(c.acquired && c.token > b.token);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_semaphore_admits_at_most_n() {
    let (rt, locks, _clock) = setup().await;
    let mut tokens = Vec::new();
    let mut refused = 0;
    for i in 0..5 {
        let r = locks
            .try_acquire("pool", &opts(&format!("w{i}"), 10).permits(3))
            .await
            .unwrap();
        match r.token {
            Some(t) => tokens.push(t),
            None => refused += 1,
        }
    }
    assert_eq!(tokens.len(), 3);
    assert_eq!(refused, 2);
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "each holder its own token");
    let err = locks
        .try_acquire("pool", &opts("x", 10).permits(4))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LockError::PermitMismatch { permits: 3 }),
        "{err}"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_and_leases_survive_a_restart() {
    let rt = TestRuntime::sqlite().await;
    let locks = LockClient::new(&rt).unwrap();
    let mut last = 0;
    for i in 0..5 {
        let r = locks
            .try_acquire("r", &opts(&format!("h{i}"), 60))
            .await
            .unwrap();
        last = r.token.unwrap();
        locks.release("r", &format!("h{i}"), last).await.unwrap();
    }
    let held = locks.try_acquire("r", &opts("keeper", 60)).await.unwrap();
    let rt = rt.restart().await;
    let locks = LockClient::new(&rt).unwrap();
    let st = locks.state("r").await.unwrap();
    assert_eq!(st.holders.len(), 1, "an unexpired lease is still held");
    assert_eq!(st.holders[0].token, held.token.unwrap());
    assert!(
        !locks
            .try_acquire("r", &opts("other", 60))
            .await
            .unwrap()
            .acquired
    );
    // It expires by the alarm kept across the restart; the next token is greater still.
    rt.advance(Duration::from_secs(60)).await;
    let next = locks.try_acquire("r", &opts("other", 60)).await.unwrap();
    assert!(next.token.unwrap() > held.token.unwrap() && held.token.unwrap() > last);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_precisely() {
    let (rt, locks, _clock) = setup().await;
    let bad = [
        opts("", 10),
        opts(&"h".repeat(300), 10),
        AcquireOptions::new("h", Duration::ZERO),
        AcquireOptions::new("h", Duration::from_secs(2 * 86_400)),
        opts("h", 10).permits(0),
        opts("h", 10).wait(Duration::from_secs(3600)),
    ];
    for o in bad {
        assert!(
            matches!(locks.try_acquire("v", &o).await, Err(LockError::Invalid(_))),
            "{o:?}"
        );
    }
    assert!(matches!(
        locks.try_acquire("", &opts("h", 1)).await,
        Err(LockError::Invalid(_))
    ));
    rt.shutdown().await.unwrap();
}

/// A resource that refuses writes whose token is lower than the highest it has seen.
#[derive(Default)]
struct Resource {
    highest: u64,
    accepted: Vec<u64>,
    rejected: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_with_pauses_longer_than_the_ttl_stays_safe() {
    for permits in [1u32, 3] {
        let (rt, locks, clock) = setup().await;
        let resource = Arc::new(Mutex::new(Resource::default()));
        let grants = Arc::new(Mutex::new(Vec::<u64>::new()));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..32u64)
            .map(|w| {
                let (locks, clock, resource, grants, done) = (
                    locks.clone(),
                    clock.clone(),
                    resource.clone(),
                    grants.clone(),
                    done.clone(),
                );
                tokio::spawn(async move {
                    let holder = format!("w{w}");
                    let mut x = w * 2654435761 + 1;
                    for _ in 0..15 {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let o = AcquireOptions::new(holder.clone(), Duration::from_secs(5))
                            .wait(Duration::from_secs(20))
                            .permits(permits);
                        let r = locks.try_acquire("shared", &o).await.unwrap();
                        let Some(token) = r.token else { continue };
                        grants.lock().unwrap().push(token);
                        let st = locks.state("shared").await.unwrap();
                        assert!(
                            st.holders.len() <= permits as usize,
                            "at most {permits} unexpired holders"
                        );
                        if (x >> 33) % 4 == 0 {
                            // A pause longer than the lease: by the time we write, we may have lost it.
                            let until = r.expires_at.unwrap() + chrono::Duration::seconds(1);
                            while clock.now() < until {
                                tokio::task::yield_now().await;
                            }
                        } else {
                            for _ in 0..(x >> 40) % 20 {
                                tokio::task::yield_now().await;
                            }
                        }
                        {
                            let mut res = resource.lock().unwrap();
                            if token < res.highest {
                                res.rejected += 1;
                            } else {
                                res.highest = token;
                                res.accepted.push(token);
                            }
                        }
                        let _ = locks.release("shared", &holder, token).await;
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        // Time moves on while they work, so leases lapse and waiters time out.
        while done.load(std::sync::atomic::Ordering::SeqCst) < 32 {
            clock.advance(Duration::from_millis(500)).await;
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        }
        for w in workers {
            w.await.unwrap();
        }
        let grants = grants.lock().unwrap().clone();
        let mut sorted = grants.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), grants.len(), "no token handed out twice");
        let (accepted, rejected) = {
            let res = resource.lock().unwrap();
            (res.accepted.clone(), res.rejected)
        };
        assert!(
            accepted.windows(2).all(|w| w[0] <= w[1]),
            "no stale write accepted"
        );
        assert!(!accepted.is_empty());
        if permits == 1 {
            assert!(
                rejected > 0,
                "some paused holders came back late and were fenced off"
            );
        }
        rt.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn the_guard_renews_until_released() {
    let (rt, locks, clock) = setup().await;
    let guard = locks.acquire("g", opts("a", 30)).await.unwrap();
    for _ in 0..10 {
        // The guard renews every 10 s, to 30 s from then.
        eventually("the renewer sleeps", || async { clock.sleepers() == 1 }).await;
        clock.advance(Duration::from_secs(10)).await;
        let renewed = clock.now() + chrono::Duration::seconds(30);
        eventually("the guard renewed its lease", || async {
            locks.state("g").await.unwrap().holders[0].expires_at == renewed
        })
        .await;
    }
    assert!(!guard.is_lost());
    assert_eq!(
        locks.state("g").await.unwrap().holders[0].token,
        guard.token(),
        "still held after 100 s"
    );
    let token = guard.token();
    guard.release().await.unwrap();
    assert!(!locks.validate("g", token).await.unwrap().valid);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_guard_says_when_its_lease_was_lost() {
    let (rt, locks, clock) = setup().await;
    let mut guard = locks.acquire("lost", opts("a", 30)).await.unwrap();
    eventually("the renewer sleeps until its first renewal", || async {
        clock.sleepers() == 1
    })
    .await;
    // A stall longer than the whole lease: the alarm ends it before the renewal runs.
    clock.jump(Duration::from_secs(31)).await;
    let other = locks.try_acquire("lost", &opts("b", 30)).await.unwrap();
    assert!(other.acquired && other.token.unwrap() > guard.token());
    tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("the guard reports the loss");
    assert!(guard.is_lost());
    assert!(matches!(guard.release().await, Err(e) if e.is_lease_lost()));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lock_holds_at_most_so_many_waiters_and_refuses_the_next_with_a_retry() {
    let (rt, locks, _clock) = setup().await;
    assert!(
        locks
            .try_acquire("q", &opts("owner", 600))
            .await
            .unwrap()
            .acquired
    );
    let max = stead_core::MAX_PARKED_PER_OBJECT;
    let mut waiting = Vec::new();
    for i in 0..max {
        let locks = locks.clone();
        waiting.push(tokio::spawn(async move {
            locks
                .try_acquire(
                    "q",
                    &opts(&format!("w{i}"), 600).wait(Duration::from_secs(60)),
                )
                .await
        }));
    }
    eventually("every waiter is in line", || async {
        locks.state("q").await.unwrap().waiters == max
    })
    .await;
    // One more is refused at once, as an overload to retry later, not held.
    let err = locks
        .try_acquire("q", &opts("late", 600).wait(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Runtime(stead_core::Error::Overloaded { .. })
        ),
        "{err:?}"
    );
    assert_eq!(locks.state("q").await.unwrap().waiters, max);
    for w in waiting {
        w.abort();
    }
    rt.shutdown().await.unwrap();
}
