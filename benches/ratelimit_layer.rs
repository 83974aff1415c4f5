//! The rate-limit layer under load: an axum app behind `stead::ratelimit::layer` (with its
//! default, in-memory state, and configured `ProcessCrashSafe`) beside the same app behind
//! `tower_governor` with the same quota (100 per second, bursts of 100, keyed by an
//! `x-api-key` header), without and with its rate-limit headers (stead's layer always sends
//! them), and the bare app as the ceiling, all in one run. Two traffic shapes:
//! 10,000 keys (nearly every request admitted, so the durable limiter writes each one) and
//! one hot key (nearly every request refused). Every row runs in slices alternating with
//! tower_governor's, and its share is against those slices. Prints requests/s, latency and
//! the shares.
//!
//! `cargo bench --bench ratelimit_layer` (`-- --seconds 5 --rounds 5` for longer runs,
//! `-- --only "keys stead (default"` for one row beside tower_governor's slices; `--only`
//! splits its text at commas, so a label's "10,000" cannot be part of it).
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
/// How many slices of each row a round alternates with tower_governor's.
const SLICES: usize = 4;

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

async fn run(client: &reqwest::Client, url: String, hot: bool, seconds: f64) -> load::Sample {
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
}

/// The median of some shares, and their range.
fn spread(mut shares: Vec<f64>) -> (f64, f64, f64) {
    shares.retain(|s| s.is_finite());
    if shares.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    shares.sort_by(f64::total_cmp);
    (
        shares[shares.len() / 2],
        shares[0],
        shares[shares.len() - 1],
    )
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
    // Each round runs every row in slices alternating with tower_governor's (governor, row,
    // row, governor, ...), so that both see the machine's drift alike, and a row's share is
    // its rate against that of the governor slices beside it. A row's keys stay busy from
    // one of its slices to the next (the gap is one slice, shorter than the second after
    // which an idle key's state is forgotten). The table gives each row's median round and
    // the median share over rounds, with its range. Each app keeps its own connections (a
    // client of its own) from one slice to the next.
    let clients: Vec<reqwest::Client> = apps.iter().map(|_| load::client(CONNECTIONS)).collect();
    let slice = seconds / SLICES as f64;
    let labels: Vec<&str> = apps.iter().map(|(name, _)| *name).collect();
    let (gov, gov_headers) = (1, 2);
    let shapes = [("10,000 keys", false), ("one hot key", true)];
    // Per shape and app, each round's sample and the rate of the governor slices beside it.
    let mut rows: Vec<Vec<(load::Sample, f64)>> = vec![Vec::new(); shapes.len() * apps.len()];
    for _ in 0..rounds {
        for (s, (shape, hot)) in shapes.iter().enumerate() {
            let chosen: Vec<usize> = (0..apps.len())
                .filter(|&i| args.selected(&format!("{shape} {}", labels[i])))
                .collect();
            let mut governor = load::Sample::default();
            for &i in chosen.iter().filter(|&&i| i != gov) {
                let drive = |app: usize, seconds: f64| {
                    tokio.block_on(run(&clients[app], apps[app].1.clone(), *hot, seconds))
                };
                // The warm-up opens the connections the slices use.
                drive(gov, 0.3);
                drive(i, 0.3);
                let (mut beside, mut row) = (load::Sample::default(), load::Sample::default());
                for k in 0..SLICES {
                    let order = if k % 2 == 0 { [gov, i] } else { [i, gov] };
                    for app in order {
                        let sample = drive(app, slice);
                        if app == gov {
                            beside.add(sample);
                        } else {
                            row.add(sample);
                        }
                    }
                }
                rows[s * apps.len() + i].push((row, beside.rps()));
                governor.add(beside);
            }
            if chosen.contains(&gov) {
                if chosen.len() == 1 {
                    // tower_governor alone: its own slices, with nothing between them.
                    tokio.block_on(run(&clients[gov], apps[gov].1.clone(), *hot, 0.3));
                    for _ in 0..SLICES {
                        governor.add(tokio.block_on(run(
                            &clients[gov],
                            apps[gov].1.clone(),
                            *hot,
                            slice,
                        )));
                    }
                }
                let rps = governor.rps();
                rows[s * apps.len() + gov].push((governor, rps));
            }
        }
    }
    println!();
    println!(
        "Rate-limit layer: {CONNECTIONS} connections over loopback, {rounds} rounds of {seconds} s per row in {SLICES} slices alternating with tower_governor's, 100/s with bursts of 100 per key"
    );
    println!(
        "{:<12} {:<29} {:>10} {:>9} {:>9} {:>7} {:>10} {:>12} {:>12} {:>14}",
        "traffic",
        "limiter",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU µs/op",
        "vs governor",
        "vs +headers",
        "(rounds)"
    );
    for (s, (shape, _)) in shapes.iter().enumerate() {
        let of = |i: usize| &rows[s * apps.len() + i];
        // Per round: the row's rate as a share of the governor slices beside it.
        let shares = |i: usize| -> Vec<f64> {
            of(i)
                .iter()
                .map(|(r, beside)| 100.0 * r.rps() / beside)
                .collect()
        };
        let headers = shares(gov_headers);
        for (i, label) in labels.iter().enumerate() {
            if of(i).is_empty() {
                continue;
            }
            let median = load::median(of(i).iter().map(|(r, _)| r.clone().stats()).collect());
            let (vs_gov, lo, hi) = spread(shares(i));
            // Against the governor with headers: both as shares of the governor of the
            // same round.
            let (vs_headers, _, _) = spread(
                shares(i)
                    .iter()
                    .zip(&headers)
                    .map(|(row, h)| 100.0 * row / h)
                    .collect(),
            );
            println!(
                "{:<12} {:<29} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>10.1} {:>11.0}% {:>11.0}% {:>14}",
                shape,
                label,
                median.rps,
                median.p50.as_secs_f64() * 1e3,
                median.p99.as_secs_f64() * 1e3,
                median.errors,
                median.cpu_per_op.as_secs_f64() * 1e6,
                vs_gov,
                vs_headers,
                if lo.is_finite() {
                    format!("{lo:.0}-{hi:.0}%")
                } else {
                    String::new()
                },
            );
        }
    }
    println!(
        "(the goal: stead's default at 100% of tower_governor or more over 10,000 keys; a share compares the slices of one round, the median round and the range over rounds are given; stead's layer always sends the RateLimit fields, so \"vs +headers\" compares like with like; process-crash-safe writes every admission, exact across restarts; \"CPU µs/op\": the process's CPU time per request, server and load generator together)"
    );
    for rt in runtimes {
        tokio.block_on(rt.shutdown()).unwrap();
    }
}
