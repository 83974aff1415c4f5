//! The entity's messages and what they answer.

use super::*;

/// Takes an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ingest(pub Event);

/// Reads what an object holds: an entity's state and where its outbox stands; a type's
/// definition.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Inspect;

/// Asks for a page of the decision log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Decisions(pub LogQuery);

/// Reads commands after `after` (and after those acknowledged), waiting up to `wait_ms`
/// for one when there is none.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Poll {
    /// Only commands numbered above this.
    pub after: u64,
    /// At most this many.
    pub limit: u32,
    /// How long to wait for one, in ms (0: answer at once).
    pub wait_ms: u64,
}

/// Acknowledges every command up to `up_to` for pull consumers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Ack {
    /// The last command taken.
    pub up_to: u64,
}

/// Asks for a page of the dead letters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DeadLetters(pub LogQuery);

/// What to do with dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterAction {
    /// Deliver them again to their endpoint (before the commands it has not had yet).
    Retry,
    /// Forget them.
    Drop,
}

/// Retries or drops dead letters (the listed ones, or all).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveDeadLetters {
    /// What to do.
    pub action: DeadLetterAction,
    /// Which; `None` for all.
    pub seqs: Option<Vec<u64>>,
}

/// The outcome of a webhook delivery (sent by the delivery task).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Delivered {
    pub(crate) endpoint: String,
    pub(crate) target: Target,
    pub(crate) outcome: Result<(), String>,
}
