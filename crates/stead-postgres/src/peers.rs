//! The cluster as a runtime sees it: where each object lives (from the node's leases and
//! its last round), and the other nodes reached over HTTP at the addresses they advertise,
//! with the cluster's shared secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use stead_core::http::{MAX_PEER_BATCH, PEER_CALLS_PATH, PeerReplies};
use stead_core::{Cluster, Error, Location, ObjectRef, PeerCall, PeerReply, Result};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::PostgresBackend;
use crate::lease::Owner;

/// A node of a cluster on PostgreSQL, for
/// [`RuntimeBuilder::cluster`](stead_core::RuntimeBuilder::cluster): objects of the
/// partitions this node holds are called here, the others are forwarded to their owners'
/// `POST /_stead/peer/calls` (see [`stead_core::http::peer_routes`], mounted on every node
/// with the same secret).
///
/// Calls for one peer travel together: while two requests are on their way to it (until
/// its answer begins), the calls made meanwhile wait and leave as the next request, so a
/// busy node sends a few large requests rather than one per call; an idle one sends each
/// call at once. Replies stream back one by one as they are ready, so a long call (a
/// long-poll, a lock waited for) holds no other back.
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
pub struct PostgresCluster {
    backend: PostgresBackend,
    client: reqwest::Client,
    secret: String,
    /// The queue of calls for each peer, drained by a task of its own.
    peers: Mutex<HashMap<Arc<str>, mpsc::Sender<Pending>, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for PostgresCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("PostgresCluster")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// At most this many requests to one peer are on their way (sent, their answer not yet
/// begun) before the calls made meanwhile are held for the next.
const BATCHES_IN_FLIGHT: usize = 2;

/// The serialized calls of one request stop growing past this many bytes.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// How long a peer may take to begin its answer to a batch (it begins once it has read it).
const ANSWER_BEGINS: Duration = Duration::from_secs(10);

/// Calls waiting for a peer's queue before callers wait for room.
const QUEUE: usize = 16 * 1024;

/// A call waiting to leave, and where its reply goes.
struct Pending {
    call: PeerCall,
    reply: oneshot::Sender<Result<PeerReply>>,
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
            // A connection whose peer vanished without a word (a cut network) is found
            // dead within about half a minute rather than TCP's quarter of an hour.
            .tcp_keepalive(Duration::from_secs(10))
            .tcp_keepalive_interval(Duration::from_secs(5))
            .tcp_keepalive_retries(3u32)
            .build()
            .map_err(|e| Error::invalid_config(format!("HTTP client for peers: {e}")))?;
        Ok(Arc::new(PostgresCluster {
            backend: backend.session(),
            client,
            secret: secret.to_owned(),
            peers: Mutex::new(HashMap::default()),
        }))
    }
}

impl PostgresCluster {
    /// The queue of calls for `peer`, and its task (started at its first call).
    fn queue(&self, peer: &str) -> mpsc::Sender<Pending> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = peers.get(peer).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        // Peers that left the cluster are forgotten (a queue ends with its last sender), so
        // addresses that come and go do not pile up.
        if let Owner::Cluster(parts) = &self.backend.inner.owner {
            let members = parts.view().members;
            peers.retain(|address, _| members.iter().any(|m| *m.address == **address));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let link = Link {
            client: self.client.clone(),
            url: format!("http://{peer}{PEER_CALLS_PATH}"),
            authorization: format!("Bearer {}", self.secret).into(),
            peer: peer.into(),
        };
        tokio::spawn(link.drive(rx));
        peers.insert(peer.into(), tx.clone());
        tx
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

    fn secret(&self) -> Option<&str> {
        Some(&self.secret)
    }

    fn on_handover(&self, hook: stead_core::Handover) {
        if let Owner::Cluster(parts) = &self.backend.inner.owner {
            *parts.handover.0.write().unwrap_or_else(|e| e.into_inner()) = Some(hook);
        }
    }

    fn call(&self, peer: &str, call: PeerCall) -> BoxFuture<'static, Result<PeerReply>> {
        let queue = self.queue(peer);
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            queue
                .send(Pending { call, reply })
                .await
                .map_err(|_| Error::ShuttingDown)?;
            answer.await.map_err(|_| Error::ShuttingDown)?
        })
    }
}

/// The way to one peer: its endpoint and credentials.
#[derive(Clone)]
struct Link {
    client: reqwest::Client,
    url: String,
    authorization: Arc<str>,
    peer: Arc<str>,
}

impl Link {
    /// Sends the calls of `queue` in batches until every sender is gone.
    async fn drive(self, mut queue: mpsc::Receiver<Pending>) {
        let room = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        while let Some(first) = queue.recv().await {
            // Calls made while every request is out wait here and leave together.
            let Ok(permit) = room.clone().acquire_owned().await else {
                return;
            };
            let mut bytes = first.call.body.get().len();
            let mut batch = vec![first];
            while batch.len() < MAX_PEER_BATCH && bytes < BATCH_BYTES {
                match queue.try_recv() {
                    Ok(p) => {
                        bytes += p.call.body.get().len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            let link = self.clone();
            tokio::spawn(async move { link.send(batch, permit).await });
        }
    }

    /// Sends one batch and hands each reply to its caller as it arrives.
    async fn send(&self, batch: Vec<Pending>, permit: tokio::sync::OwnedSemaphorePermit) {
        let (calls, mut replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.call, Some(p.reply))).unzip();
        let peer = &self.peer;
        let outcome: Result<()> = async {
            let unreachable = |e: reqwest::Error| {
                Error::storage(format!("the cluster node at {peer} did not answer: {e}"))
            };
            let body = serde_json::to_vec(&calls).map_err(Error::Codec)?;
            drop(calls);
            let sent = self
                .client
                .post(&self.url)
                .header(reqwest::header::AUTHORIZATION, &*self.authorization)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send();
            // The peer answers a batch's head as soon as it has read it: one that does not
            // within ANSWER_BEGINS is paused or cut off, and must not hold the next batch.
            let response = match tokio::time::timeout(ANSWER_BEGINS, sent).await {
                Ok(r) => r.map_err(unreachable),
                Err(_) => Err(Error::storage(format!(
                    "the cluster node at {peer} did not begin to answer within {ANSWER_BEGINS:?}: \
                     the calls may or may not have run"
                ))),
            };
            // The peer has the whole batch: the next one may leave.
            drop(permit);
            let mut response = response?;
            let status = response.status();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                // Not serving (starting, leaving, or its leases lapsed): ask again where
                // the objects are once the placement has moved on.
                for r in replies.iter_mut().filter_map(Option::take) {
                    let _ = r.send(Ok(PeerReply::NotOwner { owner: None }));
                }
                return Ok(());
            }
            if !status.is_success() {
                return Err(Error::storage(format!(
                    "the cluster node at {peer} refused forwarded calls ({status}): check \
                     that every node has the same cluster secret"
                )));
            }
            let mut lines = PeerReplies::default();
            while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
                for (i, reply) in lines.feed(&chunk)? {
                    if let Some(r) = replies.get_mut(i).and_then(Option::take) {
                        let _ = r.send(Ok(reply));
                    }
                }
            }
            Ok(())
        }
        .await;
        let error = match outcome {
            Ok(()) => Error::storage(format!(
                "the cluster node at {peer} ended its answer before replying to every \
                 forwarded call: the call may or may not have run"
            )),
            Err(e) => e,
        };
        let text = error.to_string();
        let mut error = Some(error);
        for r in replies.into_iter().flatten() {
            let e = error.take().unwrap_or_else(|| Error::storage(text.clone()));
            let _ = r.send(Err(e));
        }
    }
}
