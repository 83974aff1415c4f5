//! The admin and OFREP routes through the router: ETags and If-Match, validation problems
//! with paths, the audit log, OFREP's bodies and codes, 304 on a bulk evaluation, and the
//! long-poll on a set's version.

use std::time::Duration;

use serde_json::{Value, json};
use stead_fixtures::{TestClient, TestRuntime};

fn app(rt: &stead_core::Runtime) -> TestClient {
    TestClient::new(
        axum::Router::new()
            .nest("/flags", stead_flags::router(rt).unwrap().unauthenticated())
            .merge(stead_flags::root_router(rt).unwrap().unauthenticated()),
    )
}

fn doc() -> Value {
    json!({"flags": {
        "new-ui": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"in": [{"var": "targetingKey"}, ["u1"]]}, "on"]}},
        "broken": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{">": [{"var": "tags"}, 1]}, "on"]}},
        "no-default": {"state": "ENABLED", "variants": {"a": "A"}},
        "off": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}
    }})
}

#[tokio::test]
async fn a_flag_may_have_the_name_of_a_route() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    let simple = json!({"enabled": true, "rollout_percent": 100});
    for key in ["audit", "version", "ofrep", "flags"] {
        let r = http
            .put(&format!("/flags/prod/flags/{key}"))
            .json(&simple)
            .send()
            .await;
        assert_eq!(r.status, 200, "{key}: {}", r.text());
    }
    let r = http.get("/flags/prod").send().await;
    let keys: Vec<String> = r.value()["flags"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    // The routes named like them still answer as themselves.
    assert_eq!(http.get("/flags/prod/version").send().await.status, 200);
    assert_eq!(http.get("/flags/prod/audit").send().await.status, 200);
    for key in ["audit", "version", "ofrep", "flags"] {
        let r = http
            .delete(&format!("/flags/prod/flags/{key}"))
            .send()
            .await;
        assert_eq!(r.status, 200, "{key}: {}", r.text());
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_routes_version_and_guard_every_change() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    let r = http.get("/flags/prod").send().await;
    assert_eq!((r.status.as_u16(), r.header("etag")), (200, Some("\"0\"")));
    assert_eq!(r.value()["flags"], json!({}));

    let r = http
        .put("/flags/prod")
        .header("stead-actor", "ada")
        .json(&doc())
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.value()["version"].as_u64(), r.header("etag")),
        (Some(1), Some("\"1\""))
    );
    let r = http.get("/flags/prod").send().await;
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(r.value()["flags"]["new-ui"]["defaultVariant"], "off");

    // A stale If-Match: 412, and nothing written.
    let simple = json!({"enabled": true, "rollout_percent": 50});
    let r = http
        .put("/flags/prod/flags/beta")
        .header("if-match", "\"0\"")
        .json(&simple)
        .send()
        .await;
    assert_eq!(
        (r.status.as_u16(), r.content_type()),
        (412, "application/problem+json")
    );
    assert_eq!(r.value()["current_version"], 1);
    let r = http
        .put("/flags/prod/flags/beta")
        .header("if-match", "\"1\"")
        .json(&simple)
        .send()
        .await;
    assert_eq!((r.status.as_u16(), r.header("etag")), (200, Some("\"2\"")));
    let r = http
        .put("/flags/prod/flags/beta")
        .header("if-match", "\"1\"")
        .json(&simple)
        .send()
        .await;
    assert_eq!(r.status, 412);

    // Validation: the flag and the path of the fault.
    let r = http
        .put("/flags/prod/flags/bad")
        .json(&json!({"state": "ENABLED", "variants": {"a": 1, "b": "two"}}))
        .send()
        .await;
    assert_eq!(r.status, 400);
    let v = r.value();
    assert_eq!(
        (v["type"].as_str(), v["flag"].as_str(), v["path"].as_str()),
        (
            Some("/problems/invalid-definition"),
            Some("bad"),
            Some("/variants/b")
        )
    );
    let r = http
        .put("/flags/prod")
        .json(&json!({"flags": {"x": {"state": "ON", "variants": {"a": 1}}}}))
        .send()
        .await;
    assert_eq!(
        (r.status.as_u16(), r.value()["path"].as_str()),
        (400, Some("/flags/x/state"))
    );

    let r = http
        .delete("/flags/prod/flags/beta")
        .header("stead-actor", "bo")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let r = http.delete("/flags/prod/flags/beta").send().await;
    assert_eq!(
        (r.status.as_u16(), r.value()["type"].as_str()),
        (404, Some("/problems/not-found"))
    );

    let r = http.get("/flags/prod/audit?limit=2").send().await;
    let entries = r.value()["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (entries[0]["actor"].as_str(), entries[0]["action"].as_str()),
        (Some("bo"), Some("delete_flag"))
    );
    assert_eq!(entries[1]["flags"], json!(["beta"]));
    let next = r.value()["next"].clone();
    assert_eq!(next, entries[1]["version"]);
    let r = http
        .get(&format!("/flags/prod/audit?cursor={next}&limit=1000"))
        .send()
        .await;
    assert_eq!(r.value()["next"], Value::Null);
    let all_older = r.value()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["version"].as_u64() < next.as_u64());
    assert!(all_older);
    let r = http
        .get("/flags/prod/audit?order=oldest&limit=1")
        .send()
        .await;
    assert_eq!(r.value()["entries"][0]["version"], 1);
    let r = http.get("/flags/prod/audit?limit=0").send().await;
    assert_eq!(r.status, 400);
    let r = http.get("/flags/bad%01name").send().await;
    assert_eq!(r.status, 400);
}

async fn ofrep(http: &TestClient, url: &str, body: Option<Value>) -> (u16, Value) {
    let req = http.post(url);
    let r = match body {
        Some(b) => req.json(&b).send().await,
        None => req.send().await,
    };
    (r.status.as_u16(), r.value())
}

#[tokio::test]
async fn ofrep_answers_with_the_protocols_bodies() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    http.put("/flags/default").json(&doc()).send().await;
    let one = "/ofrep/v1/evaluate/flags";
    let (s, v) = ofrep(
        &http,
        &format!("{one}/new-ui"),
        Some(json!({"context": {"targetingKey": "u1"}})),
    )
    .await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({"key": "new-ui", "value": true, "reason": "TARGETING_MATCH", "variant": "on", "metadata": {}})
        )
    );
    // No body, and a body without context: an empty context.
    let (s, v) = ofrep(&http, &format!("{one}/new-ui"), None).await;
    assert_eq!(
        (s, v["value"].clone(), v["reason"].as_str()),
        (200, json!(false), Some("DEFAULT"))
    );
    let (s, _) = ofrep(&http, &format!("{one}/new-ui"), Some(json!({}))).await;
    assert_eq!(s, 200);
    let (s, v) = ofrep(&http, &format!("{one}/nope"), None).await;
    assert_eq!(
        (s, v["errorCode"].as_str(), v["key"].as_str()),
        (404, Some("FLAG_NOT_FOUND"), Some("nope"))
    );
    assert!(v["errorDetails"].is_string());
    let (s, v) = ofrep(
        &http,
        &format!("{one}/broken"),
        Some(json!({"context": {"tags": ["a"]}})),
    )
    .await;
    assert_eq!((s, v["errorCode"].as_str()), (400, Some("GENERAL")));
    let (s, v) = ofrep(
        &http,
        &format!("{one}/new-ui"),
        Some(json!({"context": [1]})),
    )
    .await;
    assert_eq!((s, v["errorCode"].as_str()), (400, Some("INVALID_CONTEXT")));
    let (s, v) = ofrep(
        &http,
        &format!("{one}/new-ui"),
        Some(json!({"context": {"targetingKey": 5}})),
    )
    .await;
    assert_eq!((s, v["errorCode"].as_str()), (400, Some("INVALID_CONTEXT")));
    let r = http
        .post(&format!("{one}/new-ui"))
        .header("content-type", "application/json")
        .bytes("{nope")
        .send()
        .await;
    assert_eq!(
        (r.status.as_u16(), r.value()["errorCode"].as_str()),
        (400, Some("PARSE_ERROR"))
    );
    let (s, v) = ofrep(&http, &format!("{one}/no-default"), None).await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({"key": "no-default", "reason": "DEFAULT", "metadata": {}})
        )
    );
    // The same through a named set's routes.
    let (s, v) = ofrep(
        &http,
        &format!("/flags/default{one}/new-ui"),
        Some(json!({"context": {"targetingKey": "u1"}})),
    )
    .await;
    assert_eq!((s, v["value"].clone()), (200, json!(true)));

    // Bulk: every enabled flag, an ETag, and 304 while nothing changed.
    let ctx = json!({"context": {"targetingKey": "u1"}});
    let r = http.post(one).json(&ctx).send().await;
    assert_eq!(r.status, 200);
    let etag = r.header("etag").unwrap().to_owned();
    let keys: Vec<String> = r.value()["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        vec!["broken", "new-ui"],
        "disabled and value-less flags are left out"
    );
    let r = http
        .post(one)
        .header("if-none-match", &etag)
        .json(&ctx)
        .send()
        .await;
    assert_eq!(r.status, 304);
    let other = json!({"context": {"targetingKey": "u2"}});
    assert_eq!(
        http.post(one)
            .header("if-none-match", &etag)
            .json(&other)
            .send()
            .await
            .status,
        200
    );
    http.delete("/flags/default/flags/broken").send().await;
    assert_eq!(
        http.post(one)
            .header("if-none-match", &etag)
            .json(&ctx)
            .send()
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_long_poll_answers_when_the_set_changes() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    http.put("/flags/s").json(&doc()).send().await;
    let r = http.get("/flags/s/version").send().await;
    assert_eq!(r.value()["version"], 1);
    let poll = {
        let http = app(&rt);
        tokio::spawn(async move {
            http.get("/flags/s/version?after=1&wait_ms=30000")
                .send()
                .await
                .value()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!poll.is_finished(), "it waits while nothing changes");
    http.delete("/flags/s/flags/off").send().await;
    let v = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["etag"].as_str()),
        (Some(2), Some("\"2\""))
    );
    let r = http
        .get("/flags/s/version?after=1&wait_ms=60001")
        .send()
        .await;
    assert_eq!(r.status, 400);
}
