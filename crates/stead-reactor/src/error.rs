//! What can go wrong with a reactor, as a caller acts on it.

use stead_core::InvalidInput;

use crate::definition::DefinitionError;
use crate::reactor::Rejected;

/// The reactor's outcomes other than success. Each variant is one thing a caller can act
/// on; over HTTP each maps to one status and problem type (see the `http` room).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ReactorError {
    /// No reactor type of this name is defined (in code or by a definition).
    #[error("no reactor type {0:?} is defined")]
    UnknownType(String),
    /// The type is defined in code; its definition cannot be replaced over HTTP.
    #[error("reactor type {0:?} is defined in code")]
    DefinedInCode(String),
    /// A definition was refused.
    #[error("bad definition at {0}")]
    Definition(#[from] DefinitionError),
    /// The reactor refused the event or cycle: nothing changed.
    #[error("the reactor refused: {0}")]
    Rejected(#[from] Rejected),
    /// The outbox holds as many commands as it may: its consumers are not taking them.
    /// Nothing changed; send the event again once they catch up.
    #[error(
        "the outbox holds {pending} commands not yet delivered; its consumers are not keeping up"
    )]
    OutboxFull {
        /// Commands not yet delivered everywhere.
        pending: u64,
    },
    /// As many event ids are remembered as may be (`max_event_ids`), and none is old enough
    /// to forget (`event_retention_ms`): forgetting a young one would let its retry act
    /// twice. Nothing changed; send the event again after `retry_after_ms`.
    #[error("event ids: {0}")]
    Remembering(stead_core::Remembering),
    /// The state after the event would be larger than allowed.
    #[error("the state would take {bytes} bytes; the limit is {max}")]
    StateTooLarge {
        /// Its size as JSON.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The type's commands are not delivered by pull (only to webhooks).
    #[error(
        "this reactor type's commands are delivered to webhooks, not pulled (set \"pull\": true)"
    )]
    NotPulled,
    /// An acknowledgement of commands not yet emitted (the request is well formed; the
    /// entity's outbox is not there yet).
    #[error("up_to is {up_to}, but the last command is {last}")]
    AckBeyondOutbox {
        /// What was acknowledged.
        up_to: u64,
        /// The last command emitted.
        last: u64,
    },
    /// No dead letter has this number.
    #[error("no dead letter {0}")]
    UnknownDeadLetter(u64),
    /// The dead letter's endpoint is no longer one of the type's webhooks.
    #[error("the endpoint {} is no longer one of the type's webhooks", crate::delivery::masked(.0))]
    EndpointGone(String),
    /// An argument breaks a rule.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}
