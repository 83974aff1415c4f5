//! The endpoint other nodes of a cluster forward calls to: `POST /_stead/peer/calls`, a
//! JSON array of [`PeerCall`]s in (the calls one node has for this one at that moment), and
//! their [`PeerReply`]s out as each is ready, one JSON line `[index, reply]` per call, so a
//! slow call never holds the others' replies back. And `GET /_stead/peer/socket`: a
//! WebSocket accepted by another node for an object this one owns, relayed here frame by
//! frame. Both are closed without the cluster's shared secret (a bearer token every node
//! holds): nothing reaches them from outside.

use std::convert::Infallible;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::ObjectId;
use crate::remote::{PeerCall, PeerReply};
use crate::runtime::Runtime;

use super::RequireBearer;

/// The path peers call.
pub const PEER_CALLS_PATH: &str = "/_stead/peer/calls";

/// The path a node relays a WebSocket to its object's owner at.
pub const PEER_SOCKET_PATH: &str = "/_stead/peer/socket";

/// A WebSocket relayed to its object's owner: which object, and what it was accepted with
/// (the query of [`PEER_SOCKET_PATH`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PeerSocketOpen {
    pub(crate) class: String,
    pub(crate) id: ObjectId,
    pub(crate) name: Option<String>,
    /// Its tags and attachment, as the JSON of [`Accepted`], base64url: a third more than
    /// the JSON, where percent-escapes could triple it (a URI has at most 64 KiB; this is at
    /// most about 36 KiB for the largest tags and attachment).
    pub(crate) socket: String,
}

/// What a relayed socket was accepted with.
#[derive(Serialize, Deserialize)]
struct Accepted<'a> {
    #[serde(borrow)]
    tags: Vec<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    attachment: &'a serde_json::value::RawValue,
}

impl PeerSocketOpen {
    /// `tags` and `attachment` (JSON) of a socket of object `id` of `class`.
    pub(crate) fn new(
        class: &str,
        id: ObjectId,
        name: Option<&str>,
        tags: &[&str],
        attachment: &str,
    ) -> Result<Self> {
        use base64::Engine as _;
        let attachment = serde_json::value::RawValue::from_string(attachment.to_owned())
            .map_err(crate::Error::Codec)?;
        let accepted = Accepted {
            tags: tags
                .iter()
                .map(|t| std::borrow::Cow::Borrowed(*t))
                .collect(),
            attachment: &attachment,
        };
        let json = serde_json::to_vec(&accepted).map_err(crate::Error::Codec)?;
        Ok(PeerSocketOpen {
            class: class.to_owned(),
            id,
            name: name.map(str::to_owned),
            socket: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json),
        })
    }

    /// The tags and the attachment (JSON) it carries.
    pub(crate) fn accepted(&self) -> Result<(Vec<String>, String)> {
        use base64::Engine as _;
        let bad = |what: String| crate::Error::bad_request(format!("a relayed socket: {what}"));
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&self.socket)
            .map_err(|e| bad(e.to_string()))?;
        let accepted: Accepted<'_> =
            serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
        Ok((
            accepted.tags.into_iter().map(|t| t.into_owned()).collect(),
            accepted.attachment.get().to_owned(),
        ))
    }
}

/// At most this many calls in one request to [`PEER_CALLS_PATH`].
pub const MAX_PEER_BATCH: usize = 1024;

/// The largest request body [`PEER_CALLS_PATH`] reads, in bytes (a batch's calls with their
/// serialized messages).
pub const MAX_PEER_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// The peer endpoint of `rt`, open only to requests that carry `secret` as their bearer
/// token (at least [`MIN_TOKEN_CHARS`](super::MIN_TOKEN_CHARS) characters; a weaker one is
/// an [`Error::InvalidConfig`](crate::Error::InvalidConfig)). Merge it into the node's
/// router, on the address the other nodes reach it at, on connections with `TCP_NODELAY`
/// set (replies stream back one by one: without it, each waits for the last one's ACK).
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
        .route(PEER_CALLS_PATH, post(calls))
        .route(PEER_SOCKET_PATH, get(socket))
        .route_layer(guard)
        .layer(DefaultBodyLimit::max(MAX_PEER_BATCH_BYTES))
        .with_state(rt.clone()))
}

/// Accepts a relayed WebSocket for an object of this node (503 when it is not this node's:
/// the relaying node asks again where it is).
async fn socket(
    State(rt): State<Runtime>,
    Query(open): Query<PeerSocketOpen>,
    upgrade: WebSocketUpgrade,
) -> Response {
    match rt.accept_peer_socket(open, upgrade) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// Runs a batch's calls side by side and streams each reply as it is ready.
async fn calls(State(rt): State<Runtime>, body: Bytes) -> Response {
    let calls: Vec<PeerCall> = match serde_json::from_slice(&body) {
        Ok(calls) => calls,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("a batch of forwarded calls does not decode: {e}"),
            )
                .into_response();
        }
    };
    if calls.len() > MAX_PEER_BATCH {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "at most {MAX_PEER_BATCH} forwarded calls in a batch, not {}",
                calls.len()
            ),
        )
            .into_response();
    }
    let running: FuturesUnordered<_> = calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            // Each call on a task of its own: the batch's turns spread over the workers.
            let rt = rt.clone();
            let running = tokio::spawn(async move { rt.serve_peer(call).await });
            async move {
                let reply = running.await.unwrap_or_else(|e| {
                    PeerReply::Failed(crate::Error::storage(format!(
                        "a forwarded call failed on this node: {e}"
                    )))
                });
                (i, reply)
            }
        })
        .collect();
    // Replies ready together leave in one chunk.
    let lines = running.ready_chunks(MAX_PEER_BATCH).map(|ready| {
        let mut out = Vec::with_capacity(64 * ready.len());
        for (i, reply) in ready {
            reply_line(&mut out, i, &reply);
        }
        Ok::<_, Infallible>(Bytes::from(out))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .expect("a static header")
}

/// Appends the line `[i, reply]` (JSON has no raw newline inside a value).
fn reply_line(out: &mut Vec<u8>, i: usize, reply: &PeerReply) {
    if serde_json::to_writer(&mut *out, &(i, reply)).is_err() {
        // A reply that does not serialize still answers its call.
        let failed = PeerReply::Failed(crate::Error::storage(
            "the reply of a forwarded call did not serialize",
        ));
        serde_json::to_writer(&mut *out, &(i, &failed)).expect("an error serializes");
    }
    out.push(b'\n');
}

/// Splits a reply stream's bytes into its lines `[index, reply]`, as they arrive: feed it
/// each chunk, take the complete lines out.
#[derive(Debug, Default)]
pub struct PeerReplies {
    buf: Vec<u8>,
}

impl PeerReplies {
    /// Adds `chunk` and answers the replies it completes (a line that does not decode is
    /// an [`Error::Codec`](crate::Error::Codec)).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<(usize, PeerReply)>> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(n) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + n];
            out.push(serde_json::from_slice(line).map_err(crate::Error::Codec)?);
            start += n + 1;
        }
        self.buf.drain(..start);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_relayed_socket_fits_in_a_uri_and_round_trips() {
        use crate::websocket::{MAX_ATTACHMENT_BYTES, MAX_TAG_CHARS, MAX_TAGS};
        // Characters that a query escapes, and four-byte ones.
        let tag = "\u{1F600}".repeat(MAX_TAG_CHARS);
        let tags: Vec<&str> = (0..MAX_TAGS).map(|_| tag.as_str()).collect();
        let inner = "\"{}&=".repeat((MAX_ATTACHMENT_BYTES - 2) / 5 / 2);
        let attachment = serde_json::to_string(&inner).unwrap();
        assert!(
            attachment.len() <= MAX_ATTACHMENT_BYTES,
            "{}",
            attachment.len()
        );
        let open = PeerSocketOpen::new(
            "room",
            ObjectId::random(),
            Some("a&b=c"),
            &tags,
            &attachment,
        )
        .unwrap();
        let query = serde_urlencoded::to_string(&open).unwrap();
        let uri = format!("ws://10.0.0.1:8080{PEER_SOCKET_PATH}?{query}");
        assert!(uri.len() < 65_534, "{} bytes", uri.len());
        assert!(uri.parse::<axum::http::Uri>().is_ok());
        let back: PeerSocketOpen = serde_urlencoded::from_str(&query).unwrap();
        let (t, a) = back.accepted().unwrap();
        assert_eq!(t, tags);
        assert_eq!(a, attachment);
        assert_eq!(back.name.as_deref(), Some("a&b=c"));
    }

    #[test]
    fn reply_lines_split_wherever_the_chunks_end() {
        let mut bytes = Vec::new();
        let text = serde_json::value::to_raw_value("a\nb").unwrap();
        reply_line(&mut bytes, 3, &PeerReply::Reply(text));
        reply_line(&mut bytes, 0, &PeerReply::NotOwner { owner: None });
        for cut in 0..bytes.len() {
            let mut r = PeerReplies::default();
            let mut got = r.feed(&bytes[..cut]).unwrap();
            got.extend(r.feed(&bytes[cut..]).unwrap());
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0].0, 3);
            assert!(matches!(&got[0].1, PeerReply::Reply(v) if v.get() == r#""a\nb""#));
            assert!(matches!(got[1], (0, PeerReply::NotOwner { owner: None })));
        }
        assert!(PeerReplies::default().feed(b"[1, nope]\n").is_err());
    }
}
