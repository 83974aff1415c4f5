//! # stead-controller: an adaptive batch controller (in progress)
//!
//! A controller wakes on its schedule, has a batch of work done, measures success and
//! latency, and resizes the next batch. This crate holds, so far, its two pure rooms:
//!
//! - [`policy`]: the policies that decide the next batch size and interval from what the
//!   last batches did: [`Thresholds`] (the seed's table, exactly), [`Aimd`] and [`Gradient`]
//!   (latency-based, after Gradient2), each a function of (shape, window) → decision with
//!   its reason;
//! - [`breaker`]: the circuit breaker with half-open probing, which is never stuck.
//!
//! The durable object, its client, the lease/report routes and the in-process processor
//! are not written yet; until they are, the crate is not in the umbrella.
//!
//! ```
//! use stead_controller::{Bounds, GradientState, Observation, Policy, Sample, Shape, Thresholds, Window};
//!
//! let mut window = Window::new(100);
//! let batch: Vec<Sample> = (0..10).map(|_| Sample { ok: true, latency_ms: 12 }).collect();
//! window.extend(&batch);
//! let d = Policy::Thresholds(Thresholds).decide(
//!     &Bounds::SEED,
//!     Observation {
//!         shape: Shape { batch_size: 10, interval_ms: 60_000 },
//!         backing_off: false,
//!         window: &window,
//!         batch: &batch,
//!     },
//!     &mut GradientState::default(),
//! );
//! assert_eq!(d.shape.batch_size, 15); // all succeeded: ×1.5
//! ```

pub mod breaker;
pub mod policy;

pub use breaker::{Breaker, BreakerConfig, Transition};
pub use policy::{
    Aimd, Bounds, Decision, Gradient, GradientState, Observation, Policy, Reason, Sample, Shape,
    Thresholds, Window,
};
