//! Throughput of durable turns, beside the raw SQLite ceiling measured in the same run.
//!
//! `cargo bench -p stead-core --bench core` prints, for the SQLite backend in `Fsync` mode:
//! one hot object incrementing a key; 10,000 objects each incrementing its own key; a plain
//! SQLite table upserted 1,000 rows per transaction (the ceiling); cold and warm ask
//! latency; and the memory of an idle active object. The in-flight count of each figure is
//! in its name: a caller waits one commit for its reply, so throughput is in-flight ÷
//! commit latency until the CPU is the limit.

use std::time::{Duration, Instant};

#[path = "support/counter.rs"]
mod counter;

use counter::{Counter, Incr};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use stead_core::{Context, DurableObject, Handler, Namespace, Runtime};

fn ns_id(name: &str) -> stead_core::ObjectId {
    stead_core::ObjectId::from_name(Counter::CLASS, name)
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn open(dir: &std::path::Path) -> (Runtime, Namespace<Counter>) {
    open_with(dir, true).await
}

/// Opens the benchmarks' runtime; `inline` says whether idle objects' turns may run in
/// their callers' tasks (`RuntimeConfig::inline_turns`), so that rows can be measured both
/// ways in one run.
async fn open_with(dir: &std::path::Path, inline: bool) -> (Runtime, Namespace<Counter>) {
    let rt = Runtime::builder()
        .sqlite(dir)
        .shards(2)
        .mailbox_capacity(16_384)
        .inline_turns(inline)
        .build()
        .await
        .unwrap();
    let ns = rt.namespace::<Counter>(()).unwrap();
    (rt, ns)
}

/// Runs `per_task` increments in each of `stubs.len()` concurrent tasks. The driver itself
/// runs on a worker, so that joining the callers is not a cross-thread wake-up each.
async fn drive(stubs: &[stead_core::Stub<Counter>], per_task: usize) -> Duration {
    let stubs = stubs.to_vec();
    tokio::spawn(async move {
        let start = Instant::now();
        let tasks: Vec<_> = stubs
            .into_iter()
            .map(|s| {
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        s.ask(Incr).await.unwrap().unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
    .await
    .unwrap()
}

/// A row's suffix: nothing for the default (turns of idle objects in their callers'
/// tasks), `/task_turns` for every turn on the object's own task.
fn way(inline: bool) -> &'static str {
    if inline { "" } else { "/task_turns" }
}

/// Measures `drive` as one benchmark.
fn bench_drive(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    tokio: &tokio::runtime::Runtime,
    id: BenchmarkId,
    stubs: &[stead_core::Stub<Counter>],
    per_task: usize,
) {
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += drive(stubs, per_task).await;
                }
                total
            })
        })
    });
}

fn durable_turns(c: &mut Criterion) {
    let tokio = tokio_rt();
    let mut g = c.benchmark_group("durable_turns_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(8));

    // One hot object, many callers in flight.
    for (in_flight, inline) in [
        (1024usize, true),
        (1024, false),
        (4096, true),
        (4096, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (rt, ns) = tokio.block_on(open_with(dir.path(), inline));
        let stubs: Vec<_> = (0..in_flight).map(|_| ns.get_by_name("hot")).collect();
        let per_task = 50;
        g.throughput(Throughput::Elements((in_flight * per_task) as u64));
        let id = BenchmarkId::new(
            "one_hot_object",
            format!("in_flight={in_flight}{}", way(inline)),
        );
        bench_drive(&mut g, &tokio, id, &stubs, per_task);
        tokio.block_on(rt.shutdown()).unwrap();
    }

    // A few objects, one caller each: bound by the commit's latency, not by CPU. The writer
    // paces itself only under many writers; these rows show what that costs the few.
    for (objects, inline) in [
        (4usize, true),
        (4, false),
        (16, true),
        (64, true),
        (64, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (rt, ns) = tokio.block_on(open_with(dir.path(), inline));
        let stubs: Vec<_> = (0..objects)
            .map(|i| ns.get_by_name(&format!("m{i}")))
            .collect();
        let per_task = 2000 / objects;
        tokio.block_on(drive(&stubs, 1));
        g.throughput(Throughput::Elements((objects * per_task) as u64));
        bench_drive(
            &mut g,
            &tokio,
            BenchmarkId::new("moderate", format!("{objects}{}", way(inline))),
            &stubs,
            per_task,
        );
        tokio.block_on(rt.shutdown()).unwrap();
    }

    // 10,000 objects, each incrementing its own key; one caller per object.
    let objects = 10_000usize;
    let per_task = 5;
    for inline in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (rt, ns) = tokio.block_on(open_with(dir.path(), inline));
        let stubs: Vec<_> = (0..objects)
            .map(|i| ns.get_by_name(&format!("o{i}")))
            .collect();
        tokio.block_on(drive(&stubs, 1)); // activate them all first
        g.throughput(Throughput::Elements((objects * per_task) as u64));
        let id = BenchmarkId::new("10k_objects", format!("in_flight={objects}{}", way(inline)));
        bench_drive(&mut g, &tokio, id, &stubs, per_task);
        tokio.block_on(rt.shutdown()).unwrap();
    }

    // The ceiling: the same rows upserted into a plain table, 1,000 per transaction.
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        .unwrap();
    let rows = objects * per_task;
    // The same rows the objects write: keyed by object id (random order), not by a
    // sequential name, so both sides touch the same number of pages per transaction.
    let keys: Vec<String> = (0..objects)
        .map(|i| format!("{}/n", ns_id(&format!("o{i}"))))
        .collect();
    let mut round = 0i64;
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function(BenchmarkId::new("raw_sqlite_upsert", "1000_rows_per_tx"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for chunk in 0..rows / 1000 {
                    round += 1;
                    let tx = conn.unchecked_transaction().unwrap();
                    {
                        let mut st = tx
                            .prepare_cached(
                                "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                            )
                            .unwrap();
                        for i in 0..1000 {
                            let k = &keys[(chunk * 1000 + i) % objects];
                            st.execute(rusqlite::params![k, round.to_string().as_bytes()]).unwrap();
                        }
                    }
                    tx.commit().unwrap();
                }
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn activation(c: &mut Criterion) {
    let tokio = tokio_rt();
    let dir = tempfile::tempdir().unwrap();
    let (rt, ns) = tokio.block_on(open(dir.path()));
    let mut g = c.benchmark_group("activation_sqlite");
    g.sample_size(20);
    let mut next = 0u64;
    g.bench_function("cold_object_first_ask", |b| {
        b.iter_custom(|iters| {
            let stubs: Vec<_> = (0..iters)
                .map(|_| {
                    next += 1;
                    ns.get_by_name(&format!("cold-{next}"))
                })
                .collect();
            // On a worker: the caller and the object wake each other without a thread hop.
            tokio
                .block_on(tokio.spawn(async move {
                    let start = Instant::now();
                    for s in &stubs {
                        // A read-only probe: activation (with its storage read) plus one turn.
                        s.ask(Peek).await.unwrap();
                    }
                    start.elapsed()
                }))
                .unwrap()
        })
    });
    let task_dir = tempfile::tempdir().unwrap();
    let (task_rt, task_ns) = tokio.block_on(open_with(task_dir.path(), false));
    for (ns, name) in [
        (&ns, "warm_object_ask"),
        (&task_ns, "warm_object_ask/task_turns"),
    ] {
        let warm = ns.get_by_name("warm");
        tokio.block_on(warm.ask(Peek)).unwrap();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let warm = warm.clone();
                tokio
                    .block_on(tokio.spawn(async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            warm.ask(Peek).await.unwrap();
                        }
                        start.elapsed()
                    }))
                    .unwrap()
            })
        });
    }
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
    tokio.block_on(task_rt.shutdown()).unwrap();
}

#[derive(Serialize, Deserialize)]
struct Peek;

impl Handler<Peek> for Counter {
    type Reply = i64;
    async fn handle(&mut self, _: Peek, _: &mut Context) -> i64 {
        self.value
    }
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn idle_memory(_: &mut Criterion) {
    let tokio = tokio_rt();
    let rt = tokio
        .block_on(
            Runtime::builder()
                .memory()
                .max_active_objects(1_000_000)
                .build(),
        )
        .unwrap();
    let ns = rt.namespace::<Counter>(()).unwrap();
    let n = 100_000u64;
    // Warm up allocator pools with a first batch, then measure the growth of the second.
    let touch = |from: u64, to: u64| {
        tokio.block_on(async {
            for i in from..to {
                ns.get_by_name(&format!("idle-{i}"))
                    .ask(Peek)
                    .await
                    .unwrap();
            }
        })
    };
    touch(0, 10_000);
    let before = rss_bytes();
    touch(10_000, 10_000 + n);
    let after = rss_bytes();
    assert_eq!(rt.active_objects() as u64, 10_000 + n);
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "idle_memory: {n} idle active objects (no stored state) grew RSS by {} KiB: {} bytes per object",
            (a.saturating_sub(b)) / 1024,
            a.saturating_sub(b) / n
        );
    }
    tokio.block_on(rt.shutdown()).unwrap();
}

criterion_group!(benches, durable_turns, activation, idle_memory);
criterion_main!(benches);
