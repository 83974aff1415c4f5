//! Waiting for background work without spinning.

use std::future::Future;
use std::time::Duration;

/// How long [`eventually`] waits before it fails the test.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long it sleeps between looks.
const PAUSE: Duration = Duration::from_millis(1);

/// Waits until `check` returns true, looking again every millisecond, and panics naming
/// `what` if it is still false after ten seconds.
///
/// For work that runs in the background (a waiter entering a queue, a renewer's turn after
/// the clock moved), never for time itself: move the manual clock for that.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let done = Arc::new(AtomicBool::new(false));
/// let flag = done.clone();
/// tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
/// stead_fixtures::eventually("the task ran", || async { done.load(Ordering::SeqCst) }).await;
/// # });
/// ```
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {DEADLINE:?} and this never happened: {what}"
        );
        tokio::time::sleep(PAUSE).await;
    }
}
