//! The typed client: leases as guards that renew themselves and say when they are lost.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use stead_core::{
    Clock, Durability, Namespace, NamespaceOptions, Result, Runtime, Stub, duration_ms,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::LockError;
use crate::object::{
    Acquire, AcquireReply, Inspect, Lease, Lock, LockState, Release, Renew, Validate, Validity,
};

/// How to acquire a lock.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AcquireOptions {
    /// Who asks.
    pub holder: String,
    /// How long a lease lasts unless renewed (the guard renews at a third of it).
    pub ttl: Duration,
    /// How long to wait in line when the lock is taken.
    pub wait: Duration,
    /// How many holders the lock admits (1: a mutex).
    pub permits: u32,
}

impl AcquireOptions {
    /// A mutex lease for `holder` lasting `ttl`, without waiting.
    pub fn new(holder: impl Into<String>, ttl: Duration) -> Self {
        AcquireOptions {
            holder: holder.into(),
            ttl,
            wait: Duration::ZERO,
            permits: 1,
        }
    }

    /// Waits up to `wait` in the fair queue.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Makes the lock a semaphore of `permits`.
    pub fn permits(mut self, permits: u32) -> Self {
        self.permits = permits;
        self
    }
}

/// How the locks of a runtime are kept (the `[locks]` table of the server's configuration).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_lock::{LockClient, LockConfig};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let locks = LockClient::with_config(&rt, LockConfig::default())?;
/// # let _ = locks;
/// # Ok::<(), stead_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LockConfig {
    /// How durable lock state is; `None` takes the runtime's default.
    pub durability: Option<Durability>,
}

impl LockConfig {
    /// Sets the durability of lock state.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }
}

/// Locks and semaphores with fencing tokens.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use stead_lock::{AcquireOptions, LockClient};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let locks = LockClient::new(&rt)?;
/// let guard = locks.acquire("db-migrate", AcquireOptions::new("worker-1", Duration::from_secs(30))).await?;
/// // Pass the token to every resource you write; they refuse anything older.
/// assert!(locks.validate("db-migrate", guard.token()).await?.valid);
/// guard.release().await?;
/// # rt.shutdown().await?;
/// # Ok::<(), stead_lock::LockError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct LockClient {
    /// One reference count to bump per clone: the HTTP routes clone a client per request.
    inner: Arc<Inner>,
}

struct Inner {
    ns: Namespace<Lock>,
    clock: Arc<dyn Clock>,
    /// The runtime's deadline for a reply; calls that wait on purpose add their wait.
    ask_timeout: Duration,
}

impl std::fmt::Debug for LockClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockClient").finish()
    }
}

impl LockClient {
    /// The locks of `rt`, as they were configured ([`with_config`](Self::with_config)), or
    /// with the defaults if they were not.
    pub fn new(rt: &Runtime) -> Result<Self> {
        let (ns, _) = rt.get_or_register::<Lock>(Default::default(), LockConfig::default)?;
        Ok(Self::from_namespace(rt, ns))
    }

    /// The locks of `rt`, set up with `config`: an [`stead_core::Error::InvalidConfig`] if
    /// they were set up with another configuration already.
    pub fn with_config(rt: &Runtime, config: LockConfig) -> Result<Self> {
        let opts = config
            .durability
            .map(NamespaceOptions::durability)
            .unwrap_or_default();
        let ns = rt.configured_namespace::<Lock>(config, opts)?;
        Ok(Self::from_namespace(rt, ns))
    }

    fn from_namespace(rt: &Runtime, ns: Namespace<Lock>) -> Self {
        LockClient {
            inner: Arc::new(Inner {
                ns,
                clock: rt.clock().clone(),
                ask_timeout: rt.config().ask_timeout,
            }),
        }
    }

    fn stub(&self, name: &str) -> Result<Stub<Lock>, LockError> {
        stead_core::validate_name("lock name", name)?;
        Ok(self.inner.ns.get_by_name(name))
    }

    /// One acquisition attempt (waiting in line up to `opts.wait`), without a guard.
    ///
    /// A refusal is an answer here, not an error: `acquired` is false and the reply says
    /// who holds the lock and for how long.
    pub async fn try_acquire(
        &self,
        name: &str,
        opts: &AcquireOptions,
    ) -> Result<AcquireReply, LockError> {
        // The reply may wait in line for `wait`: the call's deadline runs on top of that.
        let deadline = self.inner.ask_timeout.saturating_add(opts.wait);
        self.stub(name)?
            .with_timeout(deadline)
            .call(Acquire {
                holder: opts.holder.clone(),
                ttl_ms: duration_ms(opts.ttl),
                wait_ms: duration_ms(opts.wait),
                permits: opts.permits,
            })
            .await
    }

    /// Acquires a lease and returns a guard that renews it at a third of its TTL until it is
    /// released or dropped. Fails with [`LockError::Held`] when the lock stays taken.
    pub async fn acquire(&self, name: &str, opts: AcquireOptions) -> Result<LockGuard, LockError> {
        let reply = self.try_acquire(name, &opts).await?;
        let (Some(token), Some(expires_at)) = (reply.token, reply.expires_at) else {
            return Err(LockError::Held {
                holder: reply.holder,
                retry_after: Duration::from_millis(reply.retry_after_ms.unwrap_or(0)),
            });
        };
        let (lost_tx, lost_rx) = watch::channel(false);
        let renewer = tokio::spawn(renew_loop(
            self.clone(),
            name.to_owned(),
            opts.holder.clone(),
            token,
            opts.ttl,
            lost_tx,
        ));
        Ok(LockGuard {
            client: self.clone(),
            name: name.to_owned(),
            holder: opts.holder,
            token,
            expires_at,
            lost: lost_rx,
            renewer: Some(renewer),
        })
    }

    /// Extends a lease.
    pub async fn renew(
        &self,
        name: &str,
        holder: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.stub(name)?
            .call(Renew {
                holder: holder.to_owned(),
                token,
                ttl_ms: duration_ms(ttl),
            })
            .await
    }

    /// Gives a lease back.
    pub async fn release(&self, name: &str, holder: &str, token: u64) -> Result<(), LockError> {
        self.stub(name)?
            .call(Release {
                holder: holder.to_owned(),
                token,
            })
            .await
    }

    /// The lock's holders and queue.
    pub async fn state(&self, name: &str) -> Result<LockState, LockError> {
        Ok(self.stub(name)?.ask(Inspect).await?)
    }

    /// Whether `token` belongs to a live lease of the lock.
    pub async fn validate(&self, name: &str, token: u64) -> Result<Validity, LockError> {
        Ok(self.stub(name)?.ask(Validate { token }).await?)
    }
}

async fn renew_loop(
    client: LockClient,
    name: String,
    holder: String,
    token: u64,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    let period = chrono::Duration::from_std(ttl / 3).unwrap_or(chrono::Duration::MAX);
    loop {
        let at = client.inner.clock.now() + period;
        client.inner.clock.sleep_until(at).await;
        match client.renew(&name, &holder, token, ttl).await {
            Ok(_) => {}
            Err(e) if e.is_lease_lost() => {
                tracing::warn!(lock = %name, %holder, token, error = %e, "lease lost");
                let _ = lost.send(true);
                return;
            }
            // Overload or a restart: try again at the next period; the lease is still valid
            // for two more.
            Err(e) => tracing::debug!(lock = %name, error = %e, "renewal failed; retrying"),
        }
    }
}

/// A held lease. Renews itself in the background; [`release`](Self::release) gives it back
/// (dropping it releases on a best-effort basis).
#[derive(Debug)]
pub struct LockGuard {
    client: LockClient,
    name: String,
    holder: String,
    token: u64,
    expires_at: DateTime<Utc>,
    lost: watch::Receiver<bool>,
    renewer: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// The fencing token: send it with every write to the protected resource.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// When the lease would lapse without the first renewal.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// Whether the lease was lost (a renewal was refused: it had lapsed and someone else
    /// may hold the lock). Stop writing when it is.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Completes when the lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// Gives the lease back.
    pub async fn release(mut self) -> Result<(), LockError> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.client
            .release(&self.name, &self.holder, self.token)
            .await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(renewer) = self.renewer.take() else {
            return;
        };
        renewer.abort();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (client, name, holder, token) = (
                self.client.clone(),
                self.name.clone(),
                self.holder.clone(),
                self.token,
            );
            handle.spawn(async move {
                let _ = client.release(&name, &holder, token).await;
            });
        }
    }
}
