//! End to end: the real server on 127.0.0.1 with an ephemeral port, called over HTTP.

mod common;

use std::process::Command;

use stead_server::{Config, DurabilityMode};

const TOKEN: &str = "test-token-0123456789";

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.data_dir = dir.to_path_buf();
    c
}

async fn problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    assert!(body["type"].as_str().is_some(), "{body}");
    body
}

#[tokio::test]
async fn health_openapi_metrics_and_problem_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = stead_server::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();

    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let spec: serde_json::Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/counters",
        "/counters/{name}",
        "/counters/{name}/increment",
        "/counters/{name}/reset",
        "/locks/{name}",
        "/locks/{name}/acquire",
        "/locks/{name}/renew",
        "/locks/{name}/release",
        "/locks/{name}/validate",
        "/leaders/{name}",
        "/leaders/{name}/campaign",
        "/leaders/{name}/heartbeat",
        "/leaders/{name}/resign",
        "/leaders/{name}/watch",
        "/ratelimit",
        "/ratelimit/{name}",
        "/ratelimit/{name}/check",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    // Usable as is by a client generator: every reference resolves, operation ids are
    // unique, every operation documents a success and (but the open ones) the 401.
    let mut refs = Vec::new();
    collect_refs(&spec, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("a schema reference");
        assert!(
            spec["components"]["schemas"][name].is_object(),
            "{r} resolves"
        );
    }
    // Every integer a request carries states its bounds, so that a schema-valid request
    // is never refused for a number the server cannot store.
    let (mut unbounded, mut integers) = (Vec::new(), Vec::new());
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or("?");
                integer_bounds(
                    &spec,
                    &p["schema"],
                    &format!("{at} {name}"),
                    &mut unbounded,
                    &mut integers,
                );
            }
            for (_, media) in op["requestBody"]["content"]
                .as_object()
                .into_iter()
                .flatten()
            {
                integer_bounds(
                    &spec,
                    &media["schema"],
                    &format!("{at} body"),
                    &mut unbounded,
                    &mut integers,
                );
            }
        }
    }
    assert!(
        unbounded.is_empty(),
        "integers without bounds: {unbounded:#?}"
    );
    for field in [
        "post /locks/{name}/renew body > RenewBody.token",
        "post /ratelimit/{name}/check body > CheckBody oneOf[1] > InlineCheck.period_ms",
        "get /leaders/{name}/watch timeout_ms",
    ] {
        assert!(
            integers.iter().any(|i| i == field),
            "{field} in {integers:#?}"
        );
    }
    let mut ids = std::collections::HashSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().expect("an operationId");
            assert!(ids.insert(id.to_owned()), "{id} is unique");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{method} {path} documents a success"
            );
            let open = ["/healthz", "/readyz", "/openapi.json"].contains(&path.as_str());
            assert_eq!(responses.contains_key("401"), !open, "{method} {path}");
        }
    }
    assert_eq!(
        spec["paths"]["/ratelimit/{name}/check"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/CheckBody"
    );
    assert_eq!(
        spec["components"]["schemas"]["AcquireBody"]["additionalProperties"], false,
        "unknown fields are refused, and the document says so"
    );

    let wrote = http
        .post(format!("{base}/counters/metered/increment"))
        .json(&serde_json::json!({"by": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrote.status(), 200);
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("stead_http_requests_total"), "{text}");
    // Commits recorded by the storage threads, which start with the runtime.
    assert!(text.contains("stead_commit_batch_size"), "{text}");

    problem(
        http.get(format!("{base}/no/such/route"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let body = problem(
        http.post(format!("{base}/healthz")).send().await.unwrap(),
        405,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("POST is not allowed on /healthz"),
        "{body}"
    );
    // Inside a pattern's nested routes, the detail names the path the client sent.
    let body = problem(
        http.get(format!("{base}/counters/x/increment"))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("GET is not allowed on /counters/x/increment"),
        "{body}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_and_malformed_bodies_get_problems() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_body_bytes = 1024;
    let server = stead_server::start(c).await.unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let url = format!("{base}/counters/big/increment");
    let huge = format!(r#"{{"by": 1, "idempotency_key": "{}"}}"#, "k".repeat(4000));
    let body = problem(
        http.post(&url)
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("larger"),
        "{body}"
    );
    let body = problem(
        http.post(&url)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(body["type"], "/problems/malformed-json");
    let body = problem(
        http.post(&url)
            .header("content-type", "application/json")
            .body(r#"{"by": true}"#)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("by"), "{body}");
    // The connection survives bad input: the same client goes on working.
    let ok = http
        .post(&url)
        .json(&serde_json::json!({"by": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_guard_everything_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.tokens = vec![TOKEN.to_owned()];
    let server = stead_server::start(c).await.unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let body = problem(
        http.get(format!("{base}/metrics")).send().await.unwrap(),
        401,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("Bearer"));
    problem(
        http.get(format!("{base}/metrics"))
            .bearer_auth("wrong-token-0123456789")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_eq!(
        http.get(format!("{base}/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        assert_eq!(
            http.get(format!("{base}/metrics"))
                .header("authorization", format!("{scheme} {TOKEN}"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{scheme}"
        );
    }
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn rate_limit_policies_come_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stead.toml");
    std::fs::write(
        &file,
        "[ratelimit]\ndurability = \"process-crash-safe\"\n\n[ratelimit.policies.api]\nalgorithm = \"sliding_window\"\nlimit = 1\nperiod_ms = 60000\n",
    )
    .unwrap();
    let config = || {
        let cli = <stead_server::Cli as clap::Parser>::parse_from([
            "stead",
            "--config",
            file.to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ]);
        Config::from_cli(cli).unwrap()
    };
    let http = reqwest::Client::new();
    let check = |base: String| {
        http.post(format!("{base}/ratelimit/alice/check"))
            .json(&serde_json::json!({"policy": "api"}))
            .send()
    };
    let server = stead_server::start(config()).await.unwrap();
    let base = format!("http://{}", server.addr());
    let r = check(base.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-policy"], "\"api\";q=1;w=60");
    assert_eq!(check(base).await.unwrap().status(), 429);
    server.shutdown().await.unwrap();
    // Configured durable, the limit holds across a restart.
    let server = stead_server::start(config()).await.unwrap();
    let base = format!("http://{}", server.addr());
    assert_eq!(check(base).await.unwrap().status(), 429);
    server.shutdown().await.unwrap();
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message() {
    let mut c = Config::default();
    c.bind = "0.0.0.0:8080".parse().unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("refusing") && err.contains("token"), "{err}");
    c.tokens = vec!["short".into()];
    assert!(c.validate().unwrap_err().to_string().contains("too short"));
    c.tokens = vec!["    ".into()];
    assert!(c.validate().unwrap_err().to_string().contains("whitespace"));
    c.tokens = vec![format!(" {TOKEN}")];
    assert!(c.validate().unwrap_err().to_string().contains("whitespace"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stead.toml");
    std::fs::write(&file, "bind = \"127.0.0.1:0\"\nshrads = 3\n").unwrap();
    let out = common::run_to_exit(
        Command::new(env!("CARGO_BIN_EXE_stead")).args(["--config", file.to_str().unwrap()]),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shrads"),
        "the bad field is named: {stderr}"
    );

    std::fs::write(
        &file,
        "[ratelimit.policies.api]\nlimit = 0\nperiod_ms = 1000\n",
    )
    .unwrap();
    let out = common::run_to_exit(
        Command::new(env!("CARGO_BIN_EXE_stead")).args(["--config", file.to_str().unwrap()]),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("policy \"api\"") && stderr.contains("limit must be between"),
        "the bad policy is named: {stderr}"
    );

    let out = common::run_to_exit(
        Command::new(env!("CARGO_BIN_EXE_stead"))
            .args(["--bind", "0.0.0.0:0"])
            .env_remove("STEAD_TOKENS"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing"));

    let help = common::run_to_exit(Command::new(env!("CARGO_BIN_EXE_stead")).arg("--help"));
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--bind",
        "--data-dir",
        "--durability",
        "--token",
        "--config",
        "--shards",
        "--max-body-bytes",
        "--max-value-bytes",
        "--log",
        "--set",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }
}

#[test]
fn the_binary_shuts_down_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, logs) = common::spawn_server(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}");
    let rest: Vec<String> = logs.iter().collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}

#[tokio::test]
async fn memory_durability_needs_no_data_dir() {
    let mut c = Config::default();
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.durability = DurabilityMode::Memory;
    c.data_dir = "/nonexistent/never/created".into();
    let server = stead_server::start(c).await.unwrap();
    server.shutdown().await.unwrap();
    assert!(!std::path::Path::new("/nonexistent/never/created").exists());
}

fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn a_second_server_on_the_same_data_directory_exits_at_once_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _base, _logs) = common::spawn_server(dir.path(), &[]);
    let out = common::run_to_exit(Command::new(env!("CARGO_BIN_EXE_stead")).args([
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "names the directory: {stderr}"
    );
    assert!(
        stderr.contains(&first.id().to_string()),
        "names the process that has it: {stderr}"
    );
}

/// Collects the places in `schema` (following references) where an integer lacks a
/// `minimum` or a `maximum` into `out`, and every integer into `all`.
fn integer_bounds(
    spec: &serde_json::Value,
    schema: &serde_json::Value,
    at: &str,
    out: &mut Vec<String>,
    all: &mut Vec<String>,
) {
    fn walk(
        spec: &serde_json::Value,
        s: &serde_json::Value,
        at: &str,
        out: &mut Vec<String>,
        all: &mut Vec<String>,
        seen: &mut Vec<String>,
    ) {
        if let Some(r) = s["$ref"].as_str() {
            if seen.iter().any(|x| x == r) {
                return;
            }
            seen.push(r.to_owned());
            let name = r.trim_start_matches("#/components/schemas/");
            walk(
                spec,
                &spec["components"]["schemas"][name],
                &format!("{at} > {name}"),
                out,
                all,
                seen,
            );
            return;
        }
        let is_integer = s["type"] == "integer"
            || s["type"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "integer"));
        if is_integer {
            all.push(at.to_owned());
            if s["minimum"].is_null() || s["maximum"].is_null() {
                out.push(at.to_owned());
            }
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            for (i, sub) in s[key].as_array().into_iter().flatten().enumerate() {
                walk(spec, sub, &format!("{at} {key}[{i}]"), out, all, seen);
            }
        }
        for (name, sub) in s["properties"].as_object().into_iter().flatten() {
            walk(spec, sub, &format!("{at}.{name}"), out, all, seen);
        }
        if s["items"].is_object() {
            walk(spec, &s["items"], &format!("{at}[]"), out, all, seen);
        }
    }
    walk(spec, schema, at, out, all, &mut Vec::new());
}

#[tokio::test]
async fn a_loopback_server_is_not_open_to_every_web_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.allowed_origins = vec!["https://app.example".into()];
    let server = stead_server::start(c).await.unwrap();
    let addr = server.addr();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let reset = format!("{base}/counters/x/reset");
    // DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends its own Host.
    let body = problem(
        http.get(format!("{base}/counters/x"))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap(),
        421,
    )
    .await;
    assert_eq!(body["type"], "/problems/host-not-allowed");
    // A cross-site write, bodiless as a form or fetch can send it, is refused and changes
    // nothing; so is a cross-site WebSocket upgrade.
    let body = problem(
        http.post(&reset)
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert_eq!(body["type"], "/problems/origin-not-allowed");
    // A write without the JSON content type is refused whoever sends it: no page can send
    // one cross-site without the browser asking first (a form's or text/plain's it can).
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = http.post(&reset);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let body = problem(req.send().await.unwrap(), 415).await;
        assert_eq!(body["type"], "/problems/unsupported-media-type", "{ct:?}");
    }
    problem(
        http.get(format!("{base}/reactors/t/e/live"))
            .header("origin", "http://evil.example")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    // The loopback names, the server's own pages and the allowed origin get through; so
    // does a read from any page (it cannot read the answer without CORS).
    for (host, origin) in [
        (format!("localhost:{}", addr.port()), None),
        (addr.to_string(), Some(format!("http://{addr}"))),
        (addr.to_string(), Some("https://app.example".to_owned())),
    ] {
        let mut req = http
            .post(&reset)
            .header("host", &host)
            .header("content-type", "application/json");
        if let Some(o) = &origin {
            req = req.header("origin", o);
        }
        let status = req.send().await.unwrap().status();
        assert!(status.is_success(), "{host} {origin:?}: {status}");
    }
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn silent_and_trickling_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.header_read_timeout_ms = 300;
    let server = stead_server::start(c).await.unwrap();
    let addr = server.addr();
    // Connections that send nothing, or trickle a request line and stop, are closed once
    // the header-read timeout passes.
    let mut silent = Vec::new();
    for i in 0..6 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        }
        silent.push(s);
    }
    for s in &mut silent {
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a silent connection is closed by the server");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_body_that_trickles_in_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.body_read_timeout_ms = 300;
    let server = stead_server::start(c).await.unwrap();
    let addr = server.addr();
    // The head promises 20 bytes; one comes, then nothing.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /counters/slow/increment HTTP/1.1\r\nhost: localhost\r\n\
          content-type: application/json\r\ncontent-length: 20\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server answers and closes the connection");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("/problems/body-timeout"), "{text}");
    // Nothing was counted.
    let http = reqwest::Client::new();
    let v = get_json(&http, &format!("http://{addr}/counters/slow")).await;
    assert_eq!(v["value"], 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connections_over_the_cap_are_answered_503_and_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_connections = 8;
    let server = stead_server::start(c).await.unwrap();
    let addr = server.addr();
    // One request on a connection of its own, which it closes after the answer.
    let probe = || async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            .await;
        let mut answer = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            s.read_to_string(&mut answer),
        )
        .await
        .unwrap()
        .unwrap();
        answer
    };
    // Eight idle connections hold every place (the header-read timeout is 15 s here).
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Once the server has taken them all, a further connection is answered 503.
    let mut refused = None;
    for _ in 0..400 {
        let answer = probe().await;
        if answer.starts_with("HTTP/1.1 503") {
            refused = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let refused = refused.expect("a connection over the cap is refused");
    assert!(refused.contains("too-many-connections"), "{refused}");
    // When the held connections close, the server answers again.
    drop(held);
    let mut answered = false;
    for _ in 0..400 {
        if probe().await.starts_with("HTTP/1.1 200") {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(answered, "the server answers again once connections close");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_does_not_wait_for_long_polls() {
    let dir = tempfile::tempdir().unwrap();
    let server = stead_server::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let acquire = |holder: &str, wait_ms: u64| {
        http.post(format!("{base}/locks/busy/acquire"))
            .json(&serde_json::json!({"holder": holder, "ttl_ms": 300000, "wait_ms": wait_ms}))
            .send()
    };
    assert_eq!(acquire("a", 0).await.unwrap().status(), 200);
    // A second holder waits in the lock's queue for up to five minutes.
    let waiting = tokio::spawn(acquire("b", 300_000));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), server.shutdown()).await;
    assert!(done.is_ok(), "the shutdown waited for the long-poll");
    done.unwrap().unwrap();
    // The waiter got an answer (not a hang): the server's shutdown or a dropped connection.
    let answered = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
    assert!(answered.is_ok(), "the long-poll was answered");
}

/// The JSON body of a GET.
async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// A JSON value nested `levels` deep (arrays in objects), with `leaf` at the bottom.
fn nested(levels: usize, leaf: serde_json::Value) -> serde_json::Value {
    (0..levels).fold(leaf, |inner, i| {
        if i % 2 == 0 {
            serde_json::json!([inner])
        } else {
            serde_json::json!({ "n": inner })
        }
    })
}

#[tokio::test]
async fn the_deepest_accepted_values_read_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // A flag variant as deep as a body may hold it, and a reactor event as deep.
    let variant = nested(58, serde_json::json!("bottom"));
    let doc = serde_json::json!({"flags": {"deep": {"state": "ENABLED",
        "variants": {"v": variant.clone()}, "defaultVariant": "v"}}});
    let payload = nested(60, serde_json::json!(1));
    {
        let server = stead_server::start(config(dir.path())).await.unwrap();
        let base = format!("http://{}", server.addr());
        let r = http
            .put(format!("{base}/flags/deep"))
            .json(&doc)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        // One level more is refused at the edge.
        let too_deep = serde_json::json!({"flags": {"deep": {"state": "ENABLED",
            "variants": {"v": nested(64, serde_json::json!(1))}, "defaultVariant": "v"}}});
        let body = problem(
            http.put(format!("{base}/flags/deep"))
                .json(&too_deep)
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        assert_eq!(body["type"], "/problems/too-deep");
        let r = http
            .put(format!("{base}/reactors/deep"))
            .json(&serde_json::json!({"state": {"last": null},
                "rules": [{"on": "e", "set": {"last": {"var": "event.payload"}}}]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let r = http
            .post(format!("{base}/reactors/deep/x/events"))
            .json(&serde_json::json!({"id": "1", "type": "e", "payload": payload.clone()}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        server.shutdown().await.unwrap();
    }
    let server = stead_server::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", server.addr());
    let set = get_json(&http, &format!("{base}/flags/deep")).await;
    assert_eq!(set["flags"]["deep"]["variants"]["v"], variant, "{set}");
    let entity = get_json(&http, &format!("{base}/reactors/deep/x")).await;
    assert_eq!(entity["state"]["last"], payload);
    server.shutdown().await.unwrap();
}
