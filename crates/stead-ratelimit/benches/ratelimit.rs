//! Rate-limit checks per second, in-process, on SQLite runtimes: with the limiter's default
//! (state in memory) and with `ProcessCrashSafe` state. 256 callers spread over many keys
//! (every check admitted, and written when durable), and 256 callers on one hot key (almost
//! every check refused, nothing written).
//! `cargo bench -p stead-ratelimit --bench ratelimit`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stead_core::{Durability, Runtime};
use stead_fixtures::bench;
use stead_ratelimit::{Limit, Policy, RateLimitClient, RateLimitConfig};

const CALLERS: usize = 256;
const CHECKS: usize = 100;

fn checks(c: &mut Criterion) {
    let tokio = bench::tokio();
    for durable in [false, true] {
        checks_with(c, &tokio, durable);
    }
}

fn checks_with(c: &mut Criterion, tokio: &tokio::runtime::Runtime, durable: bool) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio
        .block_on(Runtime::builder().sqlite(dir.path()).build())
        .unwrap();
    let limits = if durable {
        RateLimitClient::with_config(
            &rt,
            RateLimitConfig::default().durability(Durability::ProcessCrashSafe),
        )
        .unwrap()
    } else {
        RateLimitClient::new(&rt).unwrap()
    };
    let mut g = c.benchmark_group(if durable {
        "ratelimit_process_crash_safe"
    } else {
        "ratelimit_default_memory"
    });
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements((CALLERS * CHECKS) as u64));
    for (label, hot) in [("many_keys", false), ("one_hot_key", true)] {
        // Generous enough that the spread keys are always admitted; the hot key is not.
        let limit = Limit::inline(Policy::per_second(1_000_000)).unwrap();
        let hot_limit = Limit::inline(Policy::per_second(100)).unwrap();
        g.bench_function(BenchmarkId::new(label, format!("callers={CALLERS}")), |b| {
            b.iter_custom(|iters| {
                let (limits, limit, hot_limit) = (limits.clone(), limit.clone(), hot_limit.clone());
                bench::rounds(tokio, iters, CALLERS, move |r, i| {
                    let (limits, limit, hot_limit) =
                        (limits.clone(), limit.clone(), hot_limit.clone());
                    async move {
                        for j in 0..CHECKS {
                            if hot {
                                limits.check("hot", &hot_limit, 1).await.unwrap();
                            } else {
                                let key = format!("k-{r}-{i}-{}", j % 10);
                                limits.check(&key, &limit, 1).await.unwrap();
                            }
                        }
                    }
                })
            })
        });
    }
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
}

criterion_group!(benches, checks);
criterion_main!(benches);
