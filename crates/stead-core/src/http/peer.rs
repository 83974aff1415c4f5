//! The endpoint other nodes of a cluster forward calls to: `POST /_stead/peer/call`, a
//! [`PeerCall`] in, a [`PeerReply`] out, both JSON. It is closed without the cluster's
//! shared secret (a bearer token every node holds): nothing reaches it from outside.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;

use crate::error::Result;
use crate::remote::{PeerCall, PeerReply};
use crate::runtime::Runtime;

use super::RequireBearer;

/// The path peers call.
pub const PEER_CALL_PATH: &str = "/_stead/peer/call";

/// The peer endpoint of `rt`, open only to requests that carry `secret` as their bearer
/// token (at least [`MIN_TOKEN_CHARS`](super::MIN_TOKEN_CHARS) characters; a weaker one is
/// an [`Error::InvalidConfig`](crate::Error::InvalidConfig)). Merge it into the node's
/// router, on the address the other nodes reach it at.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let app: axum::Router = stead_core::http::peer_routes(&rt, "a-secret-every-node-holds")?;
/// assert!(stead_core::http::peer_routes(&rt, "short").is_err());
/// # rt.shutdown().await }).unwrap();
/// ```
pub fn peer_routes(rt: &Runtime, secret: &str) -> Result<Router> {
    let guard = RequireBearer::new([secret])?;
    Ok(Router::new()
        .route(PEER_CALL_PATH, post(call))
        .route_layer(guard)
        .with_state(rt.clone()))
}

async fn call(State(rt): State<Runtime>, Json(call): Json<PeerCall>) -> Json<PeerReply> {
    Json(rt.serve_peer(call).await)
}
