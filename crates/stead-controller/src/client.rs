//! The typed client, the configuration of a runtime's controllers, and the in-process data
//! plane: a [`BatchProcessor`] the controller drives on its own schedule.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use stead_core::{
    Durability, InvalidInput, LogPage, LogQuery, Namespace, NamespaceOptions, Result, Runtime, Stub,
};

use crate::error::ControllerError;
use crate::object::{
    Configure, Controller, ControllerState, DecisionEntry, Decisions, Drive, Granted, Inspect,
    Lease, Pause, Remove, Report, Reported, Reset, Start,
};
use crate::policy::Sample;
use crate::spec::ControllerSpec;

/// The worker name of leases taken by a processor attached in this process.
pub const IN_PROCESS: &str = "in-process";

/// How the controllers of a runtime are kept (the `[controllers]` table of the server's
/// configuration).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_controller::{ControllerClient, ControllerConfig};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let controllers = ControllerClient::with_config(&rt, ControllerConfig::default().decision_log(200))?;
/// # let _ = controllers;
/// # Ok::<(), stead_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ControllerConfig {
    /// How durable controller state is; `None` takes the runtime's default.
    pub durability: Option<Durability>,
    /// How many decision-log entries each controller keeps (the oldest go first).
    pub decision_log: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            durability: None,
            decision_log: 1000,
        }
    }
}

impl ControllerConfig {
    /// Sets the durability of controller state.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    /// Sets how many decision-log entries each controller keeps (at least 1).
    pub fn decision_log(mut self, entries: u32) -> Self {
        self.decision_log = entries.max(1);
        self
    }
}

/// A batch handed to a [`BatchProcessor`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Batch {
    /// The controller's name.
    pub controller: String,
    /// The lease it runs under.
    pub lease_id: String,
    /// How many items to do, at most.
    pub size: u32,
    /// When the lease lapses: outcomes reported later are not counted, and the batch
    /// counts as failed.
    pub deadline: DateTime<Utc>,
    /// Whether it is the half-open circuit's probe.
    pub probe: bool,
}

/// Work done in this process, driven by a controller: each time a batch is due, the
/// controller leases it and runs [`process`](Self::process) on a task of its own (outside
/// the object's turn, so a slow downstream never blocks the controller); the outcomes come
/// back as a report. A processor that panics, or does not return by the lease's deadline,
/// has failed its batch.
///
/// ```
/// use stead_controller::{Batch, BatchProcessor, Sample};
///
/// struct Enrich;
///
/// impl BatchProcessor for Enrich {
///     async fn process(&self, batch: Batch) -> Vec<Sample> {
///         // Fetch up to batch.size items, do each, and time it.
///         (0..batch.size).map(|_| Sample { ok: true, latency_ms: 3 }).collect()
///     }
/// }
/// ```
pub trait BatchProcessor: Send + Sync + 'static {
    /// Does up to `batch.size` items; one outcome per item done (none: nothing to do).
    fn process(&self, batch: Batch) -> impl Future<Output = Vec<Sample>> + Send;
}

type Outcomes<'a> = Pin<Box<dyn Future<Output = Vec<Sample>> + Send + 'a>>;

trait ErasedProcessor: Send + Sync {
    fn process(&self, batch: Batch) -> Outcomes<'_>;
}

impl<P: BatchProcessor> ErasedProcessor for P {
    fn process(&self, batch: Batch) -> Outcomes<'_> {
        Box::pin(BatchProcessor::process(self, batch))
    }
}

/// A processor attached to one controller, with what it needs to report.
pub(crate) struct Runner {
    processor: Arc<dyn ErasedProcessor>,
    ns: Namespace<Controller>,
    handle: tokio::runtime::Handle,
    generation: u64,
}

impl Runner {
    /// Runs a granted batch on a task of its own and reports its outcomes.
    pub(crate) fn run(self: Arc<Self>, name: String, granted: Granted) {
        let handle = self.handle.clone();
        handle.spawn(async move {
            let batch = Batch {
                controller: name.clone(),
                lease_id: granted.lease_id.clone(),
                size: granted.batch_size,
                deadline: granted.deadline,
                probe: granted.probe,
            };
            // On a task of its own, so that a panic is the batch's failure, not ours.
            let processor = self.processor.clone();
            let outcomes = self
                .handle
                .spawn(async move { processor.process(batch).await })
                .await;
            let Ok(mut results) = outcomes else {
                tracing::warn!(controller = %name, lease = %granted.lease_id, "the batch processor panicked; the lease will expire as a failed batch");
                return;
            };
            results.truncate(granted.batch_size as usize);
            let report = Report {
                lease_id: granted.lease_id,
                results,
            };
            if let Err(e) = self
                .ns
                .get_by_name(&name)
                .call::<_, Reported, ControllerError>(report)
                .await
            {
                tracing::debug!(controller = %name, error = %e, "a batch's report was refused");
            }
        });
    }
}

/// What every controller of a runtime shares: the configuration and the processors
/// attached in this process.
pub struct ControllerEnv {
    pub(crate) config: ControllerConfig,
    runners: Mutex<HashMap<String, Arc<Runner>>>,
    generation: std::sync::atomic::AtomicU64,
}

impl ControllerEnv {
    fn new(config: ControllerConfig) -> Self {
        ControllerEnv {
            config,
            runners: Mutex::default(),
            generation: Default::default(),
        }
    }

    pub(crate) fn runner(&self, name: &str) -> Option<Arc<Runner>> {
        self.runners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }
}

/// Compares the configuration (processors are attached at run time).
impl PartialEq for ControllerEnv {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl std::fmt::Debug for ControllerEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerEnv")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Adaptive batch controllers: configure them, lease and report batches (or attach a
/// processor that the controller drives), read their state and decision log.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_controller::{ControllerClient, ControllerSpec, Sample};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let controllers = ControllerClient::new(&rt)?;
/// controllers.configure("enrich", ControllerSpec::default()).await?;
/// let lease = controllers.lease("enrich", Some("worker-1")).await?;
/// assert_eq!(lease.batch_size, 10);
/// let results = vec![Sample { ok: true, latency_ms: 40 }; 10];
/// let after = controllers.report("enrich", &lease.lease_id, results).await?;
/// assert_eq!(after.setting.batch_size, 15); // all went well: ×1.5
/// # rt.shutdown().await?;
/// # Ok::<(), stead_controller::ControllerError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct ControllerClient {
    ns: Namespace<Controller>,
}

impl std::fmt::Debug for ControllerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerClient").finish()
    }
}

impl ControllerClient {
    /// The controllers of `rt`, as they were configured ([`with_config`](Self::with_config)),
    /// or with the defaults if they were not.
    pub fn new(rt: &Runtime) -> Result<Self> {
        let (ns, _) = rt.get_or_register::<Controller>(Default::default(), || {
            ControllerEnv::new(ControllerConfig::default())
        })?;
        Ok(ControllerClient { ns })
    }

    /// The controllers of `rt`, set up with `config`: an
    /// [`stead_core::Error::InvalidConfig`] if they were set up with another configuration
    /// already.
    pub fn with_config(rt: &Runtime, config: ControllerConfig) -> Result<Self> {
        let opts = config
            .durability
            .map(NamespaceOptions::durability)
            .unwrap_or_default();
        let ns = rt.configured_namespace::<Controller>(ControllerEnv::new(config), opts)?;
        Ok(ControllerClient { ns })
    }

    fn stub(&self, name: &str) -> Result<Stub<Controller>, ControllerError> {
        stead_core::validate_name("controller name", name)?;
        Ok(self.ns.get_by_name(name))
    }

    /// Sets a controller's configuration, creating it (running) if it is new; the flag says
    /// whether it was created. A change keeps the batch size (within the new bounds), the
    /// window and the breaker.
    pub async fn configure(
        &self,
        name: &str,
        spec: ControllerSpec,
    ) -> Result<(ControllerState, bool), ControllerError> {
        // Checked here too, so that a bad configuration costs no turn.
        spec.check()?;
        self.stub(name)?.call(Configure(spec)).await
    }

    /// Starts a paused controller (the next batch is due at once).
    pub async fn start(&self, name: &str) -> Result<ControllerState, ControllerError> {
        self.stub(name)?.call(Start).await
    }

    /// Pauses a controller: nothing is leased until it is started. Leases out may still
    /// report.
    pub async fn pause(&self, name: &str) -> Result<ControllerState, ControllerError> {
        self.stub(name)?.call(Pause).await
    }

    /// Returns to the initial batch and interval, closes the circuit and clears the window;
    /// totals and the decision log stay.
    pub async fn reset(&self, name: &str) -> Result<ControllerState, ControllerError> {
        self.stub(name)?.call(Reset).await
    }

    /// Deletes a controller and everything it keeps; whether it existed.
    pub async fn remove(&self, name: &str) -> Result<bool, ControllerError> {
        self.stub(name)?.call(Remove).await
    }

    /// Leases the next batch, if one may start now; a refusal says when to ask again
    /// ([`ControllerError::retry_after`]).
    pub async fn lease(
        &self,
        name: &str,
        worker: Option<&str>,
    ) -> Result<Granted, ControllerError> {
        self.stub(name)?
            .call(Lease {
                worker: worker.map(str::to_owned),
            })
            .await
    }

    /// Reports a leased batch's outcomes (one per item done); the controller decides on it.
    pub async fn report(
        &self,
        name: &str,
        lease_id: &str,
        results: Vec<Sample>,
    ) -> Result<Reported, ControllerError> {
        self.stub(name)?
            .call(Report {
                lease_id: lease_id.to_owned(),
                results,
            })
            .await
    }

    /// A controller's state.
    pub async fn state(&self, name: &str) -> Result<ControllerState, ControllerError> {
        self.stub(name)?.call(Inspect).await
    }

    /// A page of the decision log (`LogQuery::newest(50)`: the last 50, newest first).
    pub async fn decisions(
        &self,
        name: &str,
        page: LogQuery,
    ) -> Result<LogPage<DecisionEntry>, ControllerError> {
        self.stub(name)?.call(Decisions(page)).await
    }

    /// Attaches `processor` to the controller `name` in this process: from now on the
    /// controller starts each batch when it is due and runs it on a task of its own. One
    /// processor per controller per process; dropping the [`Attachment`] detaches it.
    /// Workers elsewhere may lease from the same controller at the same time, within its
    /// concurrency.
    pub async fn attach(
        &self,
        name: &str,
        processor: impl BatchProcessor,
    ) -> Result<Attachment, ControllerError> {
        let stub = self.stub(name)?;
        let env = self.ns.env().clone();
        let generation = env
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut runners = env.runners.lock().unwrap_or_else(PoisonError::into_inner);
            if runners.contains_key(name) {
                return Err(InvalidInput::new(format!(
                    "a processor is already attached to controller {name} in this process"
                ))
                .into());
            }
            runners.insert(
                name.to_owned(),
                Arc::new(Runner {
                    processor: Arc::new(processor),
                    ns: self.ns.clone(),
                    handle: tokio::runtime::Handle::current(),
                    generation,
                }),
            );
        }
        let attachment = Attachment {
            env,
            name: name.to_owned(),
            generation,
        };
        stub.call::<_, (), ControllerError>(Drive).await?;
        Ok(attachment)
    }
}

/// A processor attached to a controller; dropping it (or [`detach`](Self::detach))
/// detaches it. Batches already running finish and report.
#[derive(Debug)]
pub struct Attachment {
    env: Arc<ControllerEnv>,
    name: String,
    generation: u64,
}

impl Attachment {
    /// The controller it is attached to.
    pub fn controller(&self) -> &str {
        &self.name
    }

    /// Detaches the processor.
    pub fn detach(self) {}
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut runners = self
            .env
            .runners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if runners
            .get(&self.name)
            .is_some_and(|r| r.generation == self.generation)
        {
            runners.remove(&self.name);
        }
    }
}
