//! Policies and the four algorithms, pure: a policy decides on a request from the key's
//! state and the time, with no runtime (the object runs one per key; tests run them alone).
//!
//! All arithmetic is on integer nanoseconds, so decisions are exact and repeatable: the same
//! trace of requests gets the same answers on every run and machine.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use stead_core::InvalidInput;

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

pub(crate) const NS_PER_MS: u64 = 1_000_000;

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

    pub(super) fn period_ns(&self) -> u64 {
        self.period_ms * NS_PER_MS
    }

    /// GCRA's emission interval: the time one request's worth of quota takes to come back.
    pub(super) fn interval_ns(&self) -> u64 {
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

    pub(super) fn gcra(&self, tat: &mut u64, now: u64, cost: u64) -> Decision {
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

    pub(super) fn token_bucket(
        &self,
        level: &mut u128,
        last: &mut u64,
        now: u64,
        cost: u64,
    ) -> Decision {
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

    pub(super) fn sliding_window(
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

    pub(super) fn fixed_window(
        &self,
        window: &mut u64,
        used: &mut u64,
        now: u64,
        cost: u64,
    ) -> Decision {
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

    pub(super) fn decision(
        &self,
        allowed: bool,
        remaining: u64,
        reset_ns: u64,
        retry_ns: u64,
    ) -> Decision {
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

    pub(super) fn check_cost(&self, cost: u64) -> Result<(), InvalidInput> {
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
    pub(super) fn idle_from(&self, policy: &Policy) -> u64 {
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
