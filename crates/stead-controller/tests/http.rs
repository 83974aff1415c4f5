//! The controller routes through the router, every error included.

use std::time::Duration;

use serde_json::{Value, json};
use stead_fixtures::{TestClient, TestRuntime};

fn app(rt: &stead_core::Runtime) -> TestClient {
    TestClient::new(axum::Router::new().nest(
        "/controllers",
        stead_controller::router(rt).unwrap().unauthenticated(),
    ))
}

async fn post(app: &TestClient, url: &str, body: Value) -> (u16, Value) {
    let r = app.post(url).json(&body).send().await;
    (r.status.as_u16(), r.value())
}

#[tokio::test]
async fn configure_lease_report_and_read_over_http() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);

    let r = http.get("/controllers/enrich").send().await;
    assert_eq!(r.status, 404);
    assert_eq!(r.content_type(), "application/problem+json");
    assert_eq!(r.value()["type"], "/problems/controller-not-found");

    let r = http
        .put("/controllers/enrich")
        .json(&json!({"policy":"thresholds","min_batch":5,"max_batch":50,"initial_batch":10,"interval_ms":60000}))
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.value();
    assert_eq!(v["status"], "running");
    assert_eq!(v["batch_size"], 10);
    assert_eq!(v["config"]["max_interval_ms"], 300000);
    let r = http
        .put("/controllers/enrich")
        .json(&json!({"interval_ms":60000}))
        .send()
        .await;
    assert_eq!(r.status, 200);

    // A lease needs no body.
    let r = http.post("/controllers/enrich/lease").send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lease = r.value();
    assert_eq!(lease["batch_size"], 10);
    assert_eq!(lease["probe"], false);
    let id = lease["lease_id"].as_str().unwrap().to_owned();
    assert!(lease["deadline"].is_string());

    // Too early: 429 with Retry-After.
    let r = http
        .post("/controllers/enrich/lease")
        .json(&json!({"worker":"w2"}))
        .send()
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(r.value()["type"], "/problems/not-due");
    assert_eq!(r.value()["retry_after_ms"], 60000);

    let results: Vec<Value> = (0..10)
        .map(|_| json!({"ok":true,"latency_ms":12}))
        .collect();
    let (s, v) = post(
        &http,
        "/controllers/enrich/report",
        json!({"lease_id": id, "results": results}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["batch_size"], 15);
    assert_eq!(v["status"], "running");
    assert_eq!(v["reason"], "increase");
    let (s, v) = post(
        &http,
        "/controllers/enrich/report",
        json!({"lease_id": id, "results": []}),
    )
    .await;
    assert_eq!(s, 409);
    assert_eq!(v["type"], "/problems/unknown-lease");
    assert_eq!(v["lease_id"], id.as_str());

    let r = http.get("/controllers/enrich").send().await;
    let v = r.value();
    assert_eq!(v["window"]["samples"], 10);
    assert_eq!(v["window"]["success_rate"], 1.0);
    assert_eq!(v["totals"]["succeeded"], 10);

    let r = http
        .get("/controllers/enrich/decisions?limit=1")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let page = r.value();
    let d = &page["entries"];
    assert_eq!(d.as_array().unwrap().len(), 1);
    assert_eq!(d[0]["cause"], "batch");
    assert_eq!(d[0]["before"]["batch_size"], 10);
    assert_eq!(d[0]["after"]["batch_size"], 15);
    assert_eq!(d[0]["batch"]["succeeded"], 10);
    assert_eq!(page["next"], d[0]["seq"]);
    let next = page["next"].as_u64().unwrap();
    let r = http
        .get(&format!("/controllers/enrich/decisions?cursor={next}"))
        .send()
        .await;
    assert_eq!(r.value()["next"], serde_json::Value::Null);
    assert!(
        r.value()["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["cause"] == "configured")
    );

    // Paused: 409; started: the next batch is due at once.
    let (s, v) = post(&http, "/controllers/enrich/pause", json!({})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("paused")));
    let r = http.post("/controllers/enrich/lease").send().await;
    assert_eq!(r.status, 409);
    assert_eq!(r.value()["type"], "/problems/paused");
    let r = http.post("/controllers/enrich/start").send().await;
    assert_eq!(r.value()["status"], "running");
    let r = http.post("/controllers/enrich/lease").send().await;
    assert_eq!(r.status, 200);
    let r = http.post("/controllers/enrich/reset").send().await;
    assert_eq!(r.value()["batch_size"], 10);

    let r = http.delete("/controllers/enrich").send().await;
    assert_eq!(r.status, 204);
    let r = http.delete("/controllers/enrich").send().await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn bad_requests_are_problems_that_say_what_is_wrong() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    for (body, detail) in [
        (
            json!({"initial_batch": 100}),
            "initial_batch (100) must be between min_batch (5) and max_batch (50)",
        ),
        (
            json!({"policy":"gradient","increase":2}),
            "increase applies to the aimd policy, not to gradient",
        ),
    ] {
        let r = http.put("/controllers/c").json(&body).send().await;
        assert_eq!(r.status, 400);
        assert_eq!(r.value()["detail"], detail);
    }
    let r = http
        .put("/controllers/c")
        .json(&json!({"batch_size": 5}))
        .send()
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.value()["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `batch_size`")
    );

    let r = http
        .put("/controllers/c")
        .json(&json!({"interval_ms": 0, "lease_ms": 1000}))
        .send()
        .await;
    assert_eq!(r.status, 201);
    let r = http
        .post("/controllers/c/lease")
        .json(&json!({"worker": 5}))
        .send()
        .await;
    assert_eq!(r.status, 400);
    let r = http
        .post("/controllers/c/lease")
        .header("content-type", "text/plain")
        .bytes("worker")
        .send()
        .await;
    assert_eq!(r.status, 415);
    let (s, v) = post(
        &http,
        "/controllers/c/report",
        json!({"lease_id":"x","results":[{"ok":true}]}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("latency_ms"), "{v}");
    let r = http.get("/controllers/c/decisions?limit=0").send().await;
    assert_eq!(r.status, 400);

    // A worker that never reports: its lease expires, and the report after is 409.
    let r = http.post("/controllers/c/lease").send().await;
    let id = r.value()["lease_id"].as_str().unwrap().to_owned();
    rt.advance(Duration::from_secs(1)).await;
    let (s, v) = post(
        &http,
        "/controllers/c/report",
        json!({"lease_id": id, "results": [{"ok":true,"latency_ms":1}]}),
    )
    .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (409, Some("/problems/unknown-lease"))
    );
    let v = http.get("/controllers/c").send().await.value();
    assert_eq!(v["totals"]["expired"], 1);
}

#[test]
fn every_route_is_described() {
    let doc = stead_controller::openapi();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    for p in [
        "/{name}",
        "/{name}/start",
        "/{name}/pause",
        "/{name}/reset",
        "/{name}/lease",
        "/{name}/report",
        "/{name}/decisions",
    ] {
        assert!(paths.iter().any(|k| k.as_str() == p), "{p} in {paths:?}");
    }
}
