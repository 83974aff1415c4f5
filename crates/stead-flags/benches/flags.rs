//! In-process evaluation: one flag with fractional targeting (the hash and the split), one
//! with a rule over several attributes, and a bulk evaluation of 100 flags, all from a
//! published snapshot (no turn). Also evaluations through the client (the cached snapshot,
//! then the evaluation).
//!
//! `cargo bench -p stead-flags --bench flags`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use stead_flags::{Edit, FlagSetDefinition, FlagsClient, Snapshot};

fn set() -> Value {
    let mut flags: Map<String, Value> = (0..100)
        .map(|i| {
            (
                format!("rollout-{i}"),
                json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                    "defaultVariant": "off", "targeting": {"fractional": [["on", 20], ["off", 80]]}}),
            )
        })
        .collect();
    flags.insert(
        "rules".into(),
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"and": [
                {"ends_with": [{"var": "email"}, "@example.com"]},
                {">=": [{"var": "age"}, 18]},
                {"in": [{"var": "country"}, ["de", "fr", "nl"]]},
                {"sem_ver": [{"var": "version"}, ">=", "2.1.0"]}]}, "on"]}}),
    );
    json!({ "flags": flags })
}

fn bench(c: &mut Criterion) {
    let snap = Snapshot::new(1, FlagSetDefinition::parse(&set()).unwrap());
    let ctx: Map<String, Value> = json!({"targetingKey": "user-42", "email": "ana@example.com",
        "age": 30, "country": "fr", "version": "2.3.0"})
    .as_object()
    .unwrap()
    .clone();
    let mut g = c.benchmark_group("evaluate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fractional", |b| {
        b.iter(|| black_box(snap.evaluate(black_box("rollout-7"), &ctx, 0)))
    });
    g.bench_function("four-condition rule", |b| {
        b.iter(|| black_box(snap.evaluate(black_box("rules"), &ctx, 0)))
    });
    g.throughput(Throughput::Elements(101));
    g.bench_function("bulk (101 flags)", |b| {
        b.iter(|| {
            for key in snap.keys() {
                black_box(snap.evaluate(key, &ctx, 0));
            }
        })
    });
    g.finish();

    let tokio = tokio::runtime::Runtime::new().unwrap();
    let flags = tokio.block_on(async {
        let rt = stead_core::Runtime::builder()
            .memory()
            .build()
            .await
            .unwrap();
        let flags = FlagsClient::new(&rt).unwrap();
        flags
            .replace("bench", &set(), Edit::default())
            .await
            .unwrap();
        // The runtime lives as long as the process.
        std::mem::forget(rt);
        flags
    });
    let mut g = c.benchmark_group("client");
    g.throughput(Throughput::Elements(1));
    g.bench_function("value::<bool> (fractional)", |b| {
        b.iter(|| {
            tokio.block_on(async {
                black_box(
                    flags
                        .value("bench", "rollout-7", false, &ctx)
                        .await
                        .unwrap(),
                )
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
