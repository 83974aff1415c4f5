//! The budget's messages.

use super::*;

/// Sets (or changes) the configuration; a budget without a cycle starts its first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Configure(pub BudgetSpec);

/// Closes the current cycle and starts the next with `total` (the configured total if none).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StartCycle {
    /// The cycle's total.
    pub total: Option<u64>,
}

/// Holds an amount for a processor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reserve {
    /// The caller's id for it: a repeated request with it has one effect.
    pub id: String,
    /// The processor.
    pub processor: String,
    /// The amount, in minor units.
    pub amount: u64,
    /// How long it holds unless committed or voided, in ms.
    pub ttl_ms: u64,
}

/// Spends `actual` of a reservation and frees the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commit {
    /// The reservation.
    pub id: String,
    /// What was spent (at most what it holds).
    pub actual: u64,
}

/// Frees a reservation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Void {
    /// The reservation.
    pub id: String,
}

/// Usage reported after the fact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    /// The processor.
    pub processor: String,
    /// What it spent.
    pub cost: u64,
    /// Items it did.
    pub items: u64,
    /// Errors it met.
    pub errors: u64,
}

/// Asks for the budget's state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Inspect;

/// Asks for the plan of the current cycle.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Plan;

/// Asks for a page of the closed cycles kept (numbered by cycle).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct History(pub LogQuery);

/// Asks for a page of the event log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Events(pub LogQuery);

/// Deletes the budget and everything it keeps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Remove;
