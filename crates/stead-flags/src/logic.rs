//! Targeting rules: JsonLogic with flagd's operations, compiled once when a flag set is
//! published and evaluated many times without parsing.
//!
//! The semantics are those of the evaluator flagd's reference implementation runs, in its
//! default (compiled) mode, down to its quirks: loose equality as JavaScript's `==`, numbers
//! coerced from strings, a comparison or an arithmetic step that meets a value with no
//! number in it fails the evaluation (the flag answers `GENERAL`), `cat` writes a missing
//! value as `null`. Every case is pinned by the vectors in `tests/fixtures`.
//!
//! Differences that remain, all at the edges of JSON: strings are measured and sliced in
//! Unicode scalar values where JavaScript counts UTF-16 units (`substr`, ordering of
//! strings outside the Basic Multilingual Plane), an arithmetic result outside the range of
//! a 64-bit float is an error where JavaScript would carry `Infinity`, and `===` on two
//! arrays or objects is `false` (JavaScript compares their identity).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Number, Value};

use crate::fractional::{MAX_TOTAL_WEIGHT, bucket_of};

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

type Eval<'a> = Result<Cow<'a, Value>, RuleFault>;

/// The most work one evaluation may do: each step of the rule, each value copied or built
/// (a string counts one per 64 bytes). A rule over a large context that copies or nests
/// its results at every step of an iteration (quadratic work) stops here with
/// [`RuleFault::OverBudget`], long before it could exhaust memory, time or the stack.
pub const MAX_WORK: u64 = 2_000_000;
/// How deep a rule's result may nest: below what a stored value may (so that what a rule
/// computes can always be stored and read back).
pub const MAX_RESULT_DEPTH: usize = 64;
/// The bytes of a string that count as one unit of work.
const STRING_BYTES_PER_UNIT: u64 = 64;

/// What one evaluation may still spend.
struct Budget {
    left: std::cell::Cell<u64>,
}

impl Budget {
    fn new(work: u64) -> Self {
        Budget {
            left: std::cell::Cell::new(work),
        }
    }

    fn spend(&self, units: u64) -> Result<(), RuleFault> {
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
    fn own(&self, v: Cow<'_, Value>) -> Result<Value, RuleFault> {
        if let Cow::Borrowed(b) = &v {
            self.spend(weight(b, self.left.get()))?;
        }
        Ok(v.into_owned())
    }
}

/// What copying `v` costs (its values, and its strings by length), counted without recursion
/// and only as far as `cap`.
fn weight(v: &Value, cap: u64) -> u64 {
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
fn depth(v: &Value) -> usize {
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

/// The operations a rule may use: JsonLogic's and flagd's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    If,
    Eq,
    StrictEq,
    Ne,
    StrictNe,
    Not,
    NotNot,
    Or,
    And,
    Gt,
    Ge,
    Lt,
    Le,
    Max,
    Min,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Map,
    Filter,
    Reduce,
    All,
    Some,
    None,
    Merge,
    In,
    Cat,
    Substr,
    Missing,
    MissingSome,
    Fractional,
    SemVer,
    StartsWith,
    EndsWith,
}

impl Op {
    fn named(name: &str) -> Option<Op> {
        Some(match name {
            "if" | "?:" => Op::If,
            "==" => Op::Eq,
            "===" => Op::StrictEq,
            "!=" => Op::Ne,
            "!==" => Op::StrictNe,
            "!" => Op::Not,
            "!!" => Op::NotNot,
            "or" => Op::Or,
            "and" => Op::And,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "max" => Op::Max,
            "min" => Op::Min,
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "map" => Op::Map,
            "filter" => Op::Filter,
            "reduce" => Op::Reduce,
            "all" => Op::All,
            "some" => Op::Some,
            "none" => Op::None,
            "merge" => Op::Merge,
            "in" => Op::In,
            "cat" => Op::Cat,
            "substr" => Op::Substr,
            "missing" => Op::Missing,
            "missing_some" => Op::MissingSome,
            "fractional" => Op::Fractional,
            "sem_ver" => Op::SemVer,
            "starts_with" => Op::StartsWith,
            "ends_with" => Op::EndsWith,
            _ => return None,
        })
    }

    /// Operations whose arguments are evaluated lazily, in their own order or scope.
    fn lazy(self) -> bool {
        matches!(
            self,
            Op::If
                | Op::Or
                | Op::And
                | Op::Map
                | Op::Filter
                | Op::Reduce
                | Op::All
                | Op::Some
                | Op::None
        )
    }
}

/// The names of every operation a rule may use, for error messages and the guide.
pub const OPERATIONS: &[&str] = &[
    "var",
    "missing",
    "missing_some",
    "if",
    "?:",
    "==",
    "===",
    "!=",
    "!==",
    "!",
    "!!",
    "or",
    "and",
    ">",
    ">=",
    "<",
    "<=",
    "max",
    "min",
    "+",
    "-",
    "*",
    "/",
    "%",
    "map",
    "filter",
    "reduce",
    "all",
    "some",
    "none",
    "merge",
    "in",
    "cat",
    "substr",
    "fractional",
    "sem_ver",
    "starts_with",
    "ends_with",
];

/// A compiled rule.
#[derive(Debug, Clone)]
enum Node {
    /// A value as it is (a scalar, or an object with no keys).
    Lit(Value),
    /// An array whose members are evaluated.
    List(Vec<Node>),
    /// `var` with a literal path.
    Var {
        path: Vec<String>,
        default: Option<Box<Node>>,
        /// How many iterations out the path starts (`../`, in rules compiled with
        /// [`Rule::compile_scoped`]).
        up: usize,
    },
    /// `var` whose path is computed.
    VarDyn(Vec<Node>),
    /// An operation over a list of arguments.
    Op(Op, Vec<Node>),
    /// An operation whose one argument is not a list: its value, when an array, is the
    /// list of arguments.
    Spread(Op, Box<Node>),
}

/// A targeting rule, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    root: Node,
}

/// What a rule sees: the evaluation context, with flagd's `$flagd` properties beside it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Root<'a> {
    pub(crate) context: &'a Map<String, Value>,
    pub(crate) flagd: &'a Value,
}

/// Where a `var` looks: the root, or an iteration's item (with the scope around it).
#[derive(Clone, Copy)]
enum Scope<'a> {
    Root(Root<'a>),
    Item(&'a Value, &'a Scope<'a>),
}

/// How a rule is compiled.
#[derive(Debug, Clone, Copy, Default)]
struct Options {
    /// Whether `var` paths may start with `../` to reach out of an iteration.
    scoped: bool,
}

impl Rule {
    /// Compiles a rule. Every operation must be known and every arithmetic step over
    /// literals must be able to succeed.
    pub fn compile(rule: &Value) -> Result<Rule, RuleError> {
        Ok(Rule {
            root: compile(rule, &mut String::new(), Options::default())?,
        })
    }

    /// Compiles a rule in which a `var` inside an iteration (`map`, `filter`, `reduce`,
    /// `all`, `some`, `none`) can reach the data around it: each leading `../` of its path
    /// steps out of one iteration, so `{"var": "../now"}` in a `filter` over a list reads
    /// `now` from the data the `filter` was evaluated in. Outside iterations `../` has no
    /// effect. Flag targeting does not use this (flagd has no such paths).
    ///
    /// ```
    /// use serde_json::json;
    /// use stead_flags::Rule;
    ///
    /// let rule = Rule::compile_scoped(&json!({"filter": [
    ///     {"var": "moves"},
    ///     {">": [{"var": "at"}, {"var": "../since"}]}
    /// ]})).unwrap();
    /// let data = json!({"since": 10, "moves": [{"at": 5}, {"at": 15}]});
    /// assert_eq!(rule.apply(data.as_object().unwrap()).unwrap(), json!([{"at": 15}]));
    /// ```
    pub fn compile_scoped(rule: &Value) -> Result<Rule, RuleError> {
        Ok(Rule {
            root: compile(rule, &mut String::new(), Options { scoped: true })?,
        })
    }

    /// Evaluates the rule over `data` (its `var` paths start there), with JsonLogic's and
    /// flagd's semantics as for flag targeting, but no `$flagd` properties.
    pub fn apply(&self, data: &Map<String, Value>) -> Result<Value, RuleFault> {
        self.evaluate(Root {
            context: data,
            flagd: &Value::Null,
        })
    }

    /// Evaluates the rule against `root`, within the budget of one evaluation.
    pub(crate) fn evaluate(&self, root: Root<'_>) -> Result<Value, RuleFault> {
        let budget = Budget::new(MAX_WORK);
        let value = budget.own(eval(&self.root, Scope::Root(root), &budget)?)?;
        if depth(&value) > MAX_RESULT_DEPTH {
            return Err(RuleFault::OverBudget(
                "its result nests deeper than a stored value may",
            ));
        }
        Ok(value)
    }
}

fn err(path: &str, message: impl Into<String>) -> RuleError {
    RuleError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Escapes a JSON pointer segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn compile(rule: &Value, path: &mut String, opts: Options) -> Result<Node, RuleError> {
    match rule {
        Value::Array(items) => {
            let mut nodes = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                nodes.push(compile(item, path, opts)?);
                path.truncate(len);
            }
            Ok(Node::List(nodes))
        }
        Value::Object(map) if map.is_empty() => Ok(Node::Lit(rule.clone())),
        Value::Object(map) => {
            if map.len() > 1 {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                return Err(err(
                    path,
                    format!(
                        "an operation is an object with exactly one key, this one has {}: {}",
                        map.len(),
                        keys.join(", ")
                    ),
                ));
            }
            let (name, args) = map.iter().next().expect("one key");
            let len = path.len();
            path.push('/');
            path.push_str(&escape(name));
            let node = compile_op(name, args, path, opts)?;
            path.truncate(len);
            Ok(node)
        }
        scalar => Ok(Node::Lit(scalar.clone())),
    }
}

fn compile_op(
    name: &str,
    args: &Value,
    path: &mut String,
    opts: Options,
) -> Result<Node, RuleError> {
    if name == "var" {
        return compile_var(args, path, opts);
    }
    if name == "$ref" {
        return Err(err(
            path,
            format!("no evaluator named {args} in the set's $evaluators"),
        ));
    }
    let Some(op) = Op::named(name) else {
        return Err(err(
            path,
            format!(
                "unknown operation {name:?}; the operations are {}",
                OPERATIONS.join(" ")
            ),
        ));
    };
    let node = match args {
        Value::Array(_) => match compile(args, path, opts)? {
            Node::List(nodes) => Node::Op(op, nodes),
            _ => unreachable!("an array compiles to a list"),
        },
        // A scalar is an argument list of one.
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            Node::Op(op, vec![Node::Lit(args.clone())])
        }
        Value::Object(_) => Node::Spread(op, Box::new(compile(args, path, opts)?)),
    };
    check_literals(&node, path)?;
    Ok(node)
}

/// Refuses what the reference evaluator refuses while it compiles: arithmetic over
/// literals that can never be numbers, and argument counts no evaluation can satisfy.
fn check_literals(node: &Node, path: &str) -> Result<(), RuleError> {
    let Node::Op(op, args) = node else {
        return Ok(());
    };
    let arithmetic = matches!(op, Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod);
    if !arithmetic {
        return Ok(());
    }
    match op {
        Op::Sub | Op::Div if args.is_empty() => {
            return Err(err(path, "needs at least one argument"));
        }
        Op::Mod if args.len() < 2 => return Err(err(path, "needs two arguments")),
        _ => {}
    }
    for (i, arg) in args.iter().enumerate() {
        let bad = match arg {
            Node::List(_) => true,
            Node::Lit(v) => match v {
                Value::Object(_) | Value::Array(_) => true,
                Value::String(s) => js_parse_number(s).is_nan(),
                _ => false,
            },
            _ => false,
        };
        if bad {
            return Err(err(
                &format!("{path}/{i}"),
                "this argument can never be a number",
            ));
        }
        if *op == Op::Div && i > 0 && matches!(arg, Node::Lit(v) if to_number(v) == 0.0) {
            return Err(err(&format!("{path}/{i}"), "division by zero"));
        }
    }
    Ok(())
}

fn compile_var(args: &Value, path: &mut String, opts: Options) -> Result<Node, RuleError> {
    let (key, default) = match args {
        Value::Array(items) => match items.as_slice() {
            [] => (None, None),
            [key] => (Some(key), None),
            [key, default, ..] => (Some(key), Some(default)),
        },
        other => (Some(other), None),
    };
    let mut up = 0;
    let literal_key = match key {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Some(Vec::new()),
        Some(Value::String(s)) if opts.scoped && s.starts_with("../") => {
            let mut rest = s.as_str();
            while let Some(r) = rest.strip_prefix("../") {
                up += 1;
                rest = r;
            }
            Some(if rest.is_empty() {
                Vec::new()
            } else {
                split_path(rest)
            })
        }
        Some(Value::String(s)) => Some(split_path(s)),
        Some(Value::Number(n)) => Some(split_path(&js_number_string(
            n.as_f64().unwrap_or(f64::NAN),
        ))),
        _ => None,
    };
    match literal_key {
        Some(path_segments) => {
            let default = match default {
                Some(d) => {
                    let len = path.len();
                    path.push_str("/1");
                    let node = compile(d, path, opts)?;
                    path.truncate(len);
                    Some(Box::new(node))
                }
                None => None,
            };
            Ok(Node::Var {
                path: path_segments,
                default,
                up,
            })
        }
        None => match compile(args, path, opts)? {
            Node::List(nodes) => Ok(Node::VarDyn(nodes)),
            node => Ok(Node::VarDyn(vec![node])),
        },
    }
}

/// Splits a `var` path at dots; `\.` is a dot inside a segment and `\\` a backslash.
fn split_path(path: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('.') | Some('/') | Some('\\')) => {
                current.push(chars.next().expect("peeked"));
            }
            '.' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

// ---------------------------------------------------------------------------------------
// Values as JavaScript sees them.

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
fn js_falsy(v: &Value) -> bool {
    match v {
        Value::Array(_) | Value::Object(_) => false,
        other => !truthy(other),
    }
}

fn is_object(v: &Value) -> bool {
    matches!(v, Value::Array(_) | Value::Object(_))
}

/// JavaScript's `Number(s)` for a string.
fn js_parse_number(s: &str) -> f64 {
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
pub(crate) fn to_js_string(v: &Value) -> String {
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

fn number_string(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        js_number_string(u as f64)
    } else {
        js_number_string(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// A number as a JSON value: integral values as integers.
fn number(n: f64) -> Result<Value, RuleFault> {
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

fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => x == y,
        _ => false,
    }
}

/// JavaScript's `a == b`.
fn loose_eq(a: &Value, b: &Value) -> bool {
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
fn relational(a: &Value, b: &Value) -> Option<Ordering> {
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

fn is_str_or_null(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Null)
}

/// The reference evaluator's coercion of a comparison's right side against its left.
fn compare_check<'a>(item: Cow<'a, Value>, prev: &Value, strict: bool) -> Eval<'a> {
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

fn compare_op(op: Op, a: &Value, b: &Value) -> bool {
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

// ---------------------------------------------------------------------------------------
// Evaluation.

fn lookup<'a>(mut v: &'a Value, path: &[String]) -> Option<Cow<'a, Value>> {
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

fn lookup_scope<'a>(scope: Scope<'a>, path: &[String]) -> Option<Cow<'a, Value>> {
    match scope {
        Scope::Item(v, _) => lookup(v, path),
        Scope::Root(root) => match path.split_first() {
            None => {
                let mut whole = root.context.clone();
                whole.insert("$flagd".to_owned(), root.flagd.clone());
                Some(Cow::Owned(Value::Object(whole)))
            }
            Some((first, rest)) if first == "$flagd" => lookup(root.flagd, rest),
            Some((first, rest)) => lookup(root.context.get(first)?, rest),
        },
    }
}

/// The scope `up` iterations out of `scope` (the root stays the root).
fn outer(mut scope: Scope<'_>, up: usize) -> Scope<'_> {
    for _ in 0..up {
        match scope {
            Scope::Item(_, around) => scope = *around,
            Scope::Root(_) => break,
        }
    }
    scope
}

fn eval<'a>(node: &'a Node, scope: Scope<'a>, b: &Budget) -> Eval<'a> {
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

fn eval_lazy<'a>(op: Op, args: &'a [Node], scope: Scope<'a>, b: &Budget) -> Eval<'a> {
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
fn apply<'a>(
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
fn present(scope: Scope<'_>, key: &Value) -> bool {
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

fn arithmetic<'a>(op: Op, args: &[Cow<'a, Value>]) -> Eval<'a> {
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
fn to_integer(n: f64) -> f64 {
    if n.is_nan() { 0.0 } else { n.trunc() }
}

fn substr(args: &[Cow<'_, Value>]) -> Result<Value, RuleFault> {
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

/// flagd's `fractional`: a deterministic split by MurmurHash3 of the bucketing value.
fn fractional(args: &[Cow<'_, Value>], scope: Scope<'_>) -> Value {
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
fn parse_version(raw: &Value) -> Option<semver::Version> {
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
fn sem_ver(args: &[Cow<'_, Value>]) -> Value {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(rule: Value, data: Value) -> Result<Value, RuleFault> {
        let rule = Rule::compile(&rule).unwrap();
        let Value::Object(context) = data else {
            panic!("an object")
        };
        let flagd = json!({"flagKey": "f", "timestamp": 1});
        rule.evaluate(Root {
            context: &context,
            flagd: &flagd,
        })
    }

    #[test]
    fn scoped_rules_reach_out_of_iterations_and_flag_rules_do_not() {
        let data = json!({"now": 100, "who": "a", "moves": [
            {"c": "a", "at": 95}, {"c": "b", "at": 99}, {"c": "a", "at": 10}
        ]});
        let data = data.as_object().unwrap();
        let recent = json!({"filter": [{"var": "moves"}, {"and": [
            {"==": [{"var": "c"}, {"var": "../who"}]},
            {">": [{"var": "at"}, {"-": [{"var": "../now"}, 50]}]}
        ]}]});
        let scoped = Rule::compile_scoped(&recent).unwrap();
        assert_eq!(scoped.apply(data).unwrap(), json!([{"c": "a", "at": 95}]));
        // Two levels out, and `../` at the root stays at the root.
        let nested = json!({"map": [[1], {"map": [[2], {"var": "../../now"}]}]});
        assert_eq!(
            Rule::compile_scoped(&nested).unwrap().apply(data).unwrap(),
            json!([[100]])
        );
        assert_eq!(
            Rule::compile_scoped(&json!({"var": "../now"}))
                .unwrap()
                .apply(data)
                .unwrap(),
            json!(100)
        );
        // A reduce step sees its accumulator and the data around it.
        let count = json!({"reduce": [{"var": "moves"},
            {"+": [{"var": "accumulator"}, {"if": [{"==": [{"var": "current.c"}, {"var": "../who"}]}, 1, 0]}]}, 0]});
        assert_eq!(
            Rule::compile_scoped(&count).unwrap().apply(data).unwrap(),
            json!(2)
        );
        // Flag targeting keeps flagd's reading: `../who` is a key nobody has.
        assert_eq!(
            Rule::compile(&recent).unwrap().apply(data).unwrap(),
            json!([])
        );
    }

    #[test]
    fn javascript_numbers_print_as_javascript_does() {
        assert_eq!(js_number_string(1.0), "1");
        assert_eq!(js_number_string(1.5), "1.5");
        assert_eq!(js_number_string(1e21), "1e+21");
        assert_eq!(js_number_string(1.5e-7), "1.5e-7");
        assert_eq!(js_number_string(-0.0), "0");
        assert_eq!(js_parse_number(" 42 "), 42.0);
        assert_eq!(js_parse_number("0x1A"), 26.0);
        assert!(js_parse_number("inf").is_nan());
        assert!(js_parse_number("1,5").is_nan());
        assert_eq!(js_parse_number(""), 0.0);
    }

    #[test]
    fn paths_escape_dots() {
        assert_eq!(split_path("a.b"), vec!["a", "b"]);
        assert_eq!(split_path(r"a\.b.c"), vec!["a.b", "c"]);
    }

    #[test]
    fn comparisons_coerce_like_the_reference() {
        assert_eq!(run(json!({"==": [null, 0]}), json!({})), Ok(json!(true)));
        assert_eq!(run(json!({"==": ["42", 42]}), json!({})), Ok(json!(true)));
        assert_eq!(
            run(json!({"==": ["abc", 42]}), json!({})),
            Err(RuleFault::NaN)
        );
        assert_eq!(run(json!({"<": [1, 2, 3]}), json!({})), Ok(json!(true)));
        assert_eq!(run(json!({"<": ["a", "b"]}), json!({})), Ok(json!(true)));
        assert_eq!(run(json!({"===": [1, 1.0]}), json!({})), Ok(json!(true)));
    }

    #[test]
    fn unknown_operations_and_impossible_arithmetic_do_not_compile() {
        let e = Rule::compile(&json!({"if": [{"nope": [1]}, 1, 2]})).unwrap_err();
        assert_eq!(e.path, "/if/0/nope");
        let e = Rule::compile(&json!({"+": ["abc", 1]})).unwrap_err();
        assert_eq!(e.path, "/+/0");
        assert!(Rule::compile(&json!({"a": 1, "b": 2})).is_err());
    }
}
