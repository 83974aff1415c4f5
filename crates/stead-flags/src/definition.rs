//! Flag-set definitions in flagd's format, checked before they are stored, and the seed's
//! simple form turned into its flagd equivalent.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use stead_logic::{Rule, RuleError};

/// The most flags one set holds.
pub const MAX_FLAGS: usize = 10_000;
/// The longest flag key, in characters (the rule of every name: a flag is reached at
/// `/{set}/flags/{flag}`).
pub const MAX_KEY_CHARS: usize = stead_core::MAX_NAME_CHARS;
/// How deep `$ref`s may nest inside one another.
const MAX_REF_DEPTH: usize = 32;
/// The most JSON values a flag's targeting may hold once its `$ref`s are resolved (a chain
/// of evaluators that each refer to the next twice would otherwise double at every step).
const MAX_RESOLVED_VALUES: usize = 100_000;
/// How deep a flag's targeting may nest once its `$ref`s are resolved.
const MAX_RESOLVED_DEPTH: usize = 96;

/// A flag set's definition: flagd's flag-definition document.
///
/// ```
/// use stead_flags::FlagSetDefinition;
/// let set = FlagSetDefinition::parse(&serde_json::json!({
///     "flags": {
///         "new-checkout": {
///             "state": "ENABLED",
///             "variants": {"on": true, "off": false},
///             "defaultVariant": "off",
///             "targeting": {"fractional": [["on", 20], ["off", 80]]}
///         },
///         // The simple form: stored as the flagd definition it stands for.
///         "beta-banner": {"enabled": true, "rollout_percent": 20, "allow": ["u1"]}
///     }
/// })).unwrap();
/// assert_eq!(set.flags.len(), 2);
/// assert_eq!(set.flags["beta-banner"].default_variant.as_deref(), Some("off"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagSetDefinition {
    /// The flags, by key.
    pub flags: BTreeMap<String, FlagDefinition>,
    /// Shared rules that targeting refers to with `{"$ref": "name"}`.
    #[serde(rename = "$evaluators", default, skip_serializing_if = "Map::is_empty")]
    pub evaluators: Map<String, Value>,
    /// The set's metadata (strings, numbers and booleans), under every flag's own.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// Whether a flag is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FlagState {
    /// Evaluated.
    Enabled,
    /// Answers the caller's default, with reason `DISABLED`.
    Disabled,
}

/// One flag, in flagd's format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagDefinition {
    /// Whether it is served.
    pub state: FlagState,
    /// Its variants by name: all booleans, all strings, all numbers or all objects.
    pub variants: Map<String, Value>,
    /// The variant served when targeting decides nothing.
    #[serde(
        rename = "defaultVariant",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_variant: Option<String>,
    /// JsonLogic deciding the variant by the evaluation context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeting: Option<Value>,
    /// The flag's metadata (strings, numbers and booleans).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// The type of a flag's variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlagType {
    /// `true` / `false`.
    Boolean,
    /// Strings.
    String,
    /// Numbers (integers and floats).
    Number,
    /// JSON objects.
    Object,
}

impl FlagType {
    /// The type of one value (`null` and arrays are objects, as flagd types them).
    pub fn of(value: &Value) -> FlagType {
        match value {
            Value::Bool(_) => FlagType::Boolean,
            Value::String(_) => FlagType::String,
            Value::Number(_) => FlagType::Number,
            _ => FlagType::Object,
        }
    }
}

impl fmt::Display for FlagType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlagType::Boolean => "boolean",
            FlagType::String => "string",
            FlagType::Number => "number",
            FlagType::Object => "object",
        })
    }
}

/// What is wrong with a definition: the flag (when the fault is inside one), the JSON
/// pointer of the fault in the document that was sent, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{}{}: {message}", flag.as_ref().map(|f| format!("flag {f:?} ")).unwrap_or_default(), if path.is_empty() { "at the top".to_owned() } else { format!("at {path}") })]
pub struct DefinitionError {
    /// The flag at fault, if the fault is inside one.
    pub flag: Option<String>,
    /// The JSON pointer of the fault.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn fault(flag: Option<&str>, path: String, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        flag: flag.map(str::to_owned),
        path,
        message: message.into(),
    }
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Checks a flag key: 1 to 256 bytes, no control characters.
pub fn check_flag_key(key: &str) -> Result<(), String> {
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_KEY_CHARS {
        return Err(format!(
            "a flag key is 1 to {MAX_KEY_CHARS} characters, this one has {chars}"
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("a flag key has no control characters".to_owned());
    }
    Ok(())
}

fn check_metadata(
    flag: Option<&str>,
    path: &str,
    value: &Value,
) -> Result<Map<String, Value>, DefinitionError> {
    let Value::Object(map) = value else {
        return Err(fault(flag, path.to_owned(), "metadata is an object"));
    };
    for (k, v) in map {
        if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            return Err(fault(
                flag,
                format!("{path}/{}", escape(k)),
                "a metadata value is a string, a number or a boolean",
            ));
        }
    }
    Ok(map.clone())
}

impl FlagSetDefinition {
    /// Parses and checks a whole document, its targeting rules included. The error names
    /// the flag and the JSON pointer of the first fault.
    pub fn parse(doc: &Value) -> Result<FlagSetDefinition, DefinitionError> {
        let set = Self::parse_structure(doc)?;
        for (key, flag) in &set.flags {
            set.compile_targeting(key, flag)?;
        }
        Ok(set)
    }

    /// Parses and checks a document's structure; its targeting rules are compiled later,
    /// once, by [`Snapshot`](crate::Snapshot).
    pub(crate) fn parse_structure(doc: &Value) -> Result<FlagSetDefinition, DefinitionError> {
        let Value::Object(top) = doc else {
            return Err(fault(None, String::new(), "a flag set is a JSON object"));
        };
        let mut evaluators = Map::new();
        let mut metadata = Map::new();
        let mut flags = None;
        for (k, v) in top {
            match k.as_str() {
                "flags" => flags = Some(v),
                "$evaluators" => {
                    let Value::Object(e) = v else {
                        return Err(fault(None, "/$evaluators".into(), "an object of rules"));
                    };
                    evaluators = e.clone();
                }
                "metadata" => metadata = check_metadata(None, "/metadata", v)?,
                "$schema" => {}
                other => {
                    return Err(fault(
                        None,
                        format!("/{}", escape(other)),
                        "unknown member (a flag set has flags, $evaluators, metadata and $schema)",
                    ));
                }
            }
        }
        let Some(flags) = flags else {
            return Err(fault(None, String::new(), "a flag set needs \"flags\""));
        };
        let Value::Object(flags) = flags else {
            return Err(fault(
                None,
                "/flags".into(),
                "flags is an object of flags by key",
            ));
        };
        if flags.len() > MAX_FLAGS {
            return Err(fault(
                None,
                "/flags".into(),
                format!("at most {MAX_FLAGS} flags in a set"),
            ));
        }
        let mut set = FlagSetDefinition {
            flags: BTreeMap::new(),
            evaluators,
            metadata,
        };
        for (key, flag) in flags {
            let path = format!("/flags/{}", escape(key));
            let parsed = FlagDefinition::parse_at(key, flag, &path)?;
            set.flags.insert(key.clone(), parsed);
        }
        Ok(set)
    }

    /// The flag's targeting, `$ref`s resolved and compiled; `None` when it has none.
    pub(crate) fn compile_targeting(
        &self,
        key: &str,
        flag: &FlagDefinition,
    ) -> Result<Option<Rule>, DefinitionError> {
        let Some(targeting) = flag.targeting.as_ref() else {
            return Ok(None);
        };
        let base = format!("/flags/{}/targeting", escape(key));
        let mut left = MAX_RESOLVED_VALUES;
        let resolved = self
            .resolve_refs(targeting, 0, 0, &mut left)
            .map_err(|e| fault(Some(key), format!("{base}{}", e.path), e.message))?;
        if matches!(&resolved, Value::Object(m) if m.is_empty()) {
            return Ok(None);
        }
        Rule::compile(&resolved)
            .map(Some)
            .map_err(|e| fault(Some(key), format!("{base}{}", e.path), e.message))
    }

    /// `rule` with every `$ref` replaced by its evaluator: `depth` counts the `$ref`s
    /// followed, `level` the nesting so far, `left` the values it may still produce.
    fn resolve_refs(
        &self,
        rule: &Value,
        depth: usize,
        level: usize,
        left: &mut usize,
    ) -> Result<Value, RuleError> {
        if level > MAX_RESOLVED_DEPTH {
            return Err(RuleError {
                path: String::new(),
                message: format!(
                    "the rule, its $refs resolved, nests deeper than {MAX_RESOLVED_DEPTH}"
                ),
            });
        }
        if *left == 0 {
            return Err(RuleError {
                path: String::new(),
                message: format!(
                    "the rule, its $refs resolved, holds more than {MAX_RESOLVED_VALUES} values"
                ),
            });
        }
        *left -= 1;
        match rule {
            Value::Object(m) if m.len() == 1 && m.contains_key("$ref") => {
                let name = &m["$ref"];
                let Some(target) = name.as_str().and_then(|n| self.evaluators.get(n)) else {
                    return Err(RuleError {
                        path: "/$ref".into(),
                        message: format!("no evaluator named {name} in the set's $evaluators"),
                    });
                };
                if depth >= MAX_REF_DEPTH {
                    return Err(RuleError {
                        path: "/$ref".into(),
                        message: format!("$ref nested deeper than {MAX_REF_DEPTH} (a cycle?)"),
                    });
                }
                self.resolve_refs(target, depth + 1, level, left)
            }
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, v) in m {
                    let v =
                        self.resolve_refs(v, depth, level + 1, left)
                            .map_err(|e| RuleError {
                                path: format!("/{}{}", escape(k), e.path),
                                message: e.message,
                            })?;
                    out.insert(k.clone(), v);
                }
                Ok(Value::Object(out))
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    self.resolve_refs(v, depth, level + 1, left)
                        .map_err(|e| RuleError {
                            path: format!("/{i}{}", e.path),
                            message: e.message,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            other => Ok(other.clone()),
        }
    }

    /// The definition as flagd's JSON document.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a definition serializes")
    }
}

impl FlagDefinition {
    /// Parses and checks one flag (flagd's form or the simple form). `$ref`s in its
    /// targeting are checked when it joins a set.
    pub fn parse(key: &str, value: &Value) -> Result<FlagDefinition, DefinitionError> {
        Self::parse_at(key, value, "")
    }

    fn parse_at(key: &str, value: &Value, path: &str) -> Result<FlagDefinition, DefinitionError> {
        let flag = Some(key);
        check_flag_key(key).map_err(|m| fault(flag, path.to_owned(), m))?;
        let Value::Object(members) = value else {
            return Err(fault(flag, path.to_owned(), "a flag is a JSON object"));
        };
        if members.contains_key("enabled") && !members.contains_key("state") {
            return simple_form(key, members, path);
        }
        let mut state = None;
        let mut variants = None;
        let mut default_variant = None;
        let mut targeting = None;
        let mut metadata = Map::new();
        for (k, v) in members {
            let at = format!("{path}/{}", escape(k));
            match k.as_str() {
                "state" => {
                    state = Some(match v.as_str() {
                        Some("ENABLED") => FlagState::Enabled,
                        Some("DISABLED") => FlagState::Disabled,
                        _ => return Err(fault(flag, at, "state is \"ENABLED\" or \"DISABLED\"")),
                    })
                }
                "variants" => {
                    let Value::Object(vs) = v else {
                        return Err(fault(flag, at, "variants is an object of values by name"));
                    };
                    if vs.is_empty() {
                        return Err(fault(flag, at, "a flag needs at least one variant"));
                    }
                    let mut kind = None;
                    for (name, value) in vs {
                        let vat = format!("{at}/{}", escape(name));
                        if name.is_empty() {
                            return Err(fault(flag, vat, "a variant name is not empty"));
                        }
                        if matches!(value, Value::Null | Value::Array(_)) {
                            return Err(fault(
                                flag,
                                vat,
                                "a variant is a boolean, a string, a number or an object",
                            ));
                        }
                        let t = FlagType::of(value);
                        match kind {
                            None => kind = Some((t, name)),
                            Some((k0, first)) if k0 != t => {
                                return Err(fault(
                                    flag,
                                    vat,
                                    format!(
                                        "every variant has one type: {first:?} is a {k0}, this one a {t}"
                                    ),
                                ));
                            }
                            Some(_) => {}
                        }
                    }
                    variants = Some(vs.clone());
                }
                "defaultVariant" => match v {
                    Value::Null => {}
                    Value::String(s) => default_variant = Some(s.clone()),
                    _ => return Err(fault(flag, at, "defaultVariant is a variant's name")),
                },
                "targeting" => match v {
                    Value::Object(_) => targeting = Some(v.clone()),
                    _ => return Err(fault(flag, at, "targeting is a JsonLogic object")),
                },
                "metadata" => metadata = check_metadata(flag, &at, v)?,
                other => {
                    return Err(fault(
                        flag,
                        at,
                        format!(
                            "unknown member {other:?} (a flag has state, variants, defaultVariant, targeting and metadata)"
                        ),
                    ));
                }
            }
        }
        let Some(state) = state else {
            return Err(fault(flag, path.to_owned(), "a flag needs \"state\""));
        };
        let Some(variants) = variants else {
            return Err(fault(flag, path.to_owned(), "a flag needs \"variants\""));
        };
        if let Some(d) = default_variant
            .as_ref()
            .filter(|d| !variants.contains_key(*d))
        {
            return Err(fault(
                flag,
                format!("{path}/defaultVariant"),
                format!("no variant named {d:?}"),
            ));
        }
        Ok(FlagDefinition {
            state,
            variants,
            default_variant,
            targeting,
            metadata,
        })
    }

    /// The type of the flag's variants.
    pub fn flag_type(&self) -> FlagType {
        self.variants
            .values()
            .next()
            .map_or(FlagType::Boolean, FlagType::of)
    }
}

/// The seed's simple form: `{"enabled": true, "rollout_percent": 20, "allow": [..],
/// "block": [..]}`, as the flagd definition it stands for: variants `on`/`off`, blocked
/// keys off, allowed keys on, then a consistent split by targeting key.
fn simple_form(
    key: &str,
    members: &Map<String, Value>,
    path: &str,
) -> Result<FlagDefinition, DefinitionError> {
    let flag = Some(key);
    let mut enabled = false;
    let mut percent = 100u64;
    let mut allow = Vec::new();
    let mut block = Vec::new();
    for (k, v) in members {
        let at = format!("{path}/{}", escape(k));
        match k.as_str() {
            "enabled" => {
                enabled = v
                    .as_bool()
                    .ok_or_else(|| fault(flag, at, "enabled is true or false"))?
            }
            "rollout_percent" => {
                percent = v
                    .as_u64()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| fault(flag, at, "rollout_percent is an integer 0 to 100"))?
            }
            "allow" | "block" => {
                let list = v
                    .as_array()
                    .filter(|l| l.iter().all(Value::is_string))
                    .ok_or_else(|| fault(flag, at, format!("{k} is a list of targeting keys")))?;
                if k == "allow" {
                    allow = list.clone();
                } else {
                    block = list.clone();
                }
            }
            other => {
                return Err(fault(
                    flag,
                    at,
                    format!(
                        "unknown member {other:?} (the simple form has enabled, rollout_percent, allow and block)"
                    ),
                ));
            }
        }
    }
    let mut branches = Vec::new();
    let by_key = || json!({"var": "targetingKey"});
    if !block.is_empty() {
        branches.push(json!({"in": [by_key(), block]}));
        branches.push(json!("off"));
    }
    if enabled && !allow.is_empty() {
        branches.push(json!({"in": [by_key(), allow]}));
        branches.push(json!("on"));
    }
    let last = match (enabled, percent) {
        (false, _) | (_, 0) => json!("off"),
        (true, 100) => json!("on"),
        (true, p) => json!({"fractional": [["on", p], ["off", 100 - p]]}),
    };
    let (default_variant, targeting) = if branches.is_empty() && last.is_string() {
        (last.as_str().map(str::to_owned), None)
    } else {
        branches.push(last);
        (Some("off".to_owned()), Some(json!({"if": branches})))
    };
    Ok(FlagDefinition {
        state: FlagState::Enabled,
        variants: [
            ("on".to_owned(), json!(true)),
            ("off".to_owned(), json!(false)),
        ]
        .into_iter()
        .collect(),
        default_variant,
        targeting,
        metadata: Map::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_name_the_flag_and_the_path() {
        let e = FlagSetDefinition::parse(&json!({"flags": {"a/b": {
            "state": "ENABLED", "variants": {"on": true, "off": "no"}}}}))
        .unwrap_err();
        assert_eq!(e.flag.as_deref(), Some("a/b"));
        assert_eq!(e.path, "/flags/a~1b/variants/on");
        let e = FlagSetDefinition::parse(&json!({"flags": {"f": {
            "state": "ENABLED", "variants": {"on": true},
            "targeting": {"if": [{"bogus": 1}, "on", null]}}}}))
        .unwrap_err();
        assert_eq!(e.path, "/flags/f/targeting/if/0/bogus");
        assert!(e.to_string().contains("unknown operation"), "{e}");
        let e = FlagSetDefinition::parse(&json!({"flags": {"f": {
            "state": "ENABLED", "variants": {"on": true}, "defaultVariant": "off"}}}))
        .unwrap_err();
        assert_eq!(e.path, "/flags/f/defaultVariant");
        let e = FlagSetDefinition::parse(&json!({"flags": {"f": {
            "state": "ENABLED", "variants": {"on": true},
            "targeting": {"$ref": "nope"}}}}))
        .unwrap_err();
        assert_eq!(e.path, "/flags/f/targeting/$ref");
    }

    #[test]
    fn ref_cycles_are_refused() {
        let e = FlagSetDefinition::parse(&json!({
            "$evaluators": {"a": {"$ref": "b"}, "b": {"$ref": "a"}},
            "flags": {"f": {"state": "ENABLED", "variants": {"on": true},
                "targeting": {"$ref": "a"}}}}))
        .unwrap_err();
        assert!(e.message.contains("cycle"), "{e}");
    }

    #[test]
    fn the_simple_form_is_stored_as_flagd() {
        let f = FlagDefinition::parse(
            "f",
            &json!({"enabled": true, "rollout_percent": 20, "allow": ["u1"], "block": ["u2"]}),
        )
        .unwrap();
        assert_eq!(
            f.targeting,
            Some(json!({"if": [
                {"in": [{"var": "targetingKey"}, ["u2"]]}, "off",
                {"in": [{"var": "targetingKey"}, ["u1"]]}, "on",
                {"fractional": [["on", 20], ["off", 80]]}]}))
        );
        let off = FlagDefinition::parse("f", &json!({"enabled": false})).unwrap();
        assert_eq!(off.default_variant.as_deref(), Some("off"));
        assert!(off.targeting.is_none());
        assert!(
            FlagDefinition::parse("f", &json!({"enabled": true, "rollout_percent": 101})).is_err()
        );
    }
}
