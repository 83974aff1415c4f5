//! Evaluation: a committed version of a flag set, compiled once into an immutable
//! [`Snapshot`], and what evaluating one flag of it answers.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::definition::{DefinitionError, FlagDefinition, FlagSetDefinition, FlagState, FlagType};
use stead_logic::Rule;

/// Why an evaluation answered what it did (OpenFeature's resolution reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The flag has no targeting: its default variant.
    Static,
    /// Targeting decided nothing: the default variant (or the caller's default).
    Default,
    /// Targeting chose the variant.
    TargetingMatch,
    /// The flag is disabled: the caller's default.
    Disabled,
    /// The evaluation failed: the caller's default, and an error code.
    Error,
}

impl Reason {
    /// The reason as the protocol writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::Default => "DEFAULT",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }
}

/// Why an evaluation failed (OpenFeature's error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No flag has this key.
    FlagNotFound,
    /// The flag's targeting cannot be compiled.
    ParseError,
    /// The flag's value is not of the type asked for.
    TypeMismatch,
    /// The targeting needs a targeting key and none was given.
    TargetingKeyMissing,
    /// The evaluation context is not usable.
    InvalidContext,
    /// Anything else: targeting failed while it ran, or chose a variant the flag lacks.
    General,
}

impl ErrorCode {
    /// The code as the protocol writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::General => "GENERAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What evaluating a flag answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The value; `None` means the caller's default (a disabled flag, an error, or no
    /// default variant).
    pub value: Option<Value>,
    /// The variant chosen, when one was.
    pub variant: Option<String>,
    /// Why.
    pub reason: Reason,
    /// The error, when the reason is [`Reason::Error`]: its code and what happened.
    pub error: Option<(ErrorCode, String)>,
    /// The flag's metadata over its set's (the set's alone when the flag is not found).
    pub metadata: Map<String, Value>,
}

impl Evaluation {
    fn error(code: ErrorCode, message: String, metadata: Map<String, Value>) -> Evaluation {
        Evaluation {
            value: None,
            variant: None,
            reason: Reason::Error,
            error: Some((code, message)),
            metadata,
        }
    }

    /// The evaluation as a caller expecting `ty` sees it: a value of another type is a
    /// `TYPE_MISMATCH` error.
    pub fn expect(self, key: &str, ty: FlagType) -> Evaluation {
        match &self.value {
            Some(v) if FlagType::of(v) != ty => Evaluation::error(
                ErrorCode::TypeMismatch,
                format!(
                    "flag {key:?} is a {} flag, not a {ty} flag",
                    FlagType::of(v)
                ),
                self.metadata,
            ),
            _ => self,
        }
    }

    /// The error code, if any.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error.as_ref().map(|(c, _)| *c)
    }
}

/// One flag, compiled.
#[derive(Debug)]
struct Compiled {
    flag: FlagDefinition,
    /// The targeting, or why it cannot be compiled (only for documents loaded leniently).
    targeting: Result<Option<Rule>, String>,
    /// The set's metadata under the flag's own.
    metadata: Map<String, Value>,
}

/// A committed version of a flag set, compiled: evaluating a flag reads it and nothing
/// else, so any number of tasks evaluate one snapshot at once.
///
/// ```
/// use stead_flags::{FlagSetDefinition, Reason, Snapshot};
/// let def = FlagSetDefinition::parse(&serde_json::json!({"flags": {"dark-mode": {
///     "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
///     "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on"]}}}})).unwrap();
/// let snap = Snapshot::new(1, def);
/// let ctx = serde_json::json!({"targetingKey": "u1", "plan": "pro"});
/// let e = snap.evaluate("dark-mode", ctx.as_object().unwrap(), 0);
/// assert_eq!(e.value, Some(serde_json::json!(true)));
/// assert_eq!(e.reason, Reason::TargetingMatch);
/// ```
#[derive(Debug)]
pub struct Snapshot {
    version: u64,
    definition: FlagSetDefinition,
    flags: HashMap<String, Compiled>,
}

/// A snapshot crosses the nodes of a cluster as its version and definition; the receiving
/// node compiles it again.
impl serde::Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            version: u64,
            definition: &'a FlagSetDefinition,
        }
        Wire {
            version: self.version,
            definition: &self.definition,
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Snapshot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Wire {
            version: u64,
            definition: FlagSetDefinition,
        }
        let w = Wire::deserialize(d)?;
        Ok(Snapshot::new(w.version, w.definition))
    }
}

impl Snapshot {
    /// Compiles version `version` of a definition. A flag whose targeting cannot be
    /// compiled is kept, and answers `PARSE_ERROR` when it is evaluated.
    pub fn new(version: u64, definition: FlagSetDefinition) -> Snapshot {
        Self::build(version, definition, false).expect("a lenient build keeps every flag")
    }

    /// Compiles version `version` of a definition, refusing it at the first targeting rule
    /// that cannot be compiled (what a set's changes do: every rule is compiled once).
    pub(crate) fn compile(
        version: u64,
        definition: FlagSetDefinition,
    ) -> Result<Snapshot, DefinitionError> {
        Self::build(version, definition, true)
    }

    fn build(
        version: u64,
        definition: FlagSetDefinition,
        strict: bool,
    ) -> Result<Snapshot, DefinitionError> {
        let mut flags = HashMap::with_capacity(definition.flags.len());
        for (key, flag) in &definition.flags {
            let targeting = match definition.compile_targeting(key, flag) {
                Err(e) if strict => return Err(e),
                other => other.map_err(|e| e.to_string()),
            };
            let mut metadata = definition.metadata.clone();
            metadata.extend(flag.metadata.clone());
            flags.insert(
                key.clone(),
                Compiled {
                    flag: flag.clone(),
                    targeting,
                    metadata,
                },
            );
        }
        Ok(Snapshot {
            version,
            definition,
            flags,
        })
    }

    /// Loads a flagd document as flagd loads a file: its structure must be sound, but a
    /// flag whose targeting cannot be compiled is kept, and answers `PARSE_ERROR` when it
    /// is evaluated. (A set's updates are stricter: they refuse such a flag.)
    pub fn from_document(version: u64, doc: &Value) -> Result<Snapshot, DefinitionError> {
        Ok(Snapshot::new(
            version,
            FlagSetDefinition::parse_structure(doc)?,
        ))
    }

    /// The set's version: 0 before its first update, then one more per committed change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The definition this snapshot was compiled from.
    pub fn definition(&self) -> &FlagSetDefinition {
        &self.definition
    }

    /// The keys of the set's flags, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.definition.flags.keys().map(String::as_str)
    }

    /// Whether the set has a flag with this key.
    pub fn contains(&self, key: &str) -> bool {
        self.flags.contains_key(key)
    }

    /// Evaluates flag `key` for `context` at `now_secs` (seconds since the epoch, what
    /// targeting reads as `$flagd.timestamp`).
    pub fn evaluate(&self, key: &str, context: &Map<String, Value>, now_secs: i64) -> Evaluation {
        let Some(c) = self.flags.get(key) else {
            return Evaluation::error(
                ErrorCode::FlagNotFound,
                format!("flag {key:?} not found"),
                self.definition.metadata.clone(),
            );
        };
        if c.flag.state == FlagState::Disabled {
            return Evaluation {
                value: None,
                variant: None,
                reason: Reason::Disabled,
                error: None,
                metadata: c.metadata.clone(),
            };
        }
        let (variant, reason) = match &c.targeting {
            Err(message) => {
                return Evaluation::error(
                    ErrorCode::ParseError,
                    message.clone(),
                    c.metadata.clone(),
                );
            }
            Ok(None) => (c.flag.default_variant.clone(), Reason::Static),
            Ok(Some(rule)) => {
                let mut flagd = Map::with_capacity(2);
                flagd.insert("flagKey".to_owned(), Value::String(key.to_owned()));
                flagd.insert("timestamp".to_owned(), Value::from(now_secs));
                let flagd = Value::Object(flagd);
                match rule.apply_with_flagd(context, &flagd) {
                    Err(fault) => {
                        return Evaluation::error(
                            ErrorCode::General,
                            format!("targeting of flag {key:?} failed: {fault}"),
                            c.metadata.clone(),
                        );
                    }
                    Ok(Value::Null) => (c.flag.default_variant.clone(), Reason::Default),
                    Ok(chosen) => (
                        Some(stead_logic::js_string(&chosen)),
                        Reason::TargetingMatch,
                    ),
                }
            }
        };
        let Some(variant) = variant else {
            // No default variant: the caller's default.
            return Evaluation {
                value: None,
                variant: None,
                reason: Reason::Default,
                error: None,
                metadata: c.metadata.clone(),
            };
        };
        match c.flag.variants.get(&variant) {
            Some(value) => Evaluation {
                value: Some(value.clone()),
                variant: Some(variant),
                reason,
                error: None,
                metadata: c.metadata.clone(),
            },
            None => Evaluation::error(
                ErrorCode::General,
                format!("flag {key:?} has no variant {variant:?}"),
                c.metadata.clone(),
            ),
        }
    }
}
