//! Decisions per second in process: a policy's decision alone (pure), and lease + report
//! pairs through the controller object (each report is a decision), durable on SQLite
//! (`Fsync`) with 256 callers each on its own controller, and on one controller.
//! `cargo bench -p stead-controller --bench controller`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stead_controller::{
    Bounds, ControllerClient, ControllerSpec, GradientState, Observation, Policy, Sample, Shape,
    Thresholds, Window,
};
use stead_core::Runtime;
use stead_fixtures::bench;

const CALLERS: usize = 256;
const PAIRS: usize = 20;

fn spec() -> ControllerSpec {
    serde_json::from_str(r#"{"interval_ms":0,"min_batch":1,"max_batch":10,"concurrency":1000}"#)
        .unwrap()
}

/// One policy decision over a window of 100 outcomes.
fn policy(c: &mut Criterion) {
    let mut g = c.benchmark_group("controller_policy");
    g.throughput(Throughput::Elements(1));
    let batch = vec![
        Sample {
            ok: true,
            latency_ms: 12
        };
        10
    ];
    let mut window = Window::new(100);
    for _ in 0..10 {
        window.extend(&batch);
    }
    g.bench_function("thresholds_decide", |b| {
        b.iter(|| {
            let mut w = window.clone();
            w.extend(&batch);
            Policy::Thresholds(Thresholds).decide(
                &Bounds::SEED,
                Observation {
                    shape: Shape {
                        batch_size: 10,
                        interval_ms: 1000,
                    },
                    backing_off: false,
                    window: &w,
                    batch: &batch,
                },
                &mut GradientState::default(),
            )
        })
    });
    g.finish();
}

fn pairs(c: &mut Criterion) {
    let tokio = bench::tokio();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio
        .block_on(Runtime::builder().sqlite(dir.path()).build())
        .unwrap();
    let controllers = ControllerClient::new(&rt).unwrap();
    tokio.block_on(async {
        for i in 0..CALLERS {
            controllers
                .configure(&format!("c-{i}"), spec())
                .await
                .unwrap();
        }
        controllers.configure("shared", spec()).await.unwrap();
    });
    let mut g = c.benchmark_group("controller_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((CALLERS * PAIRS) as u64));
    for (label, shared) in [("own_controller", false), ("one_controller", true)] {
        g.bench_function(
            BenchmarkId::new(
                format!("lease_report_pairs_{label}"),
                format!("callers={CALLERS}"),
            ),
            |b| {
                b.iter_custom(|iters| {
                    let controllers = controllers.clone();
                    bench::rounds(&tokio, iters, CALLERS, move |_, caller| {
                        let controllers = controllers.clone();
                        async move {
                            let name = if shared {
                                "shared".to_owned()
                            } else {
                                format!("c-{caller}")
                            };
                            for _ in 0..PAIRS {
                                let l = controllers.lease(&name, None).await.unwrap();
                                let results = vec![
                                    Sample {
                                        ok: true,
                                        latency_ms: 5
                                    };
                                    l.batch_size as usize
                                ];
                                controllers
                                    .report(&name, &l.lease_id, results)
                                    .await
                                    .unwrap();
                            }
                        }
                    })
                })
            },
        );
    }
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
}

criterion_group!(benches, policy, pairs);
criterion_main!(benches);
