//! Events per second into one entity, one command each, in process and durable (SQLite,
//! `Fsync`): 256 callers at once, declared in JSON and written in Rust; and webhook
//! deliveries per second to a local receiver (64 entities, one endpoint).
//! `cargo bench -p stead-reactor --bench reactor`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stead_core::Runtime;
use stead_fixtures::bench;
use stead_reactor::{Decide, Delivery, Event, Reactor, ReactorClient, ReactorConfig, Rejected};

const CALLERS: usize = 256;
const EVENTS: usize = 20;

#[derive(Default, Serialize, Deserialize)]
struct Count {
    n: u64,
}

struct Counting;

impl Reactor for Counting {
    type State = Count;
    fn on_event(&self, s: &mut Count, e: &Event, out: &mut Decide) -> Result<(), Rejected> {
        s.n += 1;
        out.emit("work", json!({"n": e.payload["n"]}))?;
        out.log("tick", "tick");
        Ok(())
    }
}

fn config() -> ReactorConfig {
    let mut c = ReactorConfig::default();
    c.max_outbox = u32::MAX;
    c.max_event_ids = 1_000_000;
    c
}

fn ingest(c: &mut Criterion) {
    let tokio = bench::tokio();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio
        .block_on(Runtime::builder().sqlite(dir.path()).build())
        .unwrap();
    let r = ReactorClient::with_config(&rt, config()).unwrap();
    tokio
        .block_on(r.define("json", json!({"state": {"n": 0}, "rules": [{"on": "tick", "increment": {"n": 1},
            "emit": [{"type": "work", "payload": {"n": {"var": "event.payload.n"}}}], "reason": "tick"}]})))
        .unwrap();
    r.register("rust", Counting, Delivery::pull()).unwrap();
    let mut g = c.benchmark_group("reactor_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((CALLERS * EVENTS) as u64));
    for kind in ["json", "rust"] {
        g.bench_function(
            BenchmarkId::new("events_one_entity", format!("{kind} callers={CALLERS}")),
            |b| {
                b.iter_custom(|iters| {
                    let r = r.clone();
                    bench::rounds(&tokio, iters, CALLERS, move |round, caller| {
                        let r = r.clone();
                        async move {
                            for i in 0..EVENTS {
                                let e = Event::new(
                                    format!("{round}-{caller}-{i}"),
                                    "tick",
                                    json!({"n": i}),
                                );
                                r.send(kind, "one", e).await.unwrap();
                            }
                        }
                    })
                })
            },
        );
    }
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
}

const ENTITIES: usize = 64;
const PER_ENTITY: usize = 20;

fn deliveries(c: &mut Criterion) {
    let tokio = bench::tokio();
    let received = Arc::new(AtomicU64::new(0));
    let url = tokio.block_on({
        let received = received.clone();
        async move {
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move || {
                    received.fetch_add(1, Ordering::Relaxed);
                    async { axum::http::StatusCode::NO_CONTENT }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hook", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            url
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio
        .block_on(Runtime::builder().sqlite(dir.path()).build())
        .unwrap();
    let r = ReactorClient::with_config(&rt, config()).unwrap();
    tokio
        .block_on(r.define(
            "pushed",
            json!({"rules": [{"on": "tick",
            "emit": [{"type": "work", "payload": {"n": {"var": "event.payload.n"}}}]}],
            "webhooks": [{"url": url, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}),
        ))
        .unwrap();
    let mut g = c.benchmark_group("reactor_webhooks_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((ENTITIES * PER_ENTITY) as u64));
    let sent = Arc::new(AtomicU64::new(0));
    g.bench_function(
        BenchmarkId::new("deliveries", format!("entities={ENTITIES}")),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let base = sent.fetch_add((ENTITIES * PER_ENTITY) as u64, Ordering::Relaxed);
                    let r = r.clone();
                    bench::fan_out(&tokio, ENTITIES, move |entity| {
                        let r = r.clone();
                        async move {
                            for i in 0..PER_ENTITY {
                                let e = Event::new(format!("{base}-{i}"), "tick", json!({"n": i}));
                                r.send("pushed", &format!("e{entity}"), e).await.unwrap();
                            }
                        }
                    });
                    let want = base + (ENTITIES * PER_ENTITY) as u64;
                    while received.load(Ordering::Relaxed) < want {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    total += start.elapsed();
                }
                total
            })
        },
    );
    g.finish();
    tokio.block_on(rt.shutdown()).unwrap();
}

criterion_group!(benches, ingest, deliveries);
criterion_main!(benches);
