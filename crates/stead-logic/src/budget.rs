//! What one evaluation may spend: steps, and values copied or built.

use std::borrow::Cow;

use serde_json::Value;

use crate::error::RuleFault;

/// The most work one evaluation may do: each step of the rule, each value copied or built
/// (a string counts one per 64 bytes). A rule over a large context that copies or nests
/// its results at every step of an iteration (quadratic work) stops here with
/// [`RuleFault::OverBudget`], long before it could exhaust memory, time or the stack.
pub const MAX_WORK: u64 = 2_000_000;
/// How deep a rule's result may nest: below what a stored value may (so that what a rule
/// computes can always be stored and read back).
pub const MAX_RESULT_DEPTH: usize = 64;
/// The bytes of a string that count as one unit of work.
pub(crate) const STRING_BYTES_PER_UNIT: u64 = 64;

/// What one evaluation may still spend.
pub(crate) struct Budget {
    left: std::cell::Cell<u64>,
}

impl Budget {
    pub(crate) fn new(work: u64) -> Self {
        Budget {
            left: std::cell::Cell::new(work),
        }
    }

    pub(crate) fn spend(&self, units: u64) -> Result<(), RuleFault> {
        let left = self.left.get();
        if units > left {
            self.left.set(0);
            return Err(RuleFault::OverBudget(
                "it does more work, or copies more data, than one evaluation may",
            ));
        }
        self.left.set(left - units);
        Ok(())
    }

    /// The value, owned: a borrowed one is copied, and the copy is paid for.
    pub(crate) fn own(&self, v: Cow<'_, Value>) -> Result<Value, RuleFault> {
        if let Cow::Borrowed(b) = &v {
            self.spend(weight(b, self.left.get()))?;
        }
        Ok(v.into_owned())
    }
}

/// What copying `v` costs (its values, and its strings by length), counted without recursion
/// and only as far as `cap`.
pub(crate) fn weight(v: &Value, cap: u64) -> u64 {
    // A scalar, the usual case, without a stack.
    match v {
        Value::String(s) => return 1 + s.len() as u64 / STRING_BYTES_PER_UNIT,
        Value::Array(_) | Value::Object(_) => {}
        _ => return 1,
    }
    let mut total = 0u64;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += 1;
        match v {
            Value::String(s) => total += s.len() as u64 / STRING_BYTES_PER_UNIT,
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => {
                total += map.len() as u64;
                stack.extend(map.values());
            }
            _ => {}
        }
        if total > cap {
            break;
        }
    }
    total
}

/// How deep `v` nests (a scalar is 1), counted without recursion.
pub(crate) fn depth(v: &Value) -> usize {
    if !matches!(v, Value::Array(_) | Value::Object(_)) {
        return 1;
    }
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, d + 1))),
            _ => {}
        }
    }
    max
}
