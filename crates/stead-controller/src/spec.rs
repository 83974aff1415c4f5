//! A controller's configuration: the body of `PUT /controllers/{name}` (flat, every field
//! optional with a default) and the checked form the object keeps.

use serde::{Deserialize, Serialize};
use stead_core::InvalidInput;

use crate::breaker::BreakerConfig;
use crate::policy::{Aimd, Bounds, Gradient, Policy, Thresholds};

/// The largest batch a controller may be configured with.
pub const MAX_BATCH: u32 = 100_000;
/// The most outcomes a window may keep.
pub const MAX_WINDOW: u32 = 1000;
/// The longest interval, lease or cool-down, in ms (one day).
pub const MAX_INTERVAL_MS: u64 = 24 * 3600 * 1000;
/// The most leases a controller may have out at once.
pub const MAX_CONCURRENCY: u32 = 1000;

/// Which policy decides the batch size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// The seed's table: ×1.5 above 95% success, hold from 80%, ×0.5 from 50%, backoff below.
    #[default]
    Thresholds,
    /// Additive increase, multiplicative decrease.
    Aimd,
    /// Latency-based, after Gradient2.
    Gradient,
}

/// A controller's configuration as given (and as shown): every field optional, with the
/// defaults of the seed (batches of 5 to 50 starting at 10, every minute, backing off to
/// five minutes, a window of 100 outcomes, one lease at a time, five failed batches open
/// the circuit for a minute).
///
/// ```
/// use stead_controller::ControllerSpec;
/// let spec: ControllerSpec = serde_json::from_str(r#"{"policy":"aimd","max_batch":200}"#).unwrap();
/// let checked = spec.check().unwrap();
/// assert_eq!(checked.bounds().max_batch, 200);
/// // A parameter of another policy is refused, by name.
/// let bad: ControllerSpec = serde_json::from_str(r#"{"policy":"aimd","tolerance":2.0}"#).unwrap();
/// assert_eq!(bad.check().unwrap_err().to_string(), "tolerance applies to the gradient policy, not to aimd");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ControllerSpec {
    /// The policy (`thresholds` by default).
    #[serde(default)]
    pub policy: PolicyKind,
    /// The smallest batch (5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, { MAX_BATCH as u64 }>))]
    pub min_batch: Option<u32>,
    /// The largest batch (50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, { MAX_BATCH as u64 }>))]
    pub max_batch: Option<u32>,
    /// The first batch, and the batch after a reset (10, within the bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, { MAX_BATCH as u64 }>))]
    pub initial_batch: Option<u32>,
    /// The time between batch starts when all is well, in ms (60000; 0 runs back to back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<0, MAX_INTERVAL_MS>))]
    pub interval_ms: Option<u64>,
    /// The longest interval a backoff reaches, in ms (300000, at least `interval_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, MAX_INTERVAL_MS>))]
    pub max_interval_ms: Option<u64>,
    /// How many recent outcomes the window keeps (100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, { MAX_WINDOW as u64 }>))]
    pub window: Option<u32>,
    /// How many leases may be out at once (1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, { MAX_CONCURRENCY as u64 }>))]
    pub concurrency: Option<u32>,
    /// How long a worker has to report a batch before it counts as failed, in ms (60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, MAX_INTERVAL_MS>))]
    pub lease_ms: Option<u64>,
    /// Consecutive failed batches (every item failed, or never reported) that open the
    /// circuit (5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, 1000>))]
    pub failures_to_open: Option<u32>,
    /// The first cool-down of an open circuit, in ms (60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, MAX_INTERVAL_MS>))]
    pub cooldown_ms: Option<u64>,
    /// The longest cool-down (each failed probe doubles it), in ms (3600000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, MAX_INTERVAL_MS>))]
    pub max_cooldown_ms: Option<u64>,
    /// aimd: added after a good batch (1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, { MAX_BATCH as u64 }>))]
    pub increase: Option<u32>,
    /// aimd: the factor after a bad batch, above 0 and below 1 (0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decrease: Option<f64>,
    /// aimd and gradient: the batch success rate below which a batch was bad (0.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_success: Option<f64>,
    /// aimd: the mean latency above which a batch was bad, in ms (none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, MAX_INTERVAL_MS>))]
    pub latency_bound_ms: Option<u64>,
    /// gradient: how much slower than the long-term latency a batch may be (1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// gradient: how many batches the long-term latency averages over (20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1, 1000>))]
    pub long_window: Option<u32>,
    /// gradient: how much of each new estimate is taken, above 0 and at most 1 (0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothing: Option<f64>,
}

/// A checked configuration: what a controller runs by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub(crate) policy: Policy,
    pub(crate) bounds: Bounds,
    pub(crate) initial_batch: u32,
    pub(crate) window: u32,
    pub(crate) concurrency: u32,
    pub(crate) lease_ms: u64,
    pub(crate) breaker: BreakerConfig,
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    what: &str,
    v: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, InvalidInput> {
    let v = v.unwrap_or(default);
    if v < min || v > max {
        return Err(InvalidInput::new(format!(
            "{what} must be between {min} and {max}, not {v}"
        )));
    }
    Ok(v)
}

fn fraction(
    what: &str,
    v: Option<f64>,
    default: f64,
    zero_ok: bool,
    one_ok: bool,
) -> Result<f64, InvalidInput> {
    let v = v.unwrap_or(default);
    let low_ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
    let high_ok = if one_ok { v <= 1.0 } else { v < 1.0 };
    if !(v.is_finite() && low_ok && high_ok) {
        let (l, h) = (
            if zero_ok { "[" } else { "(" },
            if one_ok { "]" } else { ")" },
        );
        return Err(InvalidInput::new(format!(
            "{what} must be in {l}0, 1{h}, not {v}"
        )));
    }
    Ok(v)
}

impl ControllerSpec {
    /// Checks every field, and that each policy parameter belongs to the chosen policy.
    pub fn check(&self) -> Result<Spec, InvalidInput> {
        let kind = self.policy;
        let name = match kind {
            PolicyKind::Thresholds => "thresholds",
            PolicyKind::Aimd => "aimd",
            PolicyKind::Gradient => "gradient",
        };
        let foreign = |field: &str, set: bool, owners: &[PolicyKind], owner_names: &str| {
            if set && !owners.contains(&kind) {
                Err(InvalidInput::new(format!(
                    "{field} applies to the {owner_names} policy, not to {name}"
                )))
            } else {
                Ok(())
            }
        };
        use PolicyKind::{Aimd as A, Gradient as G};
        foreign("increase", self.increase.is_some(), &[A], "aimd")?;
        foreign("decrease", self.decrease.is_some(), &[A], "aimd")?;
        foreign(
            "latency_bound_ms",
            self.latency_bound_ms.is_some(),
            &[A],
            "aimd",
        )?;
        foreign(
            "min_success",
            self.min_success.is_some(),
            &[A, G],
            "aimd or gradient",
        )?;
        foreign("tolerance", self.tolerance.is_some(), &[G], "gradient")?;
        foreign("long_window", self.long_window.is_some(), &[G], "gradient")?;
        foreign("smoothing", self.smoothing.is_some(), &[G], "gradient")?;

        let min_batch = range("min_batch", self.min_batch, 5, 1, MAX_BATCH)?;
        let max_batch = range("max_batch", self.max_batch, 50.max(min_batch), 1, MAX_BATCH)?;
        if max_batch < min_batch {
            return Err(InvalidInput::new(format!(
                "max_batch ({max_batch}) may not be below min_batch ({min_batch})"
            )));
        }
        let initial_batch = self
            .initial_batch
            .unwrap_or_else(|| 10u32.clamp(min_batch, max_batch));
        if !(min_batch..=max_batch).contains(&initial_batch) {
            return Err(InvalidInput::new(format!(
                "initial_batch ({initial_batch}) must be between min_batch ({min_batch}) and max_batch ({max_batch})"
            )));
        }
        let interval_ms = range("interval_ms", self.interval_ms, 60_000, 0, MAX_INTERVAL_MS)?;
        let max_interval_ms = range(
            "max_interval_ms",
            self.max_interval_ms,
            300_000.max(interval_ms),
            1,
            MAX_INTERVAL_MS,
        )?;
        if max_interval_ms < interval_ms {
            return Err(InvalidInput::new(format!(
                "max_interval_ms ({max_interval_ms}) may not be below interval_ms ({interval_ms})"
            )));
        }
        let window = range("window", self.window, 100, 1, MAX_WINDOW)?;
        let concurrency = range("concurrency", self.concurrency, 1, 1, MAX_CONCURRENCY)?;
        let lease_ms = range("lease_ms", self.lease_ms, 60_000, 1, MAX_INTERVAL_MS)?;
        let failures_to_open = range("failures_to_open", self.failures_to_open, 5, 1, 1000)?;
        let cooldown_ms = range("cooldown_ms", self.cooldown_ms, 60_000, 1, MAX_INTERVAL_MS)?;
        let max_cooldown_ms = range(
            "max_cooldown_ms",
            self.max_cooldown_ms,
            3_600_000.max(cooldown_ms),
            1,
            MAX_INTERVAL_MS,
        )?;
        if max_cooldown_ms < cooldown_ms {
            return Err(InvalidInput::new(format!(
                "max_cooldown_ms ({max_cooldown_ms}) may not be below cooldown_ms ({cooldown_ms})"
            )));
        }
        let policy = match kind {
            PolicyKind::Thresholds => Policy::Thresholds(Thresholds),
            PolicyKind::Aimd => {
                let d = Aimd::default();
                Policy::Aimd(Aimd {
                    increase: range("increase", self.increase, d.increase, 1, MAX_BATCH)?,
                    decrease: fraction("decrease", self.decrease, d.decrease, false, false)?,
                    min_success: fraction(
                        "min_success",
                        self.min_success,
                        d.min_success,
                        true,
                        true,
                    )?,
                    latency_bound_ms: self
                        .latency_bound_ms
                        .map(|v| range("latency_bound_ms", Some(v), v, 1, MAX_INTERVAL_MS))
                        .transpose()?,
                })
            }
            PolicyKind::Gradient => {
                let d = Gradient::default();
                let tolerance = self.tolerance.unwrap_or(d.tolerance);
                if !(tolerance.is_finite() && (1.0..=10.0).contains(&tolerance)) {
                    return Err(InvalidInput::new(format!(
                        "tolerance must be between 1 and 10, not {tolerance}"
                    )));
                }
                Policy::Gradient(Gradient {
                    tolerance,
                    long_window: range("long_window", self.long_window, d.long_window, 1, 1000)?,
                    smoothing: fraction("smoothing", self.smoothing, d.smoothing, false, true)?,
                    min_success: fraction(
                        "min_success",
                        self.min_success,
                        d.min_success,
                        true,
                        true,
                    )?,
                })
            }
        };
        Ok(Spec {
            policy,
            bounds: Bounds {
                min_batch,
                max_batch,
                base_interval_ms: interval_ms,
                max_interval_ms,
            },
            initial_batch,
            window,
            concurrency,
            lease_ms,
            breaker: BreakerConfig {
                failures_to_open,
                cooldown_ms,
                max_cooldown_ms,
            },
        })
    }
}

impl Spec {
    /// The bounds decisions stay within.
    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The configuration in full, every default filled in, in the form it is given in.
    pub fn to_spec(&self) -> ControllerSpec {
        let mut out = ControllerSpec {
            min_batch: Some(self.bounds.min_batch),
            max_batch: Some(self.bounds.max_batch),
            initial_batch: Some(self.initial_batch),
            interval_ms: Some(self.bounds.base_interval_ms),
            max_interval_ms: Some(self.bounds.max_interval_ms),
            window: Some(self.window),
            concurrency: Some(self.concurrency),
            lease_ms: Some(self.lease_ms),
            failures_to_open: Some(self.breaker.failures_to_open),
            cooldown_ms: Some(self.breaker.cooldown_ms),
            max_cooldown_ms: Some(self.breaker.max_cooldown_ms),
            ..ControllerSpec::default()
        };
        match self.policy {
            Policy::Thresholds(_) => out.policy = PolicyKind::Thresholds,
            Policy::Aimd(p) => {
                out.policy = PolicyKind::Aimd;
                out.increase = Some(p.increase);
                out.decrease = Some(p.decrease);
                out.min_success = Some(p.min_success);
                out.latency_bound_ms = p.latency_bound_ms;
            }
            Policy::Gradient(p) => {
                out.policy = PolicyKind::Gradient;
                out.tolerance = Some(p.tolerance);
                out.long_window = Some(p.long_window);
                out.smoothing = Some(p.smoothing);
                out.min_success = Some(p.min_success);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Spec, String> {
        let spec: ControllerSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.check().map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_are_the_seeds() {
        let s = parse("{}").unwrap();
        assert_eq!(s.bounds, Bounds::SEED);
        assert_eq!(s.initial_batch, 10);
        assert_eq!(s.policy, Policy::Thresholds(Thresholds));
        assert_eq!(s.breaker, BreakerConfig::default());
        // Shown in full, it reads back to itself.
        let shown = serde_json::to_string(&s.to_spec()).unwrap();
        assert_eq!(parse(&shown).unwrap(), s);
    }

    #[test]
    fn each_fault_is_named() {
        for (json, msg) in [
            (
                r#"{"min_batch":0}"#,
                "min_batch must be between 1 and 100000, not 0",
            ),
            (
                r#"{"min_batch":20,"max_batch":10}"#,
                "max_batch (10) may not be below min_batch (20)",
            ),
            (
                r#"{"initial_batch":60}"#,
                "initial_batch (60) must be between min_batch (5) and max_batch (50)",
            ),
            (
                r#"{"interval_ms":1000,"max_interval_ms":10}"#,
                "max_interval_ms (10) may not be below interval_ms (1000)",
            ),
            (
                r#"{"window":0}"#,
                "window must be between 1 and 1000, not 0",
            ),
            (
                r#"{"policy":"aimd","decrease":1.0}"#,
                "decrease must be in (0, 1), not 1",
            ),
            (
                r#"{"policy":"gradient","tolerance":0.5}"#,
                "tolerance must be between 1 and 10, not 0.5",
            ),
            (
                r#"{"increase":2}"#,
                "increase applies to the aimd policy, not to thresholds",
            ),
            (
                r#"{"policy":"gradient","latency_bound_ms":5}"#,
                "latency_bound_ms applies to the aimd policy, not to gradient",
            ),
        ] {
            assert_eq!(parse(json).unwrap_err(), msg, "{json}");
        }
        assert!(
            parse(r#"{"batch":5}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            parse(r#"{"policy":"vegas"}"#)
                .unwrap_err()
                .contains("unknown variant")
        );
    }

    #[test]
    fn a_small_range_moves_the_defaults_into_it() {
        let s = parse(r#"{"min_batch":100,"max_batch":400}"#).unwrap();
        assert_eq!(s.initial_batch, 100);
        let s = parse(r#"{"min_batch":100}"#).unwrap();
        assert_eq!(s.bounds.max_batch, 100);
        let s = parse(r#"{"interval_ms":600000}"#).unwrap();
        assert_eq!(s.bounds.max_interval_ms, 600_000);
    }
}
