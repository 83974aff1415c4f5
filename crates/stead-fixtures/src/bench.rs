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

/// Operations per second sustained by `callers` tasks, each calling `op(n)` in a loop (`n`
/// counts up from the caller's number by `callers`): half a second of warm-up (first
/// activations), then `secs` seconds counted. An operation that fails panics the bench.
pub async fn sustained<F, Fut>(callers: usize, secs: f64, op: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (op, done, stop) = (op.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = c;
                while !stop.load(Ordering::Relaxed) {
                    op(n).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    n += callers;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = done.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let n = done.load(Ordering::Relaxed) - before;
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("a bench caller finished without panicking");
    }
    n as f64 / took.as_secs_f64()
}

/// Durable turns per second: `callers` callers each incrementing a key of the core's probe
/// object, round-robin over `stubs` (see [`sustained`]).
pub async fn probe_increments(
    stubs: Vec<stead_core::Stub<stead_core::testing::probe::Probe>>,
    callers: usize,
    secs: f64,
) -> f64 {
    let stubs = std::sync::Arc::new(stubs);
    sustained(callers, secs, move |n| {
        let stubs = stubs.clone();
        async move {
            let stub = &stubs[n % stubs.len()];
            let incr = stead_core::testing::probe::Incr("n".into());
            stub.ask(incr).await.unwrap().unwrap();
        }
    })
    .await
}

/// The `--seconds S` a bench was given, or `default`.
pub fn seconds(default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The PostgreSQL server the benches and tests use: `STEAD_TEST_POSTGRES_URL`, or the
/// project machines' own.
pub fn postgres_url() -> String {
    std::env::var("STEAD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}
