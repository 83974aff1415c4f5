//! flagd's own operations: `fractional` (a deterministic split) and `sem_ver`.
//!
//! Fractional splits are as flagd computes them: MurmurHash3 (x86, 32 bits, seed 0) of the
//! bucketing value's UTF-8 bytes, scaled onto the total weight, then the first bucket whose
//! running sum of weights passes it.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::io::Cursor;

use serde_json::Value;

use crate::js::{is_object, js_falsy, to_js_string};
use crate::rule::Scope;

/// flagd's `fractional`: a deterministic split by MurmurHash3 of the bucketing value.
pub(crate) fn fractional(args: &[Cow<'_, Value>], scope: Scope<'_>) -> Value {
    let Scope::Root(root) = scope else {
        return Value::Null;
    };
    let (by, buckets) = match args.split_first() {
        None => return Value::Null,
        Some((first, rest)) => match &**first {
            Value::String(s) => (s.clone(), rest),
            _ => {
                let key = root.context.get("targetingKey").unwrap_or(&Value::Null);
                if js_falsy(key) {
                    return Value::Null;
                }
                let flag_key = root.flagd.get("flagKey").unwrap_or(&Value::Null);
                (
                    format!("{}{}", to_js_string(flag_key), to_js_string(key)),
                    args,
                )
            }
        },
    };
    let mut variants = Vec::with_capacity(buckets.len());
    let mut weights = Vec::with_capacity(buckets.len());
    for b in buckets {
        let Value::Array(entry) = &**b else {
            return Value::Null;
        };
        let (variant, weight) = match entry.as_slice() {
            [v] => (v, 1),
            [v, w] => {
                let Some(w) = w.as_f64().filter(|w| w.fract() == 0.0) else {
                    return Value::Null;
                };
                (v, if w < 0.0 { 0 } else { w as u64 })
            }
            _ => return Value::Null,
        };
        if is_object(variant) {
            return Value::Null;
        }
        variants.push(variant);
        weights.push(weight);
    }
    if weights.iter().sum::<u64>() > MAX_TOTAL_WEIGHT {
        return Value::Null;
    }
    match bucket_of(&by, &weights) {
        Some(i) => variants[i].clone(),
        None => Value::Null,
    }
}

/// A version as flagd reads one: an optional `v`, then semantic versioning, or a partial
/// `1` / `1.2` made whole.
pub(crate) fn parse_version(raw: &Value) -> Option<semver::Version> {
    let text = to_js_string(raw);
    let text = text
        .strip_prefix('v')
        .or_else(|| text.strip_prefix('V'))
        .unwrap_or(&text);
    if let Ok(v) = semver::Version::parse(text) {
        return Some(v);
    }
    let mut parts = text.split('.');
    let major = parts.next()?;
    let minor = parts.next();
    if parts.next().is_some()
        || !major.bytes().all(|b| b.is_ascii_digit())
        || major.is_empty()
        || minor.is_some_and(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some(semver::Version::new(
        major.parse().ok()?,
        minor.map_or(Some(0), |m| m.parse().ok())?,
        0,
    ))
}

/// flagd's `sem_ver`: `[version, operator, version]`.
pub(crate) fn sem_ver(args: &[Cow<'_, Value>]) -> Value {
    let [a, op, b] = args else {
        return Value::Null;
    };
    let (Some(a), Some(b)) = (parse_version(a), parse_version(b)) else {
        return Value::Null;
    };
    let order = a.cmp_precedence(&b);
    Value::Bool(match to_js_string(op).as_str() {
        "=" => order == Ordering::Equal,
        "!=" => order != Ordering::Equal,
        "<" => order == Ordering::Less,
        "<=" => order != Ordering::Greater,
        ">" => order == Ordering::Greater,
        ">=" => order != Ordering::Less,
        "^" => a.major == b.major,
        "~" => a.major == b.major && a.minor == b.minor,
        _ => return Value::Null,
    })
}

/// The largest total weight of a split (flagd refuses more).
pub const MAX_TOTAL_WEIGHT: u64 = i32::MAX as u64;

/// The bucket (an index into `weights`) that `value` falls into, or `None` when no bucket
/// can take it (every weight zero, or a total over [`MAX_TOTAL_WEIGHT`]).
pub fn bucket_of(value: &str, weights: &[u64]) -> Option<usize> {
    let total: u64 = weights.iter().sum();
    if total == 0 || total > MAX_TOTAL_WEIGHT {
        return None;
    }
    // Reading from a byte slice cannot fail.
    let hash = murmur3::murmur3_32(&mut Cursor::new(value.as_bytes()), 0).ok()?;
    let point = (u64::from(hash) * total) >> 32;
    let mut sum = 0;
    weights.iter().position(|w| {
        sum += w;
        sum > point
    })
}

/// The bucket of the default split of flag `flag_key` for `targeting_key`: flagd hashes the
/// flag key followed by the targeting key.
pub fn fractional_bucket(flag_key: &str, targeting_key: &str, weights: &[u64]) -> Option<usize> {
    bucket_of(&format!("{flag_key}{targeting_key}"), weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bucket_takes_a_split_without_weight_or_with_too_much() {
        assert_eq!(bucket_of("x", &[]), None);
        assert_eq!(bucket_of("x", &[0, 0]), None);
        assert_eq!(bucket_of("x", &[MAX_TOTAL_WEIGHT, 1]), None);
        assert_eq!(bucket_of("x", &[0, 7]), Some(1));
        assert_eq!(bucket_of("x", &[1]), Some(0));
    }
}
