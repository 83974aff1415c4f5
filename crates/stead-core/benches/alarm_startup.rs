//! Start-up with many pending alarms: how long until a runtime over a store holding N alarms
//! (none due yet) serves its first call, and how much memory the process gains, beside the
//! same figures for an empty store measured in the same run.
//!
//! `cargo bench -p stead-core --bench alarm_startup` (`-- 200000` for another N; the default
//! is 1,000,000). The alarms are written straight into the store's SQLite file (as turns
//! would write them: the object's alarm key and the scheduler's row), a day or more ahead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stead_core::{Context, DurableObject, Handler, ObjectId, Result, Runtime};

struct Sleeper;

impl DurableObject for Sleeper {
    const CLASS: &'static str = "sleeper";
    type Env = ();
    async fn activate(_: &mut Context, _: Arc<()>) -> Result<Self> {
        Ok(Sleeper)
    }
}

#[derive(Serialize, Deserialize)]
struct Ping;

impl Handler<Ping> for Sleeper {
    type Reply = u8;
    async fn handle(&mut self, _: Ping, _: &mut Context) -> u8 {
        1
    }
}

/// The process's resident memory, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Creates a one-shard store in `dir` holding `n` alarms, a day and more from now.
async fn fill(dir: &std::path::Path, n: u64) {
    let rt = Runtime::builder()
        .sqlite(dir)
        .shards(1)
        .build()
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
    drop(rt);
    let conn = rusqlite::Connection::open(dir.join("shard-00.db")).unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    use stead_core::Clock;
    let base = stead_core::SystemClock.now().timestamp_millis() + 86_400_000;
    {
        let mut kv = tx
            .prepare("INSERT INTO kv (class, id, key, value) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        let mut alarm = tx
            .prepare("INSERT INTO alarms (class, id, at_ms) VALUES (?1, ?2, ?3)")
            .unwrap();
        for i in 0..n {
            let id = ObjectId::from_name(Sleeper::CLASS, &format!("s{i}"));
            let at = base + i as i64;
            let id = &id.as_bytes()[..];
            kv.execute(rusqlite::params![
                Sleeper::CLASS,
                id,
                "\0alarm",
                at.to_string().as_bytes()
            ])
            .unwrap();
            alarm
                .execute(rusqlite::params![Sleeper::CLASS, id, at])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Builds a runtime over `dir` with the class registered, and waits until it answers a
/// call: (time to serving, memory gained in KiB, alarms held in memory).
async fn start(dir: &std::path::Path) -> (Duration, i64, usize) {
    let before = rss_kib();
    let started = Instant::now();
    let rt = Runtime::builder()
        .sqlite(dir)
        .register::<Sleeper>(())
        .build()
        .await
        .unwrap();
    let ns = rt.get_namespace::<Sleeper>().unwrap().unwrap();
    assert_eq!(ns.get_by_name("first").ask(Ping).await.unwrap(), 1);
    let held = rt.pending_alarms().await;
    let took = started.elapsed();
    let gained = rss_kib() as i64 - before as i64;
    rt.shutdown().await.unwrap();
    (took, gained, held)
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let empty = tempfile::tempdir().unwrap();
        let full = tempfile::tempdir().unwrap();
        fill(empty.path(), 0).await;
        let filling = Instant::now();
        fill(full.path(), n).await;
        eprintln!(
            "wrote {n} alarms in {:.1} s",
            filling.elapsed().as_secs_f64()
        );
        // Each start twice, the first to warm the page cache and the allocator.
        let _ = start(empty.path()).await;
        let (t0, m0, h0) = start(empty.path()).await;
        let _ = start(full.path()).await;
        let (t1, m1, h1) = start(full.path()).await;
        println!(
            "{:<28} {:>14} {:>16} {:>16}",
            "store", "to first reply", "RSS gained KiB", "alarms in memory"
        );
        println!(
            "{:<28} {:>11.1} ms {:>16} {:>16}",
            "empty",
            t0.as_secs_f64() * 1e3,
            m0,
            h0
        );
        println!(
            "{:<28} {:>11.1} ms {:>16} {:>16}",
            format!("{n} alarms, none due"),
            t1.as_secs_f64() * 1e3,
            m1,
            h1
        );
    });
}
