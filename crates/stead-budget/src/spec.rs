//! A budget's configuration: the body of `PUT /budgets/{name}` and its checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stead_core::InvalidInput;

use crate::ledger::Rollover;

/// The most processors a budget may have.
pub const MAX_PROCESSORS: usize = 256;
/// The largest weight.
pub const MAX_WEIGHT: u64 = 1_000_000;
/// The largest amount anywhere (a total, a cost, a reservation): 2^53, so that every
/// amount is exact in JSON numbers too.
pub const MAX_AMOUNT: u64 = 1 << 53;
/// The most cycles the history keeps.
pub const MAX_HISTORY: u32 = 1000;

/// A processor: a kind of work that spends the budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessorSpec {
    /// Its id (a name).
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::name))]
    pub id: String,
    /// Its relative weight: its share is weight / the sum of the enabled weights.
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::integer::<0, MAX_WEIGHT>))]
    pub weight: u64,
    /// When it runs in the plan (lower first).
    #[serde(default)]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::integer::<0, 1000>))]
    pub phase: u32,
    /// The tier (model) it calls.
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::name))]
    pub tier: String,
    /// Whether it gets a share (a disabled processor has no account).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A tier: a model and what a call costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// The model it routes to.
    pub model: String,
    /// What one call costs, in minor units.
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::integer::<1, MAX_AMOUNT>))]
    pub cost_per_call: u64,
    /// The most calls at once.
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::integer::<1, 1_000_000>))]
    pub max_concurrency: u64,
}

/// A budget's configuration.
///
/// ```
/// use stead_budget::BudgetSpec;
/// let spec: BudgetSpec = serde_json::from_value(serde_json::json!({
///     "total": 10000,
///     "processors": [
///         {"id": "keywords", "weight": 5, "phase": 1, "tier": "premium"},
///         {"id": "content", "weight": 3, "phase": 1, "tier": "standard"},
///         {"id": "seo", "weight": 2, "phase": 2, "tier": "economy"}
///     ],
///     "tiers": {
///         "premium": {"model": "large", "cost_per_call": 30, "max_concurrency": 5},
///         "standard": {"model": "small", "cost_per_call": 5, "max_concurrency": 20},
///         "economy": {"model": "flash", "cost_per_call": 1, "max_concurrency": 50}
///     },
///     "cycle_ms": 86400000
/// })).unwrap();
/// spec.check().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetSpec {
    /// The budget of a cycle, in minor units (a cycle may be started with another).
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::integer::<0, MAX_AMOUNT>))]
    pub total: u64,
    /// The name of the minor unit, for people (`"cents"`, `"tokens"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The processors, in the order leftover minor units are handed out.
    // 256: MAX_PROCESSORS (the attribute takes a literal; a test holds them equal).
    #[cfg_attr(feature = "http", schema(min_items = 1, max_items = 256))]
    pub processors: Vec<ProcessorSpec>,
    /// The tiers, by name.
    pub tiers: BTreeMap<String, TierSpec>,
    /// A new cycle every this many ms (or give `cron`; neither: cycles start by API only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::optional_integer::<1000, { 366 * 86_400_000 }>))]
    pub cycle_ms: Option<u64>,
    /// A new cycle at the times this cron expression names, in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Whether unspent budget moves into the next cycle (`{"mode":"off"}`, or
    /// `{"mode":"capped","cap":500}` per processor).
    #[serde(default)]
    pub rollover: Rollover,
    /// Percentages of a processor's or the budget's allocation whose crossing is an alert
    /// (50, 80 and 100 by default).
    #[serde(default = "default_alerts")]
    #[cfg_attr(feature = "http", schema(schema_with = alerts_schema))]
    pub alerts: Vec<u32>,
    /// How many cycles the history keeps (50).
    #[serde(default = "default_history")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::integer::<1, { MAX_HISTORY as u64 }>))]
    pub history: u32,
}

/// Up to 16 percentages from 1 to 1000.
#[cfg(feature = "http")]
fn alerts_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(stead_core::http::schema::integer::<1, 1000>())
        .max_items(Some(16))
        .build()
}

fn default_alerts() -> Vec<u32> {
    vec![50, 80, 100]
}

fn default_history() -> u32 {
    50
}

impl BudgetSpec {
    /// Checks the configuration; the error names the field at fault.
    pub fn check(&self) -> Result<(), InvalidInput> {
        let bad = |s: String| Err(InvalidInput::new(s));
        if self.total > MAX_AMOUNT {
            return bad(format!("total must be at most {MAX_AMOUNT}"));
        }
        if let Some(u) = &self.unit {
            stead_core::validate_name("unit", u)?;
        }
        if self.processors.is_empty() || self.processors.len() > MAX_PROCESSORS {
            return bad(format!(
                "processors must list 1 to {MAX_PROCESSORS} processors"
            ));
        }
        for (name, t) in &self.tiers {
            stead_core::validate_name("a tier's name", name)?;
            stead_core::validate_name(&format!("tiers.{name}.model"), &t.model)?;
            if t.cost_per_call == 0 || t.cost_per_call > MAX_AMOUNT {
                return bad(format!(
                    "tiers.{name}.cost_per_call must be between 1 and {MAX_AMOUNT}"
                ));
            }
            if t.max_concurrency == 0 || t.max_concurrency > 1_000_000 {
                return bad(format!(
                    "tiers.{name}.max_concurrency must be between 1 and 1000000"
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.processors.iter().enumerate() {
            stead_core::validate_name(&format!("processors[{i}].id"), &p.id)?;
            if !seen.insert(p.id.as_str()) {
                return bad(format!("processors[{i}].id {} is listed twice", p.id));
            }
            if p.weight > MAX_WEIGHT {
                return bad(format!(
                    "processors[{i}].weight must be at most {MAX_WEIGHT}"
                ));
            }
            if p.phase > 1000 {
                return bad(format!("processors[{i}].phase must be at most 1000"));
            }
            if !self.tiers.contains_key(&p.tier) {
                return bad(format!(
                    "processors[{i}].tier {} is not among the tiers",
                    p.tier
                ));
            }
        }
        if !self.processors.iter().any(|p| p.enabled && p.weight > 0) {
            return bad("at least one enabled processor needs a weight above 0".into());
        }
        match (&self.cycle_ms, &self.cron) {
            (Some(_), Some(_)) => return bad("give cycle_ms or cron, not both".into()),
            (Some(ms), None) if *ms < 1000 || *ms > 366 * 86_400_000 => {
                return bad("cycle_ms must be between 1000 and a year".into());
            }
            (None, Some(expr)) if expr.trim().is_empty() => {
                return bad("cron may not be empty".into());
            }
            // As often as cycle_ms allows, and never a cron that never matches.
            (None, Some(expr)) => {
                if let Err(e) = stead_core::check_cron(expr, std::time::Duration::from_secs(1)) {
                    return bad(format!("cron: {e}"));
                }
            }
            _ => {}
        }
        if let Rollover::Capped { cap } = self.rollover
            && cap > MAX_AMOUNT
        {
            return bad(format!("rollover.cap must be at most {MAX_AMOUNT}"));
        }
        if self.alerts.len() > 16
            || self.alerts.iter().any(|&a| a == 0 || a > 1000)
            || self.alerts.windows(2).any(|w| w[0] >= w[1])
        {
            return bad("alerts must be at most 16 ascending percentages from 1 to 1000".into());
        }
        if self.history == 0 || self.history > MAX_HISTORY {
            return bad(format!("history must be between 1 and {MAX_HISTORY}"));
        }
        Ok(())
    }

    /// The enabled processors' ids and weights, in the stated order.
    pub fn weights(&self) -> Vec<(String, u64)> {
        self.processors
            .iter()
            .filter(|p| p.enabled)
            .map(|p| (p.id.clone(), p.weight))
            .collect()
    }
}
