//! Serving on PostgreSQL: one active node per deployment, or (`--cluster`) every node of
//! a partitioned cluster.
//!
//! A cluster node serves once it has joined: it answers every route, calls to objects
//! another node owns are forwarded there (`/_stead/peer/calls`, with the cluster's secret),
//! `GET /cluster` shows the members and the partitions, and a graceful stop hands every
//! partition over before the process exits.
//!
//! The node connects (failing at once, with the reason, on a wrong URL, missing
//! privileges or an unreachable server), listens, and answers as a standby (`/healthz`
//! 200, `/readyz` and everything else 503) until it holds the lease. Then it builds a
//! runtime on the backend and serves the whole application. Every request checks that the
//! lease is still held; once it is not (a paused or cut-off node, a server gone too long),
//! the node answers as a standby again, drops every object with its runtime (nothing in
//! memory outlives the lease), and waits to take the lease back.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use stead::Runtime;
use stead::http::Problem;
use stead::postgres::{
    ClusterOptions, LeaseState, PostgresBackend, PostgresCluster, PostgresOptions,
};
use tokio::sync::{oneshot, watch};
use tower::ServiceExt;

use crate::{Config, RunningServer, app};

/// The backend's options; a cluster node advertises `bound` (the address it listens on)
/// unless told otherwise.
fn options(config: &Config, bound: std::net::SocketAddr) -> PostgresOptions {
    let pg = &config.postgres;
    let mut opts = PostgresOptions::new(pg.url.clone().unwrap_or_default())
        .schema(pg.schema.clone())
        .pool_size(pg.pool_size)
        .lease_duration(Duration::from_millis(pg.lease_duration_ms))
        .standby(pg.standby);
    if let Some(id) = &pg.node_id {
        opts = opts.node_id(id.clone());
    }
    if pg.cluster {
        let advertise = pg.advertise.clone().unwrap_or_else(|| bound.to_string());
        opts = opts.cluster(ClusterOptions::new(advertise).partitions(pg.cluster_partitions));
    }
    opts
}

/// A problem+json 503 for a node that does not hold the lease.
fn standby_answer(reason: &str) -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "standby",
        format!("this node is not the active one: {reason}"),
    )
    .retry_after(Duration::from_secs(1))
    .into_response()
}

fn reason(state: &LeaseState) -> String {
    match state {
        LeaseState::Standby { reason } => format!("standby ({reason})"),
        LeaseState::Active { .. } => "its lease may have expired".to_owned(),
        LeaseState::Member { .. } => "its leases may have expired".to_owned(),
        other => format!("{other:?}"),
    }
}

/// What a node answers while it does not hold the lease.
fn standby_app(backend: PostgresBackend) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get({
                let backend = backend.clone();
                move || async move {
                    (StatusCode::SERVICE_UNAVAILABLE, reason(&backend.state())).into_response()
                }
            }),
        )
        .fallback(move || {
            let backend = backend.clone();
            async move { standby_answer(&reason(&backend.state())) }
        })
}

/// The application of an active node: every request but `/healthz` first checks that the
/// lease is still held.
fn active_app(rt: &Runtime, config: &Config, backend: PostgresBackend) -> stead::Result<Router> {
    let gate = move |req: Request, next: Next| {
        let backend = backend.clone();
        async move {
            if req.uri().path() != "/healthz" && !backend.is_active() {
                return standby_answer(&reason(&backend.state()));
            }
            let response = next.run(req).await;
            // A request that ran while the lease ran out gets no answer it could trust.
            if backend.is_active() {
                response
            } else {
                standby_answer(&reason(&backend.state()))
            }
        }
    };
    Ok(app(rt, config)?.layer(from_fn(gate)))
}

pub(crate) async fn start(config: Config) -> anyhow::Result<RunningServer> {
    crate::app::install_metrics();
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.bind))?;
    let addr = listener.local_addr()?;
    let backend = PostgresBackend::connect(options(&config, addr))
        .await
        .map_err(|e| {
            let source = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            anyhow::anyhow!("cannot open the PostgreSQL store: {e}{source}")
        })?;
    let (current_tx, current) = watch::channel(standby_app(backend.clone()));
    let current = Arc::new(current);
    let service = Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let router = current.borrow().clone();
        async move { router.oneshot(req).await }
    }));
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (serve_stop_tx, serve_stop) = oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve::serve(
        listener,
        service,
        config.serve_limits(),
        serve_stop,
    ));
    tracing::info!(%addr, durability = ?config.durability, schema = %config.postgres.schema,
        state = ?backend.state(), "stead is listening");
    let task = tokio::spawn(async move {
        let result = if config.postgres.cluster {
            run_cluster(&config, &backend, &current_tx, &mut stopped).await
        } else {
            run(&config, &backend, &current_tx, &mut stopped).await
        };
        let _ = serve_stop_tx.send(());
        let served = server.await;
        stead::Backend::close(&backend).await?;
        result?;
        served?;
        Ok(())
    });
    Ok(RunningServer {
        addr,
        stop: Some(stop),
        task,
    })
}

/// The application of a cluster node: the whole application, the peer endpoint and
/// `GET /cluster`; every request but `/healthz` and the peers' is answered only while the
/// node is a member whose leases count.
fn cluster_app(
    rt: &Runtime,
    config: &Config,
    backend: PostgresBackend,
    secret: &str,
) -> stead::Result<Router> {
    let view = {
        let backend = backend.clone();
        move || async move { axum::Json(backend.cluster_view()) }
    };
    let mut cluster = Router::new().route("/cluster", get(view));
    if !config.tokens.is_empty() {
        cluster = cluster.route_layer(stead::http::RequireBearer::new(&config.tokens)?);
    }
    let gate = move |req: Request, next: Next| {
        let backend = backend.clone();
        async move {
            let path = req.uri().path();
            if path != "/healthz" && path != stead::http::PEER_CALLS_PATH && !backend.is_active() {
                return standby_answer(&reason(&backend.state()));
            }
            next.run(req).await
        }
    };
    Ok(app(rt, config)?
        .merge(cluster)
        .merge(stead::http::peer_routes(rt, secret)?)
        .layer(from_fn(gate)))
}

/// Serves as a node of a cluster until stopped; then hands its partitions over.
async fn run_cluster(
    config: &Config,
    backend: &PostgresBackend,
    current: &watch::Sender<Router>,
    stopped: &mut oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    tokio::select! {
        r = backend.wait_active() => r?,
        _ = &mut *stopped => return Ok(()),
    }
    let secret = config.postgres.cluster_secret.clone().unwrap_or_default();
    let rt = Runtime::builder()
        .max_value_bytes(config.max_value_bytes)
        .durability(config.durability.into())
        .backend(backend.session())
        .cluster(PostgresCluster::new(backend, &secret)?)
        .build()
        .await?;
    let _ = current.send_replace(cluster_app(&rt, config, backend.clone(), &secret)?);
    tracing::info!(state = ?backend.state(), "serving: this node joined the cluster");
    let _ = (&mut *stopped).await;
    let _ = current.send_replace(standby_app(backend.clone()));
    rt.shutdown().await?;
    Ok(())
}

/// Alternates between standby and active until stopped.
async fn run(
    config: &Config,
    backend: &PostgresBackend,
    current: &watch::Sender<Router>,
    stopped: &mut oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            r = backend.wait_active() => r?,
            _ = &mut *stopped => return Ok(()),
        }
        let rt = Runtime::builder()
            .max_value_bytes(config.max_value_bytes)
            .durability(config.durability.into())
            .backend(backend.session())
            .build()
            .await;
        let rt = match rt {
            Ok(rt) => rt,
            Err(e) => {
                // The lease went again before the runtime could start: wait for it anew.
                tracing::warn!(error = ?e, "could not start the runtime on PostgreSQL");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let _ = current.send_replace(active_app(&rt, config, backend.clone())?);
        tracing::info!(state = ?backend.state(), "serving: this node holds the lease");
        // Serve while the lease holds. Its validity ends on the node's own clock too, not
        // only when the renewal task says so: look often.
        let mut states = backend.watch_state();
        let stop = loop {
            if !backend.is_active() {
                break false;
            }
            tokio::select! {
                _ = states.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = &mut *stopped => break true,
            }
        };
        let _ = current.send_replace(standby_app(backend.clone()));
        if !stop {
            tracing::error!(state = ?backend.state(),
                "lost the lease: stopped serving, dropping every object, waiting to take it back");
        }
        if let Err(e) = rt.shutdown().await {
            tracing::warn!(error = ?e, "the runtime did not flush cleanly after the lease was lost");
        }
        if stop {
            return Ok(());
        }
    }
}
