//! The budget routes through the router, every error included.

use serde_json::{Value, json};
use stead_fixtures::{TestClient, TestRuntime};

fn app(rt: &stead_core::Runtime) -> TestClient {
    TestClient::new(axum::Router::new().nest(
        "/budgets",
        stead_budget::router(rt).unwrap().unauthenticated(),
    ))
}

async fn post(app: &TestClient, url: &str, body: Value) -> (u16, Value) {
    let r = app.post(url).json(&body).send().await;
    (r.status.as_u16(), r.value())
}

fn spec() -> Value {
    json!({
        "total": 1000,
        "processors": [
            {"id": "kw", "weight": 3, "phase": 1, "tier": "std"},
            {"id": "seo", "weight": 1, "phase": 2, "tier": "std"}
        ],
        "tiers": {"std": {"model": "small", "cost_per_call": 10, "max_concurrency": 20}}
    })
}

#[tokio::test]
async fn a_budget_over_http() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    let r = http.get("/budgets/daily").send().await;
    assert_eq!(
        (r.status.as_u16(), r.content_type()),
        (404, "application/problem+json")
    );
    assert_eq!(r.value()["type"], "/problems/budget-not-found");

    let r = http.put("/budgets/daily").json(&spec()).send().await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.value()["cycle"]["accounts"][0]["allocated"], 750);
    assert_eq!(
        http.put("/budgets/daily").json(&spec()).send().await.status,
        200
    );

    let body = json!({"id": "job-1", "processor": "kw", "amount": 300, "ttl_ms": 60000});
    let (s, v) = post(&http, "/budgets/daily/reservations", body.clone()).await;
    assert_eq!((s, v["state"].as_str()), (201, Some("pending")));
    let (s, _) = post(&http, "/budgets/daily/reservations", body).await;
    assert_eq!(s, 200, "a repeat");
    let (s, v) = post(
        &http,
        "/budgets/daily/reservations",
        json!({"id": "job-2", "processor": "kw", "amount": 451, "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (409, Some("/problems/insufficient-budget"))
    );
    assert_eq!(
        (v["available"].as_u64(), v["budget_available"].as_u64()),
        (Some(450), Some(700))
    );

    let (s, v) = post(
        &http,
        "/budgets/daily/reservations/job-1/commit",
        json!({"actual": 120}),
    )
    .await;
    assert_eq!((s, v["actual"].as_u64()), (200, Some(120)));
    let r = http
        .post("/budgets/daily/reservations/job-1/void")
        .send()
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.value()["type"], "/problems/already-resolved");
    let r = http
        .post("/budgets/daily/reservations/nope/void")
        .send()
        .await;
    assert_eq!(r.value()["type"], "/problems/unknown-reservation");
    let (s, v) = post(
        &http,
        "/budgets/daily/usage",
        json!({"processor": "seo", "cost": 300, "items": 3}),
    )
    .await;
    assert_eq!((s, v["overrun"].as_bool()), (200, Some(true)));
    let (s, v) = post(
        &http,
        "/budgets/daily/usage",
        json!({"processor": "x", "cost": 1}),
    )
    .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (404, Some("/problems/unknown-processor"))
    );

    let plan = http.get("/budgets/daily/plan").send().await.value();
    assert_eq!(plan[0]["processors"][0]["max_items"], 20);
    assert_eq!(plan[1]["processors"][0]["max_items"], 0);

    let r = http.post("/budgets/daily/cycles").send().await;
    assert_eq!(r.status, 201);
    assert_eq!(r.value()["number"], 2);
    let (s, v) = post(&http, "/budgets/daily/cycles", json!({"total": 40})).await;
    assert_eq!((s, v["total"].as_u64()), (201, Some(40)));
    let h = http
        .get("/budgets/daily/history?limit=1")
        .send()
        .await
        .value();
    assert_eq!(h["entries"][0]["number"], 2);
    assert_eq!(h["next"], 2);
    let e = http
        .get("/budgets/daily/events?limit=100")
        .send()
        .await
        .value();
    assert!(
        e["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "overrun")
    );

    let r = http
        .put("/budgets/daily")
        .json(&json!({"total": 1}))
        .send()
        .await;
    assert_eq!(r.status, 400);
    let mut bad = spec();
    bad["tiers"]["std"]["cost_per_call"] = json!(0);
    let r = http.put("/budgets/daily").json(&bad).send().await;
    assert_eq!(
        r.value()["detail"],
        "tiers.std.cost_per_call must be between 1 and 9007199254740992"
    );
    assert_eq!(http.delete("/budgets/daily").send().await.status, 204);
    assert_eq!(http.delete("/budgets/daily").send().await.status, 404);
}

#[test]
fn every_route_is_described() {
    let doc = stead_budget::openapi();
    assert_eq!(doc.paths.paths.len(), 9);
    // The bound on processors the document states is the one the spec checks.
    let doc = serde_json::to_value(&doc).unwrap();
    let processors = &doc["components"]["schemas"]["BudgetSpec"]["properties"]["processors"];
    assert_eq!(processors["minItems"], 1);
    assert_eq!(
        processors["maxItems"],
        stead_budget::MAX_PROCESSORS as u64,
        "{processors}"
    );
}
