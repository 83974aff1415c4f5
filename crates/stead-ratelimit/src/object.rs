//! Policies, the four algorithms, and the rate-limiter object that runs one of them for one
//! (policy, key).
//!
//! All arithmetic is on integer nanoseconds, so decisions are exact and repeatable: the same
//! trace of requests gets the same answers on every run and machine.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stead_core::{
    AlarmInfo, Context, Durability, DurableObject, Handler, InvalidInput, ListOptions, Log, Result,
};

use crate::error::RateLimitError;

/// The largest `limit` (and `burst`) a policy may have.
pub const MAX_LIMIT: u64 = 1_000_000_000;
/// The largest `limit` of a sliding-window policy, whose state holds every admitted request
/// of the window.
pub const MAX_SLIDING_WINDOW_LIMIT: u64 = 10_000;
/// The longest `period_ms` (366 days).
pub const MAX_PERIOD_MS: u64 = 366 * 24 * 3600 * 1000;
/// The longest time a GCRA or token bucket may take to refill its burst (ten years): a bound
/// that keeps every timestamp within 64 bits.
pub const MAX_REFILL_MS: u64 = 10 * 366 * 24 * 3600 * 1000;
/// The longest policy name.
pub const MAX_POLICY_NAME_BYTES: usize = 64;

const NS_PER_MS: u64 = 1_000_000;
/// How long a key's state is kept after it has become the same as a fresh key's. Forgetting
/// it at once would make a key seen every few seconds write its state, then delete it, then
/// write it again; a minute of grace turns that into one write per admission.
pub const FORGET_AFTER_IDLE_MS: u64 = 60_000;
const STATE: &str = "s";
/// The sliding window's log of admissions, trimmed by age.
const WINDOW: Log = Log::new("window/");
/// Where builds before the shared log kept it (hexadecimal numbers).
const LEGACY_WINDOW: &str = "w/";

/// How a policy counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Generic cell rate algorithm: one timestamp of state, smooth spacing, bursts of
    /// `burst`. The default.
    #[default]
    Gcra,
    /// A bucket of `burst` tokens refilled at `limit` per period. Decides exactly as GCRA
    /// does, but keeps two numbers and shows the level directly.
    TokenBucket,
    /// A log of every admitted request: never more than `limit` in any window of `period`,
    /// wherever the window starts. State grows with the limit (at most 10,000).
    SlidingWindow,
    /// A counter per calendar window (`period` since the Unix epoch): cheapest, but up to
    /// twice the limit can pass around a window boundary.
    FixedWindow,
}

impl Algorithm {
    /// The name used in JSON and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
        }
    }
}

/// A quota: at most `limit` requests per `period_ms`, counted by `algorithm`.
///
/// `burst` (the size of a burst for GCRA, the capacity for a token bucket) defaults to
/// `limit`, so "5 per minute" admits 5 at once and then one every 12 seconds.
///
/// ```
/// use stead_ratelimit::{Algorithm, Policy};
/// let p = Policy::per_minute(5);
/// assert_eq!((p.limit, p.period_ms, p.capacity()), (5, 60_000, 5));
/// let q = Policy::per_second(100).burst(10).algorithm(Algorithm::TokenBucket);
/// q.validate().unwrap();
/// assert!(Policy::per_second(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How requests are counted.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Requests admitted per period (a sliding window's at most 10,000).
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::integer::<1, MAX_LIMIT>))]
    pub limit: u64,
    /// The period, in milliseconds (at most 366 days).
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::integer::<1, MAX_PERIOD_MS>))]
    pub period_ms: u64,
    /// The largest burst (GCRA) or the bucket's capacity (token bucket); `limit` when absent.
    /// Not for the window algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, MAX_LIMIT>))]
    pub burst: Option<u64>,
}

impl Policy {
    /// A GCRA policy of `limit` requests per `period`.
    pub fn new(limit: u64, period: std::time::Duration) -> Self {
        Policy {
            algorithm: Algorithm::Gcra,
            limit,
            period_ms: stead_core::duration_ms(period),
            burst: None,
        }
    }

    /// `limit` requests per second (GCRA).
    pub fn per_second(limit: u64) -> Self {
        Self::new(limit, std::time::Duration::from_secs(1))
    }

    /// `limit` requests per minute (GCRA).
    pub fn per_minute(limit: u64) -> Self {
        Self::new(limit, std::time::Duration::from_secs(60))
    }

    /// `limit` requests per hour (GCRA).
    pub fn per_hour(limit: u64) -> Self {
        Self::new(limit, std::time::Duration::from_secs(3600))
    }

    /// The same quota counted by another algorithm.
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sets the burst (GCRA) or capacity (token bucket).
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The most requests admitted at once: `burst` for GCRA and token buckets, else `limit`.
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::Gcra | Algorithm::TokenBucket => self.burst.unwrap_or(self.limit),
            Algorithm::SlidingWindow | Algorithm::FixedWindow => self.limit,
        }
    }

    fn period_ns(&self) -> u64 {
        self.period_ms * NS_PER_MS
    }

    /// GCRA's emission interval: the time one request's worth of quota takes to come back.
    fn interval_ns(&self) -> u64 {
        self.period_ns() / self.limit
    }

    /// Checks every field; the error says which one is wrong and why.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let bad = |detail: String| Err(InvalidInput::new(detail));
        let alg = self.algorithm.as_str();
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return bad(format!(
                "limit must be between 1 and {MAX_LIMIT}, not {}",
                self.limit
            ));
        }
        if self.period_ms == 0 || self.period_ms > MAX_PERIOD_MS {
            return bad(format!(
                "period_ms must be between 1 and {MAX_PERIOD_MS}, not {}",
                self.period_ms
            ));
        }
        match self.algorithm {
            Algorithm::Gcra | Algorithm::TokenBucket => {
                let burst = self.capacity();
                if burst == 0 || burst > MAX_LIMIT {
                    return bad(format!(
                        "burst must be between 1 and {MAX_LIMIT}, not {burst}"
                    ));
                }
                if self.interval_ns() == 0 {
                    return bad(format!(
                        "limit {} per {} ms is more than one request per nanosecond",
                        self.limit, self.period_ms
                    ));
                }
                let refill_ms =
                    u128::from(self.period_ms) * u128::from(burst) / u128::from(self.limit);
                if refill_ms > u128::from(MAX_REFILL_MS) {
                    return bad(format!(
                        "a burst of {burst} at {} per {} ms takes {refill_ms} ms to refill; the most is {MAX_REFILL_MS}",
                        self.limit, self.period_ms
                    ));
                }
            }
            Algorithm::SlidingWindow | Algorithm::FixedWindow => {
                if self.burst.is_some() {
                    return bad(format!(
                        "burst applies to gcra and token_bucket only, not to {alg}"
                    ));
                }
                if self.algorithm == Algorithm::SlidingWindow
                    && self.limit > MAX_SLIDING_WINDOW_LIMIT
                {
                    return bad(format!(
                        "a sliding_window keeps every admitted request of its window, so its limit may be at most {MAX_SLIDING_WINDOW_LIMIT}, not {}; use gcra for larger limits",
                        self.limit
                    ));
                }
            }
        }
        Ok(())
    }

    /// A name for a policy given inline (without a configured name), the same for equal
    /// policies: `gcra-100-per-60000ms-burst-10`.
    pub fn inline_name(&self) -> String {
        let mut name = format!(
            "{}-{}-per-{}ms",
            self.algorithm.as_str(),
            self.limit,
            self.period_ms
        );
        if let Some(b) = self.burst {
            name.push_str(&format!("-burst-{b}"));
        }
        name
    }

    /// Decides `cost` units at `now_ns` against `state`, updating it when admitted.
    pub(crate) fn decide(&self, state: &mut AlgoState, now_ns: u64, cost: u64) -> Decision {
        match state {
            AlgoState::Gcra { tat } => self.gcra(tat, now_ns, cost),
            AlgoState::TokenBucket { level, last } => self.token_bucket(level, last, now_ns, cost),
            AlgoState::SlidingWindow { first_seq, log } => {
                self.sliding_window(first_seq, log, now_ns, cost)
            }
            AlgoState::FixedWindow { window, used } => {
                self.fixed_window(window, used, now_ns, cost)
            }
        }
    }

    fn gcra(&self, tat: &mut u64, now: u64, cost: u64) -> Decision {
        let t = self.interval_ns();
        let tau = t * (self.capacity() - 1);
        let base = (*tat).max(now);
        let earliest = (*tat + t * (cost - 1)).saturating_sub(tau);
        let allowed = now >= earliest;
        if allowed {
            *tat = base + t * cost;
        }
        let ahead = (*tat).max(now) - now;
        let remaining = if ahead > tau {
            0
        } else {
            (tau - ahead) / t + 1
        };
        self.decision(allowed, remaining, ahead, earliest.saturating_sub(now))
    }

    fn token_bucket(&self, level: &mut u128, last: &mut u64, now: u64, cost: u64) -> Decision {
        // One token is `period_ns` units; the bucket gains `limit` units per nanosecond.
        let unit = u128::from(self.period_ns());
        let rate = u128::from(self.limit);
        let full = unit * u128::from(self.capacity());
        if now > *last {
            *level = (*level + u128::from(now - *last) * rate).min(full);
            *last = now;
        }
        let need = unit * u128::from(cost);
        let allowed = *level >= need;
        if allowed {
            *level -= need;
        }
        let until = |units: u128| u64::try_from(units.div_ceil(rate)).unwrap_or(u64::MAX);
        let retry = if allowed { 0 } else { until(need - *level) };
        let remaining = u64::try_from(*level / unit).unwrap_or(u64::MAX);
        self.decision(allowed, remaining, until(full - *level), retry)
    }

    fn sliding_window(
        &self,
        first_seq: &mut u64,
        log: &mut VecDeque<(u64, u64)>,
        now: u64,
        cost: u64,
    ) -> Decision {
        let period = self.period_ns();
        while log.front().is_some_and(|&(at, _)| at + period <= now) {
            log.pop_front();
            *first_seq += 1;
        }
        let used: u64 = log.iter().map(|&(_, n)| n).sum();
        let allowed = used + cost <= self.limit;
        let mut retry = 0;
        if allowed {
            match log.back_mut() {
                Some((at, n)) if *at >= now => *n += cost,
                _ => log.push_back((now, cost)),
            }
        } else {
            // The request fits once enough of the oldest admissions have left the window.
            let mut to_free = used + cost - self.limit;
            for &(at, n) in log.iter() {
                if n >= to_free {
                    retry = (at + period).saturating_sub(now);
                    break;
                }
                to_free -= n;
            }
        }
        let used = if allowed { used + cost } else { used };
        let reset = log
            .back()
            .map_or(0, |&(at, _)| (at + period).saturating_sub(now));
        self.decision(allowed, self.limit - used, reset, retry)
    }

    fn fixed_window(&self, window: &mut u64, used: &mut u64, now: u64, cost: u64) -> Decision {
        let period = self.period_ns();
        let current = now / period;
        if current != *window {
            *window = current;
            *used = 0;
        }
        let allowed = *used + cost <= self.limit;
        if allowed {
            *used += cost;
        }
        let reset = (current + 1) * period - now;
        self.decision(
            allowed,
            self.limit - *used,
            reset,
            if allowed { 0 } else { reset },
        )
    }

    fn decision(&self, allowed: bool, remaining: u64, reset_ns: u64, retry_ns: u64) -> Decision {
        Decision {
            allowed,
            limit: self.limit,
            remaining,
            reset_ms: reset_ns.div_ceil(NS_PER_MS),
            retry_after_ms: (!allowed).then(|| retry_ns.div_ceil(NS_PER_MS)),
        }
    }

    /// The state of a key nobody has used.
    pub(crate) fn fresh(&self, now_ns: u64) -> AlgoState {
        match self.algorithm {
            Algorithm::Gcra => AlgoState::Gcra { tat: now_ns },
            Algorithm::TokenBucket => AlgoState::TokenBucket {
                level: u128::from(self.period_ns()) * u128::from(self.capacity()),
                last: now_ns,
            },
            Algorithm::SlidingWindow => AlgoState::SlidingWindow {
                first_seq: 0,
                log: VecDeque::new(),
            },
            Algorithm::FixedWindow => AlgoState::FixedWindow {
                window: now_ns / self.period_ns(),
                used: 0,
            },
        }
    }

    fn check_cost(&self, cost: u64) -> Result<(), InvalidInput> {
        if cost == 0 {
            return Err(InvalidInput::new(
                "cost must be at least 1 (peek with GET to look without consuming)",
            ));
        }
        if cost > self.capacity() {
            return Err(InvalidInput::new(format!(
                "cost {cost} exceeds the policy's capacity of {}, so it could never be admitted",
                self.capacity()
            )));
        }
        Ok(())
    }
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema), schema(as = RateLimitDecision))]
pub struct Decision {
    /// Whether the request was admitted (and its cost consumed).
    pub allowed: bool,
    /// The policy's limit per period.
    pub limit: u64,
    /// How many more unit-cost requests would be admitted right now.
    pub remaining: u64,
    /// Milliseconds until the quota is whole again (nothing of it in use).
    pub reset_ms: u64,
    /// When refused: milliseconds until the same request would be admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The state of one algorithm for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AlgoState {
    Gcra {
        /// The theoretical arrival time of the next request.
        tat: u64,
    },
    TokenBucket {
        /// Tokens × period_ns.
        level: u128,
        last: u64,
    },
    SlidingWindow {
        /// The sequence number of the oldest admission in `log`.
        first_seq: u64,
        /// (when, how many) of every admission still in the window, oldest first. Stored
        /// one entry per key (`w/<seq>`), not with the rest of the state, so an admission
        /// writes a few bytes whatever the limit.
        #[serde(skip)]
        log: VecDeque<(u64, u64)>,
    },
    FixedWindow {
        window: u64,
        used: u64,
    },
}

impl AlgoState {
    /// The moment from which this state is the same as a fresh one (nothing of the quota in
    /// use), so it need not be stored.
    fn idle_from(&self, policy: &Policy) -> u64 {
        match self {
            AlgoState::Gcra { tat } => *tat,
            AlgoState::TokenBucket { level, last } => {
                let full = u128::from(policy.period_ns()) * u128::from(policy.capacity());
                let missing = (full - *level).div_ceil(u128::from(policy.limit));
                last.saturating_add(u64::try_from(missing).unwrap_or(u64::MAX))
            }
            AlgoState::SlidingWindow { log, .. } => {
                log.back().map_or(0, |&(at, _)| at + policy.period_ns())
            }
            AlgoState::FixedWindow { window, used } => {
                if *used == 0 {
                    0
                } else {
                    (window + 1) * policy.period_ns()
                }
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    policy: Policy,
    state: AlgoState,
}

/// One rate limiter: one policy applied to one key (a user, an IP, an API key).
///
/// Single-threaded like every durable object, so its decisions are exact under any
/// concurrency. Its state is deleted by alarm [`FORGET_AFTER_IDLE_MS`] after it has become the
/// same as a fresh key's, so storage holds only keys that are being limited or were lately.
#[derive(Debug)]
pub struct RateLimiter {
    stored: Option<Stored>,
    /// When the alarm is set for, in nanoseconds.
    alarm_at: Option<u64>,
    /// Sliding window: the log entries in storage are those from `log_kept_from` up to
    /// (not including) `log_stored_to`.
    log_kept_from: u64,
    log_stored_to: u64,
    /// State in memory is newer than in storage: in a `Memory` namespace the state is
    /// written back when the object leaves memory, not on every admission.
    unsaved: bool,
}

fn now_ns(ctx: &Context) -> u64 {
    to_ns(ctx.now())
}

fn to_ns(at: DateTime<Utc>) -> u64 {
    at.timestamp_nanos_opt()
        .map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

/// An alarm time for `ns`, rounded up to the millisecond alarms are kept at, so an alarm
/// never fires before the moment it was set for.
fn alarm_time(ns: u64) -> DateTime<Utc> {
    let ns = ns.div_ceil(NS_PER_MS).saturating_mul(NS_PER_MS);
    DateTime::from_timestamp_nanos(i64::try_from(ns).unwrap_or(i64::MAX))
}

/// When state idle from `idle_from` may be forgotten.
fn forget_at(idle_from: u64) -> u64 {
    idle_from.saturating_add(FORGET_AFTER_IDLE_MS * NS_PER_MS)
}

/// A window log stored by an earlier build, moved under the shared log's keys.
async fn legacy_window(ctx: &mut Context) -> Result<Vec<(u64, (u64, u64))>> {
    let old: Vec<(String, (u64, u64))> = ctx
        .storage()
        .list(ListOptions::prefix(LEGACY_WINDOW))
        .await?;
    let mut moved = Vec::with_capacity(old.len());
    for (k, e) in old {
        ctx.storage().delete(&k)?;
        if let Ok(seq) = u64::from_str_radix(&k[LEGACY_WINDOW.len()..], 16) {
            ctx.storage().put(&WINDOW.key(seq), &e)?;
            moved.push((seq, e));
        }
    }
    Ok(moved)
}

impl DurableObject for RateLimiter {
    const CLASS: &'static str = "ratelimit";
    type Env = crate::client::Policies;

    async fn activate(ctx: &mut Context, _env: Arc<Self::Env>) -> Result<Self> {
        let mut stored: Option<Stored> = ctx.storage().get(STATE).await?;
        let mut log_kept_from = 0;
        let mut log_stored_to = 0;
        if let Some(Stored {
            state: AlgoState::SlidingWindow { first_seq, log },
            ..
        }) = &mut stored
        {
            let mut entries: Vec<(u64, (u64, u64))> = WINDOW.all(ctx.storage()).await?;
            if entries.is_empty() {
                entries = legacy_window(ctx).await?;
            }
            if let Some(&(first, _)) = entries.first() {
                *first_seq = first;
            }
            log.extend(entries.into_iter().map(|(_, e)| e));
            log_kept_from = *first_seq;
            log_stored_to = *first_seq + log.len() as u64;
        }
        let alarm_at = ctx.storage().alarm().await?.map(to_ns);
        Ok(RateLimiter {
            stored,
            alarm_at,
            log_kept_from,
            log_stored_to,
            unsaved: false,
        })
    }

    async fn alarm(&mut self, ctx: &mut Context, _info: AlarmInfo) -> Result<()> {
        self.alarm_at = None;
        let now = now_ns(ctx);
        let forget_at = self.forget_at();
        if forget_at > now {
            ctx.storage().set_alarm(alarm_time(forget_at))?;
            self.alarm_at = Some(forget_at);
        } else {
            // Idle: the same as a key never seen. Forget it.
            self.forget(ctx);
        }
        Ok(())
    }

    async fn on_leave(&mut self, ctx: &mut Context) -> Result<()> {
        if !self.unsaved {
            return Ok(());
        }
        self.unsaved = false;
        if self.forget_at() <= now_ns(ctx) {
            // Already the same as a key never seen: nothing to keep.
            self.forget(ctx);
            return Ok(());
        }
        self.persist(ctx, true).await
    }
}

impl RateLimiter {
    /// When the state becomes the same as a fresh key's and can be forgotten (0 when there
    /// is none).
    fn forget_at(&self) -> u64 {
        self.stored
            .as_ref()
            .map_or(0, |s| forget_at(s.state.idle_from(&s.policy)))
    }

    fn forget(&mut self, ctx: &mut Context) {
        ctx.storage().delete_all();
        self.stored = None;
        self.alarm_at = None;
        self.log_kept_from = 0;
        self.log_stored_to = 0;
        self.unsaved = false;
    }

    /// The stored state when it was kept under `policy`; else (nothing stored, or a
    /// configuration that changed) a fresh one, forgetting the old.
    fn state_for(&mut self, ctx: &mut Context, policy: &Policy, now: u64) -> &mut Stored {
        if self.stored.as_ref().is_some_and(|s| s.policy != *policy) {
            self.forget(ctx);
        }
        self.stored.get_or_insert_with(|| Stored {
            policy: policy.clone(),
            state: policy.fresh(now),
        })
    }

    /// Writes the state after an admission (with the log's last entry, or its whole log
    /// when `whole_log`), and makes sure an alarm will clean it up.
    async fn persist(&mut self, ctx: &mut Context, whole_log: bool) -> Result<()> {
        let Some(stored) = &self.stored else {
            return Ok(());
        };
        if let AlgoState::SlidingWindow { first_seq, log } = &stored.state {
            for seq in self.log_kept_from..(*first_seq).min(self.log_stored_to) {
                WINDOW.forget(ctx.storage(), seq)?;
            }
            self.log_kept_from = *first_seq;
            let from = if whole_log {
                0
            } else {
                log.len().saturating_sub(1)
            };
            for (i, entry) in log.iter().enumerate().skip(from) {
                ctx.storage()
                    .put(&WINDOW.key(*first_seq + i as u64), entry)?;
            }
            self.log_stored_to = *first_seq + log.len() as u64;
        }
        ctx.storage().put(STATE, stored)?;
        // One alarm per busy spell: it re-arms itself until the key is idle again.
        if self.alarm_at.is_none() {
            let at = forget_at(stored.state.idle_from(&stored.policy));
            ctx.storage().set_alarm(alarm_time(at))?;
            self.alarm_at = Some(at);
        }
        Ok(())
    }
}

/// Checks a request of `cost` units against `policy`, consuming them when admitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// The policy.
    pub policy: Policy,
    /// Units this request consumes (1 for an ordinary request).
    pub cost: u64,
}

impl Handler<Check> for RateLimiter {
    type Reply = Result<Decision, RateLimitError>;
    async fn handle(&mut self, msg: Check, ctx: &mut Context) -> Result<Decision, RateLimitError> {
        msg.policy.validate()?;
        msg.policy.check_cost(msg.cost)?;
        let now = now_ns(ctx);
        let stored = self.state_for(ctx, &msg.policy, now);
        let decision = msg.policy.decide(&mut stored.state, now, msg.cost);
        if decision.allowed {
            if ctx.storage().durability() == Durability::Memory && self.alarm_at.is_some() {
                // Nothing survives a crash of a memory store anyway. The first admission of
                // a busy spell is written (it lists the key, and arms the alarm that forgets
                // it); later ones are written back when the object leaves memory.
                self.unsaved = true;
            } else {
                let whole_log = std::mem::take(&mut self.unsaved);
                self.persist(ctx, whole_log).await?;
            }
        }
        Ok(decision)
    }
}

/// Looks at what a unit-cost request would get, without consuming anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peek {
    /// The policy.
    pub policy: Policy,
}

impl Handler<Peek> for RateLimiter {
    type Reply = Result<Decision, RateLimitError>;
    async fn handle(&mut self, msg: Peek, ctx: &mut Context) -> Result<Decision, RateLimitError> {
        msg.policy.validate()?;
        let now = now_ns(ctx);
        let mut probe = match &self.stored {
            Some(s) if s.policy == msg.policy => s.state.clone(),
            _ => msg.policy.fresh(now),
        };
        // Measured before the probe takes its unit.
        let idle_from = probe.idle_from(&msg.policy);
        let d = msg.policy.decide(&mut probe, now, 1);
        Ok(Decision {
            // What a unit-cost request would have left, plus the unit it did not take.
            remaining: d.remaining + u64::from(d.allowed),
            reset_ms: idle_from.saturating_sub(now).div_ceil(NS_PER_MS),
            ..d
        })
    }
}

/// Forgets the key's state: its next request is treated as its first. Answers whether there
/// was anything to forget.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reset;

impl Handler<Reset> for RateLimiter {
    type Reply = Result<bool>;
    async fn handle(&mut self, _msg: Reset, ctx: &mut Context) -> Result<bool> {
        let had = self.stored.is_some();
        self.forget(ctx);
        Ok(had)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = NS_PER_MS;

    fn run(p: &Policy, trace: &[(u64, u64)]) -> Vec<bool> {
        let mut s = p.fresh(trace.first().map_or(0, |t| t.0));
        trace
            .iter()
            .map(|&(at, cost)| p.decide(&mut s, at, cost).allowed)
            .collect()
    }

    #[test]
    fn five_per_minute_admits_five_at_once_then_one_per_twelve_seconds() {
        for alg in [Algorithm::Gcra, Algorithm::TokenBucket] {
            let p = Policy::per_minute(5).algorithm(alg);
            let t0 = 1_000_000 * MS;
            let got = run(
                &p,
                &[
                    (t0, 1),
                    (t0, 1),
                    (t0, 1),
                    (t0, 1),
                    (t0, 1),
                    (t0, 1),
                    (t0 + 11_999 * MS, 1),
                    (t0 + 12_000 * MS, 1),
                    (t0 + 12_000 * MS, 1),
                ],
            );
            assert_eq!(
                got,
                [true, true, true, true, true, false, false, true, false],
                "{alg:?}"
            );
        }
    }

    #[test]
    fn decisions_report_remaining_reset_and_retry() {
        let p = Policy::per_second(10);
        let mut s = p.fresh(0);
        let d = p.decide(&mut s, 0, 1);
        assert_eq!((d.allowed, d.remaining, d.reset_ms), (true, 9, 100));
        for _ in 0..9 {
            assert!(p.decide(&mut s, 0, 1).allowed);
        }
        let d = p.decide(&mut s, 0, 1);
        assert_eq!(
            (d.allowed, d.remaining, d.reset_ms, d.retry_after_ms),
            (false, 0, 1000, Some(100))
        );
        let f = Policy::per_second(10).algorithm(Algorithm::FixedWindow);
        let mut s = f.fresh(250 * MS);
        let d = f.decide(&mut s, 250 * MS, 10);
        assert_eq!((d.allowed, d.remaining, d.reset_ms), (true, 0, 750));
        let d = f.decide(&mut s, 300 * MS, 1);
        assert_eq!(d.retry_after_ms, Some(700));
        let w = Policy::per_second(3).algorithm(Algorithm::SlidingWindow);
        let mut s = w.fresh(0);
        assert!(w.decide(&mut s, 0, 2).allowed);
        assert!(w.decide(&mut s, 400 * MS, 1).allowed);
        let d = w.decide(&mut s, 500 * MS, 2);
        // Two units must leave: the pair admitted at 0 leaves at 1000 ms.
        assert_eq!((d.allowed, d.retry_after_ms), (false, Some(500)));
        assert!(w.decide(&mut s, 1000 * MS, 2).allowed);
    }

    #[test]
    fn validation_names_the_field() {
        let msg = |p: Policy| p.validate().unwrap_err().to_string();
        assert!(msg(Policy::per_second(0)).contains("limit"));
        assert!(msg(Policy::new(1, std::time::Duration::ZERO)).contains("period_ms"));
        assert!(msg(Policy::per_second(5).burst(0)).contains("burst"));
        assert!(
            msg(Policy::per_second(20_000).algorithm(Algorithm::SlidingWindow)).contains("10000")
        );
        assert!(
            msg(Policy::per_second(5)
                .algorithm(Algorithm::FixedWindow)
                .burst(5))
            .contains("burst applies")
        );
        assert!(
            msg(Policy::new(MAX_LIMIT, std::time::Duration::from_millis(1))).contains("nanosecond")
        );
        assert!(msg(Policy::per_hour(1).burst(MAX_LIMIT)).contains("refill"));
        Policy::new(MAX_LIMIT, std::time::Duration::from_secs(1))
            .validate()
            .unwrap();
    }

    #[test]
    fn token_bucket_state_survives_json() {
        let p =
            Policy::new(3, std::time::Duration::from_millis(MAX_PERIOD_MS)).burst(MAX_LIMIT / 1000);
        let s = p.fresh(5);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<AlgoState>(&json).unwrap(), s);
    }
}
