//! The routes on a real listener (127.0.0.1, an ephemeral port): definitions, events,
//! state, decisions, the long-poll, acknowledgements, problems, and the live WebSocket.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use stead_fixtures::TestRuntime;
use stead_reactor::ReactorConfig;

async fn serve(t: &TestRuntime) -> String {
    let app: axum::Router = axum::Router::new().nest(
        "/reactors",
        stead_reactor::router(t).unwrap().unauthenticated(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn orders() -> Value {
    json!({"state": {"big": 0}, "rules": [{"name": "big order", "on": "order.placed",
        "when": {">": [{"var": "event.payload.amount"}, 100]}, "increment": {"big": 1},
        "emit": [{"type": "review.request", "payload": {"order": {"var": "event.payload.id"}}}],
        "decision": "review", "reason": "large order"}]})
}

#[tokio::test]
async fn definitions_events_state_decisions_and_problems() {
    let t = TestRuntime::memory().await;
    let base = serve(&t).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{base}/reactors{p}");

    let bad = http
        .put(url("/orders"))
        .json(&json!({"rules": [{"name": "big order", "on": "x", "when": {"nope": [1]}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    let body: Value = bad.json().await.unwrap();
    assert_eq!(
        body["type"].as_str().unwrap().rsplit('/').next(),
        Some("bad-definition")
    );
    assert_eq!(body["at"], "rules[0] \"big order\".when");
    assert!(
        body["fault"]
            .as_str()
            .unwrap()
            .contains("unknown operation \"nope\"")
    );

    assert_eq!(
        http.put(url("/orders"))
            .json(&orders())
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        http.put(url("/orders"))
            .json(&orders())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut with_hook = orders();
    with_hook["webhooks"] = json!([{"url": "http://user:pass@127.0.0.1:9/x?api_key=k", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]);
    with_hook["pull"] = json!(true);
    assert_eq!(
        http.put(url("/hooked"))
            .json(&with_hook)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let def: Value = http
        .get(url("/hooked"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        def["webhooks"][0]["secret"], "whsec_…",
        "secrets are masked"
    );
    assert_eq!(
        def["webhooks"][0]["url"], "http://***@127.0.0.1:9/x?***",
        "credentials in a webhook URL are masked"
    );
    let hooked: Value = http
        .get(url("/hooked/e1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        hooked["endpoints"][0]["url"],
        "http://***@127.0.0.1:9/x?***"
    );
    let shown = hooked.to_string();
    assert!(
        !shown.contains("pass") && !shown.contains("api_key"),
        "{shown}"
    );

    let event =
        json!({"id": "e-1", "type": "order.placed", "payload": {"id": "o-1", "amount": 500}});
    let r = http
        .post(url("/orders/acme/events"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"accepted": true, "duplicate": false, "commands": 1})
    );
    let again: Value = http
        .post(url("/orders/acme/events"))
        .json(&event)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        again,
        json!({"accepted": true, "duplicate": true, "commands": 0})
    );

    let state: Value = http
        .get(url("/orders/acme"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            state["state"].clone(),
            state["last_seq"].clone(),
            state["acked"].clone()
        ),
        (json!({"big": 1}), json!(1), json!(0))
    );
    let page: Value = http
        .get(url("/orders/acme/decisions?limit=5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["next"], Value::Null);
    let decisions = &page["entries"];
    assert_eq!(decisions[0]["reason"], "large order");
    assert_eq!(decisions[0]["type"], "review");
    assert_eq!(decisions[0]["commands"], json!([1]));

    for (method, path, body, status, slug) in [
        (
            "POST",
            "/nope/acme/events",
            event.clone(),
            404,
            "unknown-reactor-type",
        ),
        (
            "POST",
            "/orders/acme/events",
            json!({"id": "x"}),
            400,
            "invalid-body",
        ),
        (
            "POST",
            "/orders/acme/events",
            json!({"id": "x", "type": "t", "extra": 1}),
            400,
            "invalid-body",
        ),
        (
            "POST",
            "/orders/acme/commands/ack",
            json!({"up_to": 7}),
            409,
            "ack-beyond-outbox",
        ),
        (
            "GET",
            "/orders/acme/commands?wait_ms=60001",
            Value::Null,
            400,
            "bad-request",
        ),
        (
            "GET",
            "/orders/acme/decisions?limit=0",
            Value::Null,
            400,
            "bad-request",
        ),
        (
            "POST",
            "/orders/acme/dead-letters",
            json!({"action": "drop", "seqs": [3]}),
            404,
            "unknown-dead-letter",
        ),
        (
            "PUT",
            "/orders",
            json!({"webhooks": [], "pull": false}),
            400,
            "bad-definition",
        ),
    ] {
        let req = http.request(method.parse().unwrap(), url(path));
        let req = if body.is_null() { req } else { req.json(&body) };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(
            p["type"].as_str().unwrap().rsplit('/').next(),
            Some(slug),
            "{method} {path}: {p}"
        );
    }
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_long_poll_over_http_answers_when_the_command_is_decided_and_ack_removes_it() {
    let t = TestRuntime::memory().await;
    let base = serve(&t).await;
    let http = reqwest::Client::new();
    let url = move |p: &str| format!("http://{base}/reactors{p}");
    http.put(url("/orders"))
        .json(&orders())
        .send()
        .await
        .unwrap();
    let poll = tokio::spawn({
        let (http, u) = (
            http.clone(),
            url("/orders/acme/commands?after=0&wait_ms=20000"),
        );
        async move {
            http.get(u)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!poll.is_finished());
    http.post(url("/orders/acme/events"))
        .json(
            &json!({"id": "e-1", "type": "order.placed", "payload": {"id": "o-1", "amount": 500}}),
        )
        .send()
        .await
        .unwrap();
    let page = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    let c = &page["commands"][0];
    assert_eq!(
        (c["seq"].clone(), c["type"].clone(), c["payload"].clone()),
        (json!(1), json!("review.request"), json!({"order": "o-1"}))
    );
    let acked: Value = http
        .post(url("/orders/acme/commands/ack"))
        .json(&json!({"up_to": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(acked, json!({"acked": 1}));
    let state: Value = http
        .get(url("/orders/acme"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["pending"], 0);
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_outbox_answers_503_with_retry_after() {
    let t = TestRuntime::memory().await;
    let mut config = ReactorConfig::default();
    config.max_outbox = 1;
    stead_reactor::ReactorClient::with_config(&t, config).unwrap();
    let base = serve(&t).await;
    let http = reqwest::Client::new();
    http.put(format!("http://{base}/reactors/orders"))
        .json(&orders())
        .send()
        .await
        .unwrap();
    for (i, status) in [(1, 200), (2, 503)] {
        let r = http.post(format!("http://{base}/reactors/orders/a/events"))
            .json(&json!({"id": format!("e-{i}"), "type": "order.placed", "payload": {"id": i, "amount": 500}}))
            .send().await.unwrap();
        assert_eq!(r.status(), status);
        if status == 503 {
            assert!(r.headers().contains_key("retry-after"));
            let p: Value = r.json().await.unwrap();
            assert_eq!(p["pending"], 1);
        }
    }
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_live_view_sends_a_snapshot_then_each_decision() {
    let t = TestRuntime::memory().await;
    let base = serve(&t).await;
    let http = reqwest::Client::new();
    http.put(format!("http://{base}/reactors/orders"))
        .json(&orders())
        .send()
        .await
        .unwrap();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{base}/reactors/orders/acme/live"))
            .await
            .unwrap();
    let next = |m: Option<Result<tokio_tungstenite::tungstenite::Message, _>>| -> Value {
        serde_json::from_str(m.unwrap().unwrap().to_text().unwrap()).unwrap()
    };
    let hello = next(
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap(),
    );
    assert_eq!(
        (hello["kind"].clone(), hello["state"].clone()),
        (json!("snapshot"), json!({"big": 0}))
    );
    http.post(format!("http://{base}/reactors/orders/acme/events"))
        .json(
            &json!({"id": "e-1", "type": "order.placed", "payload": {"id": "o-1", "amount": 500}}),
        )
        .send()
        .await
        .unwrap();
    let update = next(
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap(),
    );
    assert_eq!(update["kind"], "update");
    assert_eq!(update["cause"], "event:e-1");
    assert_eq!(update["state"], json!({"big": 1}));
    assert_eq!(update["decisions"][0]["reason"], "large order");
    assert_eq!(update["commands"][0]["payload"], json!({"order": "o-1"}));
    drop(ws);
    t.shutdown().await.unwrap();
}

#[test]
fn the_openapi_document_lists_every_route() {
    let doc = serde_json::to_value(stead_reactor::openapi()).unwrap();
    for path in [
        "/{type}",
        "/{type}/{entity}",
        "/{type}/{entity}/events",
        "/{type}/{entity}/decisions",
        "/{type}/{entity}/commands",
        "/{type}/{entity}/commands/ack",
        "/{type}/{entity}/dead-letters",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    // The WebSocket route is not a request/response route: left out.
    assert!(doc["paths"].get("/{type}/{entity}/live").is_none());
}
