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

mod handlers;
mod messages;
mod steps;
mod views;

use handlers::*;
pub use messages::*;
pub use views::*;

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

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<Configure>()
            .message::<StartCycle>()
            .message::<Reserve>()
            .message::<Commit>()
            .message::<Void>()
            .message::<Usage>()
            .message::<Inspect>()
            .message::<Plan>()
            .message::<History>()
            .message::<Events>()
            .message::<Remove>();
    }

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
