//! The pure room of declarative reactors: a JSON definition (initial state, rules matched
//! by event type, cron cycles, delivery), checked and compiled once, then run as a
//! [`Behaviour`] like a reactor written in Rust.
//!
//! Conditions and every value a rule computes are JsonLogic over `{event, state, now,
//! entity}` (and `item`, in a rule with `each`), evaluated as flag targeting is, with one
//! addition: inside an iteration a `var` path may start with `../` to read the data around
//! it (`{"var": "../now"}` in a `filter`).

use std::collections::BTreeSet;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stead_logic::{OPERATIONS, Rule, RuleFault, truthy};

use crate::reactor::{Behaviour, Cycle, Decide, Event, Rejected};

/// The most rules, or cycles, one definition holds.
pub const MAX_RULES: usize = 1000;
/// The most webhook endpoints of one reactor type.
pub const MAX_WEBHOOKS: usize = 10;
/// The largest `max` of an appended list.
pub const MAX_LIST: u64 = 10_000;

/// Why a definition was refused: where (`rules[2] "large order"`, `webhooks[0]`, ...) and
/// what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{at}: {message}")]
pub struct DefinitionError {
    /// Where the fault is.
    pub at: String,
    /// What is wrong there.
    pub message: String,
}

pub(crate) fn fault(at: &str, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        at: at.to_owned(),
        message: message.into(),
    }
}

/// A webhook endpoint of a reactor type: each command is `POST`ed to `url`, signed with
/// `secret` as the Standard Webhooks specification says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where deliveries go (`http://`; this build has no TLS backend).
    pub url: String,
    /// The signing secret: `whsec_` and the base64 of 24 to 64 random bytes.
    pub secret: String,
}

impl Webhook {
    /// The secret's key bytes.
    pub(crate) fn key(&self) -> Vec<u8> {
        secret_key(&self.secret).unwrap_or_default()
    }

    fn check(&self, at: &str) -> Result<(), DefinitionError> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| fault(at, format!("url {:?} is not a URL: {e}", self.url)))?;
        if url.scheme() == "https" {
            return Err(fault(
                at,
                "url is https://, but this build sends webhooks over http:// only (no TLS backend)",
            ));
        }
        if url.scheme() != "http" || url.host_str().is_none() {
            return Err(fault(at, "url must be an http:// URL with a host"));
        }
        secret_key(&self.secret).map_err(|m| fault(at, m))?;
        Ok(())
    }
}

fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let body = secret
        .strip_prefix("whsec_")
        .ok_or("secret must start with whsec_ (then the base64 of 24 to 64 bytes)")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("secret is not base64 after whsec_: {e}"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "secret holds {} bytes; it must hold 24 to 64",
            key.len()
        ));
    }
    Ok(key)
}

/// How a reactor type's commands leave the outbox: by pull (`GET .../commands`, then
/// `ack`), by webhooks, or both. A command leaves storage once every way has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// Whether consumers pull commands and acknowledge them.
    pub pull: bool,
    /// The webhook endpoints every command is pushed to.
    pub webhooks: Vec<Webhook>,
}

impl Delivery {
    /// Pull only: consumers read commands and acknowledge them.
    pub fn pull() -> Self {
        Delivery {
            pull: true,
            webhooks: Vec::new(),
        }
    }

    /// Push to `webhooks` (and pull too if `pull`).
    pub fn webhooks(webhooks: Vec<Webhook>, pull: bool) -> Self {
        Delivery { pull, webhooks }
    }

    /// Checks the endpoints and that there is a way out.
    pub fn check(&self) -> Result<(), DefinitionError> {
        if self.webhooks.len() > MAX_WEBHOOKS {
            return Err(fault(
                "webhooks",
                format!(
                    "at most {MAX_WEBHOOKS} endpoints, not {}",
                    self.webhooks.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let at = format!("webhooks[{i}]");
            w.check(&at)?;
            if !seen.insert(&w.url) {
                return Err(fault(&at, format!("url {:?} is listed twice", w.url)));
            }
        }
        if !self.pull && self.webhooks.is_empty() {
            return Err(fault(
                "pull",
                "with no webhooks, commands can only leave by pull: pull may not be false",
            ));
        }
        Ok(())
    }
}

// ----- the definition as written ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    #[serde(default)]
    state: Option<Value>,
    #[serde(default)]
    rules: Vec<Value>,
    #[serde(default)]
    cycles: Vec<Value>,
    #[serde(default)]
    webhooks: Vec<Webhook>,
    #[serde(default)]
    pull: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    on: Option<Value>,
    #[serde(default)]
    cron: Option<String>,
    #[serde(default)]
    each: Option<Value>,
    #[serde(default)]
    when: Option<Value>,
    #[serde(default)]
    set: Map<String, Value>,
    #[serde(default)]
    increment: Map<String, Value>,
    #[serde(default)]
    append: Map<String, Value>,
    #[serde(default)]
    emit: Vec<Value>,
    #[serde(default)]
    decision: Option<String>,
    #[serde(default)]
    reason: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmit {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppend {
    value: Value,
    max: u64,
}

// ----- compiled ---------------------------------------------------------------------------

/// A value a rule computes: plain JSON stays as it is, a one-key object naming an
/// operation is JsonLogic, and objects and arrays are templates of their members.
#[derive(Debug)]
enum Template {
    Lit(Value),
    Logic(Rule),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
}

impl Template {
    fn compile(v: &Value, at: &str) -> Result<Template, DefinitionError> {
        Ok(match v {
            Value::Object(m) if m.len() == 1 && is_operation(m.keys().next().expect("one")) => {
                Template::Logic(compile_logic(v, at)?)
            }
            Value::Object(m) => Template::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), Template::compile(v, &format!("{at}.{k}"))?)))
                    .collect::<Result<_, DefinitionError>>()?,
            ),
            Value::Array(items) => Template::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Template::compile(v, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            other => Template::Lit(other.clone()),
        })
    }

    fn eval(&self, data: &Map<String, Value>) -> Result<Value, RuleFault> {
        Ok(match self {
            Template::Lit(v) => v.clone(),
            Template::Logic(r) => r.apply(data)?,
            Template::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.eval(data)?)))
                    .collect::<Result<_, RuleFault>>()?,
            ),
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.eval(data))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

fn is_operation(key: &str) -> bool {
    OPERATIONS.contains(&key)
}

fn compile_logic(v: &Value, at: &str) -> Result<Rule, DefinitionError> {
    Rule::compile_scoped(v).map_err(|e| fault(at, format!("JsonLogic {e}")))
}

/// A state field, as a dotted path (`observations.lastResearchAt`).
fn field_path(path: &str, at: &str) -> Result<Vec<String>, DefinitionError> {
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(fault(at, format!("{path:?} is not a field path (a.b.c)")));
    }
    Ok(parts)
}

#[derive(Debug)]
struct Step {
    /// How it is named in the log and in errors.
    name: String,
    each: Option<Rule>,
    when: Option<Rule>,
    set: Vec<(Vec<String>, Template)>,
    increment: Vec<(Vec<String>, Template)>,
    append: Vec<(Vec<String>, Template, usize)>,
    emit: Vec<(String, Template)>,
    decision: String,
    reason: Option<Template>,
}

impl Step {
    fn compile(raw: RawStep, at: &str, default_name: String) -> Result<Step, DefinitionError> {
        let name = raw.name.unwrap_or(default_name);
        let logic = |v: &Option<Value>, what: &str| {
            v.as_ref()
                .map(|v| compile_logic(v, &format!("{at}.{what}")))
                .transpose()
        };
        let fields = |m: &Map<String, Value>, what: &str| {
            m.iter()
                .map(|(k, v)| {
                    let at = format!("{at}.{what}.{k}");
                    Ok((field_path(k, &at)?, Template::compile(v, &at)?))
                })
                .collect::<Result<Vec<_>, DefinitionError>>()
        };
        let mut append = Vec::new();
        for (k, v) in &raw.append {
            let at = format!("{at}.append.{k}");
            let a: RawAppend = serde_json::from_value(v.clone()).map_err(|e| {
                fault(
                    &at,
                    format!("an append is {{\"value\": ..., \"max\": n}}: {e}"),
                )
            })?;
            if a.max == 0 || a.max > MAX_LIST {
                return Err(fault(&at, format!("max must be between 1 and {MAX_LIST}")));
            }
            append.push((
                field_path(k, &at)?,
                Template::compile(&a.value, &at)?,
                a.max as usize,
            ));
        }
        let mut emit = Vec::new();
        for (i, e) in raw.emit.iter().enumerate() {
            let at = format!("{at}.emit[{i}]");
            let e: RawEmit = serde_json::from_value(e.clone()).map_err(|e| {
                fault(
                    &at,
                    format!("a command is {{\"type\": ..., \"payload\": ...}}: {e}"),
                )
            })?;
            if e.kind.is_empty() {
                return Err(fault(&at, "type may not be empty"));
            }
            emit.push((
                e.kind,
                Template::compile(&e.payload, &format!("{at}.payload"))?,
            ));
        }
        if raw.decision.is_some() && raw.reason.is_none() {
            return Err(fault(at, "a decision needs a reason"));
        }
        Ok(Step {
            decision: raw.decision.unwrap_or_else(|| name.clone()),
            each: logic(&raw.each, "each")?,
            when: logic(&raw.when, "when")?,
            set: fields(&raw.set, "set")?,
            increment: fields(&raw.increment, "increment")?,
            append,
            emit,
            reason: raw
                .reason
                .as_ref()
                .map(|r| Template::compile(r, &format!("{at}.reason")))
                .transpose()?,
            name,
        })
    }

    /// Runs the step over `data` (whose `state` it changes), once, or once per item of
    /// `each` (each seeing the state the previous one left).
    fn run(&self, data: &mut Map<String, Value>, out: &mut Decide) -> Result<(), Rejected> {
        let fail = |e: RuleFault| Rejected(format!("rule {:?}: {e}", self.name));
        match &self.each {
            None => self.run_once(data, out).map_err(fail),
            Some(each) => {
                let items = match each.apply(data).map_err(fail)? {
                    Value::Array(items) => items,
                    Value::Null => Vec::new(),
                    other => {
                        return Err(Rejected(format!(
                            "rule {:?}: each gave {other}, not a list",
                            self.name
                        )));
                    }
                };
                for item in items {
                    data.insert("item".to_owned(), item);
                    let r = self.run_once(data, out);
                    data.remove("item");
                    r.map_err(fail)?;
                }
                Ok(())
            }
        }
    }

    fn run_once(&self, data: &mut Map<String, Value>, out: &mut Decide) -> Result<(), RuleFault> {
        if let Some(when) = &self.when
            && !truthy(&when.apply(data)?)
        {
            return Ok(());
        }
        // Every change is computed from the state before the step, then applied.
        let mut sets = Vec::with_capacity(self.set.len());
        for (path, t) in &self.set {
            sets.push((path, t.eval(data)?));
        }
        let mut incs = Vec::with_capacity(self.increment.len());
        for (path, t) in &self.increment {
            incs.push((path, t.eval(data)?));
        }
        let mut appends = Vec::with_capacity(self.append.len());
        for (path, t, max) in &self.append {
            appends.push((path, t.eval(data)?, *max));
        }
        let state = data
            .entry("state")
            .or_insert_with(|| Value::Object(Map::new()));
        for (path, v) in sets {
            *slot(state, path) = v;
        }
        for (path, by) in incs {
            let slot = slot(state, path);
            let Some(by) = by.as_f64() else {
                return Err(RuleFault::InvalidArguments(
                    "increment by a value that is not a number",
                ));
            };
            let now = match &*slot {
                Value::Null => 0.0,
                v => v.as_f64().ok_or(RuleFault::InvalidArguments(
                    "increment of a field that is not a number",
                ))?,
            };
            *slot = number(now + by);
        }
        for (path, v, max) in appends {
            let slot = slot(state, path);
            if !slot.is_array() {
                *slot = Value::Array(Vec::new());
            }
            let list = slot.as_array_mut().expect("an array");
            list.push(v);
            if list.len() > max {
                let extra = list.len() - max;
                list.drain(..extra);
            }
        }
        for (kind, payload) in &self.emit {
            let payload = payload.eval(data)?;
            out.emit_value(kind.clone(), payload);
        }
        if let Some(reason) = &self.reason {
            let reason = match reason.eval(data)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.log(self.decision.clone(), reason);
        }
        Ok(())
    }
}

/// A JSON number: an integer when it is one.
fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// The field at `path` under `state`, made (with objects on the way) if missing.
fn slot<'a>(state: &'a mut Value, path: &[String]) -> &'a mut Value {
    let mut v = state;
    for seg in path {
        if !v.is_object() {
            *v = Value::Object(Map::new());
        }
        v = v
            .as_object_mut()
            .expect("an object")
            .entry(seg.clone())
            .or_insert(Value::Null);
    }
    v
}

/// What an event rule matches.
#[derive(Debug)]
enum On {
    Any,
    Types(Vec<String>),
}

/// A declarative reactor, compiled.
#[derive(Debug)]
pub struct Declarative {
    initial: Value,
    rules: Vec<(On, Step)>,
    cycles: Vec<(Cycle, Vec<Step>)>,
    delivery: Delivery,
}

impl Declarative {
    /// Checks and compiles a definition.
    ///
    /// ```
    /// use serde_json::json;
    /// let def = stead_reactor::Declarative::compile(&json!({
    ///     "state": {"big_orders": 0},
    ///     "rules": [{"on": "order.placed",
    ///                "when": {">": [{"var": "event.payload.amount"}, 100]},
    ///                "set": {"big_orders": {"+": [{"var": "state.big_orders"}, 1]}},
    ///                "emit": [{"type": "review.request", "payload": {"order": {"var": "event.payload.id"}}}],
    ///                "reason": "large order"}]
    /// })).unwrap();
    /// assert!(def.delivery().pull);
    /// let bad = stead_reactor::Declarative::compile(&json!({"rules": [{"on": "x", "when": {"nope": 1}}]}));
    /// assert!(bad.unwrap_err().to_string().starts_with("rules[0]"));
    /// ```
    pub fn compile(def: &Value) -> Result<Declarative, DefinitionError> {
        let raw: RawDefinition =
            serde_json::from_value(def.clone()).map_err(|e| fault("definition", e.to_string()))?;
        let initial = match raw.state {
            None => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v,
            Some(_) => return Err(fault("state", "the initial state must be an object")),
        };
        if raw.rules.len() > MAX_RULES || raw.cycles.len() > MAX_RULES {
            return Err(fault(
                "rules",
                format!("at most {MAX_RULES} rules and {MAX_RULES} cycles"),
            ));
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, v) in raw.rules.iter().enumerate() {
            let at = label("rules", i, v);
            let step: RawStep =
                serde_json::from_value(v.clone()).map_err(|e| fault(&at, e.to_string()))?;
            if step.cron.is_some() {
                return Err(fault(&at, "cron belongs to cycles, not rules"));
            }
            let on = match &step.on {
                None => {
                    return Err(fault(
                        &at,
                        "on (the event type, a list of types, or \"*\") is required",
                    ));
                }
                Some(Value::String(s)) if s == "*" => On::Any,
                Some(Value::String(s)) if !s.is_empty() => On::Types(vec![s.clone()]),
                Some(Value::Array(types)) if !types.is_empty() => On::Types(
                    types
                        .iter()
                        .map(|t| match t {
                            Value::String(s) if !s.is_empty() => Ok(s.clone()),
                            _ => Err(fault(&at, "on lists event types (non-empty strings)")),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                Some(_) => {
                    return Err(fault(&at, "on is an event type, a list of types, or \"*\""));
                }
            };
            let default_name = match &on {
                On::Types(t) => format!("{} #{i}", t.join("|")),
                On::Any => format!("* #{i}"),
            };
            rules.push((on, Step::compile(step, &at, default_name)?));
        }
        // Entries with the same name form one cycle: their rules run in order, in one turn.
        let mut cycles: Vec<(Cycle, Vec<Step>)> = Vec::new();
        for (i, v) in raw.cycles.iter().enumerate() {
            let at = label("cycles", i, v);
            let step: RawStep =
                serde_json::from_value(v.clone()).map_err(|e| fault(&at, e.to_string()))?;
            if step.on.is_some() {
                return Err(fault(&at, "a cycle runs on cron, not on events"));
            }
            let Some(cron) = step.cron.clone() else {
                return Err(fault(&at, "cron is required"));
            };
            check_cron(&cron).map_err(|m| fault(&at, m))?;
            let name = step.name.clone().unwrap_or_else(|| format!("cycle-{i}"));
            let step = Step::compile(step, &at, name.clone())?;
            match cycles.iter_mut().find(|(c, _)| c.name == name) {
                Some((c, _)) if c.cron != cron => {
                    return Err(fault(
                        &at,
                        format!("cycle {name:?} is listed with two cron expressions"),
                    ));
                }
                Some((_, steps)) => steps.push(step),
                None => cycles.push((Cycle::new(name, cron), vec![step])),
            }
        }
        let delivery = Delivery {
            pull: raw.pull.unwrap_or(raw.webhooks.is_empty()),
            webhooks: raw.webhooks,
        };
        delivery.check()?;
        Ok(Declarative {
            initial,
            rules,
            cycles,
            delivery,
        })
    }

    /// How its commands are delivered.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    fn data(state: &mut Value, out: &Decide) -> Map<String, Value> {
        let mut data = Map::with_capacity(5);
        data.insert("state".to_owned(), std::mem::take(state));
        data.insert("now".to_owned(), Value::from(out.now().timestamp_millis()));
        data.insert("entity".to_owned(), Value::from(out.entity()));
        data
    }

    fn finish(state: &mut Value, mut data: Map<String, Value>) {
        *state = data.remove("state").unwrap_or(Value::Null);
    }
}

/// How a rule or cycle is named in errors: by position, and by name when it has one.
fn label(list: &str, i: usize, v: &Value) -> String {
    match v.get("name").and_then(Value::as_str) {
        Some(name) => format!("{list}[{i}] {name:?}"),
        None => format!("{list}[{i}]"),
    }
}

/// The shortest time between two firings of a declared cycle: a cycle runs for every entity
/// of its type, so a per-second cron would make each of them run a turn every second.
pub const MIN_CYCLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks a cycle's cron: it parses, ever matches (`0 0 30 2 *`, February the 30th, never
/// does: every event of the type would then fail to schedule it), and fires at most once
/// per [`MIN_CYCLE_INTERVAL`].
pub(crate) fn check_cron(expr: &str) -> Result<(), String> {
    stead_core::check_cron(expr, MIN_CYCLE_INTERVAL).map_err(|e| match e {
        stead_core::Error::InvalidSchedule { detail } => detail,
        other => other.to_string(),
    })
}

impl Behaviour for Declarative {
    fn initial(&self) -> Result<Value, Rejected> {
        Ok(self.initial.clone())
    }

    fn on_event(&self, state: &mut Value, event: &Event, out: &mut Decide) -> Result<(), Rejected> {
        let mut data = Declarative::data(state, out);
        data.insert(
            "event".to_owned(),
            serde_json::json!({"id": event.id, "type": event.kind, "payload": event.payload}),
        );
        let mut result = Ok(());
        for (on, step) in &self.rules {
            let matches = match on {
                On::Any => true,
                On::Types(types) => types.contains(&event.kind),
            };
            if matches && let Err(e) = step.run(&mut data, out) {
                result = Err(e);
                break;
            }
        }
        Declarative::finish(state, data);
        result
    }

    fn cycles(&self) -> Vec<Cycle> {
        self.cycles.iter().map(|(c, _)| c.clone()).collect()
    }

    fn on_cycle(&self, state: &mut Value, name: &str, out: &mut Decide) -> Result<(), Rejected> {
        let Some((_, steps)) = self.cycles.iter().find(|(c, _)| c.name == name) else {
            return Ok(());
        };
        let mut data = Declarative::data(state, out);
        let result = steps.iter().try_for_each(|step| step.run(&mut data, out));
        Declarative::finish(state, data);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use serde_json::json;

    fn decide() -> Decide {
        Decide::new("e1", DateTime::from_timestamp_millis(1_000_000).unwrap())
    }

    #[test]
    fn the_issue_example_counts_big_orders_and_emits_a_review() {
        let def = Declarative::compile(&json!({"state":{"big_orders":0},"rules":[{"on":"order.placed","when":{">":[{"var":"event.payload.amount"},100]},
            "set":{"big_orders":{"+":[{"var":"state.big_orders"},1]}},"emit":[{"type":"review.request",
            "payload":{"order":{"var":"event.payload.id"}, "entity": {"var": "entity"}, "fixed": [1, "x"]}}],"reason":"large order"}]})).unwrap();
        let mut state = def.initial().unwrap();
        let mut out = decide();
        def.on_event(
            &mut state,
            &Event::new("1", "order.placed", json!({"id": "o-9", "amount": 150})),
            &mut out,
        )
        .unwrap();
        def.on_event(
            &mut state,
            &Event::new("2", "order.placed", json!({"id": "o-10", "amount": 50})),
            &mut out,
        )
        .unwrap();
        assert_eq!(state, json!({"big_orders": 1}));
        assert_eq!(out.commands().len(), 1);
        assert_eq!(
            out.commands()[0].payload,
            json!({"order": "o-9", "entity": "e1", "fixed": [1, "x"]})
        );
        assert_eq!(out.notes().next().unwrap().reason, "large order");
    }

    #[test]
    fn each_runs_per_item_and_sees_what_the_previous_item_changed() {
        let def = Declarative::compile(
            &json!({"rules":[{"on":"batch","each":{"var":"event.payload.items"},
            "when":{"<":[{"var":"state.taken"},2]},
            "increment":{"taken":1},
            "append":{"log":{"value":{"var":"item"},"max":1}},
            "emit":[{"type":"take","payload":{"item":{"var":"item"}}}],
            "decision":"take","reason":{"cat":["took ",{"var":"item"}]}}]}),
        )
        .unwrap();
        let mut state = def.initial().unwrap();
        let mut out = decide();
        def.on_event(
            &mut state,
            &Event::new("1", "batch", json!({"items": ["a", "b", "c"]})),
            &mut out,
        )
        .unwrap();
        assert_eq!(state, json!({"taken": 2, "log": ["b"]}));
        let reasons: Vec<_> = out.notes().map(|n| n.reason.clone()).collect();
        assert_eq!(reasons, ["took a", "took b"]);
        assert_eq!(out.notes().next().unwrap().kind, "take");
    }

    #[test]
    fn bad_definitions_name_the_rule_and_the_fault() {
        let cases = [
            (
                json!({"rules": [{"name": "r", "on": "x", "when": {"nope": 1}}]}),
                "rules[0] \"r\".when: JsonLogic at /nope: unknown operation",
            ),
            (json!({"rules": [{"when": true}]}), "rules[0]: on"),
            (
                json!({"rules": [{"on": "x", "sett": {}}]}),
                "rules[0]: unknown field `sett`",
            ),
            (
                json!({"rules": [{"on": "x", "append": {"l": {"value": 1, "max": 0}}}]}),
                "rules[0].append.l: max",
            ),
            (
                json!({"rules": [{"on": "x", "set": {"a..b": 1}}]}),
                "rules[0].set.a..b",
            ),
            (
                json!({"rules": [{"on": "x", "emit": [{"payload": 1}]}]}),
                "rules[0].emit[0]",
            ),
            (
                json!({"cycles": [{"cron": "99 * * * *"}]}),
                "cycles[0]: invalid cron expression",
            ),
            (
                json!({"cycles": [{"name": "never", "cron": "0 0 30 2 *", "increment": {"n": 1}}]}),
                "cycles[0] \"never\": cron expression \"0 0 30 2 *\" never matches",
            ),
            (
                json!({"cycles": [{"name": "fast", "cron": "*/5 * * * * *", "increment": {"n": 1}}]}),
                "cycles[0] \"fast\": cron expression \"*/5 * * * * *\" fires 5 s apart",
            ),
            (
                json!({"cycles": [{"reason": "x"}]}),
                "cycles[0]: cron is required",
            ),
            (json!({"state": [1]}), "state:"),
            (
                json!({"webhooks": [{"url": "ftp://x", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}),
                "webhooks[0]: url",
            ),
            (
                json!({"webhooks": [{"url": "https://x", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}),
                "webhooks[0]: url is https",
            ),
            (
                json!({"webhooks": [{"url": "http://x", "secret": "abc"}]}),
                "webhooks[0]: secret must start",
            ),
            (json!({"pull": false}), "pull:"),
            (json!({"ruls": []}), "definition: unknown field"),
        ];
        for (def, want) in cases {
            let e = Declarative::compile(&def).unwrap_err().to_string();
            assert!(e.starts_with(want), "{def}: {e}");
        }
    }

    #[test]
    fn a_fault_while_running_rejects_with_the_rule_name() {
        let def = Declarative::compile(
            &json!({"rules":[{"name":"count","on":"x","increment":{"n":{"var":"event.payload"}}}]}),
        )
        .unwrap();
        let mut state = def.initial().unwrap();
        let e = def
            .on_event(
                &mut state,
                &Event::new("1", "x", json!("abc")),
                &mut decide(),
            )
            .unwrap_err();
        assert!(e.0.contains("\"count\""), "{e}");
    }
}
