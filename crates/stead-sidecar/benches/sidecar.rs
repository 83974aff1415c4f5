//! Appends per second to one list, durable (SQLite, `Fsync`), with 256 appenders; and the
//! time to write and to read back one 16 MiB value.
//!
//! `cargo bench -p stead-sidecar`

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stead_core::Runtime;
use stead_fixtures::bench;
use stead_sidecar::{Condition, SidecarClient, SidecarConfig};

const APPENDERS: usize = 256;
const PER_APPENDER: usize = 20;

fn appends(c: &mut Criterion) {
    let tokio = bench::tokio();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio
        .block_on(Runtime::builder().sqlite(dir.path()).build())
        .unwrap();
    // Room for every round's items.
    let config = SidecarConfig::default()
        .max_total_bytes(1 << 30)
        .max_keys(1_000_000);
    let sidecars = SidecarClient::with_config(&rt, config).unwrap();
    let mut g = c.benchmark_group("sidecar_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((APPENDERS * PER_APPENDER) as u64));
    g.bench_function(
        BenchmarkId::new("appends_to_one_list", format!("appenders={APPENDERS}")),
        |b| {
            b.iter_custom(|iters| {
                let s = sidecars.clone();
                bench::rounds(&tokio, iters, APPENDERS, move |_, caller| {
                    let s = s.clone();
                    async move {
                        for i in 0..PER_APPENDER {
                            let item = serde_json::json!({"caller": caller, "i": i});
                            s.append("bench", "events", &item, Some(100_000))
                                .await
                                .unwrap();
                        }
                    }
                })
            })
        },
    );
    g.finish();

    let mut g = c.benchmark_group("sidecar_16mib_value");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let text = serde_json::to_string(&"x".repeat((16 << 20) - 2)).unwrap();
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("write", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let t = text.clone();
                let start = Instant::now();
                tokio
                    .block_on(sidecars.put_raw("big", "v", t, Condition::Always))
                    .unwrap();
                took += start.elapsed();
            }
            took
        })
    });
    g.bench_function("read", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let v = tokio.block_on(sidecars.get("big", "v")).unwrap().unwrap();
                assert_eq!(v.value.len(), text.len());
            }
            start.elapsed()
        })
    });
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
}

criterion_group!(benches, appends);
criterion_main!(benches);
