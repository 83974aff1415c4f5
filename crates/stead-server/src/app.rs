//! The HTTP application: the pattern router, health, metrics, OpenAPI and auth.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use stead::Runtime;
use stead::http::{Problem, ProblemLayer};

use crate::config::Config;
use crate::openapi;

/// Installs the Prometheus recorder, if this process has none yet.
pub(crate) fn install_metrics() {
    prometheus();
}

/// The process-wide Prometheus recorder (a process has one global recorder).
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Histogram samples accumulate until upkeep folds them in; without it memory would
        // grow between scrapes.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("stead-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
        // Another recorder may already be installed (embedding apps); then ours stays
        // empty but /metrics still answers.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

#[derive(Clone)]
pub(crate) struct Ready(Runtime);

/// Builds the whole application for a runtime.
pub fn app(rt: &Runtime, config: &Config) -> stead::Result<Router> {
    app_with(rt, config, Router::new())
}

/// Builds the application with `extra` routes served behind the same auth and middleware as
/// the patterns' (the load benchmark measures its no-op ceiling this way).
pub fn app_with(rt: &Runtime, config: &Config, extra: Router) -> stead::Result<Router> {
    prometheus();
    // Each pattern's settings come from its table of the configuration, before anything
    // else sets the pattern up.
    let mut settings = config.patterns.clone();
    stead::configure(rt, &mut settings)?;
    if let Some(unknown) = settings.keys().next() {
        return Err(stead::Error::invalid_config(format!(
            "unknown setting {unknown:?}"
        )));
    }
    // Everything but health, the API description and the inspector's page needs a token,
    // when tokens are set (without any, the configuration allows only a loopback bind). The
    // patterns' routes carry their JSON-writes check already: the guard adds only the token.
    let mut guarded = stead::router(rt)?
        .unauthenticated()
        .merge(extra)
        .merge(crate::inspector::api(rt, config.inspector_sql_writes))
        .route("/metrics", get(metrics));
    if !config.tokens.is_empty() {
        guarded = guarded.route_layer(stead::http::RequireBearer::new(&config.tokens)?);
    }
    let api = Router::new()
        .merge(guarded)
        .merge(crate::inspector::page())
        .route("/openapi.json", get(openapi::document))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz).with_state(Ready(rt.clone())))
        .fallback(stead::http::not_found)
        // One layer of four (the outermost first), not four layers: axum boxes each layer
        // around every route, and a request clones the boxes of every layer below the one
        // it passes, so each layer more costs every request more than the last.
        .layer(
            tower::ServiceBuilder::new()
                .layer(LogLayer::new())
                .layer(ProblemLayer)
                .layer(from_fn_with_state(Arc::new(Sites::new(config)), check_site))
                .layer(DefaultBodyLimit::max(config.max_body_bytes)),
        );
    Ok(api)
}

/// Which hosts the server answers to and which other sites' pages may write to it.
#[derive(Debug)]
struct Sites {
    /// Host names, without brackets or port (`None`: any host).
    hosts: Option<Vec<String>>,
    /// Origins, without a trailing slash.
    origins: Vec<String>,
}

impl Sites {
    fn new(config: &Config) -> Sites {
        let hosts = if config.allowed_hosts.iter().any(|h| h == "*") {
            None
        } else if !config.allowed_hosts.is_empty() {
            Some(
                config
                    .allowed_hosts
                    .iter()
                    .map(|h| host_name(h).to_owned())
                    .collect(),
            )
        } else if config.bind.ip().is_loopback() {
            Some(["localhost", "127.0.0.1", "::1"].map(String::from).to_vec())
        } else {
            None
        };
        let origins = config
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_owned())
            .collect();
        Sites { hosts, origins }
    }
}

/// The host name of a Host header (or an origin's authority), without its port, and an
/// IPv6 address without its brackets.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [::1]:8080
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Refuses a request for a host name the server does not answer to (421: DNS rebinding),
/// and a write or WebSocket upgrade from another site's page (403: cross-site requests).
/// Nothing is allocated on the way of a request that passes.
async fn check_site(State(sites): State<Arc<Sites>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if let (Some(allowed), Some(host)) = (&sites.hosts, host)
        && !allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host_name(host)))
    {
        return Problem::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host-not-allowed",
            format!(
                "this server does not answer to the host {:?} (see --allowed-host)",
                host_name(host)
            ),
        )
        .into_response();
    }
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let upgrade = req.headers().contains_key(header::UPGRADE);
    if (writes || upgrade)
        && let Some(origin) = req.headers().get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or("null");
        // The page's own server: its origin names the host the request was sent to.
        let same = host.is_some_and(|h| {
            origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(h))
        });
        if !same && !sites.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return Problem::new(
                StatusCode::FORBIDDEN,
                "origin-not-allowed",
                format!(
                    "a page of {origin} may not write to this server or open its WebSockets (see --allowed-origin)"
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "server",
    responses((status = 200, description = "alive", body = String, content_type = "text/plain")))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics, in text format.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "server",
    responses((status = 200, description = "metrics", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
}

/// Readiness: the server takes requests (503 while it shuts down).
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "server",
    responses(
        (status = 200, description = "ready", body = String, content_type = "text/plain"),
        (status = 503, description = "shutting down", body = String, content_type = "text/plain")))]
pub(crate) async fn readyz(State(Ready(rt)): State<Ready>) -> Response {
    if rt.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        "ready".into_response()
    }
}

/// One debug line per request, and request metrics; a tower layer, so a request passes
/// through it without an allocation.
#[derive(Clone)]
struct LogLayer(Arc<HttpMetrics>);

/// Metric handles registered once rather than looked up on every request.
struct HttpMetrics {
    /// Requests by status class: 1xx to 5xx.
    by_class: [metrics::Counter; 5],
    seconds: metrics::Histogram,
}

impl LogLayer {
    fn new() -> Self {
        let class = |c: &'static str| metrics::counter!("stead_http_requests_total", "status" => c);
        LogLayer(Arc::new(HttpMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            seconds: metrics::histogram!("stead_http_request_seconds"),
        }))
    }
}

impl<S> tower::Layer<S> for LogLayer {
    type Service = LogService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LogService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct LogService<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S> tower::Service<Request> for LogService<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = LogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The method and path are kept only when the line will be written.
        let line = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| (req.method().clone(), req.uri().clone()));
        LogFuture {
            inner: self.inner.call(req),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            line,
        }
    }
}

pin_project_lite::pin_project! {
    struct LogFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<HttpMetrics>,
        started: Instant,
        line: Option<(Method, Uri)>,
    }
}

impl<F, E> Future for LogFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &result {
            let status = resp.status().as_u16();
            let elapsed = this.started.elapsed();
            if let Some((method, uri)) = this.line.take() {
                let path = uri.path();
                tracing::debug!(%method, path, status, elapsed_us = elapsed.as_micros() as u64, "request");
            }
            let class = usize::from((status / 100).clamp(1, 5)) - 1;
            this.metrics.by_class[class].increment(1);
            this.metrics.seconds.record(elapsed.as_secs_f64());
        }
        Poll::Ready(result)
    }
}
