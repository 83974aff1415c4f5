//! SQL in an object against the key-value storage beside it, and against plain SQLite, in
//! one run (the machine's noise cancels in the ratios).
//!
//! `cargo bench -p stead-core --bench sql` prints, on the SQLite backend in `Fsync` mode:
//! - a turn with one `INSERT` against a turn with one key-value put (64 callers in flight);
//! - a point `SELECT` turn against a key-value get turn;
//! - 100,000 rows into one object (turns of 1,000 rows, and turns of one row with 64 in
//!   flight) against the same rows into a plain SQLite database in WAL mode with
//!   `synchronous = FULL` (acknowledged means on disk, as in `Fsync`);
//! - 10,000 objects, each with a small table, writes spread over them, against key-value
//!   writes spread the same way;
//! - the heap (Rust's and SQLite's) an object in memory holds: with a one-row table beside
//!   one without SQL, and with a 1 MiB database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stead_core::{
    Context, DurableObject, Handler, Namespace, Result, Runtime, SqlValue, Stub, sql_params,
};

struct Bench;

impl DurableObject for Bench {
    const CLASS: &'static str = "bench-sql";
    /// Whether the object has a table (created by its activation).
    type Env = bool;
    async fn activate(ctx: &mut Context, sql: Arc<bool>) -> Result<Self> {
        if *sql {
            ctx.sql()
                .exec(
                    "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER, note TEXT)",
                    (),
                )
                .await?;
        }
        Ok(Bench)
    }
}

#[derive(Clone, Copy, Serialize, Deserialize)]
enum Op {
    Put(i64),
    Insert(i64),
    Get(i64),
    Select(i64),
    InsertMany(i64, u32),
    Ballast(u32),
    Size,
}

impl Handler<Op> for Bench {
    type Reply = Result<i64>;
    async fn handle(&mut self, op: Op, ctx: &mut Context) -> Result<i64> {
        match op {
            Op::Put(i) => {
                ctx.storage().put(&format!("k{i}"), &i)?;
                Ok(i)
            }
            Op::Insert(i) => {
                ctx.sql()
                    .exec("INSERT INTO t (v, note) VALUES (?1, 'x')", [i])
                    .await?;
                Ok(i)
            }
            Op::Get(i) => Ok(ctx
                .storage()
                .get::<i64>(&format!("k{}", i % 1000))
                .await?
                .unwrap_or(0)),
            Op::Select(i) => Ok(ctx
                .sql()
                .optional::<i64>("SELECT v FROM t WHERE id = ?1", [i % 1000 + 1])
                .await?
                .unwrap_or(0)),
            Op::InsertMany(from, n) => {
                let mut sql = ctx.sql();
                for i in 0..i64::from(n) {
                    sql.exec(
                        "INSERT INTO t (v, note) VALUES (?1, ?2)",
                        sql_params![from + i, "a row of some thirty bytes...."],
                    )
                    .await?;
                }
                Ok(from)
            }
            Op::Size => Ok(ctx.sql().size().await? as i64),
            Op::Ballast(kib) => {
                ctx.sql()
                    .exec(
                        "INSERT INTO t (v, note) SELECT x, hex(zeroblob(500)) FROM \
                         (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1) SELECT x FROM c)",
                        [SqlValue::Integer(i64::from(kib))],
                    )
                    .await?;
                Ok(0)
            }
        }
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn open(dir: &std::path::Path, sql: bool) -> (Runtime, Namespace<Bench>) {
    let rt = Runtime::builder()
        .sqlite(dir)
        .shards(2)
        .mailbox_capacity(16_384)
        .build()
        .await
        .unwrap();
    let ns = rt.namespace::<Bench>(sql).unwrap();
    (rt, ns)
}

/// `total` operations from `in_flight` tasks, operation `i` made by `op(i)` on the stub
/// `pick(i)`; answers operations per second.
async fn drive(
    stubs: Arc<Vec<Stub<Bench>>>,
    in_flight: usize,
    total: usize,
    op: fn(i64) -> Op,
) -> f64 {
    tokio::spawn(async move {
        let start = Instant::now();
        let per_task = total / in_flight;
        let tasks: Vec<_> = (0..in_flight)
            .map(|t| {
                let stubs = stubs.clone();
                tokio::spawn(async move {
                    for k in 0..per_task {
                        let i = (t * per_task + k) as i64;
                        let stub = &stubs[(i as usize * 7919) % stubs.len()];
                        stub.ask(op(i)).await.unwrap().unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (per_task * in_flight) as f64 / start.elapsed().as_secs_f64()
    })
    .await
    .unwrap()
}

/// Reads: a point SELECT against a get, alternated, best of three each (read turns are
/// short and the machine is noisy).
async fn reads(one: Arc<Vec<Stub<Bench>>>, n: usize) {
    let (mut get, mut select) = (0f64, 0f64);
    for _ in 0..3 {
        get = get.max(drive(one.clone(), 64, n * 4, Op::Get).await);
        select = select.max(drive(one.clone(), 64, n * 4, Op::Select).await);
    }
    row(
        "key-value get turns, one object, 64 in flight",
        get,
        get,
        "get",
    );
    row("point SELECT turns (by primary key)", select, get, "get");
}

fn row(what: &str, per_sec: f64, base: f64, base_name: &str) {
    println!(
        "{what:<62} {per_sec:>12.0}/s   {:>5.1}% of {base_name}",
        100.0 * per_sec / base
    );
}

/// Plain SQLite in WAL mode with `synchronous = FULL`: `rows` rows, `per_tx` per
/// transaction. Answers rows per second.
fn plain_sqlite(rows: usize, per_tx: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = rusqlite::Connection::open(dir.path().join("plain.db")).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, note TEXT);",
    )
    .unwrap();
    let start = Instant::now();
    let mut i = 0;
    while i < rows {
        let tx = db.unchecked_transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO t (v, note) VALUES (?1, ?2)")
                .unwrap();
            for _ in 0..per_tx {
                st.execute(rusqlite::params![
                    i as i64,
                    "a row of some thirty bytes...."
                ])
                .unwrap();
                i += 1;
            }
        }
        tx.commit().unwrap();
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

/// Heap bytes in use: Rust's (counted by the allocator below) and SQLite's own.
fn heap_bytes() -> i64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed) as i64 + sqlite_heap()
}

#[allow(unsafe_code)]
fn sqlite_heap() -> i64 {
    // SAFETY: a statistics read with no arguments.
    unsafe { rusqlite::ffi::sqlite3_memory_used() }
}

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The system allocator, counting the bytes it holds.
struct Counting;

#[allow(unsafe_code)]
// SAFETY: every call is passed to the system allocator unchanged; only a counter is kept.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: a pointer this allocator gave, with its layout.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let scale = if quick { 20 } else { 1 };
    let tokio = tokio_rt();
    tokio.block_on(async {
        println!("SQL in an object, SQLite backend, Fsync (2 shards)");
        // STEAD_BENCH_ONLY=spread runs the spread figures alone (for a profiler).
        let only = std::env::var("STEAD_BENCH_ONLY").unwrap_or_default();
        if only.is_empty() || only == "read" || only == "reads" {

        // One object: one INSERT per turn against one put per turn.
        let dir = tempfile::tempdir().unwrap();
        let (rt, ns) = open(dir.path(), true).await;
        let one = Arc::new(vec![ns.get_by_name("one")]);
        let n = 40_000 / scale;
        if only == "read" {
            for _ in 0..10 {
                drive(one.clone(), 64, n * 4, Op::Select).await;
            }
            return;
        }
        drive(one.clone(), 64, 2_000 / scale, Op::Put).await;
        drive(one.clone(), 64, 2_000 / scale, Op::Insert).await;
        // STEAD_BENCH_ONLY=reads prints the read figures alone.
        if only == "reads" {
            reads(one, n).await;
            return;
        }
        let put = drive(one.clone(), 64, n, Op::Put).await;
        let insert = drive(one.clone(), 64, n, Op::Insert).await;
        let put2 = drive(one.clone(), 64, n, Op::Put).await;
        let put = put.max(put2);
        row("key-value put turns, one object, 64 in flight", put, put, "put");
        row("INSERT turns, one object, 64 in flight", insert, put, "put");

        reads(one, n).await;
        rt.shutdown().await.unwrap();

        // 100,000 rows into one object against plain SQLite.
        let rows = 100_000 / scale;
        let plain_batched = plain_sqlite(rows, 1000);
        let plain_single = plain_sqlite(rows / 20, 1);
        let dir = tempfile::tempdir().unwrap();
        let (rt, ns) = open(dir.path(), true).await;
        let o = ns.get_by_name("bulk");
        let start = Instant::now();
        for b in 0..(rows / 1000) {
            o.ask(Op::InsertMany((b * 1000) as i64, 1000))
                .await
                .unwrap()
                .unwrap();
        }
        let batched = rows as f64 / start.elapsed().as_secs_f64();
        let o2 = Arc::new(vec![ns.get_by_name("bulk-single")]);
        let single = drive(o2, 64, rows, Op::Insert).await;
        println!();
        row("plain SQLite, WAL, synchronous=FULL, 1,000 rows per tx", plain_batched, plain_batched, "plain");
        row("one object, turns of 1,000 INSERTs", batched, plain_batched, "plain");
        row("plain SQLite, WAL, synchronous=FULL, one row per tx", plain_single, plain_batched, "plain");
        row("one object, one INSERT per turn, 64 in flight", single, plain_batched, "plain");
        println!(
            "  (one row per turn against one row per plain transaction: {:.1}x)",
            single / plain_single
        );
        rt.shutdown().await.unwrap();

        }
        // 10,000 objects, writes spread over them (first touches activate and create the
        // table).
        let dir = tempfile::tempdir().unwrap();
        let (rt, ns) = open(dir.path(), false).await;
        let objects = 10_000 / scale;
        let many: Arc<Vec<_>> = Arc::new((0..objects).map(|i| ns.get_by_name(&format!("o{i}"))).collect());
        let spread_put = drive(many.clone(), 256, objects * 4, Op::Put).await;
        let warm_put = drive(many.clone(), 256, objects * 4, Op::Put).await;
        rt.shutdown().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (rt, ns) = open(dir.path(), true).await;
        let many: Arc<Vec<_>> = Arc::new((0..objects).map(|i| ns.get_by_name(&format!("o{i}"))).collect());
        let spread_insert = drive(many.clone(), 256, objects * 4, Op::Insert).await;
        let warm_insert = drive(many.clone(), 256, objects * 4, Op::Insert).await;
        println!();
        row(&format!("{objects} objects, key-value puts spread, 256 in flight, first touches"), spread_put, spread_put, "puts");
        row(&format!("{objects} objects, INSERTs spread, first touches (tables created)"), spread_insert, spread_put, "puts");
        row(&format!("{objects} objects, key-value puts spread, all in memory"), warm_put, warm_put, "puts");
        row(&format!("{objects} objects, INSERTs spread, all in memory"), warm_insert, warm_put, "puts");
        rt.shutdown().await.unwrap();

        if !only.is_empty() {
            return;
        }
        // Memory of objects in memory with a small table, beside objects without SQL: the
        // heap held by Rust and by SQLite, per object.
        let dir = tempfile::tempdir().unwrap();
        let small = if quick { 50 } else { 2000 };
        let mut per = [0i64; 2];
        for (i, with_sql) in [false, true].into_iter().enumerate() {
            let (rt, ns) = open(dir.path().join(i.to_string()).as_path(), with_sql).await;
            ns.get_by_name("first").ask(Op::Put(1)).await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let before = heap_bytes();
            for j in 0..small {
                let o = ns.get_by_name(&format!("s{j}"));
                o.ask(if with_sql { Op::Insert(1) } else { Op::Put(1) }).await.unwrap().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            per[i] = (heap_bytes() - before) / small as i64;
            rt.shutdown().await.unwrap();
        }
        println!();
        println!(
            "{small} objects in memory, one small write each: heap {} bytes per object without SQL, {} with a one-row table",
            per[0], per[1]
        );

        // Memory of objects in memory, each with a 1 MiB database: written, the runtime
        // restarted, then each object activated by a read (its database read back whole).
        let dir = tempfile::tempdir().unwrap();
        let count = if quick { 4 } else { 50 };
        {
            let (rt, ns) = open(dir.path(), true).await;
            for i in 0..count {
                // About 1,000 rows of 1 KiB: a database of about 1 MiB.
                let o = ns.get_by_name(&format!("big{i}"));
                o.ask(Op::Ballast(1000)).await.unwrap().unwrap();
            }
            rt.shutdown().await.unwrap();
        }
        let (rt, ns) = open(dir.path(), true).await;
        ns.get_by_name("first").ask(Op::Size).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = heap_bytes();
        let mut size = 0;
        for i in 0..count {
            let o = ns.get_by_name(&format!("big{i}"));
            size = o.ask(Op::Size).await.unwrap().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        println!(
            "{count} objects in memory with a {} KiB database each: heap {} KiB per object",
            size / 1024,
            (heap_bytes() - before) / 1024 / count as i64,
        );
        rt.shutdown().await.unwrap();
    });
}
