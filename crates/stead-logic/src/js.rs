//! Values as JavaScript sees them: truthiness, numbers, strings, equality, order.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Number, Value};

use crate::error::{Eval, RuleFault};
use crate::op::Op;

/// JavaScript's truthiness, with JsonLogic's one change: an empty array is false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}

/// JavaScript's own falsiness (`!v`), where every array and object is true.
pub(crate) fn js_falsy(v: &Value) -> bool {
    match v {
        Value::Array(_) | Value::Object(_) => false,
        other => !truthy(other),
    }
}

pub(crate) fn is_object(v: &Value) -> bool {
    matches!(v, Value::Array(_) | Value::Object(_))
}

/// JavaScript's `Number(s)` for a string.
pub(crate) fn js_parse_number(s: &str) -> f64 {
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if t.is_empty() {
        return 0.0;
    }
    let radix = |p: &str, r: u32| {
        u64::from_str_radix(p, r)
            .ok()
            .map(|n| n as f64)
            .unwrap_or(f64::NAN)
    };
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return radix(h, 16);
    }
    if let Some(o) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
        return radix(o, 8);
    }
    if let Some(b) = t.strip_prefix("0b").or_else(|| t.strip_prefix("0B")) {
        return radix(b, 2);
    }
    match t {
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    // Digits, one optional dot, an optional exponent: nothing else (no "inf", no "nan").
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let ok = !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.');
    if !ok {
        return f64::NAN;
    }
    t.parse::<f64>().unwrap_or(f64::NAN)
}

/// JavaScript's `Number(v)`.
pub(crate) fn to_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => js_parse_number(s),
        Value::Array(a) => match a.as_slice() {
            [] => 0.0,
            [one] => js_parse_number(&to_js_string(one)),
            _ => f64::NAN,
        },
        Value::Object(_) => f64::NAN,
    }
}

/// JavaScript's `String(n)` for a number.
pub(crate) fn js_number_string(n: f64) -> String {
    if n.is_nan() {
        return "NaN".to_owned();
    }
    if n.is_infinite() {
        return if n > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    if n == 0.0 {
        return "0".to_owned();
    }
    let abs = n.abs();
    if (1e-6..1e21).contains(&abs) {
        // Rust prints the shortest digits that round-trip, without an exponent.
        return format!("{n}");
    }
    // An exponent, as JavaScript writes it: 1e+21, 1.5e-7.
    let s = format!("{n:e}");
    match s.split_once('e') {
        Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
        _ => s,
    }
}

/// JavaScript's `String(v)`.
pub fn to_js_string(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number_string(n),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Null => String::new(),
                other => to_js_string(other),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".to_owned(),
    }
}

pub(crate) fn number_string(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        js_number_string(u as f64)
    } else {
        js_number_string(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// A number as a JSON value: integral values as integers.
pub(crate) fn number(n: f64) -> Result<Value, RuleFault> {
    if n.is_nan() || n.is_infinite() {
        return Err(RuleFault::NaN);
    }
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        // -0 is 0 in JSON.
        return Ok(Value::from(n as i64));
    }
    Ok(Number::from_f64(n)
        .map(Value::Number)
        .unwrap_or(Value::Null))
}

pub(crate) fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => x == y,
        _ => false,
    }
}

/// JavaScript's `a == b`.
pub(crate) fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(_) | Value::Object(_), Value::Array(_) | Value::Object(_)) => false,
        (Value::Array(_) | Value::Object(_), other) => {
            loose_eq(&Value::String(to_js_string(a)), other)
        }
        (other, Value::Array(_) | Value::Object(_)) => {
            loose_eq(other, &Value::String(to_js_string(b)))
        }
        _ => to_number(a) == to_number(b),
    }
}

/// JavaScript's `<` family: strings by code unit, anything else as numbers.
pub(crate) fn relational(a: &Value, b: &Value) -> Option<Ordering> {
    let prim = |v: &Value| match v {
        Value::Array(_) | Value::Object(_) => Value::String(to_js_string(v)),
        other => other.clone(),
    };
    let (a, b) = (prim(a), prim(b));
    match (&a, &b) {
        (Value::String(x), Value::String(y)) => Some(x.encode_utf16().cmp(y.encode_utf16())),
        _ => to_number(&a).partial_cmp(&to_number(&b)),
    }
}

pub(crate) fn is_str_or_null(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Null)
}

/// The reference evaluator's coercion of a comparison's right side against its left.
pub(crate) fn compare_check<'a>(item: Cow<'a, Value>, prev: &Value, strict: bool) -> Eval<'a> {
    if strict || (is_str_or_null(&item) && is_str_or_null(prev)) {
        return Ok(item);
    }
    if is_object(&item) || (to_number(&item).is_nan() && !prev.is_null()) {
        return Err(RuleFault::NaN);
    }
    if is_object(prev) || to_number(prev).is_nan() {
        return Err(RuleFault::NaN);
    }
    if prev.is_null() && js_falsy(&item) {
        return Ok(Cow::Owned(Value::Null));
    }
    if item.is_null() && js_falsy(prev) {
        return Ok(Cow::Owned(Value::from(0)));
    }
    Ok(item)
}

pub(crate) fn compare_op(op: Op, a: &Value, b: &Value) -> bool {
    match op {
        Op::Eq => loose_eq(a, b),
        Op::Ne => !loose_eq(a, b),
        Op::StrictEq => strict_eq(a, b),
        Op::StrictNe => !strict_eq(a, b),
        Op::Lt => relational(a, b) == Some(Ordering::Less),
        Op::Le => matches!(relational(a, b), Some(Ordering::Less | Ordering::Equal)),
        Op::Gt => relational(a, b) == Some(Ordering::Greater),
        Op::Ge => matches!(relational(a, b), Some(Ordering::Greater | Ordering::Equal)),
        _ => unreachable!("not a comparison"),
    }
}
