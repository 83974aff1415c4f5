//! Each algorithm, run through the real object on the manual clock, against a reference:
//! governor's GCRA (a differential test), GCRA itself for the token bucket, and naive models
//! for the two windows. Random traces; the windows are also checked never to admit more
//! than `limit` in any window.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use governor::{Quota, RateLimiter as Governor};
use proptest::prelude::*;
use stead_fixtures::TestRuntime;
use stead_ratelimit::{Algorithm, Decision, Limit, Policy, RateLimitClient};

const MS: u64 = 1_000_000;

/// A trace step: wait `gap_ns`, then ask for `cost` units.
#[derive(Debug, Clone, Copy)]
struct Step {
    gap_ns: u64,
    cost: u64,
}

fn steps(max_gap_ns: u64, max_cost: u64, len: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0..max_gap_ns, 0..max_gap_ns / 16 + 1],
            1..=max_cost,
        )
            .prop_map(|(gap_ns, cost)| Step { gap_ns, cost }),
        1..len,
    )
}

/// Runs `trace` through a rate-limiter object on a manual clock; the decisions, in order.
fn run_object(policy: &Policy, trace: &[Step]) -> Vec<Decision> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let rt = TestRuntime::builder()
            .starting_at("2026-03-01T00:00:00Z")
            .start()
            .await;
        let clock = rt.clock.clone();
        let limits = RateLimitClient::new(&rt).unwrap();
        let limit = Limit::inline(policy.clone()).unwrap();
        let mut out = Vec::new();
        for s in trace {
            clock.advance(Duration::from_nanos(s.gap_ns)).await;
            out.push(limits.check("k", &limit, s.cost).await.unwrap());
        }
        rt.shutdown().await.unwrap();
        out
    })
}

fn policies(alg: Algorithm) -> impl Strategy<Value = Policy> {
    (1u64..40, prop_oneof![Just(1000u64), 1..5_000u64], 1u64..60).prop_map(
        move |(limit, period_ms, burst)| {
            let p = Policy::new(limit, Duration::from_millis(period_ms)).algorithm(alg);
            match alg {
                Algorithm::Gcra | Algorithm::TokenBucket => p.burst(burst),
                _ => p,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Our GCRA admits and refuses exactly where governor does, and tells the same wait.
    #[test]
    fn gcra_matches_governor(policy in policies(Algorithm::Gcra), trace in steps(400 * MS, 4, 80)) {
        let trace: Vec<Step> = trace.into_iter().map(|s| Step { cost: s.cost.min(policy.capacity()), ..s }).collect();
        let interval = Duration::from_nanos(policy.period_ms * MS / policy.limit);
        let burst = NonZeroU32::new(policy.capacity() as u32).unwrap();
        let clock = FakeRelativeClock::default();
        let quota = Quota::with_period(interval).unwrap().allow_burst(burst);
        let gov = Governor::direct_with_clock(quota, clock.clone());
        let ours = run_object(&policy, &trace);
        for (i, (s, d)) in trace.iter().zip(&ours).enumerate() {
            use governor::clock::Clock as _;
            clock.advance(Duration::from_nanos(s.gap_ns));
            let theirs = gov
                .check_n(NonZeroU32::new(s.cost as u32).unwrap())
                .expect("cost is within the burst");
            prop_assert_eq!(d.allowed, theirs.is_ok(), "step {} of {:?}", i, trace);
            if let Err(not_until) = theirs {
                let wait = not_until.wait_time_from(clock.now()).as_nanos() as u64;
                prop_assert_eq!(d.retry_after_ms, Some(wait.div_ceil(MS)), "step {}", i);
            }
        }
    }

    /// A token bucket decides exactly as GCRA does whenever the interval is a whole number of
    /// nanoseconds (so neither rounds).
    #[test]
    fn token_bucket_decides_as_gcra(policy in policies(Algorithm::TokenBucket), trace in steps(400 * MS, 4, 80)) {
        let mut policy = policy;
        policy.period_ms = policy.period_ms.div_ceil(policy.limit) * policy.limit;
        let burst = policy.capacity();
        let trace: Vec<Step> = trace.into_iter().map(|s| Step { cost: s.cost.min(burst), ..s }).collect();
        let bucket = run_object(&policy, &trace);
        let gcra = run_object(&policy.clone().algorithm(Algorithm::Gcra), &trace);
        let b: Vec<(bool, u64)> = bucket.iter().map(|d| (d.allowed, d.remaining)).collect();
        let g: Vec<(bool, u64)> = gcra.iter().map(|d| (d.allowed, d.remaining)).collect();
        prop_assert_eq!(b, g);
    }

    /// The sliding window admits exactly what a naive log admits, and never more than
    /// `limit` in any window of `period`.
    #[test]
    fn sliding_window_is_exact(policy in policies(Algorithm::SlidingWindow), trace in steps(600 * MS, 3, 120)) {
        let period = policy.period_ms * MS;
        let trace: Vec<Step> = trace.into_iter().map(|s| Step { cost: s.cost.min(policy.limit), ..s }).collect();
        let ours = run_object(&policy, &trace);
        let mut now = 0u64;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (s, d) in trace.iter().zip(&ours) {
            now += s.gap_ns;
            let in_window: u64 = admitted.iter().filter(|(at, _)| at + period > now).map(|(_, n)| n).sum();
            let expect = in_window + s.cost <= policy.limit;
            prop_assert_eq!(d.allowed, expect);
            prop_assert_eq!(d.remaining, policy.limit - in_window - if expect { s.cost } else { 0 });
            if expect {
                admitted.push((now, s.cost));
            }
        }
        for &(start, _) in &admitted {
            let n: u64 = admitted.iter().filter(|(at, _)| *at >= start && *at < start + period).map(|(_, n)| n).sum();
            prop_assert!(n <= policy.limit, "{} admitted in the window from {}", n, start);
        }
    }

    /// The fixed window admits exactly what a per-window counter admits.
    #[test]
    fn fixed_window_counts_per_window(policy in policies(Algorithm::FixedWindow), trace in steps(600 * MS, 3, 120)) {
        let period = policy.period_ms * MS;
        let trace: Vec<Step> = trace.into_iter().map(|s| Step { cost: s.cost.min(policy.limit), ..s }).collect();
        let ours = run_object(&policy, &trace);
        let start: u64 = "2026-03-01T00:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap().timestamp_nanos_opt().unwrap() as u64;
        let mut now = start;
        let mut counts = std::collections::HashMap::<u64, u64>::new();
        for (s, d) in trace.iter().zip(&ours) {
            now += s.gap_ns;
            let used = counts.entry(now / period).or_default();
            let expect = *used + s.cost <= policy.limit;
            prop_assert_eq!(d.allowed, expect);
            if expect {
                *used += s.cost;
            }
            prop_assert_eq!(d.reset_ms, ((now / period + 1) * period - now).div_ceil(MS));
        }
    }
}

/// A cost above the burst can never pass: governor calls it insufficient capacity, and we
/// refuse it as a bad request rather than a 429 that would invite a retry.
#[test]
fn cost_above_burst_is_an_error_as_in_governor() {
    let gov = Governor::direct_with_clock(
        Quota::per_second(NonZeroU32::new(5).unwrap()),
        FakeRelativeClock::default(),
    );
    assert!(gov.check_n(NonZeroU32::new(6).unwrap()).is_err());
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let rt = TestRuntime::memory().await;
        let limits = RateLimitClient::new(&rt).unwrap();
        let limit = Limit::inline(Policy::per_second(5)).unwrap();
        let err = limits.check("k", &limit, 6).await.unwrap_err();
        assert!(err.to_string().contains("capacity of 5"), "{err}");
        assert!(limits.check("k", &limit, 5).await.unwrap().allowed);
        rt.shutdown().await.unwrap();
    });
}

/// The quota in governor's own words gives the same answers: `per_second(n)`.
#[test]
fn governor_per_second_quotas_agree() {
    for n in [1u32, 3, 7, 50, 1000] {
        let clock = FakeRelativeClock::default();
        let gov = Governor::direct_with_clock(
            Quota::per_second(NonZeroU32::new(n).unwrap()),
            clock.clone(),
        );
        let policy = Policy::per_second(u64::from(n));
        let trace: Vec<Step> = (0..(3 * n as usize + 20))
            .map(|i| Step {
                gap_ns: if i % 5 == 0 { 137 * MS } else { 0 },
                cost: 1,
            })
            .collect();
        let ours = run_object(&policy, &trace);
        for (s, d) in trace.iter().zip(&ours) {
            clock.advance(Duration::from_nanos(s.gap_ns));
            assert_eq!(d.allowed, gov.check().is_ok(), "per_second({n})");
        }
    }
}
