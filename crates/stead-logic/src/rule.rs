//! A rule compiled: checked once, evaluated many times without parsing.

use serde_json::{Map, Value};

use crate::budget::{Budget, MAX_RESULT_DEPTH, MAX_WORK, depth};
use crate::error::{RuleError, RuleFault};
use crate::eval::eval;
use crate::js::{js_number_string, js_parse_number, to_js_string, to_number};
use crate::op::{OPERATIONS, Op};

/// A compiled rule.
#[derive(Debug, Clone)]
pub(crate) enum Node {
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
pub(crate) enum Scope<'a> {
    Root(Root<'a>),
    Item(&'a Value, &'a Scope<'a>),
}

/// How a rule is compiled.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
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
    /// use stead_logic::Rule;
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

    /// Evaluates the rule as flag targeting does: over `context`, with flagd's `$flagd`
    /// properties (`flagKey`, `timestamp`) given by `flagd`, which `{"var": "$flagd.flagKey"}`
    /// reads and `fractional` hashes by.
    ///
    /// ```
    /// use serde_json::json;
    /// use stead_logic::Rule;
    ///
    /// let rule = Rule::compile(&json!({"cat": [{"var": "$flagd.flagKey"}, "/", {"var": "user"}]})).unwrap();
    /// let context = json!({"user": "ada"});
    /// let flagd = json!({"flagKey": "checkout", "timestamp": 1767225600});
    /// assert_eq!(rule.apply_with_flagd(context.as_object().unwrap(), &flagd).unwrap(), json!("checkout/ada"));
    /// ```
    pub fn apply_with_flagd(
        &self,
        context: &Map<String, Value>,
        flagd: &Value,
    ) -> Result<Value, RuleFault> {
        self.evaluate(Root { context, flagd })
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

pub(crate) fn err(path: &str, message: impl Into<String>) -> RuleError {
    RuleError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Escapes a JSON pointer segment.
pub(crate) fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

pub(crate) fn compile(rule: &Value, path: &mut String, opts: Options) -> Result<Node, RuleError> {
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

pub(crate) fn compile_op(
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
    Ok(fold_cat(node))
}

/// A `cat` of two or more literals is folded when compiled, as the reference evaluator
/// folds it: there, unlike at run time, a `null` adds nothing (`{"cat": ["a", null]}` is
/// `"a"`, where a missing value read at run time is written `null`).
fn fold_cat(node: Node) -> Node {
    match node {
        Node::Op(Op::Cat, args)
            if args.len() > 1 && args.iter().all(|a| matches!(a, Node::Lit(_))) =>
        {
            let mut text = String::new();
            for arg in &args {
                if let Node::Lit(v) = arg
                    && !v.is_null()
                {
                    text.push_str(&to_js_string(v));
                }
            }
            Node::Lit(Value::String(text))
        }
        other => other,
    }
}

/// Refuses what the reference evaluator refuses while it compiles: arithmetic over
/// literals that can never be numbers, and argument counts no evaluation can satisfy.
pub(crate) fn check_literals(node: &Node, path: &str) -> Result<(), RuleError> {
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

pub(crate) fn compile_var(
    args: &Value,
    path: &mut String,
    opts: Options,
) -> Result<Node, RuleError> {
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
pub(crate) fn split_path(path: &str) -> Vec<String> {
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
