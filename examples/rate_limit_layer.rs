//! An axum app behind the rate-limit layer: each API key gets 5 requests per second, and a
//! refused request gets 429 with `Retry-After` and the RateLimit header fields.
//!
//! Run with `cargo run --example rate_limit_layer`. It serves on 127.0.0.1 (an ephemeral
//! port), calls itself, prints what it got, and exits.

// ANCHOR: example
use std::net::SocketAddr;

use axum::Router;
use axum::http::HeaderName;
use axum::routing::get;
use stead::Runtime;
use stead::ratelimit::{OnFailure, Policy};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = Runtime::builder().sqlite(dir.path()).build().await?;

    let app = Router::new()
        .route("/api/hello", get(|| async { "hello\n" }))
        .layer(
            stead::ratelimit::layer(&rt, Policy::per_second(5))?
                .key_by_header(HeaderName::from_static("x-api-key"))
                .named("api")?
                // Closed is the default: say so, or choose Open to serve unlimited while
                // the limiter's storage fails.
                .on_failure(OnFailure::Closed),
        );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        // Peer addresses are recorded, so `.key_by_peer_ip()` would work here too.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let http = reqwest::Client::new();
    for i in 1..=7 {
        let r = http
            .get(format!("http://{addr}/api/hello"))
            .header("x-api-key", "key-123")
            .send()
            .await?;
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        println!(
            "request {i}: {}  RateLimit: {}  Retry-After: {}",
            r.status(),
            header("ratelimit"),
            header("retry-after")
        );
    }
    server.abort();
    rt.shutdown().await?;
    Ok(())
}
// ANCHOR_END: example
