//! The controller object: its configuration, status, window, breaker, the leases out,
//! totals and the decision log. A lease not reported by its deadline expires by alarm and
//! counts as a failed batch; with a processor attached in this process, the alarm also
//! starts each batch when it is due.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stead_core::{
    AlarmInfo, Context, DurableObject, Handler, InvalidInput, Log, LogPage, LogQuery, Result,
    from_ms, to_ms,
};

use crate::breaker::{Breaker, Transition};
use crate::client::ControllerEnv;
use crate::error::ControllerError;
use crate::policy::{GradientState, Observation, Reason, Sample, Shape, Window};
use crate::spec::{ControllerSpec, MAX_INTERVAL_MS, Spec};

mod handlers;
mod messages;
mod steps;

pub use messages::*;
use steps::*;

const STATE: &str = "state";
/// The window, kept apart from the state: a lease changes the state, not the window.
const WINDOW: &str = "window";
/// The decision log.
const LOG: Log = Log::new("log/");

/// The longest latency an outcome may report, in ms (one day).
pub const MAX_LATENCY_MS: u64 = MAX_INTERVAL_MS;
/// The longest worker name, in characters.
pub const MAX_WORKER_CHARS: usize = stead_core::MAX_NAME_CHARS;

/// Where a controller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Batches run at the policy's size and interval.
    Running,
    /// Nothing is leased until it is started.
    Paused,
    /// Batches run at the smallest size and a longer interval, until success recovers.
    Backoff,
    /// The circuit is open: nothing runs until the cool-down ends.
    Open,
    /// The cool-down ended: one probe batch decides between closing and opening again.
    HalfOpen,
}

/// What a decision-log entry was caused by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A batch was reported.
    Batch,
    /// A lease passed its deadline unreported: a failed batch.
    LeaseExpired,
    /// The cool-down of the open circuit ended.
    CoolDown,
    /// The configuration changed (or was first set).
    Configured,
    /// Started by an operator.
    Started,
    /// Paused by an operator.
    Paused,
    /// Reset by an operator.
    Reset,
}

/// A controller's batch size, interval and status at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Setting {
    /// The status.
    pub status: Status,
    /// Items per batch.
    pub batch_size: u32,
    /// Time between batch starts, in ms.
    pub interval_ms: u64,
}

/// A reported batch, as the decision log shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct BatchSummary {
    /// The lease it ran under.
    pub lease_id: String,
    /// The size leased.
    pub leased: u32,
    /// Items that succeeded.
    pub succeeded: u32,
    /// Items that failed (every leased item when the lease expired).
    pub failed: u32,
}

/// One entry of the decision log: a change of batch size, interval or status (or an
/// operator's action), why, and the numbers it was based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct DecisionEntry {
    /// Its number: entries are numbered from 1, in order.
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// What caused it.
    pub cause: Cause,
    /// The policy's reason, for a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The breaker's transition, if it moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Transition>,
    /// Before.
    pub before: Setting,
    /// After.
    pub after: Setting,
    /// The window's success rate the decision saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// The batch's mean latency, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// The batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSummary>,
}

/// Counts since the controller was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Totals {
    /// Leases granted.
    pub leases: u64,
    /// Batches decided on (reported with outcomes, or expired).
    pub batches: u64,
    /// Items reported successful.
    pub succeeded: u64,
    /// Items reported failed (expired leases count every leased item).
    pub failed: u64,
    /// Leases that expired unreported.
    pub expired: u64,
    /// Leases reported with no outcomes (the worker found nothing to do).
    pub empty: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRec {
    seq: u64,
    batch_size: u32,
    granted_ms: i64,
    deadline_ms: i64,
    probe: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    worker: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    spec: Spec,
    /// Distinguishes this controller's lease ids from those of an earlier one of the same
    /// name (deleted and created again).
    epoch: i64,
    paused: bool,
    shape: Shape,
    backing_off: bool,
    breaker: Breaker,
    /// Stored under its own key ([`WINDOW`]).
    #[serde(skip, default = "empty_window")]
    window: Window,
    /// Whether the window changed since it was stored.
    #[serde(skip)]
    window_dirty: bool,
    gradient: GradientState,
    leases: Vec<LeaseRec>,
    next_lease: u64,
    /// When the last batch started (none since a start or reset: the next is due at once).
    last_start_ms: Option<i64>,
    totals: Totals,
    /// The number the next decision-log entry gets.
    next_log: u64,
    updated_ms: i64,
}

/// A controller.
#[derive(Debug)]
pub struct Controller {
    state: Option<State>,
    env: Arc<ControllerEnv>,
    alarm_ms: Option<i64>,
}

fn empty_window() -> Window {
    Window::new(1)
}

impl DurableObject for Controller {
    const CLASS: &'static str = "controller";
    type Env = ControllerEnv;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<Configure>()
            .message::<Decisions>()
            .message::<Drive>()
            .message::<Inspect>()
            .message::<Lease>()
            .message::<Pause>()
            .message::<Remove>()
            .message::<Report>()
            .message::<Reset>()
            .message::<Start>();
    }

    async fn activate(ctx: &mut Context, env: Arc<ControllerEnv>) -> Result<Self> {
        let mut state: Option<State> = ctx.storage().get(STATE).await?;
        if let Some(s) = &mut state {
            s.window = ctx
                .storage()
                .get(WINDOW)
                .await?
                .unwrap_or_else(|| Window::new(s.spec.window as usize));
        }
        Ok(Controller {
            state,
            env,
            alarm_ms: ctx.storage().alarm().await?.map(to_ms),
        })
    }

    async fn alarm(&mut self, ctx: &mut Context, _info: AlarmInfo) -> Result<()> {
        self.alarm_ms = None;
        if self.state.is_none() {
            return Ok(());
        }
        self.expire(ctx).await?;
        self.drive(ctx).await;
        self.save(ctx)
    }
}
