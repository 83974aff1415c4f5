//! The governor object: a budget's configuration and its ledger (cycles, accounts,
//! reservations), alerts in a bounded event log, cycles started by schedule, reservations
//! expired by schedule. Each cycle and each reservation is stored under a key of its own,
//! so a turn writes what it changed, not the books.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stead_core::{
    Context, DurableObject, Handler, InvalidInput, ListOptions, Log, LogPage, LogQuery, Result,
    ScheduledJob, from_ms,
};

use crate::client::BudgetConfig;
use crate::error::BudgetError;
use crate::ledger::{Account, Cycle, Ledger, LedgerError, Reservation, ReservationState};
use crate::spec::{BudgetSpec, MAX_AMOUNT};

const CONFIG: &str = "config";
const META: &str = "meta";
const CYCLE: &str = "cycle/";
const RES: &str = "res/";
/// The event log.
const EVENTS: Log = Log::new("event/");
const CYCLE_JOB: &str = "cycle";
const EXPIRY_JOB: &str = "expiry";

/// The longest reservation, in ms (a day).
pub const MAX_TTL_MS: u64 = 86_400_000;
pub use stead_core::MAX_PAGE;

fn cycle_key(n: u64) -> String {
    format!("{CYCLE}{n:020}")
}

fn res_key(id: &str) -> String {
    format!("{RES}{id}")
}

/// What the object keeps beside its books.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    next_event: u64,
    /// Alerts fired in the current cycle: (processor, or `*` for the budget; threshold).
    fired: BTreeSet<(String, u32)>,
}

/// An entry of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct BudgetEvent {
    /// Its number: events are numbered from 1.
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// The cycle.
    pub cycle: u64,
    /// The processor (none for the whole budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processor: Option<String>,
    /// For an alert: the percentage crossed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// Spent at the time.
    pub spent: u64,
    /// Allocated at the time.
    pub allocated: u64,
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A cycle started.
    CycleStarted,
    /// Spending crossed an alert threshold.
    Alert,
    /// Usage reported after the fact, or a late commit, overran an allocation.
    Overrun,
    /// A reservation was committed after it had expired: its spend was recorded unheld.
    LateCommit,
}

/// A budget.
#[derive(Debug)]
pub struct Governor {
    spec: Option<BudgetSpec>,
    books: Ledger,
    meta: Meta,
    env: Arc<BudgetConfig>,
    /// When the expiry job is set for.
    expiry_ms: Option<i64>,
    /// What this turn changed: cycles and reservations to write (or delete).
    dirty_cycles: BTreeSet<u64>,
    dirty_res: BTreeSet<String>,
    /// Whether the meta changed this turn (an event was written).
    meta_dirty: bool,
}

impl DurableObject for Governor {
    const CLASS: &'static str = "budget";
    type Env = BudgetConfig;

    async fn activate(ctx: &mut Context, env: Arc<BudgetConfig>) -> Result<Self> {
        let spec: Option<BudgetSpec> = ctx.storage().get(CONFIG).await?;
        let meta: Meta = ctx.storage().get(META).await?.unwrap_or_default();
        let cycles: Vec<(String, Cycle)> = ctx.storage().list(ListOptions::prefix(CYCLE)).await?;
        let reservations: Vec<(String, Reservation)> =
            ctx.storage().list(ListOptions::prefix(RES)).await?;
        let books = Ledger::from_parts(
            cycles.into_iter().map(|(_, c)| c).collect(),
            reservations.into_iter().map(|(_, r)| r).collect(),
        );
        let expiry_ms = books.next_expiry_ms();
        Ok(Governor {
            spec,
            books,
            meta,
            env,
            expiry_ms,
            dirty_cycles: BTreeSet::new(),
            dirty_res: BTreeSet::new(),
            meta_dirty: false,
        })
    }

    async fn on_schedule(&mut self, ctx: &mut Context, job: ScheduledJob) -> Result<()> {
        let now = ctx.now().timestamp_millis();
        match job.name.as_str() {
            CYCLE_JOB => {
                if let Some(spec) = &self.spec {
                    let total = spec.total;
                    self.start_cycle(ctx, total)?;
                }
            }
            EXPIRY_JOB => {
                self.expiry_ms = None;
                self.expire(now);
            }
            _ => {}
        }
        self.save(ctx).await
    }
}

// ----- messages -----------------------------------------------------------------------------

/// Sets (or changes) the configuration; a budget without a cycle starts its first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Configure(pub BudgetSpec);

/// Closes the current cycle and starts the next with `total` (the configured total if none).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StartCycle {
    /// The cycle's total.
    pub total: Option<u64>,
}

/// Holds an amount for a processor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reserve {
    /// The caller's id for it: a repeated request with it has one effect.
    pub id: String,
    /// The processor.
    pub processor: String,
    /// The amount, in minor units.
    pub amount: u64,
    /// How long it holds unless committed or voided, in ms.
    pub ttl_ms: u64,
}

/// Spends `actual` of a reservation and frees the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commit {
    /// The reservation.
    pub id: String,
    /// What was spent (at most what it holds).
    pub actual: u64,
}

/// Frees a reservation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Void {
    /// The reservation.
    pub id: String,
}

/// Usage reported after the fact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    /// The processor.
    pub processor: String,
    /// What it spent.
    pub cost: u64,
    /// Items it did.
    pub items: u64,
    /// Errors it met.
    pub errors: u64,
}

/// Asks for the budget's state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Inspect;

/// Asks for the plan of the current cycle.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Plan;

/// Asks for a page of the closed cycles kept (numbered by cycle).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct History(pub LogQuery);

/// Asks for a page of the event log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Events(pub LogQuery);

/// Deletes the budget and everything it keeps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Remove;

// ----- views --------------------------------------------------------------------------------

/// One processor's account, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct AccountView {
    /// The processor.
    pub processor: String,
    /// What it may spend this cycle.
    pub allocated: u64,
    /// Held by pending reservations.
    pub reserved: u64,
    /// Spent.
    pub spent: u64,
    /// What a reservation may still take.
    pub available: u64,
    /// Items reported.
    pub items: u64,
    /// Errors reported.
    pub errors: u64,
    /// Whether reported usage overran it (it refuses reservations until the next cycle).
    pub overrun: bool,
}

/// A cycle, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct CycleView {
    /// Its number.
    pub number: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
    /// Its total.
    pub total: u64,
    /// Rolled over into it.
    pub rollover_in: u64,
    /// Rolled over out of it.
    pub rollover_out: u64,
    /// The sums of its accounts.
    pub allocated: u64,
    /// Held.
    pub reserved: u64,
    /// Spent.
    pub spent: u64,
    /// Per processor, in the configured order (then any no longer configured).
    pub accounts: Vec<AccountView>,
}

/// A reservation, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct ReservationView {
    /// Its id.
    pub id: String,
    /// The processor.
    pub processor: String,
    /// The amount held (or that was held).
    pub amount: u64,
    /// The cycle it holds budget in.
    pub cycle: u64,
    /// When it expires if unresolved.
    pub expires_at: DateTime<Utc>,
    /// `pending`, `committed`, `voided` or `expired`.
    pub state: String,
    /// For a committed one: what was spent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<u64>,
    /// When it was resolved (its id is remembered from then on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// Committed after it had expired: its spend was recorded unheld.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

impl From<&Reservation> for ReservationView {
    fn from(r: &Reservation) -> Self {
        let (state, actual) = match r.state {
            ReservationState::Pending => ("pending", None),
            ReservationState::Committed { actual } => ("committed", Some(actual)),
            ReservationState::Voided => ("voided", None),
            ReservationState::Expired => ("expired", None),
        };
        ReservationView {
            id: r.id.clone(),
            processor: r.processor.clone(),
            amount: r.amount,
            cycle: r.cycle,
            expires_at: from_ms(r.expires_ms),
            state: state.to_owned(),
            actual,
            resolved_at: r.resolved_ms.map(from_ms),
            late: r.late,
        }
    }
}

/// The answer to a reservation: it, and whether this request made it (false: a repeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    /// The reservation.
    pub reservation: ReservationView,
    /// Whether this request made it.
    pub created: bool,
}

/// A budget's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct BudgetState {
    /// The configuration.
    pub config: BudgetSpec,
    /// The current cycle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycle: Option<CycleView>,
    /// Reservations pending (in any cycle).
    pub pending: u64,
    /// When the next cycle starts by schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cycle_at: Option<DateTime<Utc>>,
}

/// One processor's line of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct PlanLine {
    /// The processor.
    pub processor: String,
    /// Its tier.
    pub tier: String,
    /// The tier's model.
    pub model: String,
    /// What a call costs.
    pub cost_per_call: u64,
    /// What it has available now.
    pub available: u64,
    /// The most items it can afford now: `available / cost_per_call`, at most the tier's
    /// `max_concurrency`.
    pub max_items: u64,
}

/// A phase of the plan: processors that may run together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct PlanPhase {
    /// The phase.
    pub phase: u32,
    /// Its processors, in the configured order.
    pub processors: Vec<PlanLine>,
}

// ----- handlers -----------------------------------------------------------------------------

impl Handler<Configure> for Governor {
    type Reply = Result<(BudgetState, bool), BudgetError>;
    async fn handle(&mut self, Configure(spec): Configure, ctx: &mut Context) -> Self::Reply {
        spec.check()?;
        let created = self.spec.is_none();
        let schedule_changed = self
            .spec
            .as_ref()
            .is_none_or(|old| old.cycle_ms != spec.cycle_ms || old.cron != spec.cron);
        if schedule_changed {
            ctx.schedules().cancel(CYCLE_JOB).await?;
            let set = match (&spec.cycle_ms, &spec.cron) {
                (Some(ms), _) => ctx.schedules().every(CYCLE_JOB, Duration::from_millis(*ms)),
                (None, Some(expr)) => ctx.schedules().cron(CYCLE_JOB, expr),
                (None, None) => Ok(()),
            };
            if let Err(e) = set {
                // The error reply discards the cancel above with the rest of the turn.
                return Err(match e {
                    stead_core::Error::InvalidSchedule { detail } => {
                        InvalidInput::new(format!("cron: {detail}")).into()
                    }
                    other => other.into(),
                });
            }
        }
        ctx.storage().put(CONFIG, &spec)?;
        let total = spec.total;
        self.spec = Some(spec);
        if self.books.current().is_none() {
            self.start_cycle(ctx, total)?;
        }
        self.save(ctx).await?;
        Ok((self.view(ctx).await?, created))
    }
}

impl Handler<StartCycle> for Governor {
    type Reply = Result<CycleView, BudgetError>;
    async fn handle(&mut self, msg: StartCycle, ctx: &mut Context) -> Self::Reply {
        let spec = self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let total = msg.total.unwrap_or(spec.total);
        if total > MAX_AMOUNT {
            return Err(InvalidInput::new(format!("total must be at most {MAX_AMOUNT}")).into());
        }
        self.start_cycle(ctx, total)?;
        self.save(ctx).await?;
        Ok(self.cycle_view(self.books.current().expect("started")))
    }
}

impl Handler<Reserve> for Governor {
    type Reply = Result<Reserved, BudgetError>;
    async fn handle(&mut self, msg: Reserve, ctx: &mut Context) -> Self::Reply {
        stead_core::validate_name("id", &msg.id)?;
        stead_core::validate_ms("ttl_ms", msg.ttl_ms, MAX_TTL_MS)?;
        if msg.amount == 0 || msg.amount > MAX_AMOUNT {
            return Err(
                InvalidInput::new(format!("amount must be between 1 and {MAX_AMOUNT}")).into(),
            );
        }
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let now = ctx.now().timestamp_millis();
        self.expire(now);
        let existed = self.books.reservations().contains_key(&msg.id);
        if !existed {
            // Forget what is old enough; never a young id (its retry would spend again).
            self.forget(now);
            if let Err(e) =
                self.books
                    .check_room(self.env.remember_max as usize, self.remember_ms(), now)
            {
                self.save(ctx).await?;
                return Err(e.into());
            }
        }
        let r = self.books.reserve(
            &msg.id,
            &msg.processor,
            msg.amount,
            now + msg.ttl_ms as i64,
            now,
        );
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.save(ctx).await?;
                return Err(e.into());
            }
        };
        if !existed {
            self.dirty_res.insert(r.id.clone());
            self.dirty_cycles.insert(r.cycle);
        }
        self.save(ctx).await?;
        Ok(Reserved {
            reservation: ReservationView::from(&r),
            created: !existed,
        })
    }
}

impl Handler<Commit> for Governor {
    type Reply = Result<ReservationView, BudgetError>;
    async fn handle(&mut self, msg: Commit, ctx: &mut Context) -> Self::Reply {
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let now = ctx.now().timestamp_millis();
        self.expire(now);
        let was_late = self
            .books
            .reservations()
            .get(&msg.id)
            .is_some_and(|r| r.late);
        let r = self.books.commit(&msg.id, msg.actual, now);
        if let Ok(r) = &r
            && r.late
            && !was_late
        {
            self.late_commit(ctx, r)?;
        }
        self.resolved(ctx, r).await
    }
}

impl Handler<Void> for Governor {
    type Reply = Result<ReservationView, BudgetError>;
    async fn handle(&mut self, msg: Void, ctx: &mut Context) -> Self::Reply {
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let now = ctx.now().timestamp_millis();
        self.expire(now);
        let r = self.books.void(&msg.id, now);
        self.resolved(ctx, r).await
    }
}

impl Handler<Usage> for Governor {
    type Reply = Result<AccountView, BudgetError>;
    async fn handle(&mut self, msg: Usage, ctx: &mut Context) -> Self::Reply {
        if msg.cost > MAX_AMOUNT {
            return Err(InvalidInput::new(format!("cost must be at most {MAX_AMOUNT}")).into());
        }
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let was = self
            .books
            .current()
            .and_then(|c| c.accounts.get(&msg.processor))
            .is_some_and(|a| a.overrun);
        let overrun = self
            .books
            .usage(&msg.processor, msg.cost, msg.items, msg.errors)?;
        let cycle = self.books.current().expect("usage needs a cycle");
        let number = cycle.number;
        let acc = cycle.accounts[&msg.processor];
        self.dirty_cycles.insert(number);
        if overrun && !was {
            self.event(
                ctx,
                EventKind::Overrun,
                Some(&msg.processor),
                None,
                acc.spent,
                acc.allocated,
            )?;
        }
        self.alerts(ctx, &msg.processor)?;
        self.save(ctx).await?;
        Ok(account_view(&msg.processor, &acc))
    }
}

impl Handler<Inspect> for Governor {
    type Reply = Result<BudgetState, BudgetError>;
    async fn handle(&mut self, _: Inspect, ctx: &mut Context) -> Self::Reply {
        self.view(ctx).await
    }
}

impl Handler<Plan> for Governor {
    type Reply = Result<Vec<PlanPhase>, BudgetError>;
    async fn handle(&mut self, _: Plan, _ctx: &mut Context) -> Self::Reply {
        let spec = self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        let cycle = self.books.current().ok_or(LedgerError::NoCycle)?;
        let mut phases: BTreeMap<u32, Vec<PlanLine>> = BTreeMap::new();
        for p in spec.processors.iter().filter(|p| p.enabled) {
            let (Some(acc), Some(tier)) = (cycle.accounts.get(&p.id), spec.tiers.get(&p.tier))
            else {
                continue;
            };
            let available = if acc.overrun { 0 } else { acc.available() };
            phases.entry(p.phase).or_default().push(PlanLine {
                processor: p.id.clone(),
                tier: p.tier.clone(),
                model: tier.model.clone(),
                cost_per_call: tier.cost_per_call,
                available,
                max_items: (available / tier.cost_per_call).min(tier.max_concurrency),
            });
        }
        Ok(phases
            .into_iter()
            .map(|(phase, processors)| PlanPhase { phase, processors })
            .collect())
    }
}

impl Handler<History> for Governor {
    type Reply = Result<LogPage<CycleView>, BudgetError>;
    async fn handle(&mut self, msg: History, _ctx: &mut Context) -> Self::Reply {
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        msg.0.validate()?;
        let closed = self.books.cycles.iter().filter(|c| c.closed_ms.is_some());
        Ok(LogPage::from_numbered(closed, |c| c.number, &msg.0).map(|c| self.cycle_view(c)))
    }
}

impl Handler<Events> for Governor {
    type Reply = Result<LogPage<BudgetEvent>, BudgetError>;
    async fn handle(&mut self, msg: Events, ctx: &mut Context) -> Self::Reply {
        self.spec.as_ref().ok_or(BudgetError::NotFound)?;
        msg.0.validate()?;
        Ok(EVENTS.page(ctx.storage(), &msg.0).await?)
    }
}

impl Handler<Remove> for Governor {
    type Reply = Result<bool, BudgetError>;
    async fn handle(&mut self, _: Remove, ctx: &mut Context) -> Self::Reply {
        let existed = self.spec.take().is_some();
        ctx.storage().delete_all();
        self.books = Ledger::default();
        self.meta = Meta::default();
        self.expiry_ms = None;
        self.dirty_cycles.clear();
        self.dirty_res.clear();
        Ok(existed)
    }
}

fn account_view(processor: &str, a: &Account) -> AccountView {
    AccountView {
        processor: processor.to_owned(),
        allocated: a.allocated,
        reserved: a.reserved,
        spent: a.spent,
        available: if a.overrun { 0 } else { a.available() },
        items: a.items,
        errors: a.errors,
        overrun: a.overrun,
    }
}

// ----- the governor's steps -----------------------------------------------------------------

impl Governor {
    fn start_cycle(&mut self, ctx: &mut Context, total: u64) -> Result<()> {
        let Some(spec) = &self.spec else {
            return Ok(());
        };
        let (weights, rollover, keep) = (spec.weights(), spec.rollover, spec.history as usize);
        let now = ctx.now().timestamp_millis();
        let before: Vec<u64> = self.books.cycles.iter().map(|c| c.number).collect();
        if let Some(c) = self.books.current() {
            self.dirty_cycles.insert(c.number);
        }
        // `keep` closed cycles, and the current one.
        let cycle = self
            .books
            .start_cycle(total, &weights, rollover, keep + 1, now);
        let (number, allocated) = (cycle.number, cycle.sums().0);
        self.dirty_cycles.insert(number);
        // Cycles dropped from the history are deleted; those kept are unchanged.
        let kept: BTreeSet<u64> = self.books.cycles.iter().map(|c| c.number).collect();
        self.dirty_cycles
            .extend(before.into_iter().filter(|n| !kept.contains(n)));
        self.meta.fired.clear();
        self.event(ctx, EventKind::CycleStarted, None, None, 0, allocated)
    }

    /// A late commit: the money was spent, unheld. It is on the books (spent), in the event
    /// log, and flags an overrun if it took the processor past its allocation.
    fn late_commit(&mut self, ctx: &mut Context, r: &Reservation) -> Result<()> {
        let Some(acc) = self
            .books
            .cycles
            .iter()
            .find(|c| c.number == r.cycle)
            .and_then(|c| c.accounts.get(&r.processor))
            .copied()
        else {
            return Ok(());
        };
        metrics::counter!("stead_budget_late_commits_total").increment(1);
        tracing::warn!(budget = ?ctx.name(), reservation = %r.id, processor = %r.processor, "a reservation was committed after it expired; its spend is recorded");
        self.event(
            ctx,
            EventKind::LateCommit,
            Some(&r.processor),
            None,
            acc.spent,
            acc.allocated,
        )?;
        if acc.overrun {
            self.event(
                ctx,
                EventKind::Overrun,
                Some(&r.processor),
                None,
                acc.spent,
                acc.allocated,
            )?;
        }
        Ok(())
    }

    fn remember_ms(&self) -> i64 {
        i64::try_from(self.env.remember_ms).unwrap_or(i64::MAX)
    }

    /// Forgets the resolved reservations whose `remember_ms` since resolution passed.
    fn forget(&mut self, now: i64) {
        let before = now.saturating_sub(self.remember_ms());
        for id in self.books.forget_resolved(before) {
            self.dirty_res.insert(id);
        }
    }

    /// Expires due reservations.
    fn expire(&mut self, now: i64) {
        for id in self.books.expire(now) {
            if let Some(r) = self.books.reservations().get(&id) {
                self.dirty_cycles.insert(r.cycle);
            }
            self.dirty_res.insert(id);
        }
    }

    async fn resolved(
        &mut self,
        ctx: &mut Context,
        r: Result<Reservation, LedgerError>,
    ) -> Result<ReservationView, BudgetError> {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.save(ctx).await?;
                return Err(e.into());
            }
        };
        self.dirty_res.insert(r.id.clone());
        self.dirty_cycles.insert(r.cycle);
        if matches!(r.state, ReservationState::Committed { .. })
            && self.books.current().is_some_and(|c| c.number == r.cycle)
        {
            self.alerts(ctx, &r.processor)?;
        }
        self.save(ctx).await?;
        Ok(ReservationView::from(&r))
    }

    /// Fires the alerts whose thresholds the processor's or the budget's spending crossed.
    fn alerts(&mut self, ctx: &mut Context, processor: &str) -> Result<()> {
        let Some(spec) = &self.spec else {
            return Ok(());
        };
        let Some(cycle) = self.books.current() else {
            return Ok(());
        };
        let number = cycle.number;
        let (allocated, _, spent) = cycle.sums();
        let acc = cycle.accounts.get(processor).copied().unwrap_or_default();
        let mut due = Vec::new();
        for &t in &spec.alerts {
            for (scope, spent, allocated) in [
                (processor, acc.spent, acc.allocated),
                ("*", spent, allocated),
            ] {
                let crossed = u128::from(spent) * 100 >= u128::from(allocated) * u128::from(t);
                if allocated > 0 && crossed && !self.meta.fired.contains(&(scope.to_owned(), t)) {
                    due.push((scope.to_owned(), t, spent, allocated));
                }
            }
        }
        for (scope, t, spent, allocated) in due {
            self.meta.fired.insert((scope.clone(), t));
            let who = (scope != "*").then_some(scope.as_str());
            metrics::counter!("stead_budget_alerts_total", "threshold" => t.to_string())
                .increment(1);
            tracing::info!(budget = ?ctx.name(), cycle = number, processor = who, threshold = t, spent, allocated, "budget alert");
            self.event(ctx, EventKind::Alert, who, Some(t), spent, allocated)?;
        }
        Ok(())
    }

    fn event(
        &mut self,
        ctx: &mut Context,
        kind: EventKind,
        processor: Option<&str>,
        threshold: Option<u32>,
        spent: u64,
        allocated: u64,
    ) -> Result<()> {
        self.meta.next_event += 1;
        self.meta_dirty = true;
        let seq = self.meta.next_event;
        let e = BudgetEvent {
            seq,
            at: ctx.now(),
            kind,
            cycle: self.books.current().map_or(0, |c| c.number),
            processor: processor.map(str::to_owned),
            threshold,
            spent,
            allocated,
        };
        EVENTS.append(ctx.storage(), seq, &e, u64::from(self.env.events.max(1)))
    }

    /// Writes what the turn changed, forgets old resolved reservations, and sets the
    /// expiry job for the next pending expiry.
    async fn save(&mut self, ctx: &mut Context) -> Result<()> {
        // Cheap: it looks at the oldest resolved reservation and stops at the first young one.
        self.forget(ctx.now().timestamp_millis());
        for n in std::mem::take(&mut self.dirty_cycles) {
            match self.books.cycles.iter().find(|c| c.number == n) {
                Some(c) => ctx.storage().put(&cycle_key(n), c)?,
                None => {
                    ctx.storage().delete(&cycle_key(n))?;
                }
            }
        }
        for id in std::mem::take(&mut self.dirty_res) {
            match self.books.reservations().get(&id) {
                Some(r) => ctx.storage().put(&res_key(&id), r)?,
                None => {
                    ctx.storage().delete(&res_key(&id))?;
                }
            }
        }
        if std::mem::take(&mut self.meta_dirty) {
            ctx.storage().put(META, &self.meta)?;
        }
        let next = self.books.next_expiry_ms();
        if next != self.expiry_ms {
            match next {
                Some(ms) => ctx.schedules().once(EXPIRY_JOB, from_ms(ms))?,
                None => {
                    ctx.schedules().cancel(EXPIRY_JOB).await?;
                }
            }
            self.expiry_ms = next;
        }
        Ok(())
    }

    fn cycle_view(&self, c: &Cycle) -> CycleView {
        let (allocated, reserved, spent) = c.sums();
        let order: Vec<&str> = self
            .spec
            .iter()
            .flat_map(|s| s.processors.iter().map(|p| p.id.as_str()))
            .collect();
        let mut accounts: Vec<AccountView> = order
            .iter()
            .filter_map(|id| c.accounts.get(*id).map(|a| account_view(id, a)))
            .collect();
        accounts.extend(
            c.accounts
                .iter()
                .filter(|(id, _)| !order.contains(&id.as_str()))
                .map(|(id, a)| account_view(id, a)),
        );
        CycleView {
            number: c.number,
            started_at: from_ms(c.started_ms),
            closed_at: c.closed_ms.map(from_ms),
            total: c.total,
            rollover_in: c.rollover_in,
            rollover_out: c.rollover_out,
            allocated,
            reserved,
            spent,
            accounts,
        }
    }

    async fn view(&mut self, ctx: &mut Context) -> Result<BudgetState, BudgetError> {
        let spec = self.spec.clone().ok_or(BudgetError::NotFound)?;
        let next_cycle_at = ctx
            .schedules()
            .list()
            .await?
            .into_iter()
            .find(|j| j.name == CYCLE_JOB)
            .map(|j| j.next);
        Ok(BudgetState {
            config: spec,
            cycle: self.books.current().map(|c| self.cycle_view(c)),
            pending: self.books.pending_count() as u64,
            next_cycle_at,
        })
    }
}
