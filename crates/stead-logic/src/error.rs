//! What can go wrong: a rule that does not compile, an evaluation that fails.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

/// Why a targeting rule cannot be compiled, with the JSON pointer of the fault under the
/// rule's root (`""` for the root itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Where the fault is, as a JSON pointer relative to the rule.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "at {}: {}", self.path, self.message)
        }
    }
}

/// Why an evaluation failed (a flag then answers with the `GENERAL` error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleFault {
    /// A value without a number in it met arithmetic or a comparison.
    NaN,
    /// An operation got arguments it cannot take.
    InvalidArguments(&'static str),
    /// The evaluation would take more work, or build larger or deeper values, than one
    /// evaluation may (see [`MAX_WORK`]); the reason says which.
    OverBudget(&'static str),
}

impl std::error::Error for RuleFault {}

impl fmt::Display for RuleFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleFault::NaN => {
                f.write_str("a value that is not a number met arithmetic or a comparison")
            }
            RuleFault::InvalidArguments(what) => write!(f, "invalid arguments: {what}"),
            RuleFault::OverBudget(what) => write!(f, "over the evaluation budget: {what}"),
        }
    }
}

/// What evaluating a node answers: a value, borrowed from the data where it can be.
pub(crate) type Eval<'a> = Result<Cow<'a, Value>, RuleFault>;
