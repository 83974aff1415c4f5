//! Uncontended acquire + release pairs per second, in-process, durable (SQLite, `Fsync`):
//! 256 callers, each on its own lock. `cargo bench -p stead-lock --bench lock`

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stead_core::Runtime;
use stead_lock::{AcquireOptions, LockClient};

const CALLERS: usize = 256;
const PAIRS: usize = 40;

fn pairs(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio
        .block_on(Runtime::builder().sqlite(dir.path()).build())
        .unwrap();
    let locks = LockClient::new(&rt).unwrap();
    let mut g = c.benchmark_group("lock_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((CALLERS * PAIRS) as u64));
    g.bench_function(
        BenchmarkId::new("acquire_release_pairs", format!("callers={CALLERS}")),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let locks = locks.clone();
                    total += tokio
                        .block_on(tokio.spawn(async move {
                            let start = Instant::now();
                            let tasks: Vec<_> = (0..CALLERS)
                                .map(|i| {
                                    let locks = locks.clone();
                                    tokio::spawn(async move {
                                        let name = format!("lock-{i}");
                                        let o =
                                            AcquireOptions::new("bench", Duration::from_secs(30));
                                        for _ in 0..PAIRS {
                                            let r = locks.try_acquire(&name, &o).await.unwrap();
                                            locks
                                                .release(&name, "bench", r.token.unwrap())
                                                .await
                                                .unwrap();
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

criterion_group!(benches, pairs);
criterion_main!(benches);
