//! A stock OpenFeature client (the server SDK with its OFREP provider, from the npm
//! registry) evaluates boolean, string, number and object flags against the real routes on
//! 127.0.0.1: per set, and at the root for the default set.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use stead_fixtures::TestRuntime;
use stead_flags::{Edit, FlagsClient};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Installs the client's packages (once, from the lock file) if they are not there.
fn install() {
    let dir = fixtures();
    if dir
        .join("node_modules/@openfeature/ofrep-provider")
        .exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--silent", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm (Node.js) is needed for the OFREP client test");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

async fn run_client(base: String, evaluations: Value) -> Vec<Value> {
    tokio::task::spawn_blocking(move || {
        install();
        let out = Command::new("node")
            .arg("ofrep-client.mjs")
            .arg(&base)
            .arg(evaluations.to_string())
            .current_dir(fixtures())
            .output()
            .expect("node runs");
        assert!(
            out.status.success(),
            "the client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openfeature_sdk_evaluates_every_type_over_ofrep() {
    let rt = TestRuntime::memory().await;
    let flags = FlagsClient::new(&rt).unwrap();
    let doc = json!({
        "flags": {
            "checkout": {"state": "ENABLED", "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on"]}},
            "greeting": {"state": "ENABLED", "variants": {"formal": "Good day", "casual": "Hi"},
                "defaultVariant": "formal", "metadata": {"owner": "web"}},
            "limit": {"state": "ENABLED", "variants": {"low": 10, "high": 2.5},
                "defaultVariant": "low",
                "targeting": {"fractional": [["low", 50], ["high", 50]]}},
            "theme": {"state": "ENABLED", "variants": {"dark": {"bg": "#000", "fg": "#fff"}},
                "defaultVariant": "dark"},
            "off-flag": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}
        }
    });
    flags
        .replace("default", &doc, Edit::default())
        .await
        .unwrap();
    flags.replace("prod", &doc, Edit::default()).await.unwrap();

    let app = axum::Router::new()
        .nest(
            "/flags",
            stead_flags::router(&rt).unwrap().unauthenticated(),
        )
        .merge(stead_flags::root_router(&rt).unwrap().unauthenticated());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let evaluations = json!([
        {"flag": "checkout", "type": "boolean", "default": false,
            "context": {"targetingKey": "u1", "email": "ana@example.com"}},
        {"flag": "checkout", "type": "boolean", "default": true,
            "context": {"targetingKey": "u2", "email": "bo@corp.example"}},
        {"flag": "greeting", "type": "string", "default": "x", "context": {}},
        {"flag": "limit", "type": "number", "default": -1, "context": {"targetingKey": "user-1"}},
        {"flag": "theme", "type": "object", "default": {}, "context": {"targetingKey": "u1"}},
        {"flag": "greeting", "type": "number", "default": 7, "context": {}},
        {"flag": "no-such-flag", "type": "boolean", "default": true, "context": {}},
        {"flag": "off-flag", "type": "boolean", "default": false, "context": {}},
    ]);
    for base in [
        format!("http://{addr}"),
        format!("http://{addr}/flags/prod"),
    ] {
        let got = run_client(base.clone(), evaluations.clone()).await;
        // What stead itself says, in process, for the bucketed one.
        let ctx = json!({"targetingKey": "user-1"});
        let limit = flags
            .evaluate("prod", "limit", ctx.as_object().unwrap())
            .await
            .unwrap();
        let expect = json!([
            {"flag": "checkout", "value": true, "variant": "on", "reason": "TARGETING_MATCH", "errorCode": null, "metadata": {}},
            {"flag": "checkout", "value": false, "variant": "off", "reason": "DEFAULT", "errorCode": null, "metadata": {}},
            {"flag": "greeting", "value": "Good day", "variant": "formal", "reason": "STATIC", "errorCode": null, "metadata": {"owner": "web"}},
            {"flag": "limit", "value": limit.value.unwrap(), "variant": limit.variant.unwrap(), "reason": "TARGETING_MATCH", "errorCode": null, "metadata": {}},
            {"flag": "theme", "value": {"bg": "#000", "fg": "#fff"}, "variant": "dark", "reason": "STATIC", "errorCode": null, "metadata": {}},
            {"flag": "greeting", "value": 7, "variant": null, "reason": "ERROR", "errorCode": "TYPE_MISMATCH", "metadata": {}},
            {"flag": "no-such-flag", "value": true, "variant": null, "reason": "ERROR", "errorCode": "FLAG_NOT_FOUND", "metadata": {}},
        ]);
        let (got_known, got_disabled) = got.split_at(7);
        assert_eq!(Value::Array(got_known.to_vec()), expect, "through {base}");
        // A disabled flag: the caller's default, whatever the SDK makes of the reason.
        assert_eq!(
            got_disabled[0]["value"], false,
            "through {base}: {}",
            got_disabled[0]
        );
    }
    server.abort();
}
