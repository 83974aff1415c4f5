//! The HTTP load benchmark: 256 connections over loopback against the real application, for
//! each pattern route it knows, beside a no-op handler served by the same process (the
//! ceiling), in `process-crash-safe` and `fsync` durability. Prints a table.
//!
//! Two rows compare increments of one hot counter with increments spread over 10,000
//! counters (their first touches activate shard objects); the spread rate as a share of the
//! hot one is printed after the table (`-- --only "one hot counter,10000 counters"`).
//!
//! `cargo bench --bench http_load` (`-- --seconds 5 --rounds 5` for longer
//! runs, `-- --only fsync` for some rows, `-- --only "fsync POST"` for one route alone, without
//! the ceiling).
//!
//! The same table on the PostgreSQL backend runs only when asked for: `-- --only postgres`
//! (rows labelled `postgres <durability> <route>`), against `STEAD_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`), in a schema of its own dropped
//! after. The PostgreSQL node's lease check (an atomic read per request) is not in the path.
//! Only ever targets 127.0.0.1, and every run is bounded in time.

use std::io::Write;
use std::time::{Duration, Instant};

use axum::routing::get;
use stead_postgres::{PostgresBackend, PostgresOptions};
use stead_server::{Config, DurabilityMode};

#[path = "support/load.rs"]
mod load;

const CONNECTIONS: usize = 256;
/// How many counters the spread increments go to.
const SPREAD_COUNTERS: u64 = 10_000;
/// How many slices of the ceiling and of each route a round alternates.
const SLICES: usize = 4;

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
    /// The share of the goal's base in each round (the route's rate beside that of the
    /// ceiling slices alternating with it), sorted; empty when the ceiling did not run.
    shares: Vec<f64>,
}

#[derive(Clone, Copy)]
enum Route {
    Noop,
    CounterIncrement,
    /// Increments of one counter only.
    CounterHot,
    /// Increments spread over 10,000 counters (their first touches activate shards).
    CounterSpread,
    CounterRead,
    LockPair,
    SidecarPut,
    SidecarGet,
    ControllerPair,
    BudgetPair,
    OfrepOne,
    OfrepBulk,
    ReactorEvent,
    DatabaseInsert,
    DatabaseSelect,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Noop => "GET /noop (ceiling)",
            Route::CounterIncrement => "POST /counters/{name}/increment",
            Route::CounterHot => "POST /counters/{name}/increment (one hot counter)",
            Route::CounterSpread => "POST /counters/{name}/increment (10000 counters)",
            Route::CounterRead => "GET /counters/{name}",
            Route::LockPair => "lock acquire+release (pairs; 2 req)",
            Route::SidecarPut => "PUT /sidecars/{name}/keys/{key} 1 KiB",
            Route::SidecarGet => "GET /sidecars/{name}/keys/{key} 1 KiB",
            Route::ControllerPair => "controller lease+report (pairs; 2 req)",
            Route::BudgetPair => "budget reserve+commit (pairs; 2 req)",
            Route::OfrepOne => "POST /ofrep/v1/evaluate/flags/{key} (fractional)",
            Route::OfrepBulk => "POST /ofrep/v1/evaluate/flags (100 flags)",
            Route::ReactorEvent => "POST /reactors/{type}/{entity}/events (one entity, 1 command)",
            Route::DatabaseInsert => "POST /databases/{name}/v2/pipeline (INSERT, close)",
            Route::DatabaseSelect => "POST /databases/{name}/v2/pipeline (SELECT by key, close)",
        }
    }

    /// How many HTTP requests one counted operation makes.
    fn requests(self) -> f64 {
        match self {
            Route::LockPair | Route::ControllerPair | Route::BudgetPair => 2.0,
            _ => 1.0,
        }
    }
}

async fn drive(client: &reqwest::Client, base: &str, route: Route, seconds: f64) -> load::Sample {
    let base = base.to_owned();
    load::drive(client, CONNECTIONS, seconds, move |client, conn, n| {
        let base = base.clone();
        async move {
            let name = format!("load-{}", conn % 64);
            let req = match route {
                Route::LockPair => {
                    return lock_pair(&client, &base, &format!("load-lock-{conn}"))
                        .await
                        .is_ok();
                }
                Route::ControllerPair => {
                    return controller_pair(&client, &base, &format!("load-ctl-{conn}"))
                        .await
                        .is_ok();
                }
                Route::BudgetPair => {
                    return budget_pair(&client, &base, conn).await.is_ok();
                }
                Route::Noop => client.get(format!("{base}/noop")),
                Route::CounterIncrement => client
                    .post(format!("{base}/counters/{name}/increment"))
                    .header("content-type", "application/json")
                    .body(r#"{"by":1}"#),
                Route::CounterHot => client
                    .post(format!("{base}/counters/hot/increment"))
                    .header("content-type", "application/json")
                    .body(r#"{"by":1}"#),
                Route::CounterSpread => client
                    .post(format!(
                        "{base}/counters/spread-{}/increment",
                        (conn as u64 * 7_919 + n * 104_729) % SPREAD_COUNTERS
                    ))
                    .header("content-type", "application/json")
                    .body(r#"{"by":1}"#),
                Route::CounterRead => client.get(format!("{base}/counters/{name}")),
                Route::DatabaseInsert | Route::DatabaseSelect => client
                    .post(format!("{base}/databases/{name}/v2/pipeline"))
                    .header("content-type", "application/json"),
                Route::SidecarPut => client
                    .put(format!("{base}/sidecars/load-{conn}/keys/state"))
                    .header("content-type", "application/json")
                    .body(KIB_VALUE.as_str()),
                Route::SidecarGet => client.get(format!("{base}/sidecars/{name}/keys/state")),
                Route::OfrepOne => client
                    .post(format!("{base}/ofrep/v1/evaluate/flags/rollout-0"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"context":{{"targetingKey":"user-{conn}"}}}}"#)),
                Route::OfrepBulk => client
                    .post(format!("{base}/ofrep/v1/evaluate/flags"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"context":{{"targetingKey":"user-{conn}"}}}}"#)),
                Route::ReactorEvent => client
                    .post(format!("{base}/reactors/load/one/events"))
                    .header("content-type", "application/json")
                    .body(format!(
                        r#"{{"id":"{}-{conn}-{n}","type":"tick","payload":{{"n":{n}}}}}"#,
                        EVENT_RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    )),
            };
            let req = match route {
                Route::DatabaseInsert => req.body(format!(
                    r#"{{"requests":[{{"type":"execute","stmt":{{"sql":"INSERT INTO t (v) VALUES (?)","args":[{{"type":"integer","value":"{n}"}}],"want_rows":false}}}},{{"type":"close"}}]}}"#
                )),
                Route::DatabaseSelect => req.body(format!(
                    r#"{{"requests":[{{"type":"execute","stmt":{{"sql":"SELECT v FROM t WHERE id = ?","args":[{{"type":"integer","value":"{}"}}]}}}},{{"type":"close"}}]}}"#,
                    n % 64 + 1
                )),
                _ => req,
            };
            match req.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await
}

/// POSTs `body` as JSON (or no body); the response, if it succeeded.
async fn post_ok(
    client: &reqwest::Client,
    url: String,
    body: Option<String>,
) -> Result<reqwest::Response, ()> {
    // A write says it is JSON, with or without a body.
    let mut req = client.post(url).header("content-type", "application/json");
    if let Some(body) = body {
        req = req.body(body);
    }
    let r = req.send().await.map_err(|_| ())?;
    if r.status().is_success() {
        Ok(r)
    } else {
        Err(())
    }
}

/// The JSON body of a successful response.
async fn json(r: reqwest::Response) -> Result<serde_json::Value, ()> {
    r.json().await.map_err(|_| ())
}

/// One uncontended acquire and its release, over HTTP.
async fn lock_pair(client: &reqwest::Client, base: &str, name: &str) -> Result<(), ()> {
    let acquire = r#"{"holder":"load","ttl_ms":30000}"#.to_owned();
    let r = post_ok(
        client,
        format!("{base}/locks/{name}/acquire"),
        Some(acquire),
    )
    .await?;
    let token = json(r).await?["token"].as_u64().ok_or(())?;
    let release = format!(r#"{{"holder":"load","token":{token}}}"#);
    post_ok(
        client,
        format!("{base}/locks/{name}/release"),
        Some(release),
    )
    .await?;
    Ok(())
}

/// One lease of a batch and its report (every item succeeded in 5 ms), over HTTP.
async fn controller_pair(client: &reqwest::Client, base: &str, name: &str) -> Result<(), ()> {
    let r = post_ok(client, format!("{base}/controllers/{name}/lease"), None).await?;
    let body = json(r).await?;
    let lease_id = body["lease_id"].as_str().ok_or(())?;
    let n = body["batch_size"].as_u64().ok_or(())?;
    let results = vec![r#"{"ok":true,"latency_ms":5}"#; n as usize].join(",");
    let report = format!(r#"{{"lease_id":"{lease_id}","results":[{results}]}}"#);
    post_ok(
        client,
        format!("{base}/controllers/{name}/report"),
        Some(report),
    )
    .await?;
    Ok(())
}

/// One reservation on the shared budget and its commit, over HTTP.
async fn budget_pair(client: &reqwest::Client, base: &str, conn: usize) -> Result<(), ()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let processor = if conn.is_multiple_of(2) { "a" } else { "b" };
    let url = format!("{base}/budgets/load-budget/reservations");
    let reserve =
        format!(r#"{{"id":"r{id}","processor":"{processor}","amount":100,"ttl_ms":60000}}"#);
    post_ok(client, url.clone(), Some(reserve)).await?;
    let commit = r#"{"actual":60}"#.to_owned();
    post_ok(client, format!("{url}/r{id}/commit"), Some(commit)).await?;
    Ok(())
}

/// The one budget the budget row spends from: enough for any run.
async fn seed_budget(base: &str) {
    let r = reqwest::Client::new()
        .put(format!("{base}/budgets/load-budget"))
        .header("content-type", "application/json")
        .body(
            r#"{"total":4503599627370496,"processors":[{"id":"a","weight":1,"tier":"t"},{"id":"b","weight":1,"tier":"t"}],"tiers":{"t":{"model":"m","cost_per_call":1,"max_concurrency":10}}}"#,
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// The default flag set the OFREP rows evaluate: 100 flags, each a fractional split.
async fn seed_flags(base: &str) {
    let flags: serde_json::Map<String, serde_json::Value> = (0..100)
        .map(|i| {
            (
                format!("rollout-{i}"),
                serde_json::json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                    "defaultVariant": "off",
                    "targeting": {"fractional": [["on", 20], ["off", 80]]}}),
            )
        })
        .collect();
    let r = reqwest::Client::new()
        .put(format!("{base}/flags/default"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "flags": flags }).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "seeding flags: {}", r.status());
}

/// One controller per connection, running batches of up to 10 back to back.
async fn seed_controllers(base: &str) {
    let client = reqwest::Client::new();
    for conn in 0..CONNECTIONS {
        let r = client
            .put(format!("{base}/controllers/load-ctl-{conn}"))
            .header("content-type", "application/json")
            .body(r#"{"interval_ms":0,"min_batch":1,"max_batch":10}"#)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

/// A 1 KiB JSON value.
static KIB_VALUE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    serde_json::json!({"step": "fetch", "data": "x".repeat(1000)}).to_string()
});

/// Makes event ids unique across rounds and slices.
static EVENT_RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Defines the reactor type the event row sends to: one rule, one command per event.
async fn seed_reactor(base: &str) {
    let r = reqwest::Client::new()
        .put(format!("{base}/reactors/load"))
        .header("content-type", "application/json")
        .body(r#"{"state":{"n":0},"rules":[{"on":"tick","increment":{"n":1},"emit":[{"type":"work","payload":{"n":{"var":"event.payload.n"}}}],"reason":"tick"}]}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "seeding: {}", r.status());
}

/// Writes the 1 KiB value the sidecar read row reads, in 64 sidecars.
async fn seed_sidecars(base: &str) {
    let client = reqwest::Client::new();
    for name in 0..64 {
        let r = client
            .put(format!("{base}/sidecars/load-{name}/keys/state"))
            .header("content-type", "application/json")
            .body(KIB_VALUE.as_str())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "seeding: {}", r.status());
    }
}

/// Creates the 64 counters the load rows use, with a value in every shard.
async fn seed_counters(base: &str) {
    let client = reqwest::Client::new();
    // And the databases' tables, with 64 rows each.
    for name in 0..64 {
        let r = client
            .post(format!("{base}/databases/load-{name}/v2/pipeline"))
            .header("content-type", "application/json")
            .body(r#"{"requests":[{"type":"sequence","sql":"CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO t (v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 64) SELECT x FROM c;"},{"type":"close"}]}"#)
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["results"][0]["type"], "ok", "seeding: {body}");
    }
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
    let tokio = load::runtime();
    let mut rows = Vec::new();
    let mut fsync = Duration::ZERO;
    let pg_url = std::env::var("STEAD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    for (postgres, mode, label) in [
        (
            false,
            DurabilityMode::ProcessCrashSafe,
            "process-crash-safe",
        ),
        (false, DurabilityMode::Fsync, "fsync"),
        (
            true,
            DurabilityMode::ProcessCrashSafe,
            "postgres process-crash-safe",
        ),
        (true, DurabilityMode::Fsync, "postgres fsync"),
    ] {
        // The PostgreSQL rows need a server: only when named.
        if postgres && !args.named("postgres") {
            continue;
        }
        let routes = [
            Route::Noop,
            Route::CounterIncrement,
            Route::CounterHot,
            Route::CounterSpread,
            Route::CounterRead,
            Route::LockPair,
            Route::SidecarPut,
            Route::SidecarGet,
            Route::ControllerPair,
            Route::BudgetPair,
            Route::OfrepOne,
            Route::OfrepBulk,
            Route::ReactorEvent,
            Route::DatabaseInsert,
            Route::DatabaseSelect,
        ];
        if !routes
            .iter()
            .any(|r| args.selected(&format!("{label} {}", r.name())))
        {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        if matches!(mode, DurabilityMode::Fsync) {
            fsync = fsync_latency(dir.path());
        }
        let mut config = Config::default();
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.data_dir = dir.path().join("data");
        config.durability = mode;
        // Nobody takes the event row's commands: let its outbox hold them all.
        config.patterns.insert(
            "reactors".into(),
            serde_json::json!({"max_outbox": u32::MAX, "max_event_ids": 1_000_000}),
        );
        let schema = format!("stead_bench_{}", std::process::id());
        let (rt, addr) = tokio.block_on(async {
            let rt = if postgres {
                let opts = PostgresOptions::new(pg_url.clone()).schema(schema.clone());
                let backend = PostgresBackend::connect(opts).await.unwrap();
                backend.wait_active().await.unwrap();
                stead::Runtime::builder()
                    .max_value_bytes(config.max_value_bytes)
                    .durability(mode.into())
                    .backend(backend.session())
                    .build()
                    .await
                    .unwrap()
            } else {
                stead_server::open_runtime(&config).await.unwrap()
            };
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
        tokio.block_on(seed_sidecars(&base));
        tokio.block_on(seed_controllers(&base));
        tokio.block_on(seed_budget(&base));
        tokio.block_on(seed_flags(&base));
        tokio.block_on(seed_reactor(&base));
        // Each round measures every route against the ceiling in alternating slices (ceiling,
        // route, route, ceiling, ...), so that both see the machine's drift alike, and the
        // round's share compares the route with the ceiling slices beside it. The table gives
        // the median round.
        let client = load::client(CONNECTIONS);
        let slice = seconds / SLICES as f64;
        // Without the ceiling's row (`--only` a route), the route runs alone and has no share.
        let with_ceiling = args.selected(&format!("{label} {}", Route::Noop.name()));
        let selected: Vec<Route> = routes[1..]
            .iter()
            .copied()
            .filter(|r| args.selected(&format!("{label} {}", r.name())))
            .collect();
        let mut ceiling_rounds: Vec<load::Sample> = Vec::new();
        // Per selected route, each round's run and the rate of the ceiling slices beside it.
        let mut runs: Vec<Vec<(load::Sample, f64)>> = selected.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            let mut ceiling = load::Sample::default();
            for (&route, route_runs) in selected.iter().zip(&mut runs) {
                tokio.block_on(drive(&client, &base, route, 0.3)); // warm up
                let (mut ceil, mut run) = (load::Sample::default(), load::Sample::default());
                if with_ceiling {
                    for k in 0..SLICES {
                        let order = if k % 2 == 0 {
                            [Route::Noop, route]
                        } else {
                            [route, Route::Noop]
                        };
                        for r in order {
                            let s = tokio.block_on(drive(&client, &base, r, slice));
                            if matches!(r, Route::Noop) {
                                ceil.add(s)
                            } else {
                                run.add(s)
                            }
                        }
                    }
                } else {
                    run = tokio.block_on(drive(&client, &base, route, seconds));
                }
                route_runs.push((run, ceil.rps()));
                ceiling.add(ceil);
            }
            if selected.is_empty() && with_ceiling {
                tokio.block_on(drive(&client, &base, Route::Noop, 0.3));
                ceiling = tokio.block_on(drive(&client, &base, Route::Noop, seconds));
            }
            ceiling_rounds.push(ceiling);
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
        let row = |route: Route, stats: load::Stats, mut shares: Vec<f64>| {
            shares.sort_by(f64::total_cmp);
            Row {
                mode: label,
                route: route.name(),
                rps: stats.rps,
                p50: stats.p50,
                p99: stats.p99,
                errors: stats.errors,
                cpu: stats.cpu_per_op,
                shares,
            }
        };
        if ceiling_rounds.iter().any(|c| c.rps() > 0.0) {
            let stats = ceiling_rounds
                .into_iter()
                .map(load::Sample::stats)
                .collect();
            rows.push(row(Route::Noop, load::median(stats), vec![100.0]));
        }
        for (&route, v) in selected.iter().zip(runs) {
            let shares = v
                .iter()
                .filter(|(_, ceiling)| *ceiling > 0.0)
                .map(|(s, ceiling)| 100.0 * s.rps() * route.requests() / goal_base(*ceiling))
                .collect();
            let stats = v.into_iter().map(|(s, _)| s.stats()).collect();
            rows.push(row(route, load::median(stats), shares));
        }
        tokio.block_on(rt.shutdown()).unwrap();
        if postgres {
            let dropped = std::process::Command::new("psql")
                .args([&pg_url, "-qc", &format!("DROP SCHEMA \"{schema}\" CASCADE")])
                .status();
            if !dropped.is_ok_and(|s| s.success()) {
                eprintln!("could not drop the bench's schema {schema}");
            }
        }
    }
    println!();
    println!(
        "HTTP load: {CONNECTIONS} connections over loopback, median of {rounds} rounds of {seconds} s per row; fsync latency here: {:.3} ms",
        fsync.as_secs_f64() * 1e3
    );
    println!(
        "{:<28} {:<52} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8} {:>12}",
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
            "{:<28} {:<52} {:>10.0} {:>10.2} {:>10.2} {:>8} {:>10.1} {:>8} {:>12}",
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
    // The spread increments beside the hot counter's, in each mode where both ran.
    let mut modes: Vec<&str> = rows.iter().map(|r| r.mode).collect();
    modes.dedup();
    for mode in modes {
        let rate = |route: Route| {
            rows.iter()
                .find(|r| r.mode == mode && r.route == route.name())
                .map(|r| r.rps)
        };
        if let (Some(hot), Some(spread)) = (rate(Route::CounterHot), rate(Route::CounterSpread)) {
            println!(
                "{mode}: increments spread over {SPREAD_COUNTERS} counters at {:.0}% of one hot counter's rate (goal: at least 50%)",
                100.0 * spread / hot.max(1e-9)
            );
        }
    }
    println!(
        "(\"CPU µs/op\": the process's CPU time per operation, server and load generator together)"
    );
    println!(
        "(\"vs goal\": requests/s (two per lock pair) as a share of the no-op ceiling measured in the same round, or for fsync of the lower of that ceiling and connections / fsync latency; the median round, and the range over rounds; the goal is 50%)"
    );
}
