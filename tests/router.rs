//! End to end through the umbrella crate: `stead::router` nested into a user's app, on a
//! real listener and real storage, every enabled pattern called over HTTP.

use serde_json::{Value, json};

#[tokio::test]
async fn every_pattern_answers_under_a_nested_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let rt = stead::Runtime::builder()
        .sqlite(dir.path())
        .build()
        .await
        .unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "my app" }))
        .nest("/stead", stead::router(&rt).unwrap().unauthenticated())
        .fallback(stead::http::not_found);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let post =
        |path: &str, body: Value| http.post(format!("{base}/stead{path}")).json(&body).send();

    assert_eq!(
        http.get(format!("{base}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "my app"
    );

    let r = post("/counters/hits/increment", json!({"by": 2}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = http
        .get(format!("{base}/stead/counters/hits"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["value"], 2);

    let a: Value = post(
        "/locks/job/acquire",
        json!({"holder": "me", "ttl_ms": 5000}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(a["acquired"], true);
    let r = post(
        "/locks/job/release",
        json!({"holder": "me", "token": a["token"]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    let c: Value = post(
        "/leaders/ops/campaign",
        json!({"candidate": "n1", "ttl_ms": 5000}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(c["elected"], true);

    let r = post(
        "/ratelimit/me/check",
        json!({"limit": 1, "period_ms": 60000}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("ratelimit"));
    let r = post(
        "/ratelimit/me/check",
        json!({"limit": 1, "period_ms": 60000}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 429);

    let nope = http.get(format!("{base}/stead/nope")).send().await.unwrap();
    assert_eq!(nope.status(), 404);
    assert_eq!(nope.headers()["content-type"], "application/problem+json");
    let wrong = http
        .get(format!("{base}/stead/counters/hits/increment"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);
    assert_eq!(wrong.headers()["content-type"], "application/problem+json");

    // Every route is described.
    let paths = stead::openapi().paths.paths;
    for p in [
        "/counters/{name}/increment",
        "/locks/{name}/acquire",
        "/leaders/{name}/watch",
        "/ratelimit/{name}/check",
        "/ratelimit",
        "/counters",
        "/sidecars/{name}/keys/{key}",
        "/sidecars/{name}/steps/next",
    ] {
        assert!(paths.contains_key(p), "{p}");
    }
    server.abort();
    rt.shutdown().await.unwrap();
}

/// An app with a state of its own, as most real apps have.
#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

#[tokio::test]
async fn one_pattern_nests_anywhere_in_an_app_with_its_own_state() {
    let rt = stead::Runtime::builder().memory().build().await.unwrap();
    let app: axum::Router = axum::Router::new()
        .route(
            "/",
            axum::routing::get(
                |axum::extract::State(s): axum::extract::State<AppState>| async move { s.greeting },
            ),
        )
        .nest(
            "/my/locks",
            stead::lock::router(&rt).unwrap().unauthenticated(),
        )
        .nest("/all", stead::router(&rt).unwrap().unauthenticated())
        .with_state(AppState { greeting: "hi" });
    let app = stead_fixtures::TestClient::new(app);
    assert_eq!(app.get("/").send().await.text(), "hi");
    let acquire = app
        .post("/my/locks/db/acquire")
        .json(&json!({"holder": "me", "ttl_ms": 5000}));
    let lease = acquire.send().await;
    assert_eq!(lease.status, 200);
    // The same lock, seen through the other mount: one runtime, one lock.
    let state = app.get("/all/locks/db").send().await;
    assert_eq!(state.status, 200);
    assert_eq!(state.value()["holders"][0]["token"], lease.value()["token"]);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_bearer_mount_answers_only_holders_of_a_token() {
    let rt = stead::Runtime::builder().memory().build().await.unwrap();
    let app: axum::Router = axum::Router::new()
        .route("/", axum::routing::get(|| async { "public" }))
        .nest(
            "/stead",
            stead::router(&rt)
                .unwrap()
                .bearer(["admin-token-0001", "admin-token-0002"])
                .unwrap(),
        )
        .nest(
            "/locks",
            stead::lock::router(&rt)
                .unwrap()
                .bearer(["lock-token-000000001"])
                .unwrap(),
        )
        .fallback(stead::http::not_found);
    let app = stead_fixtures::TestClient::new(app);
    assert_eq!(app.get("/").send().await.text(), "public");
    // Without a token, with a wrong one, with another mount's, or with a prefix of the
    // right one: 401, as a problem, and nothing done.
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Bearer lock-token-000000001"),
        Some("Bearer admin-token-000"),
        Some("Basic YWRtaW4tdG9rZW4tMQ=="),
        Some("Bearer "),
    ] {
        let mut req = app
            .post("/stead/counters/hits/increment")
            .json(&json!({"by": 1}));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await;
        assert_eq!(
            (r.status.as_u16(), r.content_type()),
            (401, "application/problem+json"),
            "{auth:?}"
        );
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    // Either token passes, the scheme in any case.
    for auth in ["Bearer admin-token-0001", "bearer admin-token-0002"] {
        let r = app
            .post("/stead/counters/hits/increment")
            .header("authorization", auth)
            .json(&json!({"by": 1}))
            .send()
            .await;
        assert_eq!(r.status, 200, "{auth}: {}", r.text());
    }
    let read = app
        .get("/stead/counters/hits")
        .header("authorization", "Bearer admin-token-0001")
        .send()
        .await;
    assert_eq!(read.value()["value"], 2, "the refused calls did nothing");
    // The one-pattern mount has its own token.
    let lock = app
        .get("/locks/db")
        .header("authorization", "Bearer lock-token-000000001")
        .send()
        .await;
    assert_eq!(lock.status, 200);
    // Unknown paths are still 404.
    assert_eq!(app.get("/stead/nope").send().await.status, 404);
    // A token that is no secret at all is refused when the app is built.
    assert!(stead::router::<()>(&rt).unwrap().bearer([" "]).is_err());
    assert!(stead::router::<()>(&rt).unwrap().bearer(["short"]).is_err());
    assert!(
        stead::router::<()>(&rt)
            .unwrap()
            .bearer(Vec::<String>::new())
            .is_err()
    );
    rt.shutdown().await.unwrap();
}
