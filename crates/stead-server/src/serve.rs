//! Serving connections: HTTP/1.1 whose header-read timeout also bounds a connection that
//! sends nothing (and, between requests, one left idle), a deadline for each request's body,
//! a cap on open connections, and a graceful shutdown with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeLimits {
    /// At most this many connections are open at once; more are answered 503 and closed.
    pub(crate) max_connections: usize,
    /// A connection must send a whole request head within this long of opening, or of its
    /// last response (so an idle keep-alive connection is closed after it too).
    pub(crate) header_read_timeout: Duration,
    /// A request's body must arrive whole within this long of the request's start.
    pub(crate) body_read_timeout: Duration,
    /// How long a shutdown waits for requests in flight before it closes their connections.
    pub(crate) shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `stop` fires, then lets requests in flight finish
/// for at most the grace period.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    mut stop: oneshot::Receiver<()>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Forget the connections that ended.
        while connections.try_join_next().is_some() {}
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("stead_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body_limit = limits.body_read_timeout;
        let service = TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_request(move |req: axum::http::Request<hyper::body::Incoming>| {
                    req.map(|body| axum::body::Body::new(DeadlineBody::new(body, body_limit)))
                })
                .service(
                    router
                        .clone()
                        .layer(axum::Extension(ConnectInfo::<SocketAddr>(peer))),
                ),
        );
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut closing = closing_rx.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let closed = tokio::select! {
                _ = conn.as_mut() => true,
                _ = async { closing.wait_for(|c| *c).await.map(drop) } => false,
            };
            if !closed {
                // Finish the request in flight, take no other.
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace = ?limits.shutdown_grace,
            "requests still in flight after the shutdown grace period; their connections close"
        );
        connections.abort_all();
    }
}

pin_project_lite::pin_project! {
    /// A request body that must arrive whole within a deadline of its request's start: past
    /// it, reading fails with [`stead::http::BodyTimeout`] (answered 408), so a client that
    /// trickles its body cannot hold a request open. The timer is made only when a read has
    /// to wait (a body that is there at once, or never read, costs a clock reading).
    struct DeadlineBody<B> {
        #[pin]
        inner: B,
        started: tokio::time::Instant,
        deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        limit: Duration,
    }
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            started: tokio::time::Instant::now(),
            deadline: None,
            limit,
        }
    }
}

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body<Data = axum::body::Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let std::task::Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return std::task::Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let (started, limit) = (*this.started, *this.limit);
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(started + limit)));
        if deadline.as_mut().poll(cx).is_ready() {
            let timeout = stead::http::BodyTimeout(*this.limit);
            return std::task::Poll::Ready(Some(Err(Box::new(timeout))));
        }
        std::task::Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"type":"/problems/too-many-connections","title":"Service Unavailable","status":503,"detail":"the server holds its maximum of open connections (see --max-connections); retry shortly"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
