//! The OpenFeature provider: the standard OpenFeature API for Rust, answered by a flag
//! set's committed snapshot (no turn, no network).
//!
//! The provider interface of OpenFeature's Rust SDK is not given the caller's default, so
//! an evaluation that gives no value (a disabled flag, a flag with no default variant and
//! no match, any error) answers an [`EvaluationError`]; the SDK's `get_*_value` then
//! returns it and the caller takes its default with `unwrap_or`. Errors keep the code the
//! evaluation gave (`FLAG_NOT_FOUND`, `TYPE_MISMATCH`, `TARGETING_KEY_MISSING`, ...); a
//! disabled flag is `General("DISABLED")`, a flag that chose nothing `General("DEFAULT")`.

use std::collections::HashMap;

use async_trait::async_trait;
use open_feature::provider::{FeatureProvider, ProviderMetadata, ResolutionDetails};
use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationError, EvaluationErrorCode,
    EvaluationReason, EvaluationResult, FlagMetadata, FlagMetadataValue, StructValue,
};
use serde_json::{Map, Number, Value};

use crate::client::{FlagValue, FlagsClient};
use crate::error::FlagsError;
use crate::evaluate::{ErrorCode, Evaluation, Reason};

/// An OpenFeature provider over one flag set of a [`FlagsClient`].
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use open_feature::{EvaluationContext, OpenFeature};
/// use stead_flags::{Edit, FlagsClient, FlagsProvider};
///
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let flags = FlagsClient::new(&rt)?;
/// flags.put_flag("production", "new-checkout",
///     &serde_json::json!({"enabled": true, "rollout_percent": 100, "block": ["u2"]}),
///     Edit::by("ada")).await?;
///
/// let mut api = OpenFeature::singleton_mut().await;
/// api.set_named_provider("doc", FlagsProvider::new(flags, "production")).await;
/// let client = api.create_named_client("doc");
/// let ctx = EvaluationContext::default().with_targeting_key("u1");
/// assert!(client.get_bool_value("new-checkout", Some(&ctx), None).await.unwrap_or(false));
/// let ctx = EvaluationContext::default().with_targeting_key("u2");
/// assert!(!client.get_bool_value("new-checkout", Some(&ctx), None).await.unwrap_or(true));
/// # drop(api);
/// # rt.shutdown().await?;
/// # Ok::<(), stead_flags::FlagsError>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct FlagsProvider {
    client: FlagsClient,
    set: String,
    metadata: ProviderMetadata,
}

impl FlagsProvider {
    /// A provider answering from flag set `set` of `client`.
    pub fn new(client: FlagsClient, set: impl Into<String>) -> FlagsProvider {
        FlagsProvider {
            client,
            set: set.into(),
            metadata: ProviderMetadata::new("stead-flags"),
        }
    }

    /// The flag set it answers from.
    pub fn set(&self) -> &str {
        &self.set
    }

    async fn resolve<T: FlagValue>(
        &self,
        key: &str,
        context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let context = context_to_json(context)?;
        let evaluation = self
            .client
            .evaluate(&self.set, key, &context)
            .await
            .map_err(runtime_error)?
            .expect(key, T::TYPE);
        let Evaluation {
            value,
            variant,
            reason,
            error,
            metadata,
        } = evaluation;
        if let Some((code, message)) = error {
            return Err(EvaluationError::builder()
                .code(error_code(code))
                .message(message)
                .build());
        }
        let Some(value) = value else {
            let (code, message) = match reason {
                Reason::Disabled => ("DISABLED", format!("flag {key:?} is disabled")),
                _ => (
                    "DEFAULT",
                    format!("flag {key:?} chose no variant: the caller's default applies"),
                ),
            };
            return Err(EvaluationError::builder()
                .code(EvaluationErrorCode::General(code.to_owned()))
                .message(message)
                .build());
        };
        let value = T::from_json(&value).ok_or_else(|| {
            EvaluationError::builder()
                .code(EvaluationErrorCode::TypeMismatch)
                .message(format!("flag {key:?} is not a {}", T::TYPE))
                .build()
        })?;
        Ok(ResolutionDetails {
            value,
            variant,
            reason: Some(reason_of(reason)),
            flag_metadata: flag_metadata(&metadata),
        })
    }
}

#[async_trait]
impl FeatureProvider for FlagsProvider {
    async fn initialize(&mut self, _context: &EvaluationContext) {
        // Loads the set's snapshot now rather than on the first evaluation; a failure here
        // is answered again, with its reason, by every evaluation.
        if let Err(e) = self.client.snapshot(&self.set).await {
            tracing::warn!(set = %self.set, error = %e, "flag set not loaded");
        }
    }

    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        self.resolve(flag_key, evaluation_context).await
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        self.resolve(flag_key, evaluation_context).await
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        self.resolve(flag_key, evaluation_context).await
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        self.resolve(flag_key, evaluation_context).await
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        let details = self
            .resolve::<Map<String, Value>>(flag_key, evaluation_context)
            .await?;
        Ok(ResolutionDetails {
            value: struct_of(&details.value)?,
            variant: details.variant,
            reason: details.reason,
            flag_metadata: details.flag_metadata,
        })
    }
}

fn runtime_error(e: FlagsError) -> EvaluationError {
    let code = match e {
        FlagsError::Invalid(_) => EvaluationErrorCode::InvalidContext,
        _ => EvaluationErrorCode::General("GENERAL".to_owned()),
    };
    EvaluationError::builder()
        .code(code)
        .message(e.to_string())
        .build()
}

fn error_code(code: ErrorCode) -> EvaluationErrorCode {
    match code {
        ErrorCode::FlagNotFound => EvaluationErrorCode::FlagNotFound,
        ErrorCode::ParseError => EvaluationErrorCode::ParseError,
        ErrorCode::TypeMismatch => EvaluationErrorCode::TypeMismatch,
        ErrorCode::TargetingKeyMissing => EvaluationErrorCode::TargetingKeyMissing,
        ErrorCode::InvalidContext => EvaluationErrorCode::InvalidContext,
        ErrorCode::General => EvaluationErrorCode::General("GENERAL".to_owned()),
    }
}

fn reason_of(reason: Reason) -> EvaluationReason {
    match reason {
        Reason::Static => EvaluationReason::Static,
        Reason::Default => EvaluationReason::Default,
        Reason::TargetingMatch => EvaluationReason::TargetingMatch,
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::Error => EvaluationReason::Error,
    }
}

/// The flag's metadata, its scalars (the only values the SDK's metadata holds; a flag's
/// metadata has nothing else, definitions are checked for it).
fn flag_metadata(metadata: &Map<String, Value>) -> Option<FlagMetadata> {
    if metadata.is_empty() {
        return None;
    }
    let mut out = FlagMetadata::default();
    for (k, v) in metadata {
        let v = match v {
            Value::Bool(b) => FlagMetadataValue::Bool(*b),
            Value::String(s) => FlagMetadataValue::String(s.clone()),
            Value::Number(n) => match n.as_i64() {
                Some(i) => FlagMetadataValue::Int(i),
                None => FlagMetadataValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            _ => continue,
        };
        out.add_value(k.clone(), v);
    }
    Some(out)
}

fn invalid_context(message: String) -> EvaluationError {
    EvaluationError::builder()
        .code(EvaluationErrorCode::InvalidContext)
        .message(message)
        .build()
}

/// The evaluation context as targeting reads it: `targetingKey` and the custom fields, a
/// date-time as RFC 3339 text (as a JSON client would send it), a structure when it holds
/// a `serde_json::Value` or the SDK's own `StructValue`.
fn context_to_json(context: &EvaluationContext) -> EvaluationResult<Map<String, Value>> {
    let mut out = Map::with_capacity(context.custom_fields.len() + 1);
    for (k, v) in &context.custom_fields {
        let v = match v {
            EvaluationContextFieldValue::Bool(b) => Value::Bool(*b),
            EvaluationContextFieldValue::Int(i) => Value::from(*i),
            EvaluationContextFieldValue::Float(f) => Number::from_f64(*f)
                .map(Value::Number)
                .ok_or_else(|| invalid_context(format!("context field {k:?} is not finite")))?,
            EvaluationContextFieldValue::String(s) => Value::String(s.clone()),
            EvaluationContextFieldValue::DateTime(t) => {
                let at = chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
                    .ok_or_else(|| {
                        invalid_context(format!("context field {k:?} is out of range"))
                    })?;
                Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }
            EvaluationContextFieldValue::Struct(any) => {
                if let Some(v) = any.downcast_ref::<Value>() {
                    v.clone()
                } else if let Some(s) = any.downcast_ref::<StructValue>() {
                    Value::Object(json_of_struct(s))
                } else {
                    return Err(invalid_context(format!(
                        "context field {k:?} holds a structure of a type other than \
                         serde_json::Value or StructValue"
                    )));
                }
            }
        };
        out.insert(k.clone(), v);
    }
    if let Some(key) = &context.targeting_key {
        out.insert("targetingKey".to_owned(), Value::String(key.clone()));
    }
    Ok(out)
}

fn json_of_struct(s: &StructValue) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), json_of(v)))
        .collect()
}

fn json_of(v: &open_feature::Value) -> Value {
    use open_feature::Value as V;
    match v {
        V::Bool(b) => Value::Bool(*b),
        V::Int(i) => Value::from(*i),
        V::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        V::String(s) => Value::String(s.clone()),
        V::Array(a) => Value::Array(a.iter().map(json_of).collect()),
        V::Struct(s) => Value::Object(json_of_struct(s)),
    }
}

/// An object flag's value as the SDK's structure. The SDK has no null: a null anywhere in
/// the value is a `TYPE_MISMATCH` (as the SDK's own JSON conversion answers).
fn struct_of(map: &Map<String, Value>) -> EvaluationResult<StructValue> {
    let mut fields = HashMap::with_capacity(map.len());
    for (k, v) in map {
        fields.insert(k.clone(), value_of(v)?);
    }
    Ok(StructValue { fields })
}

fn value_of(v: &Value) -> EvaluationResult<open_feature::Value> {
    use open_feature::Value as V;
    Ok(match v {
        Value::Bool(b) => V::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => V::Int(i),
            None => V::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => V::String(s.clone()),
        Value::Array(a) => V::Array(a.iter().map(value_of).collect::<Result<_, _>>()?),
        Value::Object(m) => V::Struct(struct_of(m)?),
        Value::Null => {
            return Err(EvaluationError::builder()
                .code(EvaluationErrorCode::TypeMismatch)
                .message("the flag's object holds a null, which OpenFeature's Rust SDK cannot hold")
                .build());
        }
    })
}
