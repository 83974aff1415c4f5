//! The circuit breaker: consecutive failed batches open it; after a cool-down one probe
//! batch (half-open) decides between closing it and opening it again with a longer
//! cool-down. Pure: time comes in as milliseconds. It is never stuck: an open breaker
//! always has the time it lets a probe through, and a probe that never reports is a failure.

use serde::{Deserialize, Serialize};

/// The breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerConfig {
    /// Consecutive failed batches that open it (the seed's 5).
    pub failures_to_open: u32,
    /// The first cool-down, in ms.
    pub cooldown_ms: u64,
    /// The longest cool-down, in ms (each failed probe doubles it up to this).
    pub max_cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_to_open: 5,
            cooldown_ms: 60_000,
            max_cooldown_ms: 3_600_000,
        }
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Breaker {
    /// Batches run; `failures` consecutive ones have failed.
    Closed {
        /// Consecutive failed batches.
        failures: u32,
    },
    /// Nothing runs until `until_ms`.
    Open {
        /// When a probe may run.
        until_ms: u64,
        /// The cool-down that led here.
        cooldown_ms: u64,
    },
    /// One probe batch may run (or is running); its outcome decides.
    HalfOpen {
        /// Whether the probe has been handed out.
        probing: bool,
        /// The cool-down that led here.
        cooldown_ms: u64,
    },
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::Closed { failures: 0 }
    }
}

/// What a transition was, for the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// Consecutive failures opened it.
    Opened,
    /// The cool-down ended: one probe may run.
    HalfOpened,
    /// The probe succeeded.
    Closed,
    /// The probe failed: open again, with a longer cool-down.
    Reopened,
}

impl Breaker {
    /// Whether a batch may start at `now_ms`; moves an open breaker whose cool-down ended
    /// to half-open and hands out its one probe.
    pub fn admit(&mut self, now_ms: u64) -> (bool, Option<Transition>) {
        match *self {
            Breaker::Closed { .. } => (true, None),
            Breaker::Open {
                until_ms,
                cooldown_ms,
            } if now_ms >= until_ms => {
                *self = Breaker::HalfOpen {
                    probing: true,
                    cooldown_ms,
                };
                (true, Some(Transition::HalfOpened))
            }
            Breaker::Open { .. } => (false, None),
            Breaker::HalfOpen {
                probing: false,
                cooldown_ms,
            } => {
                *self = Breaker::HalfOpen {
                    probing: true,
                    cooldown_ms,
                };
                (true, None)
            }
            Breaker::HalfOpen { probing: true, .. } => (false, None),
        }
    }

    /// Records a batch's outcome at `now_ms` (`failed`: every item failed, or the batch was
    /// never reported).
    pub fn record(&mut self, cfg: &BreakerConfig, failed: bool, now_ms: u64) -> Option<Transition> {
        match *self {
            Breaker::Closed { failures } => {
                let failures = if failed { failures + 1 } else { 0 };
                if failures >= cfg.failures_to_open.max(1) {
                    *self = Breaker::Open {
                        until_ms: now_ms.saturating_add(cfg.cooldown_ms),
                        cooldown_ms: cfg.cooldown_ms,
                    };
                    Some(Transition::Opened)
                } else {
                    *self = Breaker::Closed { failures };
                    None
                }
            }
            Breaker::HalfOpen { cooldown_ms, .. } if failed => {
                let longer = cooldown_ms.saturating_mul(2).min(cfg.max_cooldown_ms);
                *self = Breaker::Open {
                    until_ms: now_ms.saturating_add(longer),
                    cooldown_ms: longer,
                };
                Some(Transition::Reopened)
            }
            Breaker::HalfOpen { .. } => {
                *self = Breaker::Closed { failures: 0 };
                Some(Transition::Closed)
            }
            // A late report of a batch started before the breaker opened changes nothing.
            Breaker::Open { .. } => None,
        }
    }

    /// The probe came back without a verdict (it had no work to do): the next batch may
    /// probe again.
    pub fn release_probe(&mut self) {
        if let Breaker::HalfOpen { cooldown_ms, .. } = *self {
            *self = Breaker::HalfOpen {
                probing: false,
                cooldown_ms,
            };
        }
    }

    /// When it next lets a batch through, if it is open.
    pub fn open_until_ms(&self) -> Option<u64> {
        match self {
            Breaker::Open { until_ms, .. } => Some(*until_ms),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CFG: BreakerConfig = BreakerConfig {
        failures_to_open: 5,
        cooldown_ms: 1000,
        max_cooldown_ms: 8000,
    };

    #[test]
    fn opens_probes_and_closes_or_reopens_longer() {
        let mut b = Breaker::default();
        for i in 0..4 {
            assert_eq!(b.record(&CFG, true, i), None);
        }
        // A success in between starts the count again.
        b.record(&CFG, false, 4);
        for i in 0..4 {
            b.record(&CFG, true, 5 + i);
        }
        assert_eq!(b.record(&CFG, true, 10), Some(Transition::Opened));
        assert_eq!(b.admit(500), (false, None));
        assert_eq!(b.open_until_ms(), Some(1010));
        // The cool-down ends: one probe, and only one.
        assert_eq!(b.admit(1010), (true, Some(Transition::HalfOpened)));
        assert_eq!(b.admit(1011), (false, None));
        // It fails: open again for twice as long.
        assert_eq!(b.record(&CFG, true, 1100), Some(Transition::Reopened));
        assert_eq!(b.open_until_ms(), Some(3100));
        assert!(b.admit(3100).0);
        assert_eq!(b.record(&CFG, false, 3200), Some(Transition::Closed));
        assert_eq!(b, Breaker::Closed { failures: 0 });
    }

    #[test]
    fn the_cool_down_stops_growing_at_its_cap() {
        let mut b = Breaker::Open {
            until_ms: 0,
            cooldown_ms: 1000,
        };
        let mut now = 0;
        for _ in 0..10 {
            assert!(b.admit(now).0);
            b.record(&CFG, true, now);
            now = b.open_until_ms().unwrap();
        }
        assert_eq!(
            b,
            Breaker::Open {
                until_ms: now,
                cooldown_ms: 8000
            }
        );
    }

    proptest! {
        /// Whatever happens, an open breaker lets a probe through once its time comes: it is
        /// never stuck.
        #[test]
        fn never_stuck(events in proptest::collection::vec((any::<bool>(), 0u64..5000), 1..200)) {
            let mut b = Breaker::default();
            let mut now = 0u64;
            for (failed, step) in events {
                now += step;
                let (admitted, _) = b.admit(now);
                if admitted {
                    b.record(&CFG, failed, now);
                }
                if let Some(until) = b.open_until_ms() {
                    prop_assert!(until <= now + CFG.max_cooldown_ms);
                    let mut probe = b;
                    prop_assert!(probe.admit(until).0, "admits at {until}");
                }
            }
        }
    }
}
