//! # stead-server
//!
//! The `stead` binary: every pattern enabled in the `stead` crate, served over HTTP on an
//! embedded SQLite store, with bearer-token auth, Prometheus metrics, an OpenAPI document,
//! RFC 9457 errors and graceful shutdown.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = stead_server::Config::default();
//! let server = stead_server::start(config).await?;
//! println!("listening on {}", server.addr());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

mod app;
mod config;
mod inspector;
mod openapi;
mod postgres;
mod serve;

use std::future::Future;
use std::net::SocketAddr;

use stead::{Durability, Runtime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use app::{app, app_with};
pub use config::{BackendKind, Cli, Command, Config, DurabilityMode, PostgresConfig};
pub use openapi::spec as openapi_spec;

/// Opens the runtime the configuration asks for.
pub async fn open_runtime(config: &Config) -> anyhow::Result<Runtime> {
    // Metrics first: the storage threads register their handles as they start.
    app::install_metrics();
    let builder = Runtime::builder().max_value_bytes(config.max_value_bytes);
    let sqlite = |durability| {
        let b = Runtime::builder()
            .max_value_bytes(config.max_value_bytes)
            .sqlite(&config.data_dir)
            .durability(durability);
        match config.shards {
            Some(n) => b.shards(n),
            None => b,
        }
    };
    let builder = match config.durability {
        DurabilityMode::Memory => builder.memory(),
        mode => sqlite(Durability::from(mode)),
    };
    builder.build().await.map_err(|e| {
        let source = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        anyhow::anyhow!(
            "cannot open the store in {}: {e}{source}",
            config.data_dir.display()
        )
    })
}

/// Serves until `shutdown` completes, then stops taking connections, finishes requests in
/// flight, and flushes every commit.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server = start(config).await?;
    shutdown.await;
    server.shutdown().await
}

/// A server running in the background.
#[derive(Debug)]
pub struct RunningServer {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// The address it listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it gracefully and waits until every commit is flushed.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }
}

/// Opens the store, binds the address and serves in the background.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    if config.backend == BackendKind::Postgres {
        return postgres::start(config).await;
    }
    let rt = open_runtime(&config).await?;
    let router = app(&rt, &config)?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.bind))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let limits = config.serve_limits();
    let task = tokio::spawn(async move {
        let (stop_serving, serving_stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(serve::serve(listener, router, limits, serving_stopped));
        let _ = stopped.await;
        let _ = stop_serving.send(());
        // The runtime stops beside the connections: requests parked in objects (a lock's
        // queue, a long-poll) answer at once instead of holding the shutdown up.
        let (served, shut) = tokio::join!(serving, rt.shutdown());
        served?;
        shut?;
        Ok(())
    });
    tracing::info!(%addr, durability = ?config.durability, data_dir = %config.data_dir.display(), "stead is listening");
    Ok(RunningServer {
        addr,
        stop: Some(stop),
        task,
    })
}
