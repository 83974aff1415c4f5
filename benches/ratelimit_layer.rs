//! The rate-limit layer under load: an axum app behind `stead::ratelimit::layer` (with its
//! default, in-memory state, and configured `ProcessCrashSafe`) beside the same app behind
//! `tower_governor` with the same quota (100 per second, bursts of 100, keyed by an
//! `x-api-key` header), without and with its rate-limit headers (stead's layer always sends
//! them), and the bare app as the ceiling, all in one run. Two traffic shapes:
//! 10,000 keys (nearly every request admitted, so the durable limiter writes each one) and
//! one hot key (nearly every request refused). Prints requests/s and latency.
//!
//! `cargo bench --bench ratelimit_layer` (`-- --seconds 5 --rounds 5` for longer runs,
//! `-- --only "keys stead, memory"` for one row).
//! Only ever targets 127.0.0.1, and every run is bounded in time.

use axum::Router;
use axum::http::{HeaderName, Request};
use axum::routing::get;
use stead::Durability;
use stead::ratelimit::{Policy, RateLimitClient, RateLimitConfig};
use tower_governor::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

// Adding slices together is for the other benchmark.
#[allow(dead_code)]
#[path = "support/load.rs"]
mod load;

/// The same allocator as the `stead` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONNECTIONS: usize = 256;
const KEYS: u64 = 10_000;

#[derive(Clone)]
struct ApiKey;

impl KeyExtractor for ApiKey {
    type Key = String;
    fn extract<T>(&self, req: &Request<T>) -> Result<String, GovernorError> {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

fn hello() -> Router {
    Router::new().route("/hello", get(|| async { "hello" }))
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hello")
}

async fn run(client: &reqwest::Client, url: String, hot: bool, seconds: f64) -> load::Stats {
    load::drive(client, CONNECTIONS, seconds, move |client, conn, i| {
        let url = url.clone();
        async move {
            let key = if hot {
                "hot".to_owned()
            } else {
                format!("user-{}", (conn as u64 * 7919 + i) % KEYS)
            };
            match client.get(url).header("x-api-key", key).send().await {
                // Admitted or refused, the limiter answered.
                Ok(r) if r.status().is_success() || r.status() == 429 => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await
    .stats()
}

fn main() {
    // Rows are labelled "<traffic> <limiter>" for `--only`.
    let args = load::Args::from_env();
    let (seconds, rounds) = (args.seconds, args.rounds);
    let tokio = load::runtime();
    let (dir, durable_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = HeaderName::from_static("x-api-key");
    let (apps, runtimes) = tokio.block_on(async {
        // Both on SQLite runtimes: one with the limiter's default (memory), one configured
        // to keep limits across restarts.
        let default = stead::Runtime::builder()
            .sqlite(dir.path())
            .build()
            .await
            .unwrap();
        let durable = stead::Runtime::builder()
            .sqlite(durable_dir.path())
            .build()
            .await
            .unwrap();
        RateLimitClient::with_config(
            &durable,
            RateLimitConfig::default().durability(Durability::ProcessCrashSafe),
        )
        .unwrap();
        let policy = Policy::per_second(100);
        let governor = GovernorConfigBuilder::default()
            .per_millisecond(10)
            .burst_size(100)
            .key_extractor(ApiKey)
            .finish()
            .unwrap();
        // The same, sending rate-limit headers on every answer as stead's layer does.
        let governor_headers = GovernorConfigBuilder::default()
            .per_millisecond(10)
            .burst_size(100)
            .key_extractor(ApiKey)
            .use_headers()
            .finish()
            .unwrap();
        let apps = vec![
            ("no limiter (ceiling)", serve(hello()).await),
            (
                "tower_governor (in memory)",
                serve(hello().layer(tower_governor::GovernorLayer::new(governor))).await,
            ),
            (
                "tower_governor, with headers",
                serve(hello().layer(tower_governor::GovernorLayer::new(governor_headers))).await,
            ),
            (
                "stead (default: memory)",
                serve(
                    hello().layer(
                        stead::ratelimit::layer(&default, policy.clone())
                            .unwrap()
                            .key_by_header(key.clone()),
                    ),
                )
                .await,
            ),
            (
                "stead, process-crash-safe",
                serve(
                    hello().layer(
                        stead::ratelimit::layer(&durable, policy)
                            .unwrap()
                            .key_by_header(key.clone()),
                    ),
                )
                .await,
            ),
        ];
        (apps, [default, durable])
    });
    // Every row runs once per round, in turn, and reports its median round: the machine's
    // drift from one moment to the next touches every row alike.
    let mut runs: Vec<(&str, &str, Vec<load::Stats>)> = Vec::new();
    for _ in 0..rounds {
        for (shape, hot) in [("10,000 keys", false), ("one hot key", true)] {
            for (name, url) in &apps {
                if !args.selected(&format!("{shape} {name}")) {
                    continue;
                }
                // The warm-up opens the connections the run uses.
                let client = load::client(CONNECTIONS);
                tokio.block_on(run(&client, url.clone(), hot, 0.3));
                let s = tokio.block_on(run(&client, url.clone(), hot, seconds));
                match runs.iter_mut().find(|(sh, n, _)| *sh == shape && n == name) {
                    Some((_, _, v)) => v.push(s),
                    None => runs.push((shape, name, vec![s])),
                }
            }
        }
    }
    let rows: Vec<(&str, &str, load::Stats)> = runs
        .into_iter()
        .map(|(shape, name, v)| (shape, name, load::median(v)))
        .collect();
    println!();
    println!(
        "Rate-limit layer: {CONNECTIONS} connections over loopback, median of {rounds} rounds of {seconds} s per row, 100/s with bursts of 100 per key"
    );
    println!(
        "{:<12} {:<29} {:>10} {:>9} {:>9} {:>7} {:>10} {:>12} {:>12}",
        "traffic",
        "limiter",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU µs/op",
        "vs governor",
        "vs +headers"
    );
    for (shape, name, s) in &rows {
        let rps_of = |limiter: &str| {
            rows.iter()
                .find(|(sh, n, _)| sh == shape && *n == limiter)
                .map_or(f64::NAN, |(_, _, g)| g.rps)
        };
        println!(
            "{:<12} {:<29} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>10.1} {:>11.0}% {:>11.0}%",
            shape,
            name,
            s.rps,
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.errors,
            s.cpu_per_op.as_secs_f64() * 1e6,
            100.0 * s.rps / rps_of("tower_governor (in memory)"),
            100.0 * s.rps / rps_of("tower_governor, with headers"),
        );
    }
    println!(
        "(the goal: stead's default at 80% of tower_governor or more; stead's layer always sends the RateLimit fields, so \"vs +headers\" compares like with like; process-crash-safe writes every admission, exact across restarts; \"CPU µs/op\": the process's CPU time per request, server and load generator together)"
    );
    for rt in runtimes {
        tokio.block_on(rt.shutdown()).unwrap();
    }
}
