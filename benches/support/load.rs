//! The load driver the HTTP benchmarks share: a fixed number of connections over loopback,
//! each sending one operation after another until the time is up.

use std::future::Future;
use std::time::{Duration, Instant};

/// The options both HTTP benchmarks take: `--seconds S` per row (2), `--rounds N` (3),
/// `--only TEXT` to run just the rows whose label contains TEXT (to profile one; several
/// TEXTs separated by commas run the rows that contain any of them; a TEXT ending in `$`
/// runs the rows whose label ends with the rest).
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

    /// Whether `--only` names `part` (rows that run only when asked for).
    pub(crate) fn named(&self, part: &str) -> bool {
        self.only
            .as_deref()
            .is_some_and(|o| o.split(',').any(|t| t.contains(part)))
    }

    /// Whether the row labelled `label` runs.
    pub(crate) fn selected(&self, label: &str) -> bool {
        self.only.as_deref().is_none_or(|o| {
            o.split(',').any(|t| match t.strip_suffix('$') {
                Some(end) => label.ends_with(end),
                None => label.contains(t),
            })
        })
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

/// What the connections did over one or more measured stretches.
#[derive(Default, Clone)]
pub(crate) struct Sample {
    /// Successful operations that ended before their stretch's deadline.
    ops: u64,
    /// The measured time: the stretches' lengths, added.
    seconds: f64,
    /// The latency of every successful operation, those that ended after a deadline too.
    latencies: Vec<Duration>,
    errors: u64,
    /// The process's CPU time, paid for every successful operation.
    cpu: Duration,
}

impl Sample {
    /// Successful operations per second.
    pub(crate) fn rps(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    /// Adds another stretch.
    pub(crate) fn add(&mut self, other: Sample) {
        self.ops += other.ops;
        self.seconds += other.seconds;
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.cpu += other.cpu;
    }

    pub(crate) fn stats(mut self) -> Stats {
        self.latencies.sort_unstable();
        let pct = |p: f64| {
            let all = &self.latencies;
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Stats {
            rps: self.rps(),
            p50: pct(0.5),
            p99: pct(0.99),
            errors: self.errors,
            cpu_per_op: self.cpu / (self.latencies.len().max(1) as u32),
        }
    }
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

/// The tokio runtime the HTTP benches serve and drive on (a worker per core, as the
/// `stead` binary runs).
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A client whose pool keeps `connections` connections open from one run to the next, so
/// that no run pays for connecting.
pub(crate) fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap()
}

/// Runs `op(client, connection, iteration)` on `connections` connections for `seconds`;
/// `op` answers whether the operation succeeded. The rate counts the operations that ended
/// by the deadline; latencies are of every successful operation.
pub(crate) async fn drive<F, Fut>(
    client: &reqwest::Client,
    connections: usize,
    seconds: f64,
    op: F,
) -> Sample
where
    F: Fn(reqwest::Client, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let cpu_before = process_cpu();
    let tasks: Vec<_> = (0..connections)
        .map(|conn| {
            let (client, op) = (client.clone(), op.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let (mut in_time, mut errors, mut i) = (0u64, 0u64, 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if op(client.clone(), conn, i).await {
                        let end = Instant::now();
                        lat.push(end - t);
                        in_time += u64::from(end <= deadline);
                    } else {
                        errors += 1;
                    }
                    i += 1;
                }
                (lat, in_time, errors)
            })
        })
        .collect();
    let mut sample = Sample {
        seconds,
        ..Sample::default()
    };
    for t in tasks {
        let (lat, in_time, errors) = t.await.unwrap();
        sample.latencies.extend(lat);
        sample.ops += in_time;
        sample.errors += errors;
    }
    sample.cpu = process_cpu().saturating_sub(cpu_before);
    sample
}

/// The run with the median throughput.
pub(crate) fn median(mut runs: Vec<Stats>) -> Stats {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs[runs.len() / 2]
}
