//! A stalled store cannot fill memory: at the cap of commits in flight an object takes no
//! more messages, and callers are refused. In a test binary of its own, so that the
//! process's memory is this test's alone.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Probe, ProbeEnv};
use stead_core::{Error, Runtime};

// Several workers: the flood runs while commits are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_refuses_callers_instead_of_growing_memory() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(
        stead_core::SqliteBackend::open(dir.path(), stead_core::SqliteOptions::default().shards(1))
            .unwrap(),
    );
    let rt = Runtime::builder()
        .backend(backend.clone())
        .mailbox_capacity(1024)
        .build()
        .await
        .unwrap();
    let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let o = ns.get_by_name("flooded");
    // Acknowledged before the stall.
    for _ in 0..10 {
        o.ask(common::Incr("n".into())).await.unwrap().unwrap();
    }
    backend.hold_commits();
    // Released however the test ends (a held writer would keep the backend's drop waiting).
    let _release = ReleaseOnDrop(backend.clone());
    backend.start_commit();
    for _ in 0..2000 {
        if backend.commits_held() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(backend.commits_held(), 1, "the store stalls");
    let rss_before = rss_kib();
    let (mut accepted, mut refused) = (0u64, 0u64);
    for _ in 0..100_000 {
        match o.tell(common::Incr("n".into())) {
            Ok(()) => accepted += 1,
            Err(Error::Overloaded { .. }) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
        if (accepted + refused) % 1000 == 0 {
            // Let the object run what it took.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let rss_after = rss_kib();
    eprintln!(
        "stalled store: {accepted} accepted, {refused} refused; resident memory {rss_before} KiB -> {rss_after} KiB"
    );
    // At most the mailbox and the commits in flight (64 batches of at most 256 turns).
    assert!(accepted <= 1024 + 64 * 256 + 1024, "accepted {accepted}");
    assert!(refused >= 100_000 - accepted, "refused {refused}");
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    backend.release_commits();
    // Everything acknowledged before the stall is there after it (and what was accepted
    // during it, once it drains).
    let n = loop {
        match o.ask(common::Incr("n".into())).await {
            Ok(n) => break n.unwrap(),
            Err(Error::Overloaded { retry_after, .. }) => tokio::time::sleep(retry_after).await,
            Err(e) => panic!("{e:?}"),
        }
    };
    // Every acknowledged and every accepted increment, then this one: none lost.
    assert_eq!(n, 10 + accepted as i64 + 1);
    rt.shutdown().await.unwrap();
}

/// The process's resident memory, in KiB (0 where /proc is not there).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// Lets held commits go when dropped.
struct ReleaseOnDrop(Arc<stead_core::SqliteBackend>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release_commits();
    }
}
