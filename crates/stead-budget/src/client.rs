//! The typed client and the configuration of a runtime's budgets.

use serde::Deserialize;
use stead_core::{
    Durability, LogPage, LogQuery, Namespace, NamespaceOptions, Result, Runtime, Stub,
};

use crate::error::BudgetError;
use crate::object::{
    AccountView, BudgetEvent, BudgetState, Commit, Configure, CycleView, Events, Governor, History,
    Inspect, Plan, PlanPhase, Remove, ReservationView, Reserve, Reserved, StartCycle, Usage, Void,
};
use crate::spec::BudgetSpec;

/// How the budgets of a runtime are kept (the `[budgets]` table of the server's
/// configuration).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_budget::{BudgetClient, BudgetConfig};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let budgets = BudgetClient::with_config(&rt, BudgetConfig::default())?;
/// # let _ = budgets;
/// # Ok::<(), stead_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct BudgetConfig {
    /// How durable budget state is; `None` takes the runtime's default.
    pub durability: Option<Durability>,
    /// How many events each budget keeps (the oldest go first).
    pub events: u32,
    /// How long a resolved reservation is remembered after its resolution (commit, void or
    /// expiry), so that a repeated request with its id has no second effect, in ms.
    pub remember_ms: u64,
    /// The most resolved reservations a budget remembers. None is forgotten before
    /// `remember_ms` after its resolution: at the bound, new reservations are refused (503
    /// `remembering`, with when to retry) rather than a young id forgotten.
    pub remember_max: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            durability: None,
            events: 1000,
            remember_ms: 3_600_000,
            remember_max: 100_000,
        }
    }
}

/// Budget governors: configure them, start cycles, reserve, commit, void, report usage, read
/// the plan, the history and the events.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_budget::{BudgetClient, BudgetSpec};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let budgets = BudgetClient::new(&rt)?;
/// let spec: BudgetSpec = serde_json::from_value(serde_json::json!({
///     "total": 1000,
///     "processors": [{"id": "kw", "weight": 1, "tier": "std"}],
///     "tiers": {"std": {"model": "small", "cost_per_call": 5, "max_concurrency": 10}}
/// })).unwrap();
/// budgets.configure("daily", spec).await?;
/// let r = budgets.reserve("daily", "job-1", "kw", 300, 60_000).await?;
/// budgets.commit("daily", &r.reservation.id, 120).await?;
/// let state = budgets.state("daily").await?;
/// assert_eq!(state.cycle.unwrap().accounts[0].available, 880);
/// # rt.shutdown().await?;
/// # Ok::<(), stead_budget::BudgetError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct BudgetClient {
    ns: Namespace<Governor>,
}

impl std::fmt::Debug for BudgetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetClient").finish()
    }
}

impl BudgetClient {
    /// The budgets of `rt`, as they were configured ([`with_config`](Self::with_config)), or
    /// with the defaults if they were not.
    pub fn new(rt: &Runtime) -> Result<Self> {
        let (ns, _) = rt.get_or_register::<Governor>(Default::default(), BudgetConfig::default)?;
        Ok(BudgetClient { ns })
    }

    /// The budgets of `rt`, set up with `config`: an [`stead_core::Error::InvalidConfig`] if
    /// they were set up with another configuration already.
    pub fn with_config(rt: &Runtime, config: BudgetConfig) -> Result<Self> {
        let opts = config
            .durability
            .map(NamespaceOptions::durability)
            .unwrap_or_default();
        let ns = rt.configured_namespace::<Governor>(config, opts)?;
        Ok(BudgetClient { ns })
    }

    fn stub(&self, name: &str) -> Result<Stub<Governor>, BudgetError> {
        stead_core::validate_name("budget name", name)?;
        Ok(self.ns.get_by_name(name))
    }

    /// Sets a budget's configuration, creating it (and its first cycle) if it is new; the
    /// flag says whether it was created. A change applies from the next cycle.
    pub async fn configure(
        &self,
        name: &str,
        spec: BudgetSpec,
    ) -> Result<(BudgetState, bool), BudgetError> {
        spec.check()?;
        self.stub(name)?.call(Configure(spec)).await
    }

    /// Closes the current cycle and starts the next, with `total` or the configured total.
    pub async fn start_cycle(
        &self,
        name: &str,
        total: Option<u64>,
    ) -> Result<CycleView, BudgetError> {
        self.stub(name)?.call(StartCycle { total }).await
    }

    /// Holds `amount` for `processor` until it is committed or voided, or `ttl_ms` passes.
    /// The same `id` again returns the first outcome (`created` false).
    pub async fn reserve(
        &self,
        name: &str,
        id: &str,
        processor: &str,
        amount: u64,
        ttl_ms: u64,
    ) -> Result<Reserved, BudgetError> {
        self.stub(name)?
            .call(Reserve {
                id: id.to_owned(),
                processor: processor.to_owned(),
                amount,
                ttl_ms,
            })
            .await
    }

    /// Spends `actual` (at most the amount held) and frees the rest.
    pub async fn commit(
        &self,
        name: &str,
        id: &str,
        actual: u64,
    ) -> Result<ReservationView, BudgetError> {
        self.stub(name)?
            .call(Commit {
                id: id.to_owned(),
                actual,
            })
            .await
    }

    /// Frees a reservation.
    pub async fn void(&self, name: &str, id: &str) -> Result<ReservationView, BudgetError> {
        self.stub(name)?.call(Void { id: id.to_owned() }).await
    }

    /// Counts usage reported after the fact as spent; the account after it.
    pub async fn usage(
        &self,
        name: &str,
        processor: &str,
        cost: u64,
        items: u64,
        errors: u64,
    ) -> Result<AccountView, BudgetError> {
        self.stub(name)?
            .call(Usage {
                processor: processor.to_owned(),
                cost,
                items,
                errors,
            })
            .await
    }

    /// A budget's configuration and current cycle.
    pub async fn state(&self, name: &str) -> Result<BudgetState, BudgetError> {
        self.stub(name)?.call(Inspect).await
    }

    /// The current cycle's plan, phase by phase.
    pub async fn plan(&self, name: &str) -> Result<Vec<PlanPhase>, BudgetError> {
        self.stub(name)?.call(Plan).await
    }

    /// A page of the closed cycles kept, numbered by cycle (`LogQuery::newest(10)`: the last
    /// ten, newest first).
    pub async fn history(
        &self,
        name: &str,
        page: LogQuery,
    ) -> Result<LogPage<CycleView>, BudgetError> {
        self.stub(name)?.call(History(page)).await
    }

    /// A page of the event log (cycles started, alerts, overruns).
    pub async fn events(
        &self,
        name: &str,
        page: LogQuery,
    ) -> Result<LogPage<BudgetEvent>, BudgetError> {
        self.stub(name)?.call(Events(page)).await
    }

    /// Deletes a budget and everything it keeps; whether it existed.
    pub async fn remove(&self, name: &str) -> Result<bool, BudgetError> {
        self.stub(name)?.call(Remove).await
    }
}
