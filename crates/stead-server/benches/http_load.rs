//! The HTTP load benchmark: 256 connections over loopback against the real application, for
//! each pattern route it knows, beside a no-op handler served by the same process (the
//! ceiling), in `process-crash-safe` and `fsync` durability. Prints a table.
//!
//! `cargo bench -p stead-server --bench http_load` (`-- --seconds 5 --rounds 5` for longer
//! runs, `-- --only fsync` for some rows).
//! Only ever targets 127.0.0.1, and every run is bounded in time.

use std::io::Write;
use std::time::{Duration, Instant};

use axum::routing::get;
use stead_server::{Config, DurabilityMode};

#[path = "support/load.rs"]
mod load;

const CONNECTIONS: usize = 256;

/// The same allocator as the `stead` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Row {
    mode: &'static str,
    route: &'static str,
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    cpu: Duration,
    /// The share of the goal's base in each round (the route's rate beside the ceiling
    /// measured just before it), sorted; empty when the ceiling did not run.
    shares: Vec<f64>,
}

#[derive(Clone, Copy)]
enum Route {
    Noop,
    CounterIncrement,
    CounterRead,
    LockPair,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Noop => "GET /noop (ceiling)",
            Route::CounterIncrement => "POST /counters/{name}/increment",
            Route::CounterRead => "GET /counters/{name}",
            Route::LockPair => "lock acquire+release (pairs; 2 req)",
        }
    }

    /// How many HTTP requests one counted operation makes.
    fn requests(self) -> f64 {
        match self {
            Route::LockPair => 2.0,
            _ => 1.0,
        }
    }
}

async fn drive(base: &str, route: Route, seconds: f64) -> load::Stats {
    let base = base.to_owned();
    load::drive(CONNECTIONS, seconds, move |client, conn, _| {
        let base = base.clone();
        async move {
            let name = format!("load-{}", conn % 64);
            let req = match route {
                Route::LockPair => {
                    return lock_pair(&client, &base, &format!("load-lock-{conn}"))
                        .await
                        .is_ok();
                }
                Route::Noop => client.get(format!("{base}/noop")),
                Route::CounterIncrement => client
                    .post(format!("{base}/counters/{name}/increment"))
                    .header("content-type", "application/json")
                    .body(r#"{"by":1}"#),
                Route::CounterRead => client.get(format!("{base}/counters/{name}")),
            };
            match req.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await
}

/// One uncontended acquire and its release, over HTTP.
async fn lock_pair(client: &reqwest::Client, base: &str, name: &str) -> Result<(), ()> {
    let r = client
        .post(format!("{base}/locks/{name}/acquire"))
        .header("content-type", "application/json")
        .body(r#"{"holder":"load","ttl_ms":30000}"#)
        .send()
        .await
        .map_err(|_| ())?;
    let body: serde_json::Value = r.json().await.map_err(|_| ())?;
    let token = body["token"].as_u64().ok_or(())?;
    let r = client
        .post(format!("{base}/locks/{name}/release"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"holder":"load","token":{token}}}"#))
        .send()
        .await
        .map_err(|_| ())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(())
    }
}

/// Creates the 64 counters the load rows use, with a value in every shard.
async fn seed_counters(base: &str) {
    let client = reqwest::Client::new();
    for name in 0..64 {
        for i in 0..64 {
            let r = client
                .post(format!("{base}/counters/load-{name}/increment"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"by":1,"idempotency_key":"seed-{i}"}}"#))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "seeding: {}", r.status());
        }
    }
}

/// The median latency of a small write plus fsync in `dir`.
fn fsync_latency(dir: &std::path::Path) -> Duration {
    let mut f = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let mut samples = Vec::new();
    for i in 0..200u32 {
        f.write_all(&i.to_le_bytes()).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    // Rows are labelled "<durability> <route>" for `--only`.
    let args = load::Args::from_env();
    let (seconds, rounds) = (args.seconds, args.rounds);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    let mut fsync = Duration::ZERO;
    for (mode, label) in [
        (DurabilityMode::ProcessCrashSafe, "process-crash-safe"),
        (DurabilityMode::Fsync, "fsync"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        if matches!(mode, DurabilityMode::Fsync) {
            fsync = fsync_latency(dir.path());
        }
        let mut config = Config::default();
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.data_dir = dir.path().join("data");
        config.durability = mode;
        let (rt, addr) = tokio.block_on(async {
            let rt = stead_server::open_runtime(&config).await.unwrap();
            // The no-op goes through the same auth, limits and middleware as the patterns.
            let noop = axum::Router::new().route("/noop", get(|| async { "ok" }));
            let app = stead_server::app_with(&rt, &config, noop).unwrap();
            let listener = tokio::net::TcpListener::bind(config.bind).await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (rt, addr)
        });
        let base = format!("http://{addr}");
        // The counters the read row reads exist whether or not the increment row runs.
        tokio.block_on(seed_counters(&base));
        // Every route runs once per round, in turn, just after the ceiling: each round's share
        // compares the route with the ceiling of the same moment, so the machine's drift
        // touches both alike. The table gives the median round.
        let mut runs: Vec<(Route, Vec<load::Stats>)> = Vec::new();
        for _ in 0..rounds {
            for route in [
                Route::Noop,
                Route::CounterIncrement,
                Route::CounterRead,
                Route::LockPair,
            ] {
                if !args.selected(&format!("{label} {}", route.name())) {
                    continue;
                }
                tokio.block_on(drive(&base, route, 0.3)); // warm up
                let run = tokio.block_on(drive(&base, route, seconds));
                match runs.iter_mut().find(|(r, _)| r.name() == route.name()) {
                    Some((_, v)) => v.push(run),
                    None => runs.push((route, vec![run])),
                }
            }
        }
        // The goal's base: the ceiling, or for fsync the lower of it and what the connections
        // could do if every request waited one fsync.
        let goal_base = |ceiling: f64| {
            if matches!(mode, DurabilityMode::Fsync) {
                ceiling.min(CONNECTIONS as f64 / fsync.as_secs_f64().max(1e-9))
            } else {
                ceiling
            }
        };
        let ceilings: Vec<f64> = runs
            .iter()
            .find(|(r, _)| matches!(r, Route::Noop))
            .map(|(_, v)| v.iter().map(|s| s.rps).collect())
            .unwrap_or_default();
        for (route, v) in runs {
            let mut shares: Vec<f64> = v
                .iter()
                .zip(&ceilings)
                .map(|(s, c)| 100.0 * s.rps * route.requests() / goal_base(*c))
                .collect();
            shares.sort_by(f64::total_cmp);
            let m = load::median(v);
            rows.push(Row {
                mode: label,
                route: route.name(),
                rps: m.rps,
                p50: m.p50,
                p99: m.p99,
                errors: m.errors,
                cpu: m.cpu_per_op,
                shares,
            });
        }
        tokio.block_on(rt.shutdown()).unwrap();
    }
    println!();
    println!(
        "HTTP load: {CONNECTIONS} connections over loopback, median of {rounds} rounds of {seconds} s per row; fsync latency here: {:.3} ms",
        fsync.as_secs_f64() * 1e3
    );
    println!(
        "{:<20} {:<34} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8} {:>12}",
        "durability",
        "route",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU µs/op",
        "vs goal",
        "(rounds)"
    );
    for r in &rows {
        let (share, range) = match r.shares.as_slice() {
            [] => ("-".to_owned(), String::new()),
            v => (
                format!("{:.0}%", v[v.len() / 2]),
                format!("{:.0}-{:.0}%", v[0], v[v.len() - 1]),
            ),
        };
        println!(
            "{:<20} {:<34} {:>10.0} {:>10.2} {:>10.2} {:>8} {:>10.1} {:>8} {:>12}",
            r.mode,
            r.route,
            r.rps,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.errors,
            r.cpu.as_secs_f64() * 1e6,
            share,
            range
        );
    }
    println!(
        "(\"CPU µs/op\": the process's CPU time per operation, server and load generator together)"
    );
    println!(
        "(\"vs goal\": requests/s (two per lock pair) as a share of the no-op ceiling measured in the same round, or for fsync of the lower of that ceiling and connections / fsync latency; the median round, and the range over rounds; the goal is 50%)"
    );
}
