//! What can go wrong in an election, as a caller acts on it.

use stead_core::InvalidInput;

/// The election's outcomes other than success. Losing a campaign is not one of them (it
/// answers `elected: false`); acting as a leader one is not is.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum LeaderError {
    /// `candidate` does not lead `term` (its lease lapsed, it resigned, or another leads):
    /// it must stop acting as the leader.
    #[error("{candidate} is not the leader of term {term}: {}", match leader {
        Some(l) => format!("{l} leads term {current_term}"),
        None => format!("nobody leads (last term {current_term})"),
    })]
    NotLeader {
        /// The candidate named.
        candidate: String,
        /// The term given.
        term: u64,
        /// Who leads now, if anyone.
        leader: Option<String>,
        /// The current (or last) term.
        current_term: u64,
    },
    /// An argument breaks a rule (an empty candidate, a TTL out of range...).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}
