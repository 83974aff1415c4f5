//! The lock routes through the router, every error included.

use serde_json::{Value, json};
use stead_fixtures::{TestClient, TestRuntime, eventually};

fn app(rt: &stead_core::Runtime) -> TestClient {
    TestClient::new(
        axum::Router::new().nest("/locks", stead_lock::router(rt).unwrap().unauthenticated()),
    )
}

async fn send(app: &TestClient, url: String, body: &str) -> (u16, Value, String) {
    let r = app
        .post(&url)
        .header("content-type", "application/json")
        .bytes(body.to_owned())
        .send()
        .await;
    (r.status.as_u16(), r.value(), r.content_type().to_owned())
}

#[tokio::test]
async fn acquire_renew_validate_release_and_every_error() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    let u = |p: &str| format!("/locks/db-migrate/{p}");

    let (s, a, _) = send(&http, u("acquire"), r#"{"holder":"w1","ttl_ms":30000}"#).await;
    assert_eq!(s, 200);
    assert_eq!(a["acquired"], true);
    let token = a["token"].as_u64().unwrap();
    assert!(a["expires_at"].is_string());

    let (s, b, ct) = send(&http, u("acquire"), r#"{"holder":"w2","ttl_ms":30000}"#).await;
    // A refusal is a problem that still carries its domain fields.
    assert_eq!((s, ct.as_str()), (409, "application/problem+json"));
    assert_eq!(b["type"], "/problems/lock-held");
    assert_eq!(b["holder"], "w1");
    assert!(b["retry_after_ms"].as_u64().unwrap() > 0);

    let (s, r, _) = send(
        &http,
        u("renew"),
        &format!(r#"{{"holder":"w1","token":{token},"ttl_ms":60000}}"#),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let (s, v, _) = send(&http, u("validate"), &format!(r#"{{"token":{token}}}"#)).await;
    assert_eq!((s, v["valid"].as_bool()), (200, Some(true)));

    // Wrong holder, stale token: 409 problems that say why.
    let (s, p, ct) = send(
        &http,
        u("release"),
        &format!(r#"{{"holder":"w2","token":{token}}}"#),
    )
    .await;
    assert_eq!((s, ct.as_str()), (409, "application/problem+json"));
    assert_eq!(p["type"], "/problems/not-holder");
    assert!(p["detail"].as_str().unwrap().contains("w2"), "{p}");
    let (s, p, _) = send(
        &http,
        u("renew"),
        &format!(r#"{{"holder":"w1","token":{},"ttl_ms":1000}}"#, token + 7),
    )
    .await;
    assert_eq!(s, 409);
    assert_eq!(p["type"], "/problems/stale-token");
    assert_eq!(p["current_token"], token);
    assert!(p["detail"].as_str().unwrap().contains("stale"), "{p}");

    // Bad ttl, missing fields, wrong types, unknown fields: 400 problems.
    for body in [
        r#"{"holder":"w3","ttl_ms":0}"#,
        r#"{"holder":"w3"}"#,
        r#"{"holder":"w3","ttl_ms":"soon"}"#,
        r#"{"holder":"w3","ttl_ms":1000,"colour":"red"}"#,
        r#"{"holder":"","ttl_ms":1000}"#,
        r#"{"holder":"w3","ttl_ms":1000,"permits":0}"#,
        r#"{"holder":"w3","ttl_ms":-5}"#,
        r#"not json"#,
    ] {
        let (s, p, ct) = send(&http, u("acquire"), body).await;
        assert_eq!(
            (s, ct.as_str()),
            (400, "application/problem+json"),
            "{body}: {p}"
        );
        assert!(!p["detail"].as_str().unwrap().is_empty());
    }

    let state = http.get("/locks/db-migrate").send().await.value();
    assert_eq!(state["holders"][0]["holder"], "w1");
    assert_eq!(state["last_token"], token);

    let (s, r, _) = send(
        &http,
        u("release"),
        &format!(r#"{{"holder":"w1","token":{token}}}"#),
    )
    .await;
    assert_eq!((s, r), (200, json!({"released": true})));
    let (s, v, _) = send(&http, u("validate"), &format!(r#"{{"token":{token}}}"#)).await;
    assert_eq!((s, v["valid"].as_bool()), (200, Some(false)));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_waiting_acquire_is_a_long_poll() {
    let rt = TestRuntime::memory().await;
    let http = app(&rt);
    let url = "/locks/q/acquire".to_owned();
    let (_, a, _) = send(&http, url.clone(), r#"{"holder":"a","ttl_ms":30000}"#).await;
    let token = a["token"].as_u64().unwrap();
    let waiter = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            send(
                &http,
                url,
                r#"{"holder":"b","ttl_ms":30000,"wait_ms":30000}"#,
            )
            .await
        })
    };
    eventually("the second acquire waits in the queue", || async {
        http.get("/locks/q").send().await.value()["waiters"] == 1
    })
    .await;
    send(
        &http,
        "/locks/q/release".to_owned(),
        &format!(r#"{{"holder":"a","token":{token}}}"#),
    )
    .await;
    let (s, b, _) = waiter.await.unwrap();
    assert_eq!(s, 200);
    assert!(b["token"].as_u64().unwrap() > token);
    rt.shutdown().await.unwrap();
}
