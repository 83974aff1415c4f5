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

/// How many HTTP requests one counted operation of a row makes.
fn requests_per_row(route: &str) -> f64 {
    if route == Route::LockPair.name() {
        2.0
    } else {
        1.0
    }
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
        // Every route runs once per round, in turn, and reports its median round: the
        // machine's drift from one moment to the next touches the ceiling and the routes alike.
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
        for (route, v) in runs {
            let m = load::median(v);
            rows.push(Row {
                mode: label,
                route: route.name(),
                rps: m.rps,
                p50: m.p50,
                p99: m.p99,
                errors: m.errors,
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
        "{:<20} {:<34} {:>10} {:>10} {:>10} {:>8} {:>10}",
        "durability", "route", "req/s", "p50 ms", "p99 ms", "errors", "vs goal"
    );
    for mode in ["process-crash-safe", "fsync"] {
        let ceiling = rows
            .iter()
            .find(|r| r.mode == mode && r.route.starts_with("GET /noop"))
            .map(|r| r.rps)
            .unwrap_or(1.0);
        let goal_base = if mode == "fsync" {
            ceiling.min(CONNECTIONS as f64 / fsync.as_secs_f64().max(1e-9))
        } else {
            ceiling
        };
        for r in rows.iter().filter(|r| r.mode == mode) {
            println!(
                "{:<20} {:<34} {:>10.0} {:>10.2} {:>10.2} {:>8} {:>9.0}%",
                r.mode,
                r.route,
                r.rps,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.errors,
                100.0 * r.rps * requests_per_row(r.route) / goal_base
            );
        }
    }
    println!(
        "(\"vs goal\": requests/s (two per lock pair) as a share of the no-op ceiling, or for fsync of the lower of that ceiling and connections / fsync latency; the goal is 50%)"
    );
}
