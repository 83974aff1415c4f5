//! Increments per second on one counter name, durable (SQLite, `Fsync`), with thousands of
//! increments in flight, beside the same with idempotency keys; and exact reads per second
//! of 64 counters of 16 shards by 256 callers.
//!
//! `cargo bench -p stead-counter --bench counter`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stead_core::Runtime;
use stead_counter::CounterClient;
use stead_fixtures::bench;

const IN_FLIGHT: usize = 4096;
const PER_TASK: usize = 25;
const READERS: usize = 256;
const READS_PER_TASK: usize = 20;

/// The bench tokio runtime and a counter client on a fresh SQLite store.
fn setup() -> (
    tokio::runtime::Runtime,
    Runtime,
    CounterClient,
    tempfile::TempDir,
) {
    let tokio = bench::tokio();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio
        .block_on(
            Runtime::builder()
                .sqlite(dir.path())
                .mailbox_capacity(16_384)
                .build(),
        )
        .unwrap();
    let counters = CounterClient::new(&rt).unwrap();
    (tokio, rt, counters, dir)
}

fn increments(c: &mut Criterion) {
    let (tokio, rt, counters, _dir) = setup();
    let mut g = c.benchmark_group("counter_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((IN_FLIGHT * PER_TASK) as u64));
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
                let c = counters.clone();
                bench::rounds(&tokio, iters, IN_FLIGHT, move |r, t| {
                    let c = c.clone();
                    async move {
                        for i in 0..PER_TASK {
                            let key = keyed.then(|| format!("{r}-{t}-{i}"));
                            c.increment("hot", 1, key.as_deref()).await.unwrap();
                        }
                    }
                })
            })
        });
    }
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
}

fn reads(c: &mut Criterion) {
    let (tokio, rt, counters, _dir) = setup();
    // 64 counters with a value in (nearly) every shard.
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
                let c = counters.clone();
                bench::rounds(&tokio, iters, READERS, move |_, t| {
                    let c = c.clone();
                    async move {
                        for i in 0..READS_PER_TASK {
                            let name = format!("c{}", (t + i) % 64);
                            assert!(c.get(&name).await.unwrap().value > 0);
                        }
                    }
                })
            })
        },
    );
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
}

criterion_group!(benches, increments, reads);
criterion_main!(benches);
