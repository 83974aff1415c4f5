//! The policies: pure functions from what the controller runs at and what its last batches
//! did to what it runs at next, with the reason. No runtime, no clock, no I/O: the object
//! calls them at the end of each batch and logs the decision.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// One item's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Whether the item succeeded.
    pub ok: bool,
    /// How long it took, in ms (a report takes at most a day).
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::integer::<0, 86_400_000>))]
    pub latency_ms: u64,
}

/// The rolling window of the last `capacity` outcomes. Stored packed: one number per
/// outcome (its latency, doubled, plus one if it succeeded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "PackedWindow", from = "PackedWindow")]
pub struct Window {
    capacity: usize,
    samples: VecDeque<Sample>,
}

#[derive(Serialize, Deserialize)]
struct PackedWindow {
    capacity: usize,
    samples: Vec<u64>,
}

impl From<Window> for PackedWindow {
    fn from(w: Window) -> Self {
        PackedWindow {
            capacity: w.capacity,
            samples: w
                .samples
                .iter()
                .map(|s| s.latency_ms.saturating_mul(2) | u64::from(s.ok))
                .collect(),
        }
    }
}

impl From<PackedWindow> for Window {
    fn from(p: PackedWindow) -> Self {
        let mut w = Window::new(p.capacity);
        let samples: Vec<Sample> = p
            .samples
            .iter()
            .map(|&v| Sample {
                ok: v & 1 == 1,
                latency_ms: v >> 1,
            })
            .collect();
        w.extend(&samples);
        w
    }
}

impl Window {
    /// An empty window of `capacity` outcomes (at least 1).
    pub fn new(capacity: usize) -> Self {
        Window {
            capacity: capacity.max(1),
            samples: VecDeque::new(),
        }
    }

    /// Adds a batch's outcomes, dropping the oldest beyond the capacity.
    pub fn extend(&mut self, batch: &[Sample]) {
        self.samples.extend(batch.iter().copied());
        while self.samples.len() > self.capacity {
            self.samples.pop_front();
        }
    }

    /// The share of outcomes that succeeded (1.0 for an empty window).
    pub fn success_rate(&self) -> f64 {
        if self.samples.is_empty() {
            return 1.0;
        }
        self.samples.iter().filter(|s| s.ok).count() as f64 / self.samples.len() as f64
    }

    /// The mean latency, in ms (0 for an empty window).
    pub fn mean_latency_ms(&self) -> f64 {
        mean_latency(self.samples.iter())
    }

    /// How many outcomes it keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes how many outcomes it keeps, dropping the oldest beyond the new capacity.
    pub fn resize(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.samples.len() > self.capacity {
            self.samples.pop_front();
        }
    }

    /// Forgets every outcome.
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// How many outcomes it holds.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

fn mean_latency<'a>(samples: impl Iterator<Item = &'a Sample>) -> f64 {
    let (n, sum) = samples.fold((0u64, 0u64), |(n, sum), s| (n + 1, sum + s.latency_ms));
    if n == 0 { 0.0 } else { sum as f64 / n as f64 }
}

/// The interval a backoff starts from when the controller runs more often than this (or
/// back to back), in ms.
pub const MIN_BACKOFF_MS: u64 = 1000;

/// What a controller runs at: the batch size and the time between batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Items per batch.
    pub batch_size: u32,
    /// Time between batches, in ms.
    pub interval_ms: u64,
}

/// The bounds every decision stays within.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    /// The smallest batch.
    pub min_batch: u32,
    /// The largest batch.
    pub max_batch: u32,
    /// The interval when all is well (a recovery returns to it).
    pub base_interval_ms: u64,
    /// The longest interval a backoff reaches.
    pub max_interval_ms: u64,
}

impl Bounds {
    /// The seed's bounds: batches of 5 to 50, every minute, backing off to five minutes.
    pub const SEED: Bounds = Bounds {
        min_batch: 5,
        max_batch: 50,
        base_interval_ms: 60_000,
        max_interval_ms: 300_000,
    };

    fn clamp_batch(&self, batch: f64) -> u32 {
        let b = batch.clamp(f64::from(self.min_batch), f64::from(self.max_batch));
        b as u32
    }
}

/// Why a decision changed (or kept) the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Healthy: the batch grows.
    Increase,
    /// Good enough: nothing changes.
    Hold,
    /// Struggling: the batch shrinks.
    Decrease,
    /// Near failure: the smallest batch, and a longer interval.
    Backoff,
    /// Healthy again after a backoff: the interval returns to its base.
    Recover,
    /// Latency rose: the batch shrinks (latency-based policies).
    LatencyHigh,
}

/// A policy's decision: the next shape, why, and the numbers it was based on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What to run at next.
    pub shape: Shape,
    /// Why.
    pub reason: Reason,
    /// The window's success rate the decision saw.
    pub success_rate: f64,
    /// The latency the decision saw (the batch's mean, in ms).
    pub latency_ms: f64,
    /// Whether the controller is backing off after this decision.
    pub backing_off: bool,
}

/// The seed's table, exactly: above 95% success the batch grows ×1.5 (rounded up), from
/// 80% to 95% it holds, from 50% to 80% it halves (rounded down), below 50% it drops to
/// the smallest and the interval grows ×1.5 (from at least [`MIN_BACKOFF_MS`], up to the
/// bound); a backoff ends (interval back to its base)
/// once success is above 80%.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds;

/// Additive increase, multiplicative decrease: a batch that went well (success at least
/// `min_success`, latency within `latency_bound_ms` if set) adds `increase`; one that did not
/// multiplies by `decrease`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Aimd {
    /// Added after a good batch.
    pub increase: u32,
    /// The factor after a bad one (between 0 and 1).
    pub decrease: f64,
    /// The success rate (of the batch) below which it was bad.
    pub min_success: f64,
    /// The mean latency above which it was bad, if any.
    pub latency_bound_ms: Option<u64>,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd {
            increase: 1,
            decrease: 0.5,
            min_success: 0.95,
            latency_bound_ms: None,
        }
    }
}

/// Latency-based, after Gradient2: the ratio of the long-term latency to the batch's
/// (with a tolerance) scales the batch, plus a little headroom (the square root of the
/// batch) so that it keeps probing; the change is smoothed. A batch with failures (success
/// below `min_success`) is loss: the batch halves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gradient {
    /// How much slower than the long-term latency a batch may be before the batch shrinks
    /// (1.5: half as slow again).
    pub tolerance: f64,
    /// How many batches the long-term latency averages over.
    pub long_window: u32,
    /// How much of each new estimate is taken (0 to 1).
    pub smoothing: f64,
    /// The success rate (of the batch) below which it counts as overloaded.
    pub min_success: f64,
}

impl Default for Gradient {
    fn default() -> Self {
        Gradient {
            tolerance: 1.5,
            long_window: 20,
            smoothing: 0.5,
            min_success: 0.95,
        }
    }
}

/// What the gradient policy remembers between batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GradientState {
    /// The long-term latency, in ms (an exponential average; 0 before the first batch).
    pub long_latency_ms: f64,
    /// The batch size before rounding.
    pub estimate: f64,
}

/// A controller's policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Policy {
    /// [`Thresholds`].
    Thresholds(Thresholds),
    /// [`Aimd`].
    Aimd(Aimd),
    /// [`Gradient`].
    Gradient(Gradient),
}

/// What a policy sees at the end of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// What the batch ran at.
    pub shape: Shape,
    /// Whether the controller is backing off.
    pub backing_off: bool,
    /// The rolling window, this batch included.
    pub window: &'a Window,
    /// This batch's outcomes.
    pub batch: &'a [Sample],
}

fn batch_success(batch: &[Sample]) -> f64 {
    if batch.is_empty() {
        return 1.0;
    }
    batch.iter().filter(|s| s.ok).count() as f64 / batch.len() as f64
}

impl Policy {
    /// The policy's name, as configured (`thresholds`, `aimd`, `gradient`).
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Thresholds(_) => "thresholds",
            Policy::Aimd(_) => "aimd",
            Policy::Gradient(_) => "gradient",
        }
    }

    /// The decision after a batch. `state` is the policy's memory between batches (used by
    /// [`Gradient`] only).
    pub fn decide(
        &self,
        bounds: &Bounds,
        obs: Observation<'_>,
        state: &mut GradientState,
    ) -> Decision {
        match self {
            Policy::Thresholds(_) => thresholds(bounds, obs),
            Policy::Aimd(p) => aimd(p, bounds, obs),
            Policy::Gradient(p) => gradient(p, bounds, obs, state),
        }
    }
}

fn thresholds(bounds: &Bounds, obs: Observation<'_>) -> Decision {
    let rate = obs.window.success_rate();
    let latency = mean_latency(obs.batch.iter());
    let Shape {
        mut batch_size,
        mut interval_ms,
    } = obs.shape;
    let mut backing_off = obs.backing_off;
    let mut recovered = false;
    if backing_off && rate > 0.8 {
        backing_off = false;
        interval_ms = bounds.base_interval_ms;
        recovered = true;
    }
    let reason = if rate > 0.95 {
        batch_size = bounds.clamp_batch((f64::from(batch_size) * 1.5).ceil());
        Reason::Increase
    } else if rate >= 0.8 {
        Reason::Hold
    } else if rate >= 0.5 {
        batch_size = bounds.clamp_batch((f64::from(batch_size) * 0.5).floor());
        Reason::Decrease
    } else {
        batch_size = bounds.min_batch;
        // ×1.5, from at least a second (a controller that runs back to back still backs
        // off), up to the cap.
        interval_ms =
            ((interval_ms.max(MIN_BACKOFF_MS) as f64 * 1.5) as u64).min(bounds.max_interval_ms);
        backing_off = true;
        Reason::Backoff
    };
    Decision {
        shape: Shape {
            batch_size,
            interval_ms,
        },
        reason: if recovered && reason == Reason::Hold {
            Reason::Recover
        } else {
            reason
        },
        success_rate: rate,
        latency_ms: latency,
        backing_off,
    }
}

fn aimd(p: &Aimd, bounds: &Bounds, obs: Observation<'_>) -> Decision {
    let success = batch_success(obs.batch);
    let latency = mean_latency(obs.batch.iter());
    let slow = p
        .latency_bound_ms
        .is_some_and(|bound| latency > bound as f64);
    let size = f64::from(obs.shape.batch_size);
    let (batch, reason) = if success < p.min_success {
        (size * p.decrease, Reason::Decrease)
    } else if slow {
        (size * p.decrease, Reason::LatencyHigh)
    } else {
        (size + f64::from(p.increase), Reason::Increase)
    };
    Decision {
        shape: Shape {
            batch_size: bounds.clamp_batch(batch.floor()),
            interval_ms: obs.shape.interval_ms,
        },
        reason,
        success_rate: obs.window.success_rate(),
        latency_ms: latency,
        backing_off: false,
    }
}

fn gradient(
    p: &Gradient,
    bounds: &Bounds,
    obs: Observation<'_>,
    state: &mut GradientState,
) -> Decision {
    let success = batch_success(obs.batch);
    let short = mean_latency(obs.batch.iter()).max(1.0);
    if state.long_latency_ms <= 0.0 {
        state.long_latency_ms = short;
    }
    if state.estimate <= 0.0 {
        state.estimate = f64::from(obs.shape.batch_size);
    }
    let estimate = state.estimate;
    let (next, reason) = if success < p.min_success {
        // Failures are loss, the strongest sign of overload: halve, and keep the failing
        // batch's latency out of the long-term average.
        (estimate * 0.5, Reason::Decrease)
    } else {
        let gradient = (p.tolerance * state.long_latency_ms / short).clamp(0.5, 1.0);
        let next = estimate * gradient + estimate.sqrt();
        // The long-term average follows the batches slowly; when latency has fallen far
        // below it (the downstream recovered), it drifts down faster, as in Gradient2.
        let alpha = 1.0 / f64::from(p.long_window.max(1));
        state.long_latency_ms = state.long_latency_ms * (1.0 - alpha) + short * alpha;
        if state.long_latency_ms / short > 2.0 {
            state.long_latency_ms *= 0.95;
        }
        let smoothed = estimate * (1.0 - p.smoothing) + next * p.smoothing;
        let reason = if gradient < 1.0 {
            Reason::LatencyHigh
        } else {
            Reason::Increase
        };
        (smoothed, reason)
    };
    state.estimate = next.clamp(f64::from(bounds.min_batch), f64::from(bounds.max_batch));
    let batch_size = bounds.clamp_batch(state.estimate.floor());
    let reason = if reason == Reason::Increase && batch_size <= obs.shape.batch_size {
        Reason::Hold
    } else {
        reason
    };
    Decision {
        shape: Shape {
            batch_size,
            interval_ms: obs.shape.interval_ms,
        },
        reason,
        success_rate: obs.window.success_rate(),
        latency_ms: short,
        backing_off: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `policy`'s decision after `b`, run at `batch_size` every second, with an empty window.
    fn decide(
        policy: Policy,
        batch_size: u32,
        b: &[Sample],
        state: &mut GradientState,
    ) -> Decision {
        policy.decide(
            &Bounds::SEED,
            Observation {
                shape: Shape {
                    batch_size,
                    interval_ms: 1000,
                },
                backing_off: false,
                window: &Window::new(10),
                batch: b,
            },
            state,
        )
    }

    fn batch(n: u32, ok: u32, latency_ms: u64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                ok: i < ok,
                latency_ms,
            })
            .collect()
    }

    /// The seed's table with its own numbers: (success rate, batch before, interval before,
    /// backing off) → (batch after, interval after, backing off after).
    #[test]
    fn the_seed_table_exactly() {
        let cases: &[(f64, u32, u64, bool, u32, u64, bool)] = &[
            (1.00, 10, 60_000, false, 15, 60_000, false),
            (0.96, 15, 60_000, false, 23, 60_000, false),
            (0.99, 40, 60_000, false, 50, 60_000, false), // capped at 50
            (0.95, 20, 60_000, false, 20, 60_000, false), // 95% is not above 95%: hold
            (0.80, 20, 60_000, false, 20, 60_000, false), // 80% holds
            (0.79, 20, 60_000, false, 10, 60_000, false), // halves
            (0.50, 9, 60_000, false, 5, 60_000, false),   // floor 4.5 → 4, at least 5
            (0.49, 30, 60_000, false, 5, 90_000, true),   // minimum batch, interval ×1.5
            (0.10, 5, 240_000, true, 5, 300_000, true),   // capped at five minutes
            (0.40, 10, 0, false, 5, 1_500, true),         // back to back: from a second
            (0.81, 5, 300_000, true, 5, 60_000, false),   // recovers: interval back to base
            (0.97, 5, 300_000, true, 8, 60_000, false),   // recovers and grows
            (0.70, 20, 90_000, true, 10, 90_000, true),   // still backing off: halves
        ];
        for &(rate, b0, i0, off0, b1, i1, off1) in cases {
            // A window of 100 with exactly this success rate.
            let mut w = Window::new(100);
            let ok = (rate * 100.0).round() as u32;
            w.extend(&batch(100, ok, 10));
            let d = Policy::Thresholds(Thresholds).decide(
                &Bounds::SEED,
                Observation {
                    shape: Shape {
                        batch_size: b0,
                        interval_ms: i0,
                    },
                    backing_off: off0,
                    window: &w,
                    batch: &batch(b0, b0, 10),
                },
                &mut GradientState::default(),
            );
            assert_eq!(
                (d.shape.batch_size, d.shape.interval_ms, d.backing_off),
                (b1, i1, off1),
                "rate {rate}, batch {b0}, interval {i0}, backing off {off0}"
            );
        }
    }

    #[test]
    fn the_window_keeps_the_last_outcomes() {
        let mut w = Window::new(4);
        w.extend(&batch(4, 0, 10));
        w.extend(&batch(2, 2, 30));
        assert_eq!(w.len(), 4);
        assert_eq!(w.success_rate(), 0.5);
        assert_eq!(w.mean_latency_ms(), 20.0);
        assert_eq!(Window::new(0).success_rate(), 1.0);
        // Stored packed, one number per outcome, and read back the same.
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(json, r#"{"capacity":4,"samples":[20,20,61,61]}"#);
        assert_eq!(serde_json::from_str::<Window>(&json).unwrap(), w);
    }

    #[test]
    fn aimd_adds_on_success_and_multiplies_down_on_failure_or_latency() {
        let p = Aimd {
            latency_bound_ms: Some(100),
            ..Aimd::default()
        };
        let run = |batch_size: u32, b: &[Sample]| {
            decide(
                Policy::Aimd(p),
                batch_size,
                b,
                &mut GradientState::default(),
            )
        };
        let d = run(20, &batch(20, 20, 50));
        assert_eq!((d.shape.batch_size, d.reason), (21, Reason::Increase));
        let d = run(20, &batch(20, 15, 50));
        assert_eq!((d.shape.batch_size, d.reason), (10, Reason::Decrease));
        let d = run(20, &batch(20, 20, 150));
        assert_eq!((d.shape.batch_size, d.reason), (10, Reason::LatencyHigh));
        let d = run(6, &batch(6, 0, 50));
        assert_eq!(d.shape.batch_size, 5, "never below the minimum");
        let d = run(50, &batch(50, 50, 50));
        assert_eq!(d.shape.batch_size, 50, "never above the maximum");
    }

    #[test]
    fn gradient_grows_while_latency_holds_and_shrinks_when_it_rises() {
        let p = Gradient::default();
        let mut state = GradientState::default();
        let mut size = 10;
        for _ in 0..10 {
            let d = decide(
                Policy::Gradient(p),
                size,
                &batch(size, size, 20),
                &mut state,
            );
            assert!(
                d.shape.batch_size >= size,
                "steady latency never shrinks it"
            );
            size = d.shape.batch_size;
        }
        assert!(size > 20, "grew to {size}");
        // Latency triples: the batch shrinks.
        let d = decide(
            Policy::Gradient(p),
            size,
            &batch(size, size, 60),
            &mut state,
        );
        assert!(
            d.shape.batch_size < size,
            "{} after {size}",
            d.shape.batch_size
        );
        assert_eq!(d.reason, Reason::LatencyHigh);
    }
}
