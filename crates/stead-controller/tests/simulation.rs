//! Each policy against a synthetic downstream with a capacity C: batches up to C succeed
//! at a steady latency; above C the items beyond C fail and latency grows with the load.
//! From a cold start the batch size settles in a band around C and stays there, and follows
//! C when it is halved and restored (each test states its policy's band), and a full outage opens the breaker, which probes at the
//! cool-down and closes after recovery.

use stead_controller::{
    Aimd, Bounds, Breaker, BreakerConfig, Gradient, GradientState, Observation, Policy, Sample,
    Shape, Thresholds, Transition, Window,
};

const LATENCY_MS: u64 = 20;

/// The downstream: `capacity` items per batch succeed; the rest fail; latency grows with
/// the load above capacity. A capacity of 0 is an outage.
fn downstream(batch: u32, capacity: u32) -> Vec<Sample> {
    let latency = if batch <= capacity || capacity == 0 {
        LATENCY_MS
    } else {
        LATENCY_MS * u64::from(batch) / u64::from(capacity)
    };
    (0..batch)
        .map(|i| Sample {
            ok: i < capacity,
            latency_ms: latency,
        })
        .collect()
}

struct Sim {
    policy: Policy,
    bounds: Bounds,
    shape: Shape,
    backing_off: bool,
    window: Window,
    state: GradientState,
}

impl Sim {
    fn new(policy: Policy) -> Self {
        Sim {
            policy,
            bounds: Bounds::SEED,
            shape: Shape {
                batch_size: 10,
                interval_ms: Bounds::SEED.base_interval_ms,
            },
            backing_off: false,
            window: Window::new(100),
            state: GradientState::default(),
        }
    }

    /// Runs `cycles` batches against `capacity`; the batch sizes it ran.
    fn run(&mut self, cycles: usize, capacity: u32) -> Vec<u32> {
        let mut sizes = Vec::new();
        for _ in 0..cycles {
            let batch = downstream(self.shape.batch_size, capacity);
            self.window.extend(&batch);
            let d = self.policy.decide(
                &self.bounds,
                Observation {
                    shape: self.shape,
                    backing_off: self.backing_off,
                    window: &self.window,
                    batch: &batch,
                },
                &mut self.state,
            );
            sizes.push(self.shape.batch_size);
            self.shape = d.shape;
            self.backing_off = d.backing_off;
        }
        sizes
    }
}

fn within(sizes: &[u32], lo: u32, hi: u32) -> bool {
    sizes.iter().all(|s| (lo..=hi).contains(s))
}

#[test]
fn thresholds_holds_at_23_for_a_capacity_of_20() {
    let mut sim = Sim::new(Policy::Thresholds(Thresholds));
    let sizes = sim.run(60, 20);
    // 10 → 15 → 23, where 20/23 = 87% success sits in the "maintain" row.
    assert_eq!(&sizes[..3], &[10, 15, 23]);
    assert!(within(&sizes[2..], 23, 23), "{sizes:?}");
    // Capacity halved: the table's coarse steps cycle between backing off at 5 and
    // overshooting to 18, never settling above it; restored, it climbs back to 23.
    let halved = sim.run(60, 10);
    assert!(within(&halved[2..], 5, 18), "{halved:?}");
    assert!(
        halved[2..].iter().filter(|&&s| s <= 10).count() > 40,
        "{halved:?}"
    );
    // Restored, the table climbs back, but with its window of 100 still holding the
    // failures it overshoots to 27 and backs off again: it cycles between 5 and 27 instead
    // of settling. That is the seed's table, exactly; the other policies settle.
    let restored = sim.run(60, 20);
    assert!(within(&restored, 5, 27), "{restored:?}");
    assert!(restored.iter().any(|&s| s >= 23), "{restored:?}");
}

#[test]
fn aimd_saws_between_half_and_just_above_capacity() {
    let mut sim = Sim::new(Policy::Aimd(Aimd::default()));
    let sizes = sim.run(80, 20);
    // Additive increase to the first loss above C, then halving: a sawtooth in [C/2, C+2].
    assert!(within(&sizes[12..], 10, 22), "{sizes:?}");
    assert!(sizes[12..].contains(&21), "reaches capacity: {sizes:?}");
    let halved = sim.run(60, 10);
    assert!(within(&halved[10..], 5, 12), "{halved:?}");
    let restored = sim.run(80, 20);
    assert!(within(&restored[20..], 10, 22), "{restored:?}");
}

#[test]
fn gradient_settles_around_capacity() {
    let mut sim = Sim::new(Policy::Gradient(Gradient::default()));
    // Grows by about the square root of the batch while latency holds, halves at the first
    // loss above C: a sawtooth in [C/2, C + √C].
    let sizes = sim.run(80, 20);
    assert!(within(&sizes[8..], 10, 24), "{sizes:?}");
    let halved = sim.run(80, 10);
    assert!(within(&halved[10..], 5, 13), "{halved:?}");
    let restored = sim.run(80, 20);
    assert!(within(&restored[20..], 10, 24), "{restored:?}");
}

#[test]
fn an_outage_opens_the_breaker_which_probes_and_closes_after_recovery() {
    let cfg = BreakerConfig {
        failures_to_open: 5,
        cooldown_ms: 60_000,
        max_cooldown_ms: 600_000,
    };
    let mut breaker = Breaker::default();
    let mut log = Vec::new();
    let (mut now, interval) = (0u64, 60_000u64);
    let mut ran = Vec::new();
    // 20 cycles of outage, then the downstream is back.
    for cycle in 0..40 {
        let capacity = if cycle < 20 { 0 } else { 20 };
        let (admitted, t) = breaker.admit(now);
        log.extend(t.map(|t| (cycle, t)));
        if admitted {
            let batch = downstream(10, capacity);
            let failed = batch.iter().all(|s| !s.ok);
            ran.push(cycle);
            log.extend(breaker.record(&cfg, failed, now).map(|t| (cycle, t)));
        }
        now += interval;
    }
    // Opened on the fifth failed batch; probed at each cool-down (doubling while the
    // outage lasts); closed by the first probe after recovery.
    assert_eq!(log[0], (4, Transition::Opened));
    assert!(log.iter().any(|(_, t)| *t == Transition::Reopened));
    let (closed_at, _) = *log.iter().find(|(_, t)| *t == Transition::Closed).unwrap();
    assert!(closed_at >= 20, "{log:?}");
    // At most one (capped) cool-down of ten cycles after recovery.
    assert!(closed_at <= 20 + 10, "closed soon after recovery: {log:?}");
    assert!(ran.contains(&39), "batches run again: {ran:?}");
    assert_eq!(breaker, Breaker::Closed { failures: 0 });
}
