//! A fixed amount of work for counting instructions, which (unlike throughput on a shared
//! machine) comes out the same from run to run: 19,200 durable turns of one hot object (64
//! callers), or 20,000 turns spread over 2,000 objects (one caller each), SQLite in
//! `process-crash-safe` mode, runtime start and shutdown included.
//!
//! `cargo bench -p stead-core --bench turn_work` runs both once and prints their times. To
//! count instructions, build it (`cargo bench -p stead-core --bench turn_work --no-run`) and
//! run the executable it names under callgrind with the workload as its argument:
//! `valgrind --tool=callgrind <executable> hot` (or `spread`); "Collected" is the count.

use std::time::Instant;

#[path = "support/counter.rs"]
mod counter;

use counter::{Counter, Incr};
use stead_core::{Durability, Runtime};

/// Runs one workload: `(objects, callers, turns per caller)`.
fn run(name: &str, (objects, callers, per_caller): (usize, usize, usize)) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    tokio.block_on(async {
        let rt = Runtime::builder()
            .sqlite(dir.path())
            .shards(2)
            .durability(Durability::ProcessCrashSafe)
            .build()
            .await
            .expect("the runtime");
        let ns = rt.namespace::<Counter>(()).expect("the namespace");
        let started = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let stub = ns.get_by_name(&format!("o{}", i % objects));
                tokio::spawn(async move {
                    for _ in 0..per_caller {
                        stub.ask(Incr).await.expect("asked").expect("applied");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a caller");
        }
        println!(
            "turn_work {name}: {} turns in {:?}",
            callers * per_caller,
            started.elapsed()
        );
        rt.shutdown().await.expect("shutdown");
    });
}

fn main() {
    // `cargo bench` passes `--bench`; the workload to run alone is a bare word.
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (name, shape) in [("hot", (1, 64, 300)), ("spread", (2_000, 2_000, 10))] {
        if chosen.is_empty() || chosen.iter().any(|c| c == name) {
            run(name, shape);
        }
    }
}
