//! Online backups: a copy of a data directory taken while eight clients write holds, for
//! every object, a state that object had (never half a turn), everything acknowledged
//! before the backup began, and starts as a data directory of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use stead_core::{Context, DurableObject, Handler, Result, Runtime, SqliteBackend};

/// Two keys written in every turn: `b` is always twice `a` in any state the object had.
struct Pair {
    a: u64,
}

impl DurableObject for Pair {
    const CLASS: &'static str = "pair";
    type Env = ();
    async fn activate(ctx: &mut Context, _: Arc<()>) -> Result<Self> {
        Ok(Pair {
            a: ctx.storage().get("a").await?.unwrap_or(0),
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Bump;

impl Handler<Bump> for Pair {
    type Reply = Result<u64>;
    async fn handle(&mut self, _: Bump, ctx: &mut Context) -> Result<u64> {
        self.a += 1;
        ctx.storage().put("a", &self.a)?;
        ctx.storage().put("b", &(self.a * 2))?;
        Ok(self.a)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Read;

impl Handler<Read> for Pair {
    type Reply = Result<(u64, u64)>;
    async fn handle(&mut self, _: Read, ctx: &mut Context) -> Result<(u64, u64)> {
        let a = ctx.storage().get("a").await?.unwrap_or(0);
        let b = ctx.storage().get("b").await?.unwrap_or(0);
        Ok((a, b))
    }
}

const OBJECTS: usize = 32;

/// Waits (polling, bounded) until `done` reaches `n`.
async fn until(done: &AtomicU64, n: u64) {
    for _ in 0..20_000 {
        if done.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("the writers did not reach {n} acknowledged writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_a_state_every_object_had() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let copy = dest.path().join("copy");
    let rt = Runtime::builder()
        .sqlite(src.path())
        .shards(2)
        .build()
        .await
        .unwrap();
    let ns = rt.namespace::<Pair>(()).unwrap();
    let names: Vec<String> = (0..OBJECTS).map(|i| format!("o{i}")).collect();
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (ns, names, acked, done, stop) = (
                ns.clone(),
                names.clone(),
                acked.clone(),
                done.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut i = t;
                while !stop.load(Ordering::SeqCst) {
                    let name = &names[i % OBJECTS];
                    let v = ns.get_by_name(name).call(Bump).await.unwrap();
                    let mut a = acked.lock().unwrap();
                    let e = a.entry(name.clone()).or_default();
                    *e = (*e).max(v);
                    drop(a);
                    done.fetch_add(1, Ordering::SeqCst);
                    i += 7;
                }
            })
        })
        .collect();
    until(&done, 2_000).await;
    let before = acked.lock().unwrap().clone();
    let at_start = done.load(Ordering::SeqCst);
    let (from, to) = (src.path().to_owned(), copy.clone());
    let report = tokio::task::spawn_blocking(move || SqliteBackend::backup(&from, &to))
        .await
        .unwrap()
        .unwrap();
    let during = done.load(Ordering::SeqCst) - at_start;
    println!(
        "backup of {} shards, {} bytes, in {:?}; {during} writes acknowledged meanwhile",
        report.shards, report.bytes, report.elapsed
    );
    assert_eq!(report.shards, 2);
    // The runtime kept serving: writes go on after the backup too.
    until(&done, done.load(Ordering::SeqCst) + 500).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let mut last = HashMap::new();
    for name in &names {
        last.insert(name.clone(), ns.get_by_name(name).call(Read).await.unwrap());
    }
    rt.shutdown().await.unwrap();

    // The copy starts as a data directory of its own.
    let restored = Runtime::builder().sqlite(&copy).build().await.unwrap();
    let ns = restored.namespace::<Pair>(()).unwrap();
    for name in &names {
        let (a, b) = ns.get_by_name(name).call(Read).await.unwrap();
        assert_eq!(b, a * 2, "{name}: never half a turn");
        let had = before.get(name).copied().unwrap_or(0);
        assert!(
            a >= had,
            "{name}: {a} lost what was acknowledged before ({had})"
        );
        assert!(a <= last[name].0, "{name}: {a} is a value it had");
    }
    restored.shutdown().await.unwrap();
    // A destination that is not empty is refused; so is a directory that holds no data.
    assert!(SqliteBackend::backup(src.path(), &copy).is_err());
    assert!(SqliteBackend::backup(dest.path().join("nothing"), dest.path().join("x")).is_err());
}
