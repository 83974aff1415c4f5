//! # stead-flags: feature flags (in progress)
//!
//! Flag sets in flagd's definition format, one durable object per set, evaluated from the
//! committed snapshot a set publishes and served over OpenFeature's remote evaluation
//! protocol.
//!
//! Fractional splits bucket exactly as flagd does:
//!
//! ```
//! use stead_flags::fractional_bucket;
//!
//! // 25% a, 25% b, 50% c, by flag key + targeting key.
//! let weights = [25, 25, 50];
//! let bucket = fractional_bucket("rollout", "user-1", &weights).unwrap();
//! assert!(bucket < 3);
//! // The same key always lands in the same bucket.
//! assert_eq!(fractional_bucket("rollout", "user-1", &weights), Some(bucket));
//! ```

mod definition;
mod evaluate;
mod fractional;
mod logic;

pub use definition::{
    DefinitionError, FlagDefinition, FlagSetDefinition, FlagState, FlagType, MAX_FLAGS,
    MAX_KEY_BYTES, check_flag_key,
};
pub use evaluate::{ErrorCode, Evaluation, Reason, Snapshot};
pub use fractional::{MAX_TOTAL_WEIGHT, bucket_of, fractional_bucket};
pub use logic::{OPERATIONS, Rule, RuleError};
