//! Tower middleware: rate-limit every request of an axum app (or any tower service) by peer
//! IP, by a header such as an API key, or by a key of your own.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use stead_core::http::Problem;
use stead_core::{Result, Runtime};

use crate::client::{Limit, RateLimitClient};
use crate::error::RateLimitError;
use crate::http::{insert_fields, policy_field, refusal};
use crate::policy::Policy;

/// The key of requests that carry none (no such header, or a key function that answered
/// `None`): they share one limiter.
pub const NO_KEY: &str = "(none)";

/// What the layer does when the rate limiter cannot answer (its storage failing, the
/// runtime shutting down). A key whose limiter is overloaded is not a failure: that is a
/// flood on the key, and it is refused with 429 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Refuse the request with 503 and `Retry-After: 1` (the default): nothing passes
    /// unchecked.
    #[default]
    Closed,
    /// Let the request through, without RateLimit fields: a struggling limiter never takes
    /// the service down with it, and requests go unlimited while it struggles.
    Open,
}

type KeyFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

#[derive(Clone)]
enum KeyBy {
    PeerIp,
    /// The client address the given number of proxies recorded (see `key_by_forwarded_ip`).
    Forwarded(usize),
    Header(HeaderName),
    Custom(Arc<KeyFn>),
}

/// Rate-limits requests by a key; see [`layer`].
#[derive(Clone)]
pub struct RateLimitLayer {
    client: RateLimitClient,
    limit: Limit,
    /// The limit's `RateLimit-Policy` field, made once.
    policy_field: HeaderValue,
    key: KeyBy,
    on_failure: OnFailure,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limit", &self.limit)
            .field("on_failure", &self.on_failure)
            .finish()
    }
}

/// A layer that admits each request against `policy`, keyed by peer IP unless told
/// otherwise. Admitted requests get the `RateLimit-Policy` and `RateLimit` header fields;
/// refused ones get 429 problem+json with those fields and `Retry-After`.
///
/// Limiter state lives in the runtime's rate-limiter namespace: in memory by default, or
/// exact across restarts when it is configured durable (see
/// [`RateLimitConfig`](crate::RateLimitConfig)).
///
/// An invalid `policy`, or a runtime that is shutting down, is an error.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use axum::{Router, routing::get};
/// use stead_ratelimit::{OnFailure, Policy, layer};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(
///         layer(&rt, Policy::per_second(50))?
///             .key_by_header(axum::http::HeaderName::from_static("x-api-key"))
///             .named("api")?
///             .on_failure(OnFailure::Closed),
///     );
/// # let _ = app;
/// # rt.shutdown().await?;
/// # Ok::<(), stead_core::Error>(()) }).unwrap();
/// ```
pub fn layer(rt: &Runtime, policy: Policy) -> Result<RateLimitLayer> {
    let limit = Limit::inline(policy)?;
    Ok(RateLimitLayer {
        client: RateLimitClient::new(rt)?,
        policy_field: policy_field(&limit),
        limit,
        key: KeyBy::PeerIp,
        on_failure: OnFailure::default(),
    })
}

impl RateLimitLayer {
    /// Keys requests by the peer's IP address (the default). The app must be served with
    /// `into_make_service_with_connect_info::<SocketAddr>()`; without it every request is
    /// answered 500 with a problem saying so.
    pub fn key_by_peer_ip(mut self) -> Self {
        self.key = KeyBy::PeerIp;
        self
    }

    /// Keys requests by the client's address as recorded by the reverse proxies in front of
    /// the app: `proxies` of them, each appending the address it saw to `X-Forwarded-For`.
    /// The key is the entry `proxies` places from the right, which the nearest proxy wrote;
    /// what a client puts in the header itself sits to its left and is never used. A request
    /// whose header has fewer entries, or an entry that is not an IP address, shares the
    /// limiter of [`NO_KEY`]. `proxies` is 1 to 16.
    ///
    /// Use it only when every request reaches the app through those proxies: a client that
    /// can reach the app directly can name any address.
    pub fn key_by_forwarded_ip(mut self, proxies: usize) -> Result<Self> {
        if !(1..=16).contains(&proxies) {
            return Err(stead_core::InvalidInput::new(format!(
                "the number of proxies must be between 1 and 16, not {proxies}"
            ))
            .into());
        }
        self.key = KeyBy::Forwarded(proxies);
        Ok(self)
    }

    /// Keys requests by the value of a header (an API key, a tenant id). Requests without
    /// it share the limiter of [`NO_KEY`].
    pub fn key_by_header(mut self, name: HeaderName) -> Self {
        self.key = KeyBy::Header(name);
        self
    }

    /// Keys requests by a function of the request's head (method, URI, headers,
    /// extensions); `None` puts the request in the shared limiter of [`NO_KEY`].
    pub fn key_by(mut self, f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        self.key = KeyBy::Custom(Arc::new(f));
        self
    }

    /// Names the policy (in the `RateLimit` fields, and to keep its limiters apart from
    /// another layer's with the same quota); a name that is not 1 to 64 of
    /// `A-Z a-z 0-9 _ - .` is an error.
    pub fn named(mut self, name: &str) -> Result<Self> {
        self.limit = self.limit.named(name)?;
        self.policy_field = policy_field(&self.limit);
        Ok(self)
    }

    /// What to do when the limiter cannot answer (default: [`OnFailure::Closed`]).
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            cfg: Arc::new(self.clone()),
        }
    }
}

/// The service [`RateLimitLayer`] wraps around yours.
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    cfg: Arc<RateLimitLayer>,
}

impl<S> std::fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitService")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl RateLimitLayer {
    /// The request's key; `None` when it is keyed by peer IP and the server does not record
    /// peer addresses.
    fn key_of(&self, req: &Parts) -> Option<String> {
        let key = match &self.key {
            KeyBy::PeerIp => {
                let ConnectInfo(addr) = req.extensions.get::<ConnectInfo<SocketAddr>>()?;
                Some(addr.ip().to_string())
            }
            KeyBy::Forwarded(proxies) => forwarded_ip(&req.headers, *proxies),
            KeyBy::Header(name) => req
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            KeyBy::Custom(f) => f(req),
        };
        Some(key.unwrap_or_else(|| NO_KEY.to_owned()))
    }
}

/// The header reverse proxies append the addresses they saw to.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The entry `proxies` places from the right of `X-Forwarded-For` (several header lines are
/// one list, in order), as an IP address. Read from the right, without collecting the list.
fn forwarded_ip(headers: &axum::http::HeaderMap, proxies: usize) -> Option<String> {
    let entry = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','))
        .nth(proxies.checked_sub(1)?)?;
    let ip: std::net::IpAddr = entry.trim().parse().ok()?;
    Some(ip.to_string())
}

/// Generic over the request body, as tower's layers are: the limiter looks at the request's
/// head only.
impl<S, B> tower::Service<Request<B>> for RateLimitService<S>
where
    S: tower::Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone is the one that is not yet ready; the ready one serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let (head, body) = req.into_parts();
            let key = cfg.key_of(&head);
            let req = Request::from_parts(head, body);
            let Some(key) = key else {
                tracing::error!(
                    "rate limit keyed by peer IP, but the request has no ConnectInfo<SocketAddr>"
                );
                return Ok(Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ratelimit-setup",
                    "the rate limit is keyed by peer IP, but the server does not record peer addresses (serve the app with into_make_service_with_connect_info::<SocketAddr>())",
                )
                .into_response());
            };
            match cfg.client.check(&key, &cfg.limit, 1).await {
                Ok(d) if d.allowed => {
                    let mut resp = inner.call(req).await?;
                    insert_fields(resp.headers_mut(), &cfg.policy_field, cfg.limit.name(), &d);
                    Ok(resp)
                }
                Ok(d) => Ok(refusal(&cfg.limit, &cfg.policy_field, d)),
                // A flood on this key (or on the shared no-key limiter): refused like any
                // request over the limit, never let through.
                Err(RateLimitError::Runtime(stead_core::Error::Overloaded {
                    retry_after, ..
                })) => {
                    metrics::counter!("stead_ratelimit_layer_overloaded_total").increment(1);
                    Ok(Problem::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate-limited",
                        "too many requests for this key at once; retry shortly",
                    )
                    .retry_after(retry_after.max(std::time::Duration::from_secs(1)))
                    .into_response())
                }
                Err(RateLimitError::Runtime(e)) => {
                    metrics::counter!("stead_ratelimit_layer_failures_total").increment(1);
                    tracing::warn!(error = %e, on_failure = ?cfg.on_failure, "the rate limiter could not answer");
                    match cfg.on_failure {
                        OnFailure::Open => inner.call(req).await,
                        OnFailure::Closed => Ok(Problem::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "ratelimit-unavailable",
                            "the rate limiter could not decide on this request; retry shortly",
                        )
                        .retry_after(std::time::Duration::from_secs(1))
                        .into_response()),
                    }
                }
                // The key itself is bad (too long, control characters): the caller's fault.
                Err(e) => Ok(e.into_response()),
            }
        })
    }
}
