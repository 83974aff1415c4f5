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

// ----- messages -----------------------------------------------------------------------------

/// Sets (or changes) the configuration; creates the controller, running, if it is new.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Configure(pub ControllerSpec);

/// Starts a paused controller.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Start;

/// Pauses a controller: nothing is leased until it is started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Pause;

/// Returns to the initial batch and interval, closes the circuit and clears the window
/// (totals and the decision log stay).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Reset;

/// Deletes the controller and everything it keeps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Remove;

/// Asks for a batch to work on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lease {
    /// Who asks (shown among the leases out).
    pub worker: Option<String>,
}

/// A granted lease: do `batch_size` items and report before `deadline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Granted {
    /// The lease to report under.
    pub lease_id: String,
    /// How many items to do (at most).
    pub batch_size: u32,
    /// When the lease lapses: a batch not reported by then counts as failed.
    pub deadline: DateTime<Utc>,
    /// Whether this is the half-open circuit's probe (its outcome closes or reopens it).
    pub probe: bool,
}

/// Reports a leased batch's outcomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The lease.
    pub lease_id: String,
    /// One outcome per item done (at most the batch size; none if there was nothing to do).
    pub results: Vec<Sample>,
}

/// What a report led to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Reported {
    /// The setting after the decision.
    #[serde(flatten)]
    pub setting: Setting,
    /// The policy's reason (none for an empty report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The breaker's transition, if it moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Transition>,
}

/// Asks for the controller's state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Inspect;

/// Asks for a page of the decision log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Decisions(pub LogQuery);

/// Starts what batches are due for a processor attached in this process (sent by the
/// client when one is attached).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Drive;

/// A lease out, as [`ControllerState`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct LeaseOut {
    /// Its id.
    pub lease_id: String,
    /// Its batch size.
    pub batch_size: u32,
    /// When it was granted.
    pub granted_at: DateTime<Utc>,
    /// When it lapses.
    pub deadline: DateTime<Utc>,
    /// Whether it is the circuit's probe.
    pub probe: bool,
    /// Who holds it, if they said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// The rolling window's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct WindowStats {
    /// Outcomes held.
    pub samples: u32,
    /// Outcomes kept at most.
    pub capacity: u32,
    /// The share that succeeded (1 when empty).
    pub success_rate: f64,
    /// Their mean latency, in ms.
    pub mean_latency_ms: f64,
}

/// The circuit breaker, as shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct BreakerView {
    /// Consecutive failed batches (while closed).
    pub consecutive_failures: u32,
    /// When an open circuit lets a probe through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_until: Option<DateTime<Utc>>,
    /// The cool-down that opened it, in ms (while open or half-open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_ms: Option<u64>,
}

/// A controller's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct ControllerState {
    /// The status.
    pub status: Status,
    /// The policy.
    pub policy: String,
    /// Items per batch now.
    pub batch_size: u32,
    /// Time between batch starts now, in ms.
    pub interval_ms: u64,
    /// When the next batch may start (none while paused or open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch_at: Option<DateTime<Utc>>,
    /// The leases out.
    pub leases: Vec<LeaseOut>,
    /// The window.
    pub window: WindowStats,
    /// The breaker.
    pub breaker: BreakerView,
    /// Counts since creation.
    pub totals: Totals,
    /// The configuration, every default filled in.
    pub config: ControllerSpec,
    /// Decision-log entries written so far.
    pub decisions: u64,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

// ----- handlers -----------------------------------------------------------------------------

impl Handler<Configure> for Controller {
    type Reply = Result<(ControllerState, bool), ControllerError>;
    async fn handle(&mut self, Configure(body): Configure, ctx: &mut Context) -> Self::Reply {
        let spec = body.check()?;
        let now = to_ms(ctx.now());
        let created = self.state.is_none();
        let before = self.state.as_ref().map(State::setting);
        match &mut self.state {
            None => {
                self.state = Some(State {
                    epoch: now,
                    paused: false,
                    shape: Shape {
                        batch_size: spec.initial_batch,
                        interval_ms: spec.bounds.base_interval_ms,
                    },
                    backing_off: false,
                    breaker: Breaker::default(),
                    window: Window::new(spec.window as usize),
                    window_dirty: true,
                    gradient: GradientState::default(),
                    leases: Vec::new(),
                    next_lease: 1,
                    last_start_ms: None,
                    totals: Totals::default(),
                    next_log: 1,
                    updated_ms: now,
                    spec,
                });
            }
            Some(s) => {
                if s.spec.policy.name() != spec.policy.name() {
                    s.gradient = GradientState::default();
                }
                let b = &spec.bounds;
                s.shape.batch_size = s.shape.batch_size.clamp(b.min_batch, b.max_batch);
                s.shape.interval_ms = if s.backing_off {
                    s.shape
                        .interval_ms
                        .clamp(b.base_interval_ms, b.max_interval_ms)
                } else {
                    b.base_interval_ms
                };
                s.window.resize(spec.window as usize);
                s.window_dirty = true;
                s.spec = spec;
            }
        }
        let s = self.state.as_mut().expect("set above");
        let after = s.setting();
        s.log(
            ctx,
            &self.env,
            Entry::new(Cause::Configured, before.unwrap_or(after), after),
        )
        .await?;
        self.drive(ctx).await;
        self.save(ctx)?;
        Ok((self.view(ctx)?, created))
    }
}

impl Handler<Start> for Controller {
    type Reply = Result<ControllerState, ControllerError>;
    async fn handle(&mut self, _: Start, ctx: &mut Context) -> Self::Reply {
        let s = existing(&mut self.state)?;
        let before = s.setting();
        if s.paused {
            s.paused = false;
            s.last_start_ms = None;
            let after = s.setting();
            s.log(ctx, &self.env, Entry::new(Cause::Started, before, after))
                .await?;
        }
        self.drive(ctx).await;
        self.save(ctx)?;
        self.view(ctx)
    }
}

impl Handler<Pause> for Controller {
    type Reply = Result<ControllerState, ControllerError>;
    async fn handle(&mut self, _: Pause, ctx: &mut Context) -> Self::Reply {
        let s = existing(&mut self.state)?;
        let before = s.setting();
        if !s.paused {
            s.paused = true;
            let after = s.setting();
            s.log(ctx, &self.env, Entry::new(Cause::Paused, before, after))
                .await?;
        }
        self.save(ctx)?;
        self.view(ctx)
    }
}

impl Handler<Reset> for Controller {
    type Reply = Result<ControllerState, ControllerError>;
    async fn handle(&mut self, _: Reset, ctx: &mut Context) -> Self::Reply {
        let s = existing(&mut self.state)?;
        let before = s.setting();
        s.shape = Shape {
            batch_size: s.spec.initial_batch,
            interval_ms: s.spec.bounds.base_interval_ms,
        };
        s.backing_off = false;
        s.breaker = Breaker::default();
        s.window.clear();
        s.window_dirty = true;
        s.gradient = GradientState::default();
        s.last_start_ms = None;
        // Leases out stay valid: their reports are decided on as usual.
        for l in &mut s.leases {
            l.probe = false;
        }
        let after = s.setting();
        s.log(ctx, &self.env, Entry::new(Cause::Reset, before, after))
            .await?;
        self.drive(ctx).await;
        self.save(ctx)?;
        self.view(ctx)
    }
}

impl Handler<Remove> for Controller {
    type Reply = Result<bool, ControllerError>;
    async fn handle(&mut self, _: Remove, ctx: &mut Context) -> Self::Reply {
        let existed = self.state.take().is_some();
        ctx.storage().delete_all();
        self.alarm_ms = None;
        Ok(existed)
    }
}

impl Handler<Lease> for Controller {
    type Reply = Result<Granted, ControllerError>;
    async fn handle(&mut self, msg: Lease, ctx: &mut Context) -> Self::Reply {
        if let Some(w) = &msg.worker {
            stead_core::validate_name("worker", w)?;
        }
        existing(&mut self.state)?;
        let expired = self.expire(ctx).await?;
        let granted = self.grant(ctx, msg.worker).await;
        // A refusal writes nothing (workers that poll cost no commit), unless leases
        // expired on the way.
        if granted.is_ok() || expired {
            self.save(ctx)?;
        }
        granted
    }
}

impl Handler<Report> for Controller {
    type Reply = Result<Reported, ControllerError>;
    async fn handle(&mut self, msg: Report, ctx: &mut Context) -> Self::Reply {
        if let Some(r) = msg.results.iter().find(|r| r.latency_ms > MAX_LATENCY_MS) {
            return Err(InvalidInput::new(format!(
                "latency_ms must be at most {MAX_LATENCY_MS}, not {}",
                r.latency_ms
            ))
            .into());
        }
        existing(&mut self.state)?;
        // A lease that lapsed before its report arrived has been decided on as failed.
        let expired = self.expire(ctx).await?;
        let reply = self.report(ctx, msg).await;
        // A refused report changes nothing (but expiries on the way are kept).
        if reply.is_ok() {
            self.drive(ctx).await;
        }
        if reply.is_ok() || expired {
            self.save(ctx)?;
        }
        reply
    }
}

impl Handler<Inspect> for Controller {
    type Reply = Result<ControllerState, ControllerError>;
    async fn handle(&mut self, _: Inspect, ctx: &mut Context) -> Self::Reply {
        existing(&mut self.state)?;
        self.view(ctx)
    }
}

impl Handler<Decisions> for Controller {
    type Reply = Result<LogPage<DecisionEntry>, ControllerError>;
    async fn handle(&mut self, msg: Decisions, ctx: &mut Context) -> Self::Reply {
        existing(&mut self.state)?;
        msg.0.validate()?;
        Ok(LOG.page(ctx.storage(), &msg.0).await?)
    }
}

impl Handler<Drive> for Controller {
    type Reply = Result<(), ControllerError>;
    async fn handle(&mut self, _: Drive, ctx: &mut Context) -> Self::Reply {
        if self.state.is_none() {
            return Ok(());
        }
        self.expire(ctx).await?;
        self.drive(ctx).await;
        Ok(self.save(ctx)?)
    }
}

// ----- the controller's steps ---------------------------------------------------------------

/// A decision-log entry in the making.
struct Entry {
    cause: Cause,
    reason: Option<Reason>,
    breaker: Option<Transition>,
    before: Setting,
    after: Setting,
    success_rate: Option<f64>,
    latency_ms: Option<f64>,
    batch: Option<BatchSummary>,
}

impl Entry {
    fn new(cause: Cause, before: Setting, after: Setting) -> Self {
        Entry {
            cause,
            reason: None,
            breaker: None,
            before,
            after,
            success_rate: None,
            latency_ms: None,
            batch: None,
        }
    }
}

impl State {
    fn status(&self) -> Status {
        if self.paused {
            return Status::Paused;
        }
        match self.breaker {
            Breaker::Open { .. } => Status::Open,
            Breaker::HalfOpen { .. } => Status::HalfOpen,
            Breaker::Closed { .. } if self.backing_off => Status::Backoff,
            Breaker::Closed { .. } => Status::Running,
        }
    }

    fn setting(&self) -> Setting {
        Setting {
            status: self.status(),
            batch_size: self.shape.batch_size,
            interval_ms: self.shape.interval_ms,
        }
    }

    fn lease_id(&self, l: &LeaseRec) -> String {
        format!("{:x}-{}", self.epoch, l.seq)
    }

    /// The number of a lease id of this controller (none for another's, or a malformed one).
    fn lease_seq(&self, id: &str) -> Option<u64> {
        let (epoch, seq) = id.split_once('-')?;
        (i64::from_str_radix(epoch, 16).ok()? == self.epoch)
            .then(|| seq.parse().ok())
            .flatten()
    }

    /// When the next batch may start, given the interval (and the circuit's cool-down).
    fn next_batch_ms(&self) -> i64 {
        let due = self.last_start_ms.map_or(i64::MIN, |t| {
            t.saturating_add(i64::try_from(self.shape.interval_ms).unwrap_or(i64::MAX))
        });
        match self.breaker.open_until_ms() {
            Some(until) => due.max(i64::try_from(until).unwrap_or(i64::MAX)),
            None => due,
        }
    }

    /// Writes an entry to the log (operator actions always; otherwise only when something
    /// changed), dropping the oldest beyond the log's bound.
    async fn log(&mut self, ctx: &mut Context, env: &ControllerEnv, e: Entry) -> Result<()> {
        let operator = matches!(
            e.cause,
            Cause::Configured | Cause::Started | Cause::Paused | Cause::Reset
        );
        if !operator && e.before == e.after && e.breaker.is_none() {
            return Ok(());
        }
        let seq = self.next_log;
        self.next_log += 1;
        let now = ctx.now();
        LOG.append(
            ctx.storage(),
            seq,
            &DecisionEntry {
                seq,
                at: now,
                cause: e.cause,
                reason: e.reason,
                breaker: e.breaker,
                before: e.before,
                after: e.after,
                success_rate: e.success_rate,
                latency_ms: e.latency_ms,
                batch: e.batch,
            },
            env.config.decision_log.max(1) as u64,
        )?;
        Ok(())
    }

    /// Decides on a batch: the window, the policy, the breaker, the totals and the log.
    async fn decide(
        &mut self,
        ctx: &mut Context,
        env: &ControllerEnv,
        lease: &LeaseRec,
        results: &[Sample],
        cause: Cause,
    ) -> Result<Reported> {
        let now = to_ms(ctx.now());
        let before = self.setting();
        self.window.extend(results);
        self.window_dirty = true;
        let d = self.spec.policy.decide(
            &self.spec.bounds,
            Observation {
                shape: self.shape,
                backing_off: self.backing_off,
                window: &self.window,
                batch: results,
            },
            &mut self.gradient,
        );
        self.shape = d.shape;
        self.backing_off = d.backing_off;
        let failed = results.iter().all(|r| !r.ok);
        // While half-open only the probe decides; a late report of a batch leased before
        // the circuit opened does not.
        let transition = match self.breaker {
            Breaker::HalfOpen { .. } if !lease.probe => None,
            _ => self
                .breaker
                .record(&self.spec.breaker, failed, now.max(0) as u64),
        };
        let succeeded = results.iter().filter(|r| r.ok).count() as u32;
        let failures = results.len() as u32 - succeeded;
        self.totals.batches += 1;
        self.totals.succeeded += u64::from(succeeded);
        self.totals.failed += u64::from(failures);
        let after = self.setting();
        let entry = Entry {
            cause,
            reason: Some(d.reason),
            breaker: transition,
            before,
            after,
            success_rate: Some(d.success_rate),
            latency_ms: Some(d.latency_ms),
            batch: Some(BatchSummary {
                lease_id: self.lease_id(lease),
                leased: lease.batch_size,
                succeeded,
                failed: failures,
            }),
        };
        self.log(ctx, env, entry).await?;
        Ok(Reported {
            setting: after,
            reason: Some(d.reason),
            breaker: transition,
        })
    }
}

fn existing(state: &mut Option<State>) -> Result<&mut State, ControllerError> {
    state.as_mut().ok_or(ControllerError::NotFound)
}

impl Controller {
    /// Decides on every lease past its deadline as a failed batch; whether there was one.
    async fn expire(&mut self, ctx: &mut Context) -> Result<bool> {
        let now = to_ms(ctx.now());
        let Some(s) = self.state.as_mut() else {
            return Ok(false);
        };
        let mut any = false;
        while let Some(i) = s.leases.iter().position(|l| l.deadline_ms <= now) {
            let lease = s.leases.remove(i);
            s.totals.expired += 1;
            let took = u64::try_from(lease.deadline_ms - lease.granted_ms).unwrap_or(0);
            let results = vec![
                Sample {
                    ok: false,
                    latency_ms: took,
                };
                lease.batch_size as usize
            ];
            s.decide(ctx, &self.env, &lease, &results, Cause::LeaseExpired)
                .await?;
            any = true;
        }
        Ok(any)
    }

    /// Decides on a reported batch; a refusal changes nothing.
    async fn report(
        &mut self,
        ctx: &mut Context,
        msg: Report,
    ) -> Result<Reported, ControllerError> {
        let s = existing(&mut self.state)?;
        let seq = s.lease_seq(&msg.lease_id);
        let Some(i) = s.leases.iter().position(|l| Some(l.seq) == seq) else {
            return Err(ControllerError::UnknownLease {
                lease_id: msg.lease_id,
            });
        };
        let leased = s.leases[i].batch_size;
        if msg.results.len() > leased as usize {
            return Err(InvalidInput::new(format!(
                "the report has {} results; the lease was for at most {leased}",
                msg.results.len()
            ))
            .into());
        }
        let lease = s.leases.remove(i);
        if msg.results.is_empty() {
            s.totals.empty += 1;
            if lease.probe {
                s.breaker.release_probe();
            }
            return Ok(Reported {
                setting: s.setting(),
                reason: None,
                breaker: None,
            });
        }
        Ok(s.decide(ctx, &self.env, &lease, &msg.results, Cause::Batch)
            .await?)
    }

    /// Grants a lease if one may start now.
    async fn grant(
        &mut self,
        ctx: &mut Context,
        worker: Option<String>,
    ) -> Result<Granted, ControllerError> {
        let now = to_ms(ctx.now());
        let s = existing(&mut self.state)?;
        if s.paused {
            return Err(ControllerError::Paused);
        }
        let wait = |until: i64| std::time::Duration::from_millis((until - now).max(1) as u64);
        match s.breaker {
            Breaker::Open { until_ms, .. } if (until_ms as i64) > now => {
                return Err(ControllerError::CircuitOpen {
                    retry_after: wait(until_ms as i64),
                });
            }
            Breaker::HalfOpen { probing: true, .. } => {
                let probe_deadline = s
                    .leases
                    .iter()
                    .filter(|l| l.probe)
                    .map(|l| l.deadline_ms)
                    .min()
                    .unwrap_or(now + 1);
                return Err(ControllerError::CircuitOpen {
                    retry_after: wait(probe_deadline),
                });
            }
            _ => {}
        }
        let due = s.next_batch_ms();
        if due > now {
            return Err(ControllerError::NotDue {
                retry_after: wait(due),
            });
        }
        if s.leases.len() >= s.spec.concurrency as usize {
            let earliest = s.leases.iter().map(|l| l.deadline_ms).min().unwrap_or(now);
            // Leases usually come back well before their deadline: ask again within a second.
            return Err(ControllerError::Busy {
                retry_after: wait(earliest.min(now + 1000)),
            });
        }
        let before = s.setting();
        let (admitted, transition) = s.breaker.admit(now.max(0) as u64);
        if !admitted {
            // Not reached: the checks above refuse whatever the breaker would.
            return Err(ControllerError::CircuitOpen {
                retry_after: wait(now + 1),
            });
        }
        if transition.is_some() {
            let after = s.setting();
            let mut e = Entry::new(Cause::CoolDown, before, after);
            e.breaker = transition;
            s.log(ctx, &self.env, e).await?;
        }
        let probe = matches!(s.breaker, Breaker::HalfOpen { .. });
        let batch_size = if probe {
            s.spec.bounds.min_batch
        } else {
            s.shape.batch_size
        };
        let lease = LeaseRec {
            seq: s.next_lease,
            batch_size,
            granted_ms: now,
            deadline_ms: now.saturating_add(s.spec.lease_ms as i64),
            probe,
            worker,
        };
        s.next_lease += 1;
        s.last_start_ms = Some(now);
        s.totals.leases += 1;
        let granted = Granted {
            lease_id: s.lease_id(&lease),
            batch_size,
            deadline: from_ms(lease.deadline_ms),
            probe,
        };
        s.leases.push(lease);
        Ok(granted)
    }

    /// With a processor attached in this process: starts every batch that may start now,
    /// each on a task of its own once this turn is durable.
    async fn drive(&mut self, ctx: &mut Context) {
        let Some(name) = ctx.name().map(str::to_owned) else {
            return;
        };
        let Some(runner) = self.env.runner(&name) else {
            return;
        };
        while let Ok(granted) = self
            .grant(ctx, Some(crate::client::IN_PROCESS.to_owned()))
            .await
        {
            let (runner, name) = (runner.clone(), name.clone());
            ctx.after_commit(move || runner.run(name, granted));
        }
    }

    /// Stores the state and sets the alarm for the next deadline (or due batch, when
    /// driven in this process).
    fn save(&mut self, ctx: &mut Context) -> Result<()> {
        let Some(s) = &mut self.state else {
            return Ok(());
        };
        s.updated_ms = to_ms(ctx.now());
        ctx.storage().put(STATE, s)?;
        if s.window_dirty {
            ctx.storage().put(WINDOW, &s.window)?;
            s.window_dirty = false;
        }
        let mut wake = s.leases.iter().map(|l| l.deadline_ms).min();
        let driven = ctx.name().is_some_and(|n| self.env.runner(n).is_some());
        if driven && !s.paused && s.leases.len() < s.spec.concurrency as usize {
            let next = s.next_batch_ms().max(to_ms(ctx.now()));
            wake = Some(wake.map_or(next, |w| w.min(next)));
        }
        if wake != self.alarm_ms {
            ctx.storage().replace_alarm(wake.map(from_ms))?;
            self.alarm_ms = wake;
        }
        Ok(())
    }

    fn view(&mut self, ctx: &mut Context) -> Result<ControllerState, ControllerError> {
        let now = to_ms(ctx.now());
        let s = existing(&mut self.state)?;
        let status = s.status();
        let next_batch_at = match status {
            Status::Paused => None,
            _ => Some(from_ms(s.next_batch_ms().max(now))),
        };
        let breaker = match s.breaker {
            Breaker::Closed { failures } => BreakerView {
                consecutive_failures: failures,
                open_until: None,
                cooldown_ms: None,
            },
            Breaker::Open {
                until_ms,
                cooldown_ms,
            } => BreakerView {
                consecutive_failures: 0,
                open_until: Some(from_ms(until_ms as i64)),
                cooldown_ms: Some(cooldown_ms),
            },
            Breaker::HalfOpen { cooldown_ms, .. } => BreakerView {
                consecutive_failures: 0,
                open_until: None,
                cooldown_ms: Some(cooldown_ms),
            },
        };
        Ok(ControllerState {
            status,
            policy: s.spec.policy.name().to_owned(),
            batch_size: s.shape.batch_size,
            interval_ms: s.shape.interval_ms,
            next_batch_at,
            leases: s
                .leases
                .iter()
                .map(|l| LeaseOut {
                    lease_id: s.lease_id(l),
                    batch_size: l.batch_size,
                    granted_at: from_ms(l.granted_ms),
                    deadline: from_ms(l.deadline_ms),
                    probe: l.probe,
                    worker: l.worker.clone(),
                })
                .collect(),
            window: WindowStats {
                samples: s.window.len() as u32,
                capacity: s.window.capacity() as u32,
                success_rate: s.window.success_rate(),
                mean_latency_ms: s.window.mean_latency_ms(),
            },
            breaker,
            totals: s.totals,
            config: s.spec.to_spec(),
            decisions: s.next_log - 1,
            updated_at: from_ms(s.updated_ms),
        })
    }
}
