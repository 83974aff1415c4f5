//! The cluster as a runtime sees it: where each object lives (from the node's leases and
//! its last round), and the other nodes reached over HTTP at the addresses they advertise,
//! with the cluster's shared secret.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use stead_core::{Cluster, Error, Location, ObjectRef, PeerCall, PeerReply, Result};

use crate::PostgresBackend;
use crate::lease::Owner;

/// A node of a cluster on PostgreSQL, for
/// [`RuntimeBuilder::cluster`](stead_core::RuntimeBuilder::cluster): objects of the
/// partitions this node holds are called here, the others are forwarded to their owners'
/// `POST /_stead/peer/call` (see [`stead_core::http::peer_routes`], mounted on every node
/// with the same secret).
///
/// ```no_run
/// # async fn run() -> stead_core::Result<()> {
/// use stead_postgres::{ClusterOptions, PostgresBackend, PostgresCluster, PostgresOptions};
///
/// let backend = PostgresBackend::connect(
///     PostgresOptions::new("postgres://stead@db.internal/app")
///         .cluster(ClusterOptions::new("10.0.0.7:8080")),
/// )
/// .await?;
/// let secret = "a-secret-every-node-holds";
/// let rt = stead_core::Runtime::builder()
///     .backend(backend.clone())
///     .cluster(PostgresCluster::new(&backend, secret)?)
///     .build()
///     .await?;
/// let peers = stead_core::http::peer_routes(&rt, secret)?;
/// # let _ = peers; rt.shutdown().await }
/// ```
#[derive(Debug)]
pub struct PostgresCluster {
    backend: PostgresBackend,
    client: reqwest::Client,
    authorization: String,
}

impl PostgresCluster {
    /// The cluster `backend` is a node of (a backend in cluster mode; any other is an
    /// [`Error::InvalidConfig`]), its peers called with `secret`.
    pub fn new(backend: &PostgresBackend, secret: &str) -> Result<Arc<Self>> {
        if !matches!(backend.inner.owner, Owner::Cluster(_)) {
            return Err(Error::invalid_config(
                "a PostgreSQL backend forwards calls to peers only in cluster mode \
                 (PostgresOptions::cluster)",
            ));
        }
        stead_core::http::check_token(secret)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::invalid_config(format!("HTTP client for peers: {e}")))?;
        Ok(Arc::new(PostgresCluster {
            backend: backend.session(),
            client,
            authorization: format!("Bearer {secret}"),
        }))
    }
}

impl Cluster for PostgresCluster {
    fn locate(&self, obj: &ObjectRef) -> Location {
        match &self.backend.inner.owner {
            Owner::Cluster(parts) => parts.locate(obj),
            Owner::Single(_) => Location::Here,
        }
    }

    fn takeovers(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.backend.inner.owner {
            Owner::Cluster(parts) => Some(parts.takeovers.subscribe()),
            Owner::Single(_) => None,
        }
    }

    fn call(&self, peer: &str, call: PeerCall) -> BoxFuture<'static, Result<PeerReply>> {
        let url = format!("http://{peer}{}", stead_core::http::PEER_CALL_PATH);
        let request = self
            .client
            .post(url)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .json(&call);
        let peer = peer.to_owned();
        Box::pin(async move {
            let unreachable = |e: reqwest::Error| {
                Error::storage(format!("the cluster node at {peer} did not answer: {e}"))
            };
            let response = request.send().await.map_err(unreachable)?;
            let status = response.status();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                // Not serving (starting, leaving, or its leases lapsed): ask again where
                // the object is once the placement has moved on.
                return Ok(PeerReply::NotOwner { owner: None });
            }
            if !status.is_success() {
                return Err(Error::storage(format!(
                    "the cluster node at {peer} refused a forwarded call ({status}): check \
                     that every node has the same cluster secret"
                )));
            }
            response.json::<PeerReply>().await.map_err(unreachable)
        })
    }
}
