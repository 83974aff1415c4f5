//! The rate-limiter object: one per (policy, key), running the policy's algorithm (see the
//! `policy` room) on the key's state, stored and forgotten when idle.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stead_core::{
    AlarmInfo, Context, Durability, DurableObject, Handler, ListOptions, Log, Result,
};

use crate::error::RateLimitError;
use crate::policy::*;

/// How long a key's state is kept after it has become the same as a fresh key's. Forgetting
/// it at once would make a key seen every few seconds write its state, then delete it, then
/// write it again; a minute of grace turns that into one write per admission.
pub const FORGET_AFTER_IDLE_MS: u64 = 60_000;
const STATE: &str = "s";
/// The sliding window's log of admissions, trimmed by age.
const WINDOW: Log = Log::new("window/");
/// Where builds before the shared log kept it (hexadecimal numbers).
const LEGACY_WINDOW: &str = "w/";

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

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<Check>()
            .message::<Peek>()
            .message::<Reset>();
    }

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
