//! The typed client, and an `Elector` that campaigns and renews in the background with the
//! lease-duration / renew-deadline / retry-period semantics of Kubernetes' leader election.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use stead_core::{
    Clock, Durability, InvalidInput, Namespace, NamespaceOptions, Result, Runtime, Stub,
    duration_ms,
};

use crate::error::LeaderError;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::object::{
    Campaign, CampaignResult, Election, Heartbeat, Inspect, Leadership, Resign, Watch,
};

/// How the elections of a runtime are kept (the `[leaders]` table of the server's
/// configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LeaderConfig {
    /// How durable election state is; `None` takes the runtime's default.
    pub durability: Option<Durability>,
}

impl LeaderConfig {
    /// Sets the durability of election state.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }
}

/// Leader election over a runtime.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use stead_leader::LeaderClient;
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let leaders = LeaderClient::new(&rt)?;
/// let won = leaders.campaign("scheduler", "node-1", Duration::from_secs(10)).await?;
/// assert!(won.elected);
/// let lost = leaders.campaign("scheduler", "node-2", Duration::from_secs(10)).await?;
/// assert_eq!(lost.leader.as_deref(), Some("node-1"));
/// # rt.shutdown().await?;
/// # Ok::<(), stead_leader::LeaderError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct LeaderClient {
    /// One reference count to bump per clone: the HTTP routes clone a client per request.
    inner: Arc<Inner>,
}

struct Inner {
    ns: Namespace<Election>,
    clock: Arc<dyn Clock>,
    /// The runtime's deadline for a reply; calls that wait on purpose add their wait.
    ask_timeout: Duration,
}

impl std::fmt::Debug for LeaderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderClient").finish()
    }
}

impl LeaderClient {
    /// The elections of `rt`, as they were configured ([`with_config`](Self::with_config)),
    /// or with the defaults if they were not.
    pub fn new(rt: &Runtime) -> Result<Self> {
        let (ns, _) = rt.get_or_register::<Election>(Default::default(), LeaderConfig::default)?;
        Ok(Self::from_namespace(rt, ns))
    }

    /// The elections of `rt`, set up with `config`: an
    /// [`stead_core::Error::InvalidConfig`] if they were set up otherwise already.
    pub fn with_config(rt: &Runtime, config: LeaderConfig) -> Result<Self> {
        let opts = config
            .durability
            .map(NamespaceOptions::durability)
            .unwrap_or_default();
        let ns = rt.configured_namespace::<Election>(config, opts)?;
        Ok(Self::from_namespace(rt, ns))
    }

    fn from_namespace(rt: &Runtime, ns: Namespace<Election>) -> Self {
        LeaderClient {
            inner: Arc::new(Inner {
                ns,
                clock: rt.clock().clone(),
                ask_timeout: rt.config().ask_timeout,
            }),
        }
    }

    fn stub(&self, group: &str) -> Result<Stub<Election>, LeaderError> {
        stead_core::validate_name("group name", group)?;
        Ok(self.inner.ns.get_by_name(group))
    }

    /// Stands for election in `group`.
    pub async fn campaign(
        &self,
        group: &str,
        candidate: &str,
        ttl: Duration,
    ) -> Result<CampaignResult, LeaderError> {
        self.stub(group)?
            .call(Campaign {
                candidate: candidate.to_owned(),
                ttl_ms: duration_ms(ttl),
            })
            .await
    }

    /// Renews the leader's lease; [`LeaderError::NotLeader`] when `candidate` does not
    /// lead `term`.
    pub async fn heartbeat(
        &self,
        group: &str,
        candidate: &str,
        term: u64,
    ) -> Result<Leadership, LeaderError> {
        self.stub(group)?
            .call(Heartbeat {
                candidate: candidate.to_owned(),
                term,
            })
            .await
    }

    /// Steps down.
    pub async fn resign(
        &self,
        group: &str,
        candidate: &str,
        term: u64,
    ) -> Result<Leadership, LeaderError> {
        self.stub(group)?
            .call(Resign {
                candidate: candidate.to_owned(),
                term,
            })
            .await
    }

    /// The leadership now.
    pub async fn get(&self, group: &str) -> Result<Leadership, LeaderError> {
        Ok(self.stub(group)?.call(Inspect).await?)
    }

    /// Waits until the term passes `after_term` or `timeout` runs out.
    pub async fn watch(
        &self,
        group: &str,
        after_term: u64,
        timeout: Duration,
    ) -> Result<Leadership, LeaderError> {
        // The reply waits up to `timeout`: the call's deadline runs on top of that.
        self.stub(group)?
            .with_timeout(self.inner.ask_timeout.saturating_add(timeout))
            .call(Watch {
                after_term,
                timeout_ms: duration_ms(timeout),
            })
            .await
    }
}

/// Timing of an [`Elector`], as in Kubernetes' leader election.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ElectorConfig {
    /// How long a won lease lasts without renewal (default 15 s).
    pub lease_duration: Duration,
    /// A leader that cannot renew for this long stops leading, before its lease lapses
    /// (default 10 s).
    pub renew_deadline: Duration,
    /// How often to campaign, and to renew while leading (default 2 s).
    pub retry_period: Duration,
}

impl Default for ElectorConfig {
    fn default() -> Self {
        ElectorConfig {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl ElectorConfig {
    /// A configuration with these three durations; the renew deadline must be shorter than
    /// the lease and longer than the retry period.
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, InvalidInput> {
        if !(retry_period < renew_deadline && renew_deadline < lease_duration) {
            return Err(InvalidInput::new(
                "expected retry_period < renew_deadline < lease_duration",
            ));
        }
        Ok(ElectorConfig {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }
}

/// Campaigns for a group in the background and says when this candidate starts and stops
/// leading.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_leader::{Elector, ElectorConfig, LeaderClient};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let mut elector = Elector::start(LeaderClient::new(&rt)?, "cron", "node-1", ElectorConfig::default());
/// let term = elector.leading().await; // Some(term) once elected
/// assert!(term.is_some());
/// elector.stop().await;
/// # rt.shutdown().await?;
/// # Ok::<(), stead_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct Elector {
    status: watch::Receiver<Option<u64>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Elector {
    /// Starts campaigning.
    pub fn start(
        client: LeaderClient,
        group: &str,
        candidate: &str,
        config: ElectorConfig,
    ) -> Self {
        let (tx, rx) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(elect(
            client,
            group.to_owned(),
            candidate.to_owned(),
            config,
            tx,
            stop_rx,
        ));
        Elector {
            status: rx,
            stop: Some(stop_tx),
            task,
        }
    }

    /// The term this candidate leads now, if it leads.
    pub fn term(&self) -> Option<u64> {
        *self.status.borrow()
    }

    /// Every change: `Some(term)` when it starts leading, `None` when it stops.
    pub fn changes(&self) -> watch::Receiver<Option<u64>> {
        self.status.clone()
    }

    /// Waits until this candidate leads; returns the term (`None` if the elector stopped).
    pub async fn leading(&mut self) -> Option<u64> {
        self.status
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|t| *t)
    }

    /// Stops campaigning, resigning if leading.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn elect(
    client: LeaderClient,
    group: String,
    candidate: String,
    cfg: ElectorConfig,
    status: watch::Sender<Option<u64>>,
    mut stop: oneshot::Receiver<()>,
) {
    let period = chrono::Duration::from_std(cfg.retry_period).unwrap_or(chrono::Duration::MAX);
    let deadline = chrono::Duration::from_std(cfg.renew_deadline).unwrap_or(chrono::Duration::MAX);
    let mut leading: Option<u64> = None;
    let mut last_renewal = client.inner.clock.now();
    loop {
        match leading {
            None => match client
                .campaign(&group, &candidate, cfg.lease_duration)
                .await
            {
                Ok(r) if r.elected => {
                    leading = Some(r.term);
                    last_renewal = client.inner.clock.now();
                    tracing::info!(%group, %candidate, term = r.term, "started leading");
                    let _ = status.send(leading);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(%group, error = %e, "campaign failed"),
            },
            Some(term) => match client.heartbeat(&group, &candidate, term).await {
                Ok(_) => last_renewal = client.inner.clock.now(),
                Err(e) => {
                    let lost = matches!(e, LeaderError::NotLeader { .. })
                        || client.inner.clock.now() - last_renewal >= deadline;
                    if lost {
                        tracing::warn!(%group, %candidate, term, error = %e, "stopped leading");
                        leading = None;
                        let _ = status.send(None);
                    }
                }
            },
        }
        let wake = client
            .inner
            .clock
            .sleep_until(client.inner.clock.now() + period);
        tokio::select! {
            _ = wake => {}
            _ = &mut stop => break,
        }
    }
    if let Some(term) = leading {
        let _ = client.resign(&group, &candidate, term).await;
        let _ = status.send(None);
    }
}
