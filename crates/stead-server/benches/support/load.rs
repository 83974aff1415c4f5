//! The load driver the HTTP benchmarks share: a fixed number of connections over loopback,
//! each sending one operation after another until the time is up.

use std::future::Future;
use std::time::{Duration, Instant};

/// The options both HTTP benchmarks take: `--seconds S` per row (2), `--rounds N` (3),
/// `--only TEXT` to run just the rows whose label contains TEXT (to profile one).
pub(crate) struct Args {
    pub(crate) seconds: f64,
    pub(crate) rounds: usize,
    only: Option<String>,
}

impl Args {
    /// Reads the options, and installs a log subscriber as the `stead` binary does (at
    /// `warn` unless `RUST_LOG` says otherwise): without one, every disabled span would
    /// still be offered to the `log` crate, a cost the server does not pay.
    pub(crate) fn from_env() -> Args {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
        Args {
            seconds: arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(2.0),
            rounds: arg("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3),
            only: arg("--only"),
        }
    }

    /// Whether the row labelled `label` runs.
    pub(crate) fn selected(&self, label: &str) -> bool {
        self.only.as_deref().is_none_or(|o| label.contains(o))
    }
}

/// What one run measured.
#[derive(Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) rps: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) errors: u64,
    /// Process CPU time (user and system, every thread: server and load generator alike)
    /// per successful operation.
    pub(crate) cpu_per_op: Duration,
}

/// The CPU time this process has used so far, user and system, all threads.
pub(crate) fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, indexes 11 and 12 after the name; the
    // clock tick is 100 Hz on every Linux this runs on.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Runs `op(client, connection, iteration)` on `connections` connections for `seconds`;
/// `op` answers whether the operation succeeded. Latencies are of successful operations.
pub(crate) async fn drive<F, Fut>(connections: usize, seconds: f64, op: F) -> Stats
where
    F: Fn(reqwest::Client, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let cpu_before = process_cpu();
    let tasks: Vec<_> = (0..connections)
        .map(|conn| {
            let (client, op) = (client.clone(), op.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if op(client.clone(), conn, i).await {
                        lat.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                    i += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu().saturating_sub(cpu_before);
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Stats {
        rps: all.len() as f64 / elapsed,
        p50: pct(0.5),
        p99: pct(0.99),
        errors,
        cpu_per_op: cpu / (all.len().max(1) as u32),
    }
}

/// The run with the median throughput.
pub(crate) fn median(mut runs: Vec<Stats>) -> Stats {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs[runs.len() / 2]
}
