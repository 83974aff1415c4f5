//! # stead-logic: JsonLogic with flagd's operations
//!
//! Rules are compiled once (every operation known, every arithmetic step over literals
//! possible) and evaluated many times without parsing, within a budget of work, so that a
//! rule written by a caller can neither crash nor stall the process that runs it. Feature
//! flags target with it; the event reactor computes state with it.
//!
//! ```
//! use serde_json::json;
//! use stead_logic::Rule;
//!
//! let rule = Rule::compile(&json!({"if": [
//!     {">=": [{"var": "age"}, 18]}, "adult", "minor"
//! ]})).unwrap();
//! let data = json!({"age": 42});
//! assert_eq!(rule.apply(data.as_object().unwrap()).unwrap(), json!("adult"));
//! ```
//!
//! The semantics are those of the evaluator flagd's reference implementation runs, in its
//! default (compiled) mode, down to its quirks: loose equality as JavaScript's `==`, numbers
//! coerced from strings, a comparison or an arithmetic step that meets a value with no
//! number in it fails the evaluation, `cat` writes a missing value as `null`. The vectors in
//! `tests/fixtures` (generated with that evaluator) pin every case.
//!
//! Differences that remain, all at the edges of JSON: strings are measured and sliced in
//! Unicode scalar values where JavaScript counts UTF-16 units (`substr`, ordering of
//! strings outside the Basic Multilingual Plane), an arithmetic result outside the range of
//! a 64-bit float is an error where JavaScript would carry `Infinity`, and `===` on two
//! arrays or objects is `false` (JavaScript compares their identity).
//!
//! The rooms: `rule` compiles, `eval` evaluates, `js` is JavaScript's reading of values,
//! `budget` what one evaluation may spend, `op` the operations, `flagd` flagd's own
//! operations (`fractional`, `sem_ver`).

mod budget;
mod error;
mod eval;
mod flagd;
mod js;
mod op;
mod rule;
#[cfg(test)]
mod tests;

pub use budget::{MAX_RESULT_DEPTH, MAX_WORK};
pub use error::{RuleError, RuleFault};
pub use flagd::{MAX_TOTAL_WEIGHT, bucket_of, fractional_bucket};
pub use js::{to_js_string as js_string, truthy};
pub use op::OPERATIONS;
pub use rule::Rule;
