//! What can go wrong with a budget, as a caller acts on it.

use stead_core::InvalidInput;

use crate::ledger::LedgerError;

/// The budget's outcomes other than success. Each variant is one thing a caller can act on;
/// over HTTP each maps to one status and problem type (see the `http` room).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum BudgetError {
    /// No budget of this name is configured: `PUT` its configuration first.
    #[error("no budget of this name is configured")]
    NotFound,
    /// No cycle has started.
    #[error("no cycle has started")]
    NoCycle,
    /// The processor has no account (unknown, or disabled when the cycle started).
    #[error("processor {0} has no account in the current cycle")]
    UnknownProcessor(String),
    /// No reservation has this id.
    #[error("no reservation {0}")]
    UnknownReservation(String),
    /// Not enough budget: what the processor and the whole budget have available.
    #[error(
        "{processor} has {available} available (the budget {budget_available}); {requested} requested"
    )]
    Insufficient {
        /// The processor.
        processor: String,
        /// What was asked for.
        requested: u64,
        /// What the processor has available.
        available: u64,
        /// What the whole cycle has available.
        budget_available: u64,
    },
    /// Reported usage overran the processor's allocation: it refuses reservations until the
    /// next cycle.
    #[error("{0} overran its allocation this cycle; reservations resume next cycle")]
    Overrun(String),
    /// The id was used for another request (another processor or amount).
    #[error("reservation {0} exists with other parameters")]
    IdReused(String),
    /// Too many resolved reservations are remembered, and none is old enough to forget:
    /// forgetting a young id would let its retry spend twice, so new reservations wait.
    #[error("resolved reservations: {0}")]
    Remembering(stead_core::Remembering),
    /// The reservation was resolved another way already.
    #[error("reservation {id} is already {state}")]
    AlreadyResolved {
        /// The reservation.
        id: String,
        /// How it was resolved (`committed`, `voided`, `expired`).
        state: String,
    },
    /// A commit of more than was reserved.
    #[error("a commit of {actual} is above the {reserved} reserved")]
    AboveReserved {
        /// What the commit said.
        actual: u64,
        /// What was reserved.
        reserved: u64,
    },
    /// An argument breaks a rule.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}

/// The ledger's refusals are the budget's, one level deep: a caller matches
/// `BudgetError::Insufficient { .. }`, not the ledger's error inside another.
impl From<LedgerError> for BudgetError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::NoCycle => BudgetError::NoCycle,
            LedgerError::UnknownProcessor(p) => BudgetError::UnknownProcessor(p),
            LedgerError::UnknownReservation(id) => BudgetError::UnknownReservation(id),
            LedgerError::Insufficient {
                processor,
                requested,
                available,
                budget_available,
            } => BudgetError::Insufficient {
                processor,
                requested,
                available,
                budget_available,
            },
            LedgerError::Overrun(p) => BudgetError::Overrun(p),
            LedgerError::IdReused(id) => BudgetError::IdReused(id),
            LedgerError::Remembering(r) => BudgetError::Remembering(r),
            LedgerError::AlreadyResolved { id, state } => BudgetError::AlreadyResolved {
                id,
                state: state.to_owned(),
            },
            LedgerError::AboveReserved { actual, reserved } => {
                BudgetError::AboveReserved { actual, reserved }
            }
        }
    }
}
