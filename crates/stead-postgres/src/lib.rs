//! # stead-postgres: stead on PostgreSQL
//!
//! A [`Backend`] that keeps objects' keys and values, alarms and the registry in
//! PostgreSQL, so that backups, replication and point-in-time recovery are PostgreSQL's
//! own tools, and one active node per deployment: nodes contend for a lease row, and
//! every commit re-checks in its own transaction that its node still holds the lease at
//! the epoch its object started under. A node that lost the lease (paused, cut off)
//! commits nothing more; its objects reset and it waits as a standby.
//!
//! Or a partitioned cluster ([`PostgresOptions::cluster`]): objects hash into partitions
//! ([`partition_of`]), each with a lease of its own, spread over the live members; every
//! commit is fenced by the epochs of the partitions it writes; [`PostgresCluster`] forwards
//! calls to objects other nodes own.
//!
//! - Everything lives in one schema ([`PostgresOptions::schema`], `stead` by default),
//!   created and migrated by the backend; a table `stead_migrations` records what was
//!   applied, and a schema newer than the build is refused.
//! - Group commit: one writer task per partition of object ids
//!   ([`PostgresOptions::writers`]), each committing every pending turn of its objects in
//!   one transaction; partitions commit in parallel.
//! - Acknowledged means committed by PostgreSQL with its `synchronous_commit` setting;
//!   in `ProcessCrashSafe` durability stead commits with `synchronous_commit = off`.
//! - The SQL avoids advisory locks and `LISTEN`/`NOTIFY`: correctness rests on row locks
//!   and transactions alone.
//!
//! ```no_run
//! # async fn run() -> stead_core::Result<()> {
//! use stead_postgres::{PostgresBackend, PostgresOptions};
//!
//! let backend = PostgresBackend::connect(
//!     PostgresOptions::new("postgres://stead@db.internal/app").schema("stead"),
//! )
//! .await?;
//! // A standby waits here until the active node's lease expires.
//! backend.wait_active().await?;
//! let rt = stead_core::Runtime::builder().backend(backend).build().await?;
//! # rt.shutdown().await }
//! ```

mod cluster;
mod error;
mod lease;
mod peers;
mod schema;
mod writer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use stead_core::{
    Backend, CommitBatch, Error, FenceToken, ListOptions, NamedObject, ObjectEntry, ObjectId,
    ObjectRef, Result, Value,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::NoTls;

pub use cluster::{ClusterOptions, ClusterView, MAX_PARTITIONS, Member, partition_of};
pub use error::PostgresError;
pub use lease::LeaseState;
pub use peers::PostgresCluster;
pub use schema::SCHEMA_VERSION;

use lease::{Lease, Owner};
use schema::Sql;
use writer::{WriterCtx, WriterMsg};

/// Options of the PostgreSQL backend.
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The connection URL (`postgres://user:password@host:port/database?...`), as
    /// PostgreSQL's own clients take it.
    pub url: String,
    /// The schema that holds every table (`stead`): several deployments can share one
    /// database, each in its own schema.
    pub schema: String,
    /// The most connections the pool opens (16).
    pub pool_size: usize,
    /// How many writer tasks commit in parallel, each for its share of the objects (4).
    pub writers: usize,
    /// How long the lease lasts without a renewal (10 s): a standby takes over at most this
    /// long after the active node died. Renewed three times per duration.
    pub lease_duration: Duration,
    /// This node's name in the lease row (default: the process id). The lease is held by
    /// a process, not a name: the holder is the name with a random nonce of the process,
    /// so two processes started with the same name never hand the lease to each other. A
    /// node that restarts takes the lease at once only if its predecessor gave it back
    /// (a graceful shutdown does); otherwise it waits for it to expire, like any standby.
    pub node_id: Option<String>,
    /// Whether the node starts as a standby (false): it then takes no lease during its
    /// first lease duration, so that an active node started beside it wins the lease, and
    /// still takes over if none shows up. Either way a node that finds the lease held
    /// waits as a standby; afterwards both kinds take over the same way.
    pub standby: bool,
    /// How long connecting, and waiting for a free connection, may take (5 s).
    pub connect_timeout: Duration,
    /// A partitioned cluster instead of one active node: every node serves the partitions
    /// it holds (see [`ClusterOptions`]). `None` (the default): one active node, standbys.
    pub cluster: Option<ClusterOptions>,
    /// Records every commit's and every takeover's partitions, epochs and holder in a table
    /// `fence_audit`, for tests that check the fences (see `tests/cluster.rs`). Off.
    #[doc(hidden)]
    pub fence_audit: bool,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: only where it points is shown.
        f.debug_struct("PostgresOptions")
            .field("server", &redacted(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("writers", &self.writers)
            .field("lease_duration", &self.lease_duration)
            .field("node_id", &self.node_id)
            .field("standby", &self.standby)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl PostgresOptions {
    /// Options for the server at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            schema: "stead".into(),
            pool_size: 16,
            writers: 4,
            lease_duration: Duration::from_secs(10),
            node_id: None,
            standby: false,
            connect_timeout: Duration::from_secs(5),
            cluster: None,
            fence_audit: false,
        }
    }

    /// The same options with the fence audit on or off (for tests).
    #[doc(hidden)]
    pub fn fence_audit(mut self, on: bool) -> Self {
        self.fence_audit = on;
        self
    }

    /// The same options for a node of a partitioned cluster.
    pub fn cluster(mut self, cluster: ClusterOptions) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The same options in schema `schema`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The same options with at most `n` connections.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// The same options with `n` writer tasks.
    pub fn writers(mut self, n: usize) -> Self {
        self.writers = n;
        self
    }

    /// The same options with this lease duration.
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d;
        self
    }

    /// The same options with this node name.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// The same options, starting as a standby or not (see [`standby`](Self::standby)).
    pub fn standby(mut self, standby: bool) -> Self {
        self.standby = standby;
        self
    }

    fn check(&self) -> Result<tokio_postgres::Config> {
        schema::check_schema_name(&self.schema)?;
        let mut config: tokio_postgres::Config = self.url.parse().map_err(|e| {
            Error::invalid_config(format!("PostgreSQL URL {}: {e}", redacted(&self.url)))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        // Operators see which deployment a connection serves.
        let mut app = format!("stead {}", self.schema);
        app.truncate(63);
        config.application_name(&app);
        // A paused or cut-off node must not hold a takeover (which waits for the lease
        // row) past its lease: no statement and no idle transaction lasts half as long.
        let bound = (self.lease_duration / 2).as_millis();
        let mut options = config.get_options().unwrap_or_default().to_owned();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!(
            "-c statement_timeout={bound} -c idle_in_transaction_session_timeout={bound}"
        ));
        config.options(&options);
        if self.writers == 0 || self.pool_size <= self.writers {
            return Err(Error::invalid_config(format!(
                "PostgreSQL pool of {} connections for {} writers: the pool needs more \
                 connections than writers (and at least one writer)",
                self.pool_size, self.writers
            )));
        }
        if let Some(c) = &self.cluster {
            if c.partitions == 0 || c.partitions > MAX_PARTITIONS {
                return Err(Error::invalid_config(format!(
                    "cluster partitions: 1 to {MAX_PARTITIONS}, not {}",
                    c.partitions
                )));
            }
            if self.standby {
                return Err(Error::invalid_config(
                    "a cluster node is never a standby: every node serves its partitions",
                ));
            }
        }
        if self.lease_duration < Duration::from_millis(500) {
            return Err(Error::invalid_config(
                "PostgreSQL lease duration: at least 500 ms",
            ));
        }
        Ok(config)
    }
}

/// A writer task's queue, with how many batches wait in it.
struct WriterQueue {
    tx: mpsc::UnboundedSender<WriterMsg>,
    queued: Arc<AtomicUsize>,
}

/// A pool of at most `size` connections to the server `config` names.
fn new_pool(config: tokio_postgres::Config, size: usize, timeout: Duration) -> Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| Error::invalid_config(format!("PostgreSQL pool: {e}")))
}

/// The URL without its user information.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

pub(crate) fn pg_err(e: tokio_postgres::Error) -> Error {
    Error::storage(PostgresError::postgres("PostgreSQL", e))
}

pub(crate) fn unavailable(what: impl Into<String>) -> Error {
    Error::storage(PostgresError::new(what))
}

/// No connection could be had from the pool.
pub(crate) fn no_connection(e: deadpool_postgres::PoolError) -> Error {
    Error::storage(PostgresError::pool("no PostgreSQL connection", e))
}

/// Objects, alarms and the registry in PostgreSQL, written by the node that holds the
/// deployment's lease. See the [crate documentation](crate).
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
    /// Whether [`Backend::close`] gives the lease back (not for a [`session`](Self::session)).
    closes: bool,
}

struct Inner {
    server: String,
    schema: String,
    pool: Pool,
    sql: Arc<Sql>,
    owner: Owner,
    writers: Vec<WriterQueue>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    lease_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("server", &self.inner.server)
            .field("schema", &self.inner.schema)
            .field("state", &self.inner.owner.state())
            .finish()
    }
}

impl PostgresBackend {
    /// Starts the backend without waiting: connecting, migrating and asking for the lease
    /// go on in the background, and every call waits for them. Must be called within a
    /// tokio runtime. Fails at once only on options that cannot work (a malformed URL, a
    /// bad schema name).
    pub fn new(opts: PostgresOptions) -> Result<PostgresBackend> {
        let config = opts.check()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::invalid_config("the PostgreSQL backend starts within a tokio runtime")
        })?;
        let server = redacted(&opts.url);
        let pool = new_pool(config.clone(), opts.pool_size, opts.connect_timeout)?;
        // The lease is renewed on a connection of its own, never waiting for one that
        // commits hold.
        let lease_pool = new_pool(config, 1, opts.connect_timeout)?;
        // A process holds the lease: its name (or pid) with a nonce of this process.
        let node = opts
            .node_id
            .clone()
            .unwrap_or_else(|| std::process::id().to_string());
        let holder = format!("{node}/{}", hex::encode(rand::random::<[u8; 8]>()));
        let owner = match &opts.cluster {
            None => Owner::Single(Arc::new(Lease::new(
                holder,
                opts.lease_duration,
                opts.standby,
            ))),
            Some(c) => Owner::Cluster(Arc::new(cluster::Partitions::new(
                holder,
                node,
                opts.lease_duration,
                c,
            ))),
        };
        let sql = Arc::new(Sql::new(&opts.schema, opts.fence_audit));
        let ctx = Arc::new(WriterCtx {
            pool: pool.clone(),
            sql: sql.clone(),
            owner: owner.clone(),
        });
        let writers: Vec<WriterQueue> = (0..opts.writers)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let queued = Arc::new(AtomicUsize::new(0));
                handle.spawn(writer::run(ctx.clone(), rx, queued.clone()));
                WriterQueue { tx, queued }
            })
            .collect();
        // A cluster hands partitions over once the commits queued before are done.
        let queues: Vec<_> = writers.iter().map(|w| w.tx.downgrade()).collect();
        let flush: cluster::Flush = Box::new(move || {
            let queues = queues.clone();
            Box::pin(async move { flush_writers(queues.iter().filter_map(|q| q.upgrade())).await })
        });
        let (stop, stopped) = oneshot::channel();
        let task = handle.spawn(start(
            Start {
                pool: pool.clone(),
                lease_pool,
                schema: opts.schema.clone(),
                server: server.clone(),
                sql: sql.clone(),
                owner: owner.clone(),
                flush,
            },
            stopped,
        ));
        Ok(PostgresBackend {
            inner: Arc::new(Inner {
                server,
                schema: opts.schema,
                pool,
                sql,
                owner,
                writers,
                stop: Mutex::new(Some(stop)),
                lease_task: Mutex::new(Some(task)),
            }),
            closes: true,
        })
    }

    /// Starts the backend and waits until it has connected, migrated and asked for the
    /// lease once: the error says why when the server is unreachable, refuses the
    /// credentials or privileges, or holds a newer schema. The node may be a standby then
    /// (another holds the lease); see [`wait_active`](Self::wait_active).
    pub async fn connect(opts: PostgresOptions) -> Result<PostgresBackend> {
        let backend = PostgresBackend::new(opts)?;
        let state = backend
            .inner
            .owner
            .wait_for(|s| *s != LeaseState::Starting)
            .await;
        match state {
            LeaseState::Failed(e) => Err(Error::invalid_config(e.to_string())),
            _ => Ok(backend),
        }
    }

    /// Waits until this node holds the lease.
    pub async fn wait_active(&self) -> Result<()> {
        let state = self
            .inner
            .owner
            .wait_for(|s| {
                matches!(
                    s,
                    LeaseState::Active { .. }
                        | LeaseState::Member { .. }
                        | LeaseState::Failed(_)
                        | LeaseState::Closed
                )
            })
            .await;
        match state {
            LeaseState::Active { .. } | LeaseState::Member { .. } => Ok(()),
            LeaseState::Failed(e) => Err(Error::invalid_config(e.to_string())),
            _ => Err(unavailable("the PostgreSQL backend is closed")),
        }
    }

    /// Where the node stands now.
    pub fn state(&self) -> LeaseState {
        self.inner.owner.state()
    }

    /// Follows where the node stands (for readiness: serve only while active).
    pub fn watch_state(&self) -> watch::Receiver<LeaseState> {
        self.inner.owner.subscribe()
    }

    /// Whether the node holds the lease now (and not possibly expired on its own clock).
    pub fn is_active(&self) -> bool {
        self.inner.owner.is_active()
    }

    /// What this node knows of its cluster (from its last round), or `None` when it is one
    /// active node with standbys.
    pub fn cluster_view(&self) -> Option<ClusterView> {
        match &self.inner.owner {
            Owner::Cluster(c) => Some(c.view()),
            Owner::Single(_) => None,
        }
    }

    /// The partition `obj` belongs to (0 when one lease covers everything).
    pub fn partition(&self, obj: &ObjectRef) -> u32 {
        self.inner.owner.partition(obj)
    }

    /// Stops the node's lease task as a crash would: no lease given back, no goodbye to
    /// the members table. For failure tests; a real node calls `close`.
    #[doc(hidden)]
    pub fn halt_for_tests(&self) {
        if let Some(task) = lock(&self.inner.lease_task).take() {
            task.abort();
        }
        lock(&self.inner.stop).take();
    }

    /// The same backend for one runtime of several in turn: closing it (when that runtime
    /// shuts down) flushes and keeps the lease, so that a server can drop every object
    /// after losing the lease and build a fresh runtime once it holds the lease again.
    /// Close the backend itself at the end.
    pub fn session(&self) -> PostgresBackend {
        PostgresBackend {
            inner: self.inner.clone(),
            closes: false,
        }
    }

    /// The schema it writes in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Waits out start-up; then answers whether this node may read and write now: the
    /// object `obj`, or (`None`) what belongs to no object.
    async fn ready(&self, obj: Option<&ObjectRef>) -> Result<()> {
        let owner = &self.inner.owner;
        let serves = || match (owner, obj) {
            (Owner::Cluster(c), None) => c.joined(),
            (_, obj) => owner
                .serving(obj.map_or(0, |o| owner.partition(o)))
                .is_some(),
        };
        // Every read comes here: the usual answer costs no subscription.
        if serves() {
            return Ok(());
        }
        let state = owner.wait_for(|s| *s != LeaseState::Starting).await;
        match state {
            LeaseState::Active { .. } | LeaseState::Member { .. } if serves() => Ok(()),
            LeaseState::Active { .. } => Err(unavailable(
                "this node's lease may have expired: it serves nothing until it renews it",
            )),
            LeaseState::Member { .. } => Err(match obj {
                Some(o) => unavailable(format!(
                    "this node does not hold partition {} (of object {} of class {}): \
                     another node of the cluster serves it",
                    owner.partition(o),
                    o.id,
                    o.class
                )),
                None => unavailable(
                    "this node's leases may have expired: it serves nothing until it renews them",
                ),
            }),
            LeaseState::Standby { reason } => {
                Err(unavailable(format!("this node is a standby ({reason})")))
            }
            LeaseState::Failed(e) => Err(Error::storage(e)),
            LeaseState::Starting | LeaseState::Closed => {
                Err(unavailable("the PostgreSQL backend is closed"))
            }
        }
    }

    async fn client(&self, obj: Option<&ObjectRef>) -> Result<deadpool_postgres::Object> {
        self.ready(obj).await?;
        self.inner.pool.get().await.map_err(no_connection)
    }

    /// Runs one read statement (prepared once per connection).
    async fn rows(
        &self,
        obj: Option<&ObjectRef>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.client(obj).await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
        client.query(&stmt, params).await.map_err(pg_err)
    }

    fn writer(&self, id: &ObjectId) -> &WriterQueue {
        let b = id.as_bytes();
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        &self.inner.writers[n % self.inner.writers.len()]
    }
}

/// Connects, migrates, then keeps the lease until stopped.
/// What the task that keeps the node's leases starts from.
struct Start {
    pool: Pool,
    /// Connections of its own, never waiting for those commits hold.
    lease_pool: Pool,
    schema: String,
    server: String,
    sql: Arc<Sql>,
    owner: Owner,
    /// Waits for the commits queued before (a cluster hands partitions over after them).
    flush: cluster::Flush,
}

async fn start(s: Start, stop: oneshot::Receiver<()>) {
    let Start {
        pool,
        lease_pool,
        schema,
        server,
        sql,
        owner,
        flush,
    } = s;
    let prepared = async {
        let mut client = pool.get().await.map_err(|e| {
            PostgresError::pool(format_args!("cannot connect to PostgreSQL at {server}"), e)
        })?;
        let partitions = match &owner {
            Owner::Cluster(c) => Some(c.count),
            Owner::Single(_) => None,
        };
        let checked = match schema::migrate(&mut client, &schema).await {
            Ok(()) => cluster::check_deployment(&client, &sql, &schema, partitions).await,
            Err(e) => Err(e),
        };
        let checked = match (checked, &sql.audit) {
            (Ok(()), Some(audit)) => client.batch_execute(&audit.create).await.map_err(pg_err),
            (checked, _) => checked,
        };
        checked.map_err(|e| {
            match error::carried(&e) {
                Some(p) => p.clone(),
                None => PostgresError::new(e.to_string()),
            }
            .within(format_args!("PostgreSQL at {server}"))
        })
    };
    if let Err(reason) = prepared.await {
        tracing::error!(%reason, "the PostgreSQL backend cannot start");
        owner.set(LeaseState::Failed(reason));
        return;
    }
    match owner {
        Owner::Single(lease) => lease::run(lease, lease_pool, sql, stop).await,
        Owner::Cluster(parts) => {
            // Rounds use a few connections of their own, never waiting for commits.
            cluster::run(parts, lease_pool, sql, flush, stop).await;
        }
    }
}

/// Completes once every batch queued before the call on these writers is completed.
async fn flush_writers(queues: impl Iterator<Item = mpsc::UnboundedSender<WriterMsg>>) {
    let mut waits = Vec::new();
    for q in queues {
        let (tx, rx) = oneshot::channel();
        if q.send(WriterMsg::Flush(tx)).is_ok() {
            waits.push(rx);
        }
    }
    for rx in waits {
        let _ = rx.await;
    }
}

fn id_of(bytes: &[u8]) -> Result<ObjectId> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| unavailable("corrupt object id in PostgreSQL"))?;
    Ok(ObjectId::from_bytes(bytes))
}

/// Keys and names are stored as bytes (they may hold NUL, which PostgreSQL's text cannot,
/// and bytes order as the API promises).
fn text(b: Vec<u8>) -> Result<String> {
    String::from_utf8(b).map_err(|_| unavailable("a key or name in PostgreSQL is not UTF-8"))
}

fn entry(r: &tokio_postgres::Row) -> Result<(String, Value)> {
    Ok((
        text(r.get::<_, Vec<u8>>(0))?,
        Value::from(r.get::<_, &[u8]>(1)),
    ))
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Backend for PostgresBackend {
    async fn get(&self, obj: &ObjectRef, key: &str) -> Result<Option<Value>> {
        let id = &obj.id.as_bytes()[..];
        let rows = self
            .rows(
                Some(obj),
                &self.inner.sql.get,
                &[&obj.class, &id, &key.as_bytes()],
            )
            .await?;
        Ok(rows.first().map(|r| Value::from(r.get::<_, &[u8]>(0))))
    }

    async fn list(&self, obj: &ObjectRef, opts: &ListOptions) -> Result<Vec<(String, Value)>> {
        let (lower, upper) = opts.bounds();
        let which = usize::from(opts.reverse) + 2 * usize::from(upper.is_some());
        let sql = &self.inner.sql.list[which];
        let lim = opts.limit.map(limit);
        let id = &obj.id.as_bytes()[..];
        let lower = lower.as_bytes();
        let rows = match &upper {
            Some(u) => {
                let u = u.as_bytes();
                self.rows(Some(obj), sql, &[&obj.class, &id, &lower, &lim, &u])
                    .await?
            }
            None => {
                self.rows(Some(obj), sql, &[&obj.class, &id, &lower, &lim])
                    .await?
            }
        };
        rows.iter().map(entry).collect()
    }

    async fn load(&self, obj: &ObjectRef, n: usize) -> Result<Vec<(String, Value)>> {
        let id = &obj.id.as_bytes()[..];
        let rows = self
            .rows(
                Some(obj),
                &self.inner.sql.load,
                &[&obj.class, &id, &limit(n)],
            )
            .await?;
        rows.iter().map(entry).collect()
    }

    async fn get_alarm(&self, obj: &ObjectRef) -> Result<Option<i64>> {
        let id = &obj.id.as_bytes()[..];
        let rows = self
            .rows(Some(obj), &self.inner.sql.get_alarm, &[&obj.class, &id])
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn due_alarms(
        &self,
        class: &'static str,
        after: Option<(i64, ObjectId)>,
        until_ms: i64,
        n: usize,
    ) -> Result<Vec<(i64, ObjectId)>> {
        let sql = &self.inner.sql;
        // A cluster node fires the alarms of the partitions it serves only.
        let serving = match &self.inner.owner {
            Owner::Cluster(c) => Some(c.serving_now()),
            Owner::Single(_) => None,
        };
        let rows = match (&after, &serving) {
            (Some((at, id)), None) => {
                let id = &id.as_bytes()[..];
                self.rows(
                    None,
                    &sql.due_alarms_after,
                    &[&class, &until_ms, &limit(n), at, &id],
                )
                .await?
            }
            (None, None) => {
                self.rows(None, &sql.due_alarms, &[&class, &until_ms, &limit(n)])
                    .await?
            }
            (_, Some(ps)) if ps.is_empty() => return Ok(Vec::new()),
            (Some((at, id)), Some(ps)) => {
                let id = &id.as_bytes()[..];
                self.rows(
                    None,
                    &sql.due_alarms_after_in,
                    &[&class, &until_ms, &limit(n), at, &id, ps],
                )
                .await?
            }
            (None, Some(ps)) => {
                self.rows(
                    None,
                    &sql.due_alarms_in,
                    &[&class, &until_ms, &limit(n), ps],
                )
                .await?
            }
        };
        rows.iter()
            .map(|r| Ok((r.get::<_, i64>(0), id_of(r.get::<_, &[u8]>(1))?)))
            .collect()
    }

    async fn alarm_classes(&self) -> Result<Vec<String>> {
        let rows = self.rows(None, &self.inner.sql.alarm_classes, &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn objects(
        &self,
        class: &'static str,
        after: Option<ObjectId>,
        n: usize,
    ) -> Result<Vec<ObjectEntry>> {
        let after: &[u8] = match &after {
            Some(id) => &id.as_bytes()[..],
            None => &[],
        };
        let rows = self
            .rows(None, &self.inner.sql.objects, &[&class, &after, &limit(n)])
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ObjectEntry::new(
                    id_of(r.get::<_, &[u8]>(0))?,
                    r.get::<_, Option<Vec<u8>>>(1).map(text).transpose()?,
                ))
            })
            .collect()
    }

    async fn objects_by_name(
        &self,
        class: &'static str,
        prefix: &str,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<NamedObject>> {
        let (lower, upper) = ListOptions::prefix(prefix).bounds();
        let (lower, upper, after) = (
            lower.as_bytes(),
            upper.as_deref().map(str::as_bytes),
            after.map(str::as_bytes),
        );
        let rows = self
            .rows(
                None,
                &self.inner.sql.objects_by_name,
                &[&class, &lower, &upper, &after, &limit(n)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(NamedObject::new(
                    id_of(r.get::<_, &[u8]>(0))?,
                    text(r.get::<_, Vec<u8>>(1))?,
                ))
            })
            .collect()
    }

    async fn object_name(&self, obj: &ObjectRef) -> Result<Option<String>> {
        let id = &obj.id.as_bytes()[..];
        let rows = self
            .rows(None, &self.inner.sql.object_name, &[&obj.class, &id])
            .await?;
        rows.first()
            .and_then(|r| r.get::<_, Option<Vec<u8>>>(0))
            .map(text)
            .transpose()
    }

    fn fence_token(&self, obj: &ObjectRef) -> Option<FenceToken> {
        // Epoch 0 is never held: an activation made without the lease can commit nothing.
        let owner = &self.inner.owner;
        let p = owner.partition(obj);
        Some(FenceToken::new(p, owner.serving(p).unwrap_or(0)))
    }

    fn backlogged(&self, obj: &ObjectRef) -> bool {
        self.writer(&obj.id).queued.load(Ordering::Acquire) >= writer::MAX_QUEUED
    }

    fn submit(&self, batch: CommitBatch) {
        let w = self.writer(&batch.object.id);
        w.queued.fetch_add(1, Ordering::AcqRel);
        // A writer that is gone drops the batch, which fails it.
        if w.tx.send(WriterMsg::Commit(batch)).is_err() {
            w.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    async fn flush(&self) -> Result<()> {
        flush_writers(self.inner.writers.iter().map(|w| w.tx.clone())).await;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.flush().await?;
        if !self.closes {
            return Ok(());
        }
        // Gives the lease back, so that a standby takes over at once.
        if let Some(stop) = lock(&self.inner.stop).take() {
            let _ = stop.send(());
        }
        let task = lock(&self.inner.lease_task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        Ok(())
    }
}
