//! What can go wrong with a flag set, as a caller acts on it.

use stead_core::InvalidInput;

use crate::definition::DefinitionError;

/// The flag sets' outcomes other than success. Each variant is one thing a caller can act
/// on; over HTTP each maps to one status and problem type (see the `http` room).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum FlagsError {
    /// The definition is refused: the flag and the JSON pointer of the fault are in it.
    #[error("invalid flag definition: {0}")]
    Definition(#[from] DefinitionError),
    /// The set has no flag with this key.
    #[error("flag set {set:?} has no flag {key:?}")]
    FlagNotFound {
        /// The set.
        set: String,
        /// The flag.
        key: String,
    },
    /// The change was made against another version of the set (a stale `If-Match`):
    /// nothing was written. Read the set again and decide.
    #[error("the flag set is at version {current}, not the one the change was made against")]
    VersionConflict {
        /// The set's version now.
        current: u64,
    },
    /// The set's definition would be larger than the store takes in one value.
    #[error("the flag set's definition of {size} bytes is too large: at most {max}")]
    TooLarge {
        /// Its size, in bytes of JSON.
        size: usize,
        /// The most allowed.
        max: usize,
    },
    /// An argument breaks a rule (a malformed set name, a limit out of range...).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The runtime failed (overload, storage, shutdown, a deadline).
    #[error(transparent)]
    Runtime(#[from] stead_core::Error),
}
