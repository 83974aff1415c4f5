//! What can go wrong with a budget, as a caller acts on it.

use stead_core::InvalidInput;

use crate::ledger::LedgerError;

/// The budget's outcomes other than success. Each variant is one thing a caller can act on;
/// over HTTP each maps to one status and problem type (see the `http` room).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// No budget of this name is configured: `PUT` its configuration first.
    #[error("no budget of this name is configured")]
    NotFound,
    /// The ledger refused (no cycle, not enough budget, an unknown processor or
    /// reservation, an id used twice, a reservation resolved already...).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// An argument breaks a rule.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}
