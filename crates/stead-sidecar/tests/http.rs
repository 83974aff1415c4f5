//! The sidecar routes through the router: ETags and conditional headers, lists, listing,
//! the lifetime, steps, and every error as a problem with its status.

use serde_json::{Value, json};
use stead_fixtures::{TestClient, TestResponse, TestRuntime};
use stead_sidecar::SidecarConfig;

fn app(rt: &stead_core::Runtime) -> TestClient {
    TestClient::new(axum::Router::new().nest(
        "/sidecars",
        stead_sidecar::router(rt).unwrap().unauthenticated(),
    ))
}

fn problem(r: &TestResponse, status: u16, kind: &str) -> Value {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    assert_eq!(r.content_type(), "application/problem+json");
    let p = r.value();
    assert_eq!(p["type"], format!("/problems/{kind}"), "{p}");
    p
}

#[tokio::test]
async fn values_with_etags_and_conditions() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    let url = "/sidecars/order-1/keys/cart/items";
    let created = http
        .put(url)
        .header("if-none-match", "*")
        .json(&json!({"n": 1}))
        .send()
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let etag = created.header("etag").unwrap().to_owned();
    assert_eq!(created.value()["created"], true);
    // The same create again loses.
    let again = http
        .put(url)
        .header("if-none-match", "*")
        .json(&json!({"n": 9}))
        .send()
        .await;
    let p = problem(&again, 412, "precondition-failed");
    assert_eq!(p["current_etag"], etag);
    // Read: the text as written, with its ETag.
    let raw = "{ \"n\" : 1.50 }";
    let r = http
        .put(url)
        .header("if-match", &etag)
        .header("content-type", "application/json")
        .bytes(raw)
        .send()
        .await;
    assert_eq!(r.status, 200);
    let etag2 = r.header("etag").unwrap().to_owned();
    assert_ne!(etag, etag2);
    let got = http.get(url).send().await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, raw));
    assert_eq!(got.header("etag"), Some(etag2.as_str()));
    assert_eq!(got.content_type(), "application/json");
    // A stale If-Match loses; so does a conditional delete.
    let stale = http
        .put(url)
        .header("if-match", &etag)
        .json(&1)
        .send()
        .await;
    problem(&stale, 412, "precondition-failed");
    let del = http.delete(url).header("if-match", &etag).send().await;
    problem(&del, 412, "precondition-failed");
    let del = http.delete(url).header("if-match", &etag2).send().await;
    assert_eq!(del.status, 204);
    problem(&http.get(url).send().await, 404, "not-found");
    problem(&http.delete(url).send().await, 404, "not-found");
    // A conditional delete of an absent key is the same 404 (the condition is ignored where
    // the request without it would not succeed).
    let gone = http.delete(url).header("if-match", &etag2).send().await;
    problem(&gone, 404, "not-found");
    // Bad input.
    let not_json = http
        .put(url)
        .header("content-type", "application/json")
        .bytes("{oops")
        .send()
        .await;
    assert_eq!(not_json.status, 400);
    let text = http.put(url).bytes("1").without_content_type().send().await;
    assert_eq!(text.status, 415);
    // A weak ETag never matches an If-Match (strong comparison): the key is absent here,
    // and would not match if present.
    let weak = http
        .put(url)
        .header("if-match", "W/\"1\"")
        .json(&1)
        .send()
        .await;
    problem(&weak, 412, "precondition-failed");
    let bad_etag = http.put(url).header("if-match", "1").json(&1).send().await;
    problem(&bad_etag, 400, "bad-request");
    let bad_entity = http
        .get(&format!("/sidecars/{}/keys/k", "e".repeat(300)))
        .send()
        .await;
    problem(&bad_entity, 400, "bad-request");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn if_match_lists_and_not_modified() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    let url = "/sidecars/run-9/keys/state";
    let first = http.put(url).json(&json!({"step": 1})).send().await;
    let v1 = first.header("etag").unwrap().to_owned();
    let second = http.put(url).json(&json!({"step": 2})).send().await;
    let v2 = second.header("etag").unwrap().to_owned();
    // A list holds when the key is at any of its ETags; tags of other servers and weak
    // tags are skipped.
    let r = http
        .put(url)
        .header("if-match", &format!("\"other\", W/{v2}, {v1}, {v2}"))
        .json(&json!({"step": 3}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v3 = r.header("etag").unwrap().to_owned();
    let stale = http
        .put(url)
        .header("if-match", &format!("{v1},{v2}"))
        .json(&json!({"step": 4}))
        .send()
        .await;
    let p = problem(&stale, 412, "precondition-failed");
    assert_eq!(p["current_etag"], v3);
    let del = http
        .delete(url)
        .header("if-match", &format!("{v1}, {v3}"))
        .send()
        .await;
    assert_eq!(del.status, 204);
    http.put(url).json(&json!({"step": 5})).send().await;

    // A read names what it has: 304 without a body (weak comparison, lists, `*`).
    let now = http.get(url).send().await;
    let tag = now.header("etag").unwrap().to_owned();
    for inm in [
        tag.clone(),
        format!("W/{tag}"),
        format!("{v1}, {tag}"),
        "*".to_owned(),
    ] {
        let r = http.get(url).header("if-none-match", &inm).send().await;
        assert_eq!(r.status, 304, "{inm}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(tag.as_str()));
    }
    let r = http.get(url).header("if-none-match", &v1).send().await;
    assert_eq!(
        (r.status.as_u16(), r.value()["step"].as_u64()),
        (200, Some(5))
    );
    for bad in ["12", "\"unclosed", "\"a\" \"b\""] {
        let r = http.get(url).header("if-none-match", bad).send().await;
        problem(&r, 400, "bad-request");
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn lists_listing_lifetime_and_info() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    for i in 0..5 {
        let r = http
            .post("/sidecars/run/lists/events?max_len=3")
            .json(&json!({"i": i}))
            .send()
            .await;
        assert_eq!(r.value()["index"], i, "{}", r.text());
    }
    let items = http
        .get("/sidecars/run/lists/events?from=0&limit=2")
        .send()
        .await
        .value();
    assert_eq!(
        (items["first"].as_u64(), items["next"].as_u64()),
        (Some(2), Some(5))
    );
    assert_eq!(
        items["items"],
        json!([{"index": 2, "item": {"i": 2}}, {"index": 3, "item": {"i": 3}}])
    );
    problem(
        &http.get("/sidecars/run/lists/nope").send().await,
        404,
        "not-found",
    );
    for k in ["a/1", "a/2", "b"] {
        http.put(&format!("/sidecars/run/keys/{k}"))
            .json(&k)
            .send()
            .await;
    }
    let page = http
        .get("/sidecars/run/keys?prefix=a/&limit=1")
        .send()
        .await
        .value();
    assert_eq!(page["keys"][0]["key"], "a/1");
    let cursor = page["next_cursor"].as_str().unwrap();
    let page = http
        .get(&format!(
            "/sidecars/run/keys?prefix=a/&limit=1&cursor={cursor}"
        ))
        .send()
        .await
        .value();
    assert_eq!(page["keys"][0]["key"], "a/2");
    problem(
        &http.get("/sidecars/run/keys?limit=0").send().await,
        400,
        "bad-request",
    );
    let info = http
        .put("/sidecars/run/ttl")
        .json(&json!({"ttl_ms": 60000}))
        .send()
        .await
        .value();
    assert_eq!(info["keys"], 4);
    assert!(info["expires_at"].is_string());
    rt.advance(std::time::Duration::from_secs(61)).await;
    let info = http.get("/sidecars/run").send().await.value();
    assert_eq!(
        (info["keys"].as_u64(), info["bytes"].as_u64()),
        (Some(0), Some(0))
    );
    problem(
        &http
            .put("/sidecars/run/ttl")
            .json(&json!({"ttl_ms": 0}))
            .send()
            .await,
        400,
        "bad-request",
    );
    http.put("/sidecars/gone/keys/x").json(&1).send().await;
    assert_eq!(http.delete("/sidecars/gone").send().await.status, 204);
    problem(
        &http.get("/sidecars/gone/keys/x").send().await,
        404,
        "not-found",
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn sizes_and_quotas_are_413_and_507() {
    let rt = TestRuntime::memory().await;
    stead_sidecar::SidecarClient::with_config(
        &rt,
        SidecarConfig::default()
            .max_value_bytes(1000)
            .max_total_bytes(1500)
            .max_keys(2),
    )
    .unwrap();
    let http = app(&rt);
    let big = "x".repeat(1200);
    let r = http.put("/sidecars/q/keys/a").json(&big).send().await;
    let p = problem(&r, 413, "value-too-large");
    assert_eq!(p["max"], 1000);
    // Beyond the routes' body limit, the body is not even read.
    let huge = "x".repeat(10_000);
    assert_eq!(
        http.put("/sidecars/q/keys/a")
            .json(&huge)
            .send()
            .await
            .status,
        413
    );
    let v = "y".repeat(800);
    assert_eq!(
        http.put("/sidecars/q/keys/a").json(&v).send().await.status,
        201
    );
    let p = problem(
        &http.put("/sidecars/q/keys/b").json(&v).send().await,
        507,
        "quota-exceeded",
    );
    assert_eq!(
        (p["quota"].as_str(), p["limit"].as_u64()),
        (Some("bytes"), Some(1500))
    );
    http.put("/sidecars/q/keys/b").json(&1).send().await;
    let p = problem(
        &http.put("/sidecars/q/keys/c").json(&1).send().await,
        507,
        "quota-exceeded",
    );
    assert_eq!(p["quota"], "keys");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn steps_over_http() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    let steps = http
        .put("/sidecars/wf/steps")
        .json(&json!({"steps": ["a", "b"]}))
        .send()
        .await;
    assert_eq!(steps.value()[0]["status"], "pending");
    let other = http
        .put("/sidecars/wf/steps")
        .json(&json!({"steps": ["z"]}))
        .send()
        .await;
    problem(&other, 409, "steps-declared");
    let next = |w: &'static str| {
        http.post("/sidecars/wf/steps/next")
            .json(&json!({"worker": w, "lease_ms": 30000}))
            .send()
    };
    let lease = next("w1").await.value()["lease"].clone();
    assert_eq!(lease["name"], "a");
    let token = lease["token"].as_u64().unwrap();
    let done = http
        .post("/sidecars/wf/steps/a/complete")
        .json(&json!({"token": token, "output": {"rows": 7}}))
        .send()
        .await;
    assert_eq!(done.value()["status"], "done", "{}", done.text());
    let stale = http
        .post("/sidecars/wf/steps/a/complete")
        .json(&json!({"token": token}))
        .send()
        .await;
    problem(&stale, 409, "step-lease-lost");
    // RFC 9457's `status` is the HTTP status, once; the step's state has a name of its own.
    let body = stale.text();
    assert_eq!(body.matches("\"status\"").count(), 1, "{body}");
    assert_eq!(stale.value()["status"], 409);
    assert_eq!(stale.value()["step_status"], "done");
    let b = next("w1").await.value();
    // The output comes back as the JSON value it went in as.
    assert_eq!(b["lease"]["previous_output"], json!({"rows": 7}));
    let tb = b["lease"]["token"].as_u64().unwrap();
    let failed = http
        .post("/sidecars/wf/steps/b/fail")
        .json(&json!({"token": tb, "error": "timeout"}))
        .send()
        .await;
    assert_eq!(failed.value()["status"], "failed");
    assert_eq!(next("w2").await.value()["blocked_by"]["name"], "b");
    assert_eq!(
        http.post("/sidecars/wf/steps/b/resume")
            .send()
            .await
            .value()["status"],
        "pending"
    );
    problem(
        &http.post("/sidecars/wf/steps/x/resume").send().await,
        404,
        "step-not-found",
    );
    let all = http.get("/sidecars/wf/steps").send().await.value();
    assert_eq!(all[0]["output"], json!({"rows": 7}));
    rt.shutdown().await.unwrap();
}

#[test]
fn every_route_is_described() {
    let doc = stead_sidecar::openapi();
    for p in [
        "/{name}",
        "/{name}/ttl",
        "/{name}/keys",
        "/{name}/keys/{key}",
        "/{name}/lists/{key}",
        "/{name}/steps",
        "/{name}/steps/next",
        "/{name}/steps/{step}/complete",
        "/{name}/steps/{step}/fail",
        "/{name}/steps/{step}/resume",
    ] {
        assert!(doc.paths.paths.contains_key(p), "{p}");
    }
}
