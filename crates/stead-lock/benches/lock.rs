//! Uncontended acquire + release pairs per second, in-process, durable (SQLite, `Fsync`):
//! 256 callers, each on its own lock. `cargo bench -p stead-lock --bench lock`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stead_core::Runtime;
use stead_fixtures::bench;
use stead_lock::{AcquireOptions, LockClient};

const CALLERS: usize = 256;
const PAIRS: usize = 40;

fn pairs(c: &mut Criterion) {
    let tokio = bench::tokio();
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
                let locks = locks.clone();
                bench::rounds(&tokio, iters, CALLERS, move |_, caller| {
                    let locks = locks.clone();
                    async move {
                        let name = format!("lock-{caller}");
                        let o = AcquireOptions::new("bench", Duration::from_secs(30));
                        for _ in 0..PAIRS {
                            let r = locks.try_acquire(&name, &o).await.unwrap();
                            let token = r.token.unwrap();
                            locks.release(&name, "bench", token).await.unwrap();
                        }
                    }
                })
            })
        },
    );
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
}

criterion_group!(benches, pairs);
criterion_main!(benches);
