//! The lock routes over real HTTP, every error included.

use serde_json::{Value, json};
use stead_core::Runtime;

async fn serve() -> (String, Runtime, tokio::task::JoinHandle<()>) {
    let rt = Runtime::builder().memory().build().await.unwrap();
    let app = axum::Router::new().nest("/locks", stead_lock::router(&rt).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), rt, task)
}

async fn send(http: &reqwest::Client, url: String, body: &str) -> (u16, Value, String) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, r.json().await.unwrap(), ct)
}

#[tokio::test]
async fn acquire_renew_validate_release_and_every_error() {
    let (base, rt, task) = serve().await;
    let http = reqwest::Client::new();
    let u = |p: &str| format!("{base}/locks/db-migrate/{p}");

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

    let state: Value = http
        .get(format!("{base}/locks/db-migrate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    task.abort();
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_waiting_acquire_is_a_long_poll() {
    let (base, rt, task) = serve().await;
    let http = reqwest::Client::new();
    let url = format!("{base}/locks/q/acquire");
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
    loop {
        let st: Value = http
            .get(format!("{base}/locks/q"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if st["waiters"] == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    send(
        &http,
        format!("{base}/locks/q/release"),
        &format!(r#"{{"holder":"a","token":{token}}}"#),
    )
    .await;
    let (s, b, _) = waiter.await.unwrap();
    assert_eq!(s, 200);
    assert!(b["token"].as_u64().unwrap() > token);
    task.abort();
    rt.shutdown().await.unwrap();
}
