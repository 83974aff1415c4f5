//! Reserve + commit pairs per second on one budget, in process, durable (SQLite, `Fsync`):
//! 256 callers at once, every pair a reservation that fits and its commit.
//! `cargo bench -p stead-budget --bench budget`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stead_budget::{BudgetClient, BudgetSpec};
use stead_core::Runtime;
use stead_fixtures::bench;

const CALLERS: usize = 256;
const PAIRS: usize = 20;

fn pairs(c: &mut Criterion) {
    let tokio = bench::tokio();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio
        .block_on(Runtime::builder().sqlite(dir.path()).build())
        .unwrap();
    let budgets = BudgetClient::new(&rt).unwrap();
    let spec: BudgetSpec = serde_json::from_value(serde_json::json!({
        "total": 1u64 << 52,
        "processors": [
            {"id": "a", "weight": 1, "tier": "t"},
            {"id": "b", "weight": 1, "tier": "t"}
        ],
        "tiers": {"t": {"model": "m", "cost_per_call": 1, "max_concurrency": 10}}
    }))
    .unwrap();
    tokio.block_on(budgets.configure("one", spec)).unwrap();
    let mut g = c.benchmark_group("budget_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((CALLERS * PAIRS) as u64));
    g.bench_function(
        BenchmarkId::new(
            "reserve_commit_pairs_one_budget",
            format!("callers={CALLERS}"),
        ),
        |b| {
            b.iter_custom(|iters| {
                let budgets = budgets.clone();
                bench::rounds(&tokio, iters, CALLERS, move |round, caller| {
                    let budgets = budgets.clone();
                    async move {
                        let p = if caller.is_multiple_of(2) { "a" } else { "b" };
                        for i in 0..PAIRS {
                            let id = format!("{round}-{caller}-{i}");
                            budgets.reserve("one", &id, p, 100, 60_000).await.unwrap();
                            budgets.commit("one", &id, 60).await.unwrap();
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
