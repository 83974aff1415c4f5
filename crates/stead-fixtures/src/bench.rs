//! What the benches share: the runtime they run on and the fan-out they time.

use std::future::Future;
use std::time::{Duration, Instant};

/// The tokio runtime every bench runs on: two workers, as the machine the figures are
/// measured on has two cores.
pub fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `callers` tasks at once on `tokio`, each `op(caller)` to completion, and returns how
/// long the whole fan-out took (from the first spawn to the last task's end). A caller that
/// panics fails the bench.
///
/// ```
/// # let tokio = stead_fixtures::bench::tokio();
/// let took = stead_fixtures::bench::fan_out(&tokio, 8, |caller| async move {
///     for _ in 0..10 {
///         std::hint::black_box(caller);
///     }
/// });
/// assert!(took.as_secs() < 60);
/// ```
pub fn fan_out<F, Fut>(tokio: &tokio::runtime::Runtime, callers: usize, op: F) -> Duration
where
    F: Fn(usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Timed from a task on the runtime, not from the thread that blocks on it, so the
    // spawns and joins cost what they cost inside a service.
    tokio
        .block_on(tokio.spawn(async move {
            let start = Instant::now();
            let tasks: Vec<_> = (0..callers).map(|c| tokio::spawn(op(c))).collect();
            for t in tasks {
                t.await.expect("a bench caller finished without panicking");
            }
            start.elapsed()
        }))
        .expect("the fan-out finished")
}

/// Sums [`fan_out`] over `iters` rounds, for criterion's `iter_custom`; `op` is given the
/// round number (unique within the process) and the caller number.
pub fn rounds<F, Fut>(
    tokio: &tokio::runtime::Runtime,
    iters: u64,
    callers: usize,
    op: F,
) -> Duration
where
    F: Fn(u64, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    static ROUND: AtomicU64 = AtomicU64::new(0);
    (0..iters)
        .map(|_| {
            let round = ROUND.fetch_add(1, Ordering::Relaxed);
            let op = op.clone();
            fan_out(tokio, callers, move |c| op(round, c))
        })
        .sum()
}
