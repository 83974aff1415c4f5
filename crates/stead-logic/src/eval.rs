//! Evaluation of a compiled rule over data, within a budget.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::budget::{Budget, STRING_BYTES_PER_UNIT};
use crate::error::{Eval, RuleFault};
use crate::flagd::{fractional, sem_ver};
use crate::js::{
    compare_check, compare_op, is_object, js_falsy, number, strict_eq, to_js_string, to_number,
    truthy,
};
use crate::op::Op;
use crate::rule::{Node, Scope, split_path};

pub(crate) fn lookup<'a>(mut v: &'a Value, path: &[String]) -> Option<Cow<'a, Value>> {
    for (i, seg) in path.iter().enumerate() {
        match v {
            Value::Object(m) => v = m.get(seg)?,
            Value::Array(a) => {
                if seg == "length" {
                    return (i + 1 == path.len()).then(|| Cow::Owned(Value::from(a.len())));
                }
                v = a.get(seg.parse::<usize>().ok()?)?;
            }
            Value::String(s) => {
                if i + 1 != path.len() {
                    return None;
                }
                if seg == "length" {
                    return Some(Cow::Owned(Value::from(s.encode_utf16().count())));
                }
                let c = s.chars().nth(seg.parse::<usize>().ok()?)?;
                return Some(Cow::Owned(Value::String(c.to_string())));
            }
            _ => return None,
        }
    }
    Some(Cow::Borrowed(v))
}

pub(crate) fn lookup_scope<'a>(scope: Scope<'a>, path: &[String]) -> Option<Cow<'a, Value>> {
    match scope {
        Scope::Item(v, _) => lookup(v, path),
        Scope::Root(root) => match path.split_first() {
            None => {
                let mut whole = root.context.clone();
                if !root.flagd.is_null() {
                    whole.insert("$flagd".to_owned(), root.flagd.clone());
                }
                Some(Cow::Owned(Value::Object(whole)))
            }
            Some((first, rest)) if first == "$flagd" => lookup(root.flagd, rest),
            Some((first, rest)) => lookup(root.context.get(first)?, rest),
        },
    }
}

/// The scope `up` iterations out of `scope` (the root stays the root).
pub(crate) fn outer(mut scope: Scope<'_>, up: usize) -> Scope<'_> {
    for _ in 0..up {
        match scope {
            Scope::Item(_, around) => scope = *around,
            Scope::Root(_) => break,
        }
    }
    scope
}

pub(crate) fn eval<'a>(node: &'a Node, scope: Scope<'a>, b: &Budget) -> Eval<'a> {
    b.spend(1)?;
    match node {
        Node::Lit(v) => Ok(Cow::Borrowed(v)),
        Node::List(nodes) => {
            let mut out = Vec::with_capacity(nodes.len());
            for n in nodes {
                out.push(b.own(eval(n, scope, b)?)?);
            }
            Ok(Cow::Owned(Value::Array(out)))
        }
        Node::Var { path, default, up } => match lookup_scope(outer(scope, *up), path) {
            Some(v) if !v.is_null() => Ok(v),
            _ => match default {
                Some(d) => eval(d, scope, b),
                None => Ok(Cow::Owned(Value::Null)),
            },
        },
        Node::VarDyn(nodes) => {
            let key = match nodes.first() {
                Some(n) => b.own(eval(n, scope, b)?)?,
                None => Value::Null,
            };
            let path = match &key {
                Value::Null => Vec::new(),
                Value::String(s) if s.is_empty() => Vec::new(),
                other => split_path(&to_js_string(other)),
            };
            match lookup_scope(scope, &path) {
                Some(v) if !v.is_null() => Ok(Cow::Owned(b.own(v)?)),
                _ => match nodes.get(1) {
                    Some(d) => Ok(Cow::Owned(b.own(eval(d, scope, b)?)?)),
                    None => Ok(Cow::Owned(Value::Null)),
                },
            }
        }
        Node::Op(op, args) if op.lazy() => eval_lazy(*op, args, scope, b),
        Node::Op(op, args) => {
            let mut values = Vec::with_capacity(args.len());
            for a in args {
                values.push(eval(a, scope, b)?);
            }
            apply(*op, values, scope, false, b)
        }
        Node::Spread(op, arg) => {
            if op.lazy() {
                return Err(RuleFault::InvalidArguments("this operation takes a list"));
            }
            let v = eval(arg, scope, b)?;
            match v {
                Cow::Owned(Value::Array(items)) => apply(
                    *op,
                    items.into_iter().map(Cow::Owned).collect(),
                    scope,
                    true,
                    b,
                ),
                Cow::Borrowed(Value::Array(items)) => apply(
                    *op,
                    items.iter().map(Cow::Borrowed).collect(),
                    scope,
                    true,
                    b,
                ),
                other => apply(*op, vec![other], scope, false, b),
            }
        }
    }
}

pub(crate) fn eval_lazy<'a>(op: Op, args: &'a [Node], scope: Scope<'a>, b: &Budget) -> Eval<'a> {
    match op {
        Op::If => {
            match args.len() {
                0 => return Ok(Cow::Owned(Value::Null)),
                1 => return eval(&args[0], scope, b),
                _ => {}
            }
            let mut i = 0;
            while i + 1 < args.len() {
                let test = eval(&args[i], scope, b)?;
                if truthy(&test) {
                    return eval(&args[i + 1], scope, b);
                }
                i += 2;
            }
            match args.get(i) {
                Some(otherwise) => eval(otherwise, scope, b),
                None => Ok(Cow::Owned(Value::Null)),
            }
        }
        Op::Or | Op::And => {
            let mut last = Cow::Owned(Value::Null);
            for a in args {
                last = eval(a, scope, b)?;
                if truthy(&last) == (op == Op::Or) {
                    return Ok(last);
                }
            }
            Ok(last)
        }
        Op::Map | Op::Filter | Op::All | Op::Some | Op::None | Op::Reduce => {
            let Some(selector) = args.first() else {
                return Err(RuleFault::InvalidArguments("an iteration needs an array"));
            };
            let selected = eval(selector, scope, b)?;
            let items: &[Value] = match &*selected {
                Value::Array(a) => a,
                v if js_falsy(v) => &[],
                _ => return Err(RuleFault::InvalidArguments("an iteration needs an array")),
            };
            let mapper = args.get(1);
            let map_one = |item: &Value| -> Result<Value, RuleFault> {
                match mapper {
                    Some(m) => b.own(eval(m, Scope::Item(item, &scope), b)?),
                    None => Ok(Value::Null),
                }
            };
            let out = match op {
                Op::Map => Value::Array(items.iter().map(map_one).collect::<Result<_, _>>()?),
                Op::Filter => {
                    let mut kept = Vec::new();
                    for item in items {
                        if truthy(&map_one(item)?) {
                            kept.push(b.own(Cow::Borrowed(item))?);
                        }
                    }
                    Value::Array(kept)
                }
                Op::All => {
                    // An empty array is false, but a missing one is an empty iteration.
                    if matches!(&*selected, Value::Array(a) if a.is_empty()) {
                        Value::Bool(false)
                    } else {
                        let mut all = true;
                        for item in items {
                            if !truthy(&map_one(item)?) {
                                all = false;
                                break;
                            }
                        }
                        Value::Bool(all)
                    }
                }
                Op::Some | Op::None => {
                    let mut some = false;
                    for item in items {
                        if truthy(&map_one(item)?) {
                            some = true;
                            break;
                        }
                    }
                    Value::Bool(some == (op == Op::Some))
                }
                Op::Reduce => {
                    let mut rest = items.iter();
                    let mut acc = match args.get(2) {
                        Some(initial) => b.own(eval(initial, scope, b)?)?,
                        None => match rest.next() {
                            Some(first) => b.own(Cow::Borrowed(first))?,
                            None => {
                                return Err(RuleFault::InvalidArguments(
                                    "reduce of an empty array with no initial value",
                                ));
                            }
                        },
                    };
                    for current in rest {
                        let mut step = Map::with_capacity(2);
                        step.insert("accumulator".to_owned(), acc);
                        step.insert("current".to_owned(), b.own(Cow::Borrowed(current))?);
                        let step = Value::Object(step);
                        acc = match mapper {
                            Some(m) => b.own(eval(m, Scope::Item(&step, &scope), b)?)?,
                            None => Value::Null,
                        };
                    }
                    acc
                }
                _ => unreachable!("an iteration"),
            };
            Ok(Cow::Owned(out))
        }
        _ => unreachable!("not lazy"),
    }
}

/// Applies an eager operation to its evaluated arguments. `spread` is true when the
/// arguments came from one value that was an array.
pub(crate) fn apply<'a>(
    op: Op,
    args: Vec<Cow<'a, Value>>,
    scope: Scope<'a>,
    spread: bool,
    b: &Budget,
) -> Eval<'a> {
    let owned = |v: Value| Ok(Cow::Owned(v));
    match op {
        Op::Eq | Op::Ne | Op::StrictEq | Op::StrictNe | Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            if args.len() < 2 || spread {
                return Err(RuleFault::InvalidArguments(
                    "a comparison takes two or three values",
                ));
            }
            let strict = matches!(op, Op::StrictEq | Op::StrictNe);
            let mut it = args.into_iter();
            let mut prev = it.next().expect("two");
            for item in it {
                let item = compare_check(item, &prev, strict)?;
                if !compare_op(op, &prev, &item) {
                    return owned(Value::Bool(false));
                }
                prev = item;
            }
            owned(Value::Bool(true))
        }
        Op::Not | Op::NotNot => {
            let t = args.first().is_some_and(|v| truthy(v));
            owned(Value::Bool(t == (op == Op::NotNot)))
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod => arithmetic(op, &args),
        Op::Max | Op::Min => {
            let mut best: Option<f64> = None;
            for v in &args {
                let Value::Number(n) = &**v else {
                    return Err(RuleFault::InvalidArguments("max and min take numbers"));
                };
                let n = n.as_f64().unwrap_or(f64::NAN);
                best = Some(match best {
                    None => n,
                    Some(b) if (op == Op::Max && n > b) || (op == Op::Min && n < b) => n,
                    Some(b) => b,
                });
            }
            match best {
                Some(b) => number(b).map(Cow::Owned),
                None => Err(RuleFault::InvalidArguments("max and min take numbers")),
            }
        }
        Op::Merge => {
            let mut out = Vec::new();
            for v in args {
                match b.own(v)? {
                    Value::Array(items) => out.extend(items),
                    other => out.push(other),
                }
            }
            owned(Value::Array(out))
        }
        Op::In => {
            let needle = args.first().map(|v| &**v).unwrap_or(&Value::Null);
            let hay = args.get(1).map(|v| &**v).unwrap_or(&Value::Null);
            match hay {
                Value::String(s) if !s.is_empty() => {
                    owned(Value::Bool(s.contains(&to_js_string(needle))))
                }
                Value::Array(items) => {
                    owned(Value::Bool(items.iter().any(|i| strict_eq(i, needle))))
                }
                v if js_falsy(v) => owned(Value::Bool(false)),
                _ => Err(RuleFault::InvalidArguments(
                    "in looks into a string or an array",
                )),
            }
        }
        Op::Cat => {
            let mut s = String::new();
            for v in &args {
                s.push_str(&to_js_string(v));
                b.spend(s.len() as u64 / STRING_BYTES_PER_UNIT)?;
            }
            owned(Value::String(s))
        }
        Op::Substr => substr(&args).map(Cow::Owned),
        Op::Missing => {
            let mut missing = Vec::new();
            for key in &args {
                if !present(scope, key) {
                    missing.push(b.own(key.clone())?);
                }
            }
            owned(Value::Array(missing))
        }
        Op::MissingSome => {
            let need = args.first().map_or(0.0, |v| to_number(v));
            let Some(Value::Array(options)) = args.get(1).map(|v| &**v) else {
                return Err(RuleFault::InvalidArguments(
                    "missing_some takes a count and a list",
                ));
            };
            let missing: Vec<Value> = options
                .iter()
                .filter(|k| !present(scope, k))
                .cloned()
                .collect();
            if ((options.len() - missing.len()) as f64) >= need {
                owned(Value::Array(Vec::new()))
            } else {
                owned(Value::Array(missing))
            }
        }
        Op::Fractional => owned(fractional(&args, scope)),
        Op::SemVer => owned(sem_ver(&args)),
        Op::StartsWith | Op::EndsWith => owned(match args.as_slice() {
            [a, b] => match (&**a, &**b) {
                (Value::String(a), Value::String(b)) => Value::Bool(if op == Op::StartsWith {
                    a.starts_with(b.as_str())
                } else {
                    a.ends_with(b.as_str())
                }),
                _ => Value::Null,
            },
            _ => Value::Null,
        }),
        _ => unreachable!("lazy operations are evaluated elsewhere"),
    }
}

/// Whether `key` (a path) names a value in scope, as `missing` sees it: a value that is
/// there, even `null`, is present; a path through a falsy value is not.
pub(crate) fn present(scope: Scope<'_>, key: &Value) -> bool {
    let path = split_path(&to_js_string(key));
    let (mut v, rest): (&Value, &[String]) = match scope {
        Scope::Item(v, _) => (v, &path[..]),
        Scope::Root(root) => match path.split_first() {
            Some((first, rest)) if first == "$flagd" => (root.flagd, rest),
            Some((first, rest)) => match root.context.get(first) {
                Some(v) => (v, rest),
                None => return false,
            },
            None => return false,
        },
    };
    for seg in rest {
        if js_falsy(v) {
            return false;
        }
        match lookup(v, std::slice::from_ref(seg)) {
            Some(Cow::Borrowed(next)) => v = next,
            Some(Cow::Owned(_)) => return true,
            None => return false,
        }
    }
    true
}

pub(crate) fn arithmetic<'a>(op: Op, args: &[Cow<'a, Value>]) -> Eval<'a> {
    let mut nums = Vec::with_capacity(args.len());
    for v in args {
        if is_object(v) {
            return Err(RuleFault::NaN);
        }
        let n = to_number(v);
        if n.is_nan() {
            return Err(RuleFault::NaN);
        }
        nums.push(n);
    }
    let result = match op {
        Op::Add => nums.iter().sum(),
        Op::Mul => nums.iter().product(),
        Op::Sub => match nums.as_slice() {
            [] => return Err(RuleFault::InvalidArguments("- needs a value")),
            [one] => -one,
            [first, rest @ ..] => rest.iter().fold(*first, |a, b| a - b),
        },
        Op::Div => match nums.as_slice() {
            [] => return Err(RuleFault::InvalidArguments("/ needs a value")),
            [one] if *one == 0.0 => return Err(RuleFault::NaN),
            [one] => 1.0 / one,
            [first, rest @ ..] => {
                let mut r = *first;
                for b in rest {
                    if *b == 0.0 {
                        return Err(RuleFault::NaN);
                    }
                    r /= b;
                }
                r
            }
        },
        Op::Mod => match nums.as_slice() {
            [] | [_] => return Err(RuleFault::InvalidArguments("% needs two values")),
            [first, rest @ ..] => rest.iter().fold(*first, |a, b| a % b),
        },
        _ => unreachable!("arithmetic"),
    };
    number(result).map(Cow::Owned)
}

/// JavaScript's `ToIntegerOrInfinity` over a number.
pub(crate) fn to_integer(n: f64) -> f64 {
    if n.is_nan() { 0.0 } else { n.trunc() }
}

pub(crate) fn substr(args: &[Cow<'_, Value>]) -> Result<Value, RuleFault> {
    let Some(Value::String(s)) = args.first().map(|v| &**v) else {
        return Err(RuleFault::InvalidArguments("substr takes a string"));
    };
    let chars: Vec<char> = s.chars().collect();
    let from = args.get(1).map_or(0.0, |v| to_integer(to_number(v)));
    let take = |chars: &[char], from: f64, len: Option<f64>| -> Vec<char> {
        let size = chars.len() as f64;
        let start = if from < 0.0 {
            (size + from).max(0.0)
        } else {
            from.min(size)
        };
        let len = len.map_or(size - start, |l| l.clamp(0.0, size - start));
        chars[start as usize..(start + len) as usize].to_vec()
    };
    let out = match args.get(2).map(|v| &**v) {
        Some(end) if to_number(end) < 0.0 && !end.is_null() => {
            let rest = take(&chars, from, None);
            let keep = rest.len() as f64 + to_integer(to_number(end));
            take(&rest, 0.0, Some(keep))
        }
        Some(len) => take(&chars, from, Some(to_integer(to_number(len)))),
        None => take(&chars, from, None),
    };
    Ok(Value::String(out.into_iter().collect()))
}
