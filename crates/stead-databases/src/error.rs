//! What can go wrong with a database's pipeline, as a caller acts on it. (A statement's own
//! failure is not an error here: the pipeline answers it in its results, as the protocol
//! does.)

use stead_core::InvalidInput;

/// A pipeline refused whole: nothing it did was kept.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum DatabaseError {
    /// The pipeline began a transaction and neither ended it nor closed its stream: the
    /// client meant to go on in a later request (an interactive transaction), and this
    /// server keeps no stream from one request to the next.
    #[error(
        "interactive transactions are not supported: a transaction must end in the request that began it (send it as one batch)"
    )]
    TransactionLeftOpen,
    /// The request named a stream (a baton) to continue; this server gives none.
    #[error("this server gives no batons: every pipeline is a stream of its own")]
    BatonNotIssued,
    /// An argument breaks a rule (a database name, a page size...).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline), or a statement's error
    /// ended the turn (a full database rolls the whole turn back).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}
