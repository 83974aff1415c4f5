//! Through the router: the `/ratelimit` routes with their headers and every kind of bad
//! input, and the tower layer keyed by header and by peer IP, failing open and closed.

use axum::Router;
use axum::http::HeaderName;
use axum::routing::get;
use serde_json::Value;
use stead_core::Runtime;
use stead_fixtures::{TestClient, TestRequest, TestRuntime};
use stead_ratelimit::{OnFailure, Policies, Policy, RateLimitClient, RateLimitConfig, layer};

async fn runtime() -> TestRuntime {
    TestRuntime::builder()
        .starting_at("2026-03-01T00:00:00.5Z")
        .start()
        .await
}

/// A response, its body as JSON (or as a JSON string when it is not JSON).
struct Reply {
    status: u16,
    body: Value,
    headers: axum::http::HeaderMap,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

async fn call(req: TestRequest) -> Reply {
    let r = req.send().await;
    let text = r.text();
    Reply {
        status: r.status.as_u16(),
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers: r.headers,
    }
}

fn post(http: &TestClient, url: String, body: &str) -> TestRequest {
    http.post(&url)
        .header("content-type", "application/json")
        .bytes(body.to_owned())
}

fn routes(rt: &stead_core::Runtime) -> TestClient {
    TestClient::new(Router::new().nest(
        "/ratelimit",
        stead_ratelimit::router(rt).unwrap().unauthenticated(),
    ))
}

#[tokio::test]
async fn check_peek_and_reset_with_headers() {
    let rt = runtime().await;
    let clock = rt.clock.clone();
    let mut p = Policies::new();
    p.insert("api", Policy::per_minute(2)).unwrap();
    RateLimitClient::with_config(&rt, RateLimitConfig::with_policies(p)).unwrap();
    let http = routes(&rt);
    let check = |body: &'static str| post(&http, "/ratelimit/alice/check".to_owned(), body);

    let r = call(check(r#"{"policy":"api"}"#)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["allowed"], true);
    assert_eq!(r.body["remaining"], 1);
    assert_eq!(r.header("ratelimit-policy"), r#""api";q=2;w=60"#);
    assert_eq!(r.header("ratelimit"), r#""api";r=1;t=30"#);
    assert!(r.headers.get("retry-after").is_none());
    assert_eq!(call(check(r#"{"policy":"api"}"#)).await.status, 200);
    let r = call(check(r#"{"policy":"api"}"#)).await;
    // A refusal is a problem that still carries the decision.
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), "application/problem+json");
    assert_eq!(r.body["type"], "/problems/rate-limited");
    assert_eq!(r.body["allowed"], false);
    assert_eq!(r.body["retry_after_ms"], 30_000);
    assert_eq!(r.header("retry-after"), "30");
    assert_eq!(r.header("ratelimit"), r#""api";r=0;t=30"#);

    // Peek consumes nothing and is never a 429.
    clock.advance(std::time::Duration::from_secs(30)).await;
    for _ in 0..2 {
        let r = call(http.get("/ratelimit/alice?policy=api")).await;
        assert_eq!((r.status, &r.body["remaining"]), (200, &Value::from(1)));
        assert_eq!(r.header("ratelimit"), r#""api";r=1;t=30"#);
    }
    // Inline policies, by body object, top-level fields, or query.
    let r = call(check(
        r#"{"policy":{"algorithm":"fixed_window","limit":1,"period_ms":1000}}"#,
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy"),
        r#""fixed_window-1-per-1000ms";q=1;w=1"#
    );
    let r = call(check(
        r#"{"algorithm":"fixed_window","limit":1,"period_ms":1000}"#,
    ))
    .await;
    assert_eq!((r.status, r.header("retry-after")), (429, "1"));
    let r = call(http.get("/ratelimit/alice?algorithm=fixed_window&limit=1&period_ms=1000")).await;
    assert_eq!(r.body["remaining"], 0);
    // Cost.
    let r = call(check(r#"{"limit":10,"period_ms":1000,"cost":4}"#)).await;
    assert_eq!(r.body["remaining"], 6);

    // Reset one policy, then all of the key's.
    let r = call(http.delete("/ratelimit/alice?policy=api")).await;
    assert_eq!((r.status, &r.body["reset"]), (200, &Value::from(1)));
    let r = call(http.get("/ratelimit/alice?policy=api")).await;
    assert_eq!(r.body["remaining"], 2);
    let r = call(http.delete("/ratelimit/alice")).await;
    assert_eq!(r.body["reset"], 2, "{:?}", r.body);

    let r = call(http.get("/ratelimit")).await;
    assert_eq!(r.body["policies"]["api"]["limit"], 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_a_precise_problem() {
    let rt = runtime().await;
    let http = routes(&rt);
    let cases: &[(&str, &str, &str)] = &[
        (
            "k",
            r#"{"limit":0,"period_ms":1000}"#,
            "limit must be between",
        ),
        ("k", r#"{"limit":-5,"period_ms":1000}"#, "limit"),
        (
            "k",
            r#"{"limit":5,"period_ms":0}"#,
            "period_ms must be between",
        ),
        (
            "k",
            r#"{"limit":5,"period_ms":1000,"burst":0}"#,
            "burst must be",
        ),
        (
            "k",
            r#"{"algorithm":"leaky","limit":5,"period_ms":1000}"#,
            "unknown variant",
        ),
        (
            "k",
            r#"{"algorithm":"sliding_window","limit":20000,"period_ms":1000}"#,
            "at most 10000",
        ),
        (
            "k",
            r#"{"algorithm":"fixed_window","limit":5,"period_ms":1000,"burst":2}"#,
            "burst applies",
        ),
        ("k", r#"{"limit":5}"#, "needs both limit and period_ms"),
        ("k", r#"{}"#, "name a policy"),
        ("k", r#"{"policy":"api"}"#, "no policies are configured"),
        (
            "k",
            r#"{"policy":"api","limit":3,"period_ms":10}"#,
            "not both",
        ),
        ("k", r#"{"policy":7}"#, "policy must be"),
        (
            "k",
            r#"{"policy":{"limit":5}}"#,
            "policy: missing field `period_ms`",
        ),
        (
            "k",
            r#"{"limit":5,"period_ms":1000,"cost":0}"#,
            "cost must be at least 1",
        ),
        (
            "k",
            r#"{"limit":5,"period_ms":1000,"cost":6}"#,
            "exceeds the policy's capacity of 5",
        ),
        (
            "k",
            r#"{"limit":5,"period_ms":1000,"colour":1}"#,
            "unknown field",
        ),
        ("k", r#"{"limit":"5","period_ms":1000}"#, "invalid type"),
        ("k", r#"{"limit":5,"period_ms":1000"#, ""),
    ];
    for (key, body, detail) in cases {
        let r = call(post(&http, format!("/ratelimit/{key}/check"), body)).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.header("content-type"), "application/problem+json");
        let got = r.body["detail"].as_str().unwrap();
        assert!(got.contains(detail), "{body}: {got}");
    }
    let long = "k".repeat(300);
    let r = call(post(
        &http,
        format!("/ratelimit/{long}/check"),
        r#"{"limit":1,"period_ms":1}"#,
    ))
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("300 characters")
    );
    let r = call(http.get("/ratelimit/k?limit=abc&period_ms=1")).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (400, "application/problem+json")
    );
    let r = call(http.get("/ratelimit/k?colour=red")).await;
    assert_eq!(r.status, 400);
    let r = call(http.put("/ratelimit/k/check")).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (405, "application/problem+json")
    );
    rt.shutdown().await.unwrap();
}

fn app(layer: stead_ratelimit::RateLimitLayer) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(layer)
}

#[tokio::test]
async fn the_layer_limits_by_header_and_reports_in_headers() {
    let rt = runtime().await;
    let clock = rt.clock.clone();
    let l = layer(&rt, Policy::per_second(2))
        .unwrap()
        .key_by_header(HeaderName::from_static("x-api-key"))
        .named("edge")
        .unwrap();
    let http = TestClient::new(app(l));
    let get = |key: Option<&str>| {
        let r = http.get("/hello");
        match key {
            Some(k) => r.header("x-api-key", k),
            None => r,
        }
    };
    let r = call(get(Some("a"))).await;
    assert_eq!((r.status, &r.body), (200, &Value::from("hello")));
    assert_eq!(r.header("ratelimit-policy"), r#""edge";q=2;w=1"#);
    assert_eq!(r.header("ratelimit"), r#""edge";r=1;t=1"#);
    assert_eq!(call(get(Some("a"))).await.status, 200);
    let r = call(get(Some("a"))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), "application/problem+json");
    assert_eq!(r.body["type"], "/problems/rate-limited");
    assert_eq!(r.body["retry_after_ms"], 500);
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.header("ratelimit"), r#""edge";r=0;t=1"#);
    // Another key is untouched; requests without the header share one limiter.
    assert_eq!(call(get(Some("b"))).await.status, 200);
    assert_eq!(call(get(None)).await.status, 200);
    assert_eq!(call(get(None)).await.status, 200);
    assert_eq!(call(get(None)).await.status, 429);
    clock.advance(std::time::Duration::from_millis(500)).await;
    assert_eq!(call(get(Some("a"))).await.status, 200);
    // A key that cannot be a key is the caller's problem, not the limiter's.
    let r = call(get(Some(&"x".repeat(300)))).await;
    assert_eq!(r.status, 400);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_layer_wraps_a_service_of_any_request_body_keyed_by_the_head() {
    use std::convert::Infallible;

    use axum::http::Request;
    use axum::response::{IntoResponse, Response};
    use tower::{Layer, Service, ServiceExt};

    let rt = runtime().await;
    let l = layer(&rt, Policy::per_minute(1))
        .unwrap()
        .key_by(|head| Some(head.uri.path().to_owned()));
    // A service of its own body type, not axum's.
    let echo = tower::service_fn(|req: Request<String>| async move {
        Ok::<Response, Infallible>(req.into_body().into_response())
    });
    let mut svc = l.layer(echo);
    let mut send = async |path: &str| {
        let req = Request::get(path).body(format!("to {path}")).unwrap();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        resp.status().as_u16()
    };
    assert_eq!(send("/a").await, 200);
    assert_eq!(send("/a").await, 429);
    assert_eq!(send("/b").await, 200);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_layer_keys_by_peer_ip_and_says_when_it_cannot() {
    let rt = runtime().await;
    let http = TestClient::new(app(layer(&rt, Policy::per_minute(1)).unwrap()));
    assert_eq!(call(http.get("/hello")).await.status, 200);
    assert_eq!(call(http.get("/hello")).await.status, 429);
    // Another address has its own limit.
    let other = http.peer(([10, 0, 0, 7], 5000));
    assert_eq!(call(other.get("/hello")).await.status, 200);
    // Served without connect info, the layer cannot key by IP and says so.
    let plain =
        TestClient::new(app(layer(&rt, Policy::per_minute(1)).unwrap())).without_connect_info();
    let r = call(plain.get("/hello")).await;
    assert_eq!(r.status, 500);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("into_make_service_with_connect_info")
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn behind_proxies_the_layer_keys_by_the_address_the_nearest_proxy_recorded() {
    let rt = runtime().await;
    // Two proxies: the client's address is the second entry from the right.
    let l = layer(&rt, Policy::per_minute(1))
        .unwrap()
        .key_by_forwarded_ip(2)
        .unwrap();
    let http = TestClient::new(app(l));
    let via = |xff: &str| http.get("/hello").header("x-forwarded-for", xff);
    assert_eq!(call(via("203.0.113.7, 10.0.0.2")).await.status, 200);
    assert_eq!(call(via("203.0.113.7, 10.0.0.2")).await.status, 429);
    // What a client writes itself stays to the left, and is not its key.
    assert_eq!(
        call(via("198.51.100.1, 203.0.113.7, 10.0.0.2"))
            .await
            .status,
        429
    );
    // Another client, the same proxies: its own limit.
    assert_eq!(call(via("203.0.113.8, 10.0.0.2")).await.status, 200);
    // Too few entries or no address: the shared limiter of requests without a key.
    assert_eq!(call(via("10.0.0.2")).await.status, 200);
    assert_eq!(call(via("not-an-address, 10.0.0.2")).await.status, 429);
    // A count of proxies that cannot be right is refused when the app is built.
    let err = layer(&rt, Policy::per_minute(1))
        .unwrap()
        .key_by_forwarded_ip(0)
        .unwrap_err();
    assert!(err.to_string().contains("between 1 and 16"), "{err}");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_layer_fails_closed_unless_told_open() {
    let rt = runtime().await;
    let key = HeaderName::from_static("x-api-key");
    let limited = || {
        layer(&rt, Policy::per_minute(1))
            .unwrap()
            .key_by_header(key.clone())
    };
    let default = TestClient::new(app(limited()));
    let open = TestClient::new(app(limited().on_failure(OnFailure::Open)));
    // A runtime that has shut down cannot answer.
    rt.shutdown().await.unwrap();
    let r = call(default.get("/hello").header("x-api-key", "a")).await;
    assert_eq!(r.status, 503, "the default refuses what it cannot check");
    assert_eq!(r.header("content-type"), "application/problem+json");
    assert_eq!(r.header("retry-after"), "1");
    for _ in 0..3 {
        let r = call(open.get("/hello").header("x-api-key", "a")).await;
        assert_eq!(r.status, 200, "fail open, chosen, lets requests through");
        assert!(r.headers.get("ratelimit").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_key_is_refused_never_let_through() {
    // The limiter's commits are held, so its mailbox fills and it answers Overloaded: what
    // a flood on one key does to it.
    let faulty = std::sync::Arc::new(stead_core::testing::FaultyBackend::new(
        stead_core::MemoryBackend::new(),
    ));
    let backend = faulty.clone();
    let rt = TestRuntime::builder()
        .tune(move |b| b.backend(backend.clone()).mailbox_capacity(4))
        .start()
        .await;
    RateLimitClient::with_config(
        &rt,
        RateLimitConfig::default().durability(stead_core::Durability::Fsync),
    )
    .unwrap();
    faulty.stall_commit(faulty.submitted() + 1);
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    let app = Router::new()
        .route(
            "/hello",
            get(move || {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { "hello" }
            }),
        )
        .layer(
            layer(&rt, Policy::per_minute(10_000))
                .unwrap()
                .key_by_header(HeaderName::from_static("x-api-key")),
        );
    let http = TestClient::new(app);
    let floods: Vec<_> = (0..200)
        .map(|_| {
            let req = http.get("/hello").header("x-api-key", "flood");
            tokio::spawn(async move { call(req).await })
        })
        .collect();
    // The held turns (at most 64 commits in flight, and a mailbox of 4) wait; every other
    // request finds the object full and is answered at once.
    stead_fixtures::eventually("most of the flood answered", || {
        let done = floods.iter().filter(|f| f.is_finished()).count();
        async move { done >= 100 }
    })
    .await;
    let mut refused = 0;
    let mut pending = Vec::new();
    for f in floods {
        if f.is_finished() {
            let r = f.await.unwrap();
            assert_eq!(r.status, 429, "{:?}", r.body);
            assert!(r.headers.get("retry-after").is_some());
            refused += 1;
        } else {
            pending.push(f);
        }
    }
    assert!(refused > 0, "some requests met a full mailbox");
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "none passed unchecked"
    );
    faulty.release();
    for f in pending {
        let r = f.await.unwrap();
        assert!([200, 429].contains(&r.status), "{}", r.status);
    }
    rt.shutdown().await.unwrap();
}

#[test]
fn an_invalid_layer_policy_or_name_is_an_error() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = tokio.block_on(Runtime::builder().memory().build()).unwrap();
    let err = layer(&rt, Policy::per_second(0)).unwrap_err();
    assert!(err.to_string().contains("limit must be between"));
    let err = layer(&rt, Policy::per_second(5))
        .unwrap()
        .named("no spaces allowed")
        .unwrap_err();
    assert!(err.to_string().contains("name"), "{err}");
    tokio.block_on(rt.shutdown()).unwrap();
}
