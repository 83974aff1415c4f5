//! Asking costs no memory: long-polls on the versions of sets that do not exist leave
//! nothing behind (alone in its binary, so that the resident size measured is this test's).

use stead_fixtures::{TestClient, TestRuntime};
use stead_flags::FlagSet;

/// The process's resident memory, in bytes (Linux).
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_polls_on_unknown_sets_leave_nothing_behind() {
    // Few objects in memory at once, so that what is measured is what the polls leave.
    let rt = TestRuntime::builder()
        .tune(|b| b.max_active_objects(1_000))
        .start()
        .await;
    let http = TestClient::new(axum::Router::new().nest(
        "/flags",
        stead_flags::router(&rt).unwrap().unauthenticated(),
    ));
    let snapshots = rt
        .get_namespace::<FlagSet>()
        .unwrap()
        .unwrap()
        .env()
        .snapshots
        .clone();
    let batch = |from: usize| {
        let http = http.clone();
        async move {
            let polls: Vec<_> = (from..from + 500)
                .map(|i| {
                    let req = http.get(&format!("/flags/nothing-{i}/version?after=0&wait_ms=1"));
                    async move { req.send().await.status }
                })
                .collect();
            for status in futures_util::future::join_all(polls).await {
                assert_eq!(status, 200);
            }
        }
    };
    for b in 0..40 {
        batch(b * 500).await;
    }
    let warm = resident();
    for b in 40..200 {
        batch(b * 500).await;
    }
    let grown = resident().saturating_sub(warm);
    println!(
        "100,000 version polls on unknown sets: resident memory grew {} KiB over the last 80,000",
        grown / 1024
    );
    assert_eq!(
        snapshots.watched_sets(),
        0,
        "no channel is left of a finished poll"
    );
    assert_eq!(
        snapshots.published_sets(),
        0,
        "an unknown set is never published"
    );
    // A poll cut short (its client went away) leaves nothing either.
    let poll = http.get("/flags/gone/version?after=0&wait_ms=60000");
    let waiting = tokio::spawn(async move { poll.send().await });
    stead_fixtures::eventually("the poll waits", || async { snapshots.watched_sets() == 1 }).await;
    waiting.abort();
    stead_fixtures::eventually("the cut poll is gone", || async {
        snapshots.watched_sets() == 0
    })
    .await;
    // Before, every poll left a channel (some hundreds of bytes each: 80,000 of them are
    // tens of MiB); now the growth is the allocator's noise.
    assert!(grown < 16 * 1024 * 1024, "grew {grown} bytes");
    rt.shutdown().await.unwrap();
}
