//! The lease: one row (holder, epoch, expiry on PostgreSQL's clock) that makes one node
//! of a deployment the active one.
//!
//! A process holds the lease (its node name with a nonce of the process). It takes the
//! lease when it has expired or was given back, which raises the epoch; renews it well
//! before it expires, on a connection of its own; and counts it as held only until its own
//! monotonic clock says it might have expired (measured from before the renewal was sent,
//! so the node always gives up before PostgreSQL would let another take over). Every commit
//! transaction takes a shared advisory lock on the lease's partition (held to its end), then
//! re-reads the row, and commits only when the node still holds it with the epoch the
//! writing activation started under. A takeover takes that lock exclusively first, so it
//! waits for commits in flight, and commits that begin meanwhile wait for it and then see
//! the new epoch; a renewal changes only the expiry and waits for none of them. Statements and idle transactions are cut off at half a
//! lease, so a paused node cannot hold a takeover up past its lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::watch;

use crate::schema::{Sql, describe};

/// Where the node stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseState {
    /// Connecting, migrating, or asking for the lease the first time.
    Starting,
    /// Holds the lease at this epoch.
    Active {
        /// The epoch it holds (grows by one at each change of holder).
        epoch: u64,
    },
    /// Another node holds the lease (or this one lost it): this node serves nothing and
    /// takes over once the lease expires.
    Standby {
        /// Why, for operators (the holder, or what failed).
        reason: String,
    },
    /// A member of a partitioned cluster that has joined: it holds this many partitions
    /// (possibly none, while others hold them all).
    Member {
        /// How many partitions it holds.
        partitions: u32,
    },
    /// Could not start (a wrong URL, missing privileges, a newer schema): why, with
    /// PostgreSQL's SQLSTATE when the server said.
    Failed(crate::PostgresError),
    /// Closed: the lease was given back.
    Closed,
}

/// What the node knows of its lease, shared by readers, writers and the renewal task.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) holder: String,
    pub(crate) duration: Duration,
    /// Started as a standby: takes no lease during its first lease duration.
    standby: bool,
    state: watch::Sender<LeaseState>,
    /// The epoch held (0: none; epochs start at 1) and until when, in nanoseconds after
    /// `base` on this node's monotonic clock, it counts as valid: read by every turn and
    /// every read, so without a lock.
    held_epoch: AtomicU64,
    valid_until_ns: AtomicU64,
    base: Instant,
}

impl Lease {
    pub(crate) fn new(holder: String, duration: Duration, standby: bool) -> Lease {
        Lease {
            holder,
            duration,
            standby,
            state: watch::Sender::new(LeaseState::Starting),
            held_epoch: AtomicU64::new(0),
            valid_until_ns: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.subscribe()
    }

    pub(crate) fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    pub(crate) fn set(&self, state: LeaseState) {
        if !matches!(state, LeaseState::Active { .. }) {
            self.held_epoch.store(0, Ordering::Release);
        }
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// The epoch held now, if the lease is held and not possibly expired.
    pub(crate) fn epoch(&self) -> Option<u64> {
        let epoch = self.held_epoch.load(Ordering::Acquire);
        if epoch == 0 {
            return None;
        }
        let valid = self.nanos(Instant::now()) < self.valid_until_ns.load(Ordering::Acquire);
        valid.then_some(epoch)
    }

    /// `at` in nanoseconds after `base`.
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long a held lease counts from the moment its renewal was sent: nine tenths of
    /// its duration, a margin for clocks that run at slightly different rates.
    fn validity(&self) -> Duration {
        self.duration * 9 / 10
    }

    fn held(&self, epoch: u64, sent: Instant) {
        self.valid_until_ns
            .store(self.nanos(sent + self.validity()), Ordering::Release);
        self.held_epoch.store(epoch, Ordering::Release);
        self.set(LeaseState::Active { epoch });
    }
}

/// Takes, renews and (on close) gives back the lease, until `stop` fires.
pub(crate) async fn run(
    lease: Arc<Lease>,
    pool: Pool,
    sql: Arc<Sql>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let ms = i64::try_from(lease.duration.as_millis()).unwrap_or(i64::MAX);
    // Renew three times per lease; ask for a lease held by another a little more often
    // than it would expire.
    let renew_every = lease.duration / 3;
    let retry_every = (lease.duration / 4).max(Duration::from_millis(50));
    let mut held: Option<u64> = None;
    // A node started as a standby leaves the lease to others for one lease duration.
    let deferred_until = lease.standby.then(|| Instant::now() + lease.duration);
    loop {
        let sent = Instant::now();
        let deferred = deferred_until.and_then(|t| t.checked_duration_since(sent));
        let wait = match held {
            None if deferred.is_some() => {
                lease.set(LeaseState::Standby {
                    reason: "started as a standby: takes no lease during its first lease \
                             duration"
                        .into(),
                });
                retry_every.min(deferred.unwrap_or_default())
            }
            None => match acquire(&pool, &sql, &lease.holder, ms).await {
                Ok(Some(epoch)) => {
                    tracing::info!(holder = %lease.holder, epoch, "took the lease: this node is active");
                    held = Some(epoch);
                    lease.held(epoch, sent);
                    renew_every
                }
                Ok(None) => {
                    lease.set(LeaseState::Standby {
                        reason: "another node holds the lease".into(),
                    });
                    retry_every
                }
                Err(e) => {
                    lease.set(LeaseState::Standby {
                        reason: format!("cannot reach PostgreSQL for the lease: {e}"),
                    });
                    retry_every
                }
            },
            Some(epoch) => match renew(&pool, &sql, &lease.holder, epoch, ms).await {
                Ok(true) => {
                    lease.held(epoch, sent);
                    renew_every
                }
                Ok(false) => {
                    tracing::error!(holder = %lease.holder, epoch, "lost the lease: this node stops serving");
                    held = None;
                    lease.set(LeaseState::Standby {
                        reason: format!("lost the lease it held at epoch {epoch}"),
                    });
                    retry_every
                }
                Err(e) => {
                    // Still held until the node's own clock says it may have expired.
                    if lease.epoch().is_none() {
                        tracing::error!(holder = %lease.holder, epoch, error = %e,
                            "could not renew the lease before it expired: this node stops serving");
                        held = None;
                        lease.set(LeaseState::Standby {
                            reason: format!("could not renew the lease: {e}"),
                        });
                    }
                    retry_every.min(renew_every)
                }
            },
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => {
                if let Some(epoch) = held {
                    release(&pool, &sql, &lease.holder, epoch).await;
                }
                lease.set(LeaseState::Closed);
                return;
            }
        }
    }
}

/// Takes the lease if it is free or expired, once every commit that checked it is over.
async fn acquire(pool: &Pool, sql: &Sql, holder: &str, ms: i64) -> Result<Option<u64>, String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| describe(&e))?;
    // Waits for every commit holding the lease's lock (see `Sql::lease_fence`).
    tx.query(&sql.lease_fence, &[&vec![0i32], &sql.lock_space])
        .await
        .map_err(|e| describe(&e))?;
    tx.query_opt(&sql.lease_lock, &[])
        .await
        .map_err(|e| describe(&e))?;
    let row = tx
        .query_opt(&sql.lease_acquire, &[&holder, &ms])
        .await
        .map_err(|e| describe(&e))?;
    tx.commit().await.map_err(|e| describe(&e))?;
    Ok(row.map(|r| r.get::<_, i64>(0).unsigned_abs()))
}

async fn renew(pool: &Pool, sql: &Sql, holder: &str, epoch: u64, ms: i64) -> Result<bool, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
    let row = client
        .query_opt(&sql.lease_renew, &[&holder, &epoch, &ms])
        .await
        .map_err(|e| describe(&e))?;
    Ok(row.is_some())
}

async fn release(pool: &Pool, sql: &Sql, holder: &str, epoch: u64) {
    let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
    let result = match pool.get().await {
        Ok(client) => client
            .execute(&sql.lease_release, &[&holder, &epoch])
            .await
            .map_err(|e| describe(&e)),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not give the lease back; a standby takes over when it expires");
    }
}

/// What this node holds: the deployment's one lease, or partitions of a cluster.
#[derive(Debug, Clone)]
pub(crate) enum Owner {
    Single(Arc<Lease>),
    Cluster(Arc<crate::cluster::Partitions>),
}

impl Owner {
    pub(crate) fn holder(&self) -> &str {
        match self {
            Owner::Single(l) => &l.holder,
            Owner::Cluster(c) => &c.holder,
        }
    }

    /// The partition of `obj` (0 with one lease).
    pub(crate) fn partition(&self, obj: &stead_core::ObjectRef) -> u32 {
        match self {
            Owner::Single(_) => 0,
            Owner::Cluster(c) => c.partition(obj),
        }
    }

    /// The epoch new turns and reads of partition `p` run under, if this node holds it.
    pub(crate) fn serving(&self, p: u32) -> Option<u64> {
        match self {
            Owner::Single(l) => l.epoch(),
            Owner::Cluster(c) => c.serving(p),
        }
    }

    /// The epoch commits of partition `p` may be made under, if any.
    pub(crate) fn committing(&self, p: u32) -> Option<u64> {
        match self {
            Owner::Single(l) => l.epoch(),
            Owner::Cluster(c) => c.committing(p),
        }
    }

    /// Whether the node serves: holds the lease, or has joined its cluster.
    pub(crate) fn is_active(&self) -> bool {
        match self {
            Owner::Single(l) => l.epoch().is_some(),
            Owner::Cluster(c) => c.joined(),
        }
    }

    pub(crate) fn state(&self) -> LeaseState {
        match self {
            Owner::Single(l) => l.state(),
            Owner::Cluster(c) => c.state(),
        }
    }

    pub(crate) fn set(&self, state: LeaseState) {
        match self {
            Owner::Single(l) => l.set(state),
            Owner::Cluster(c) => c.set(state),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<LeaseState> {
        match self {
            Owner::Single(l) => l.subscribe(),
            Owner::Cluster(c) => c.subscribe(),
        }
    }

    /// Waits until the state satisfies `done`, and answers it (`Closed` if the task that
    /// keeps it is gone).
    pub(crate) async fn wait_for(&self, done: impl FnMut(&LeaseState) -> bool) -> LeaseState {
        self.subscribe()
            .wait_for(done)
            .await
            .map(|s| s.clone())
            .unwrap_or(LeaseState::Closed)
    }
}
