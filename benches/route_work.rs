//! A fixed number of requests through the server's whole application in process: the same
//! router, middleware, handlers and turns as `http_load`, without sockets, the HTTP parser
//! or a load generator. It prints what each route costs per request, and gives a fixed
//! amount of work for counting instructions, which repeat from run to run where the
//! throughput of this machine does not.
//!
//! `cargo bench --bench route_work` prints every route; for instructions,
//! `cargo bench --bench route_work --no-run`, then
//! `valgrind --tool=callgrind <the executable it names> noop` (or `increment`, `hot`): the
//! difference between a route's count and the no-op's, over the requests, is what the route
//! adds per request. SQLite, `process-crash-safe`, 20,480 requests from 64 callers, with
//! the log subscriber the `stead` binary installs.

use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use stead_server::{Config, DurabilityMode};
use tower::ServiceExt;

#[allow(dead_code)]
#[path = "support/load.rs"]
mod load;

/// The same allocator as the `stead` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CALLERS: usize = 64;
const PER_CALLER: usize = 320;
const REQUESTS: usize = CALLERS * PER_CALLER;

#[derive(Clone, Copy)]
enum Route {
    Noop,
    /// Increments of 64 counters (16 shards each), as `http_load`'s increment row.
    Increment,
    /// Increments of one counter.
    Hot,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Noop => "noop",
            Route::Increment => "increment",
            Route::Hot => "hot",
        }
    }

    fn request(self, caller: usize) -> Request<Body> {
        let post = |uri: String| {
            Request::post(uri)
                .header("content-type", "application/json")
                .body(Body::from(r#"{"by":1}"#))
                .unwrap()
        };
        match self {
            Route::Noop => Request::get("/noop").body(Body::empty()).unwrap(),
            Route::Increment => post(format!("/counters/load-{}/increment", caller % 64)),
            Route::Hot => post("/counters/hot/increment".to_owned()),
        }
    }
}

/// Sends `PER_CALLER` requests of `route` from each of `CALLERS` callers; panics on any
/// answer but 200.
async fn drive(app: &axum::Router, route: Route) {
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let app = app.clone();
            tokio::spawn(async move {
                for _ in 0..PER_CALLER {
                    let answer = app.clone().oneshot(route.request(caller)).await.unwrap();
                    assert_eq!(answer.status(), StatusCode::OK, "{}", route.name());
                    axum::body::to_bytes(answer.into_body(), 1 << 20)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn main() {
    // The log subscriber the server installs, as the HTTP benches do; the options are this
    // bench's own.
    let _ = load::Args::from_env();
    let chosen: Vec<Route> = match std::env::args().skip(1).find(|a| !a.starts_with("--")) {
        Some(name) => [Route::Noop, Route::Increment, Route::Hot]
            .into_iter()
            .filter(|r| r.name() == name)
            .collect(),
        None => vec![Route::Noop, Route::Increment, Route::Hot],
    };
    let tokio = load::runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().join("data");
    config.durability = DurabilityMode::ProcessCrashSafe;
    let (rt, app) = tokio.block_on(async {
        let rt = stead_server::open_runtime(&config).await.unwrap();
        // The no-op goes through the same middleware as the patterns, as in `http_load`.
        let noop = axum::Router::new().route("/noop", get(|| async { "ok" }));
        let app = stead_server::app_with(&rt, &config, noop).unwrap();
        (rt, app)
    });
    println!(
        "In-process requests through the application, {CALLERS} callers, SQLite process-crash-safe"
    );
    println!("{:<10} {:>10} {:>14}", "route", "req/s", "CPU µs/req");
    for route in chosen {
        let (cpu, started) = (load::process_cpu(), Instant::now());
        tokio.block_on(drive(&app, route));
        let (took, cpu) = (started.elapsed(), load::process_cpu() - cpu);
        println!(
            "{:<10} {:>10.0} {:>14.2}",
            route.name(),
            REQUESTS as f64 / took.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / REQUESTS as f64
        );
    }
    tokio.block_on(rt.shutdown()).unwrap();
}
