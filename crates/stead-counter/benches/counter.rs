//! Increments per second on one counter name, durable (SQLite, `Fsync`), with thousands of
//! increments in flight, beside the same with idempotency keys; and exact reads per second
//! (each asks all 16 shards) of 64 counters by 256 callers.
//!
//! `cargo bench -p stead-counter --bench counter`

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stead_core::Runtime;
use stead_counter::{CounterClient, CounterConfig};

const IN_FLIGHT: usize = 4096;
const PER_TASK: usize = 25;

fn increments(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio
        .block_on(
            Runtime::builder()
                .sqlite(dir.path())
                .mailbox_capacity(16_384)
                .build(),
        )
        .unwrap();
    let counters = CounterClient::new(&rt, CounterConfig::default()).unwrap();
    let mut g = c.benchmark_group("counter_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((IN_FLIGHT * PER_TASK) as u64));
    let mut round = 0u64;
    for keyed in [false, true] {
        let id = BenchmarkId::new(
            if keyed {
                "one_name_with_idempotency_keys"
            } else {
                "one_name"
            },
            format!("in_flight={IN_FLIGHT}"),
        );
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let counters = counters.clone();
                    let r = round;
                    total += tokio
                        .block_on(tokio.spawn(async move {
                            let start = Instant::now();
                            let tasks: Vec<_> = (0..IN_FLIGHT)
                                .map(|t| {
                                    let c = counters.clone();
                                    tokio::spawn(async move {
                                        for i in 0..PER_TASK {
                                            let key = keyed.then(|| format!("{r}-{t}-{i}"));
                                            c.increment("hot", 1, key.as_deref()).await.unwrap();
                                        }
                                    })
                                })
                                .collect();
                            for t in tasks {
                                t.await.unwrap();
                            }
                            start.elapsed()
                        }))
                        .unwrap();
                }
                total
            })
        });
    }
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
}

const READERS: usize = 256;
const READS_PER_TASK: usize = 20;

fn reads(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio
        .block_on(Runtime::builder().sqlite(dir.path()).build())
        .unwrap();
    let counters = CounterClient::new(&rt, CounterConfig::default()).unwrap();
    tokio.block_on(async {
        for name in 0..64 {
            for i in 0..64 {
                let key = format!("seed-{i}");
                counters
                    .increment(&format!("c{name}"), 1, Some(&key))
                    .await
                    .unwrap();
            }
        }
    });
    let mut g = c.benchmark_group("counter_reads");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((READERS * READS_PER_TASK) as u64));
    g.bench_function(
        BenchmarkId::new("64_names_16_shards", format!("callers={READERS}")),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let counters = counters.clone();
                    total += tokio
                        .block_on(tokio.spawn(async move {
                            let start = Instant::now();
                            let tasks: Vec<_> = (0..READERS)
                                .map(|t| {
                                    let c = counters.clone();
                                    tokio::spawn(async move {
                                        for i in 0..READS_PER_TASK {
                                            let name = format!("c{}", (t + i) % 64);
                                            assert!(c.get(&name).await.unwrap().value > 0);
                                        }
                                    })
                                })
                                .collect();
                            for t in tasks {
                                t.await.unwrap();
                            }
                            start.elapsed()
                        }))
                        .unwrap();
                }
                total
            })
        },
    );
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
}

criterion_group!(benches, increments, reads);
criterion_main!(benches);
