//! The typed client: changes go through the set's object; evaluations read the published
//! snapshot and cost no turn.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use stead_core::{
    Clock, Durability, Error, LogPage, LogQuery, Namespace, NamespaceOptions, Result, Runtime,
};

use crate::definition::{FlagDefinition, FlagSetDefinition, FlagType, check_flag_key};
use crate::error::FlagsError;
use crate::evaluate::{ErrorCode, Evaluation, Reason, Snapshot};

/// How long a node of a cluster evaluates flags with a snapshot of a set whose object may
/// live on another node before it asks the owner again: the bound on how stale an
/// evaluation can be there.
pub const CLUSTER_STALENESS: Duration = Duration::from_secs(1);
use crate::object::{
    AuditEntry, Changed, Configure, DeleteFlag, Edit, FlagSet, FlagsEnv, Inspect, PutFlag,
    ReadAudit, Snapshots,
};

/// The settings of a runtime's flag sets (the server's `[flags]` table).
///
/// ```
/// use stead_flags::FlagsConfig;
/// let cfg: FlagsConfig = serde_json::from_str(r#"{"default_set": "production"}"#).unwrap();
/// assert_eq!(cfg.default_set, "production");
/// assert_eq!(cfg.max_audit_entries, 1000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct FlagsConfig {
    /// The set the root OFREP routes (`/ofrep/v1/...`) evaluate (default `default`).
    pub default_set: String,
    /// How many audit entries a set keeps, newest first (default 1,000).
    pub max_audit_entries: usize,
    /// The largest definition of one set, in bytes of JSON (default 64 KiB; at most the
    /// runtime's value limit less 1 KiB, since a set is stored as one value).
    pub max_definition_bytes: usize,
    /// How durable flag sets are; `None` takes the runtime's default.
    pub durability: Option<Durability>,
}

impl Default for FlagsConfig {
    fn default() -> Self {
        FlagsConfig {
            default_set: "default".to_owned(),
            max_audit_entries: 1000,
            max_definition_bytes: 64 * 1024,
            durability: None,
        }
    }
}

impl FlagsConfig {
    /// Sets the set the root OFREP routes evaluate.
    pub fn default_set(mut self, set: &str) -> Self {
        self.default_set = set.to_owned();
        self
    }

    /// Sets how many audit entries a set keeps.
    pub fn max_audit_entries(mut self, n: usize) -> Self {
        self.max_audit_entries = n;
        self
    }

    fn check(&self, rt: &Runtime) -> Result<()> {
        let bad = |what: String| Err(Error::invalid_config(format!("flags: {what}")));
        if let Err(e) = stead_core::validate_name("default_set", &self.default_set) {
            return bad(e.to_string());
        }
        if !(1..=1_000_000).contains(&self.max_audit_entries) {
            return bad("max_audit_entries must be between 1 and 1000000".into());
        }
        let max = rt.config().max_value_bytes.saturating_sub(1024);
        if !(1024..=max).contains(&self.max_definition_bytes) {
            return bad(format!(
                "max_definition_bytes must be between 1024 and {max} on this runtime"
            ));
        }
        Ok(())
    }
}

/// A value a flag can have, for typed evaluation.
pub trait FlagValue: Sized {
    /// The flag type that holds it.
    const TYPE: FlagType;
    /// The value out of JSON (of [`Self::TYPE`]).
    fn from_json(v: &Value) -> Option<Self>;
}

impl FlagValue for bool {
    const TYPE: FlagType = FlagType::Boolean;
    fn from_json(v: &Value) -> Option<Self> {
        v.as_bool()
    }
}

impl FlagValue for String {
    const TYPE: FlagType = FlagType::String;
    fn from_json(v: &Value) -> Option<Self> {
        v.as_str().map(str::to_owned)
    }
}

impl FlagValue for f64 {
    const TYPE: FlagType = FlagType::Number;
    fn from_json(v: &Value) -> Option<Self> {
        v.as_f64()
    }
}

impl FlagValue for i64 {
    const TYPE: FlagType = FlagType::Number;
    fn from_json(v: &Value) -> Option<Self> {
        v.as_i64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
    }
}

impl FlagValue for Map<String, Value> {
    const TYPE: FlagType = FlagType::Object;
    fn from_json(v: &Value) -> Option<Self> {
        v.as_object().cloned()
    }
}

/// A typed evaluation: the value (the caller's default when the flag gave none), and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Details<T> {
    /// The value.
    pub value: T,
    /// The variant, when one was chosen.
    pub variant: Option<String>,
    /// Why.
    pub reason: Reason,
    /// The error code and message, when the evaluation failed.
    pub error: Option<(ErrorCode, String)>,
    /// The flag's metadata.
    pub metadata: Map<String, Value>,
}

/// Feature flags: flag sets in flagd's format, changed through one object per set
/// (checked, versioned, audited) and evaluated from the committed snapshot it publishes,
/// without a turn.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use serde_json::json;
/// use stead_core::LogQuery;
/// use stead_flags::{Edit, FlagsClient};
///
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let flags = FlagsClient::new(&rt)?;
/// flags.put_flag("production", "new-checkout",
///     &json!({"enabled": true, "rollout_percent": 100, "block": ["u2"]}),
///     Edit::by("ada")).await?;
/// let ctx = json!({"targetingKey": "u1"});
/// assert!(flags.value("production", "new-checkout", false, ctx.as_object().unwrap()).await?.value);
/// let ctx = json!({"targetingKey": "u2"});
/// assert!(!flags.value("production", "new-checkout", true, ctx.as_object().unwrap()).await?.value);
/// assert_eq!(flags.audit("production", LogQuery::newest(10)).await?.entries.len(), 1);
/// # rt.shutdown().await?;
/// # Ok::<(), stead_flags::FlagsError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct FlagsClient {
    inner: Arc<Inner>,
}

struct Inner {
    sets: Namespace<FlagSet>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for FlagsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagsClient")
            .field("config", &self.inner.sets.env().config)
            .finish()
    }
}

fn namespace(rt: &Runtime, config: FlagsConfig, configured: bool) -> Result<Namespace<FlagSet>> {
    config.check(rt)?;
    let opts = config
        .durability
        .map(NamespaceOptions::durability)
        .unwrap_or_default();
    let env = || FlagsEnv {
        config,
        snapshots: Arc::new(Snapshots::default()),
    };
    if configured {
        rt.configured_namespace::<FlagSet>(env(), opts)
    } else {
        Ok(rt.get_or_register::<FlagSet>(opts, env)?.0)
    }
}

impl FlagsClient {
    /// The flag sets of `rt`, as they were configured ([`with_config`](Self::with_config)),
    /// or with the defaults if they were not.
    pub fn new(rt: &Runtime) -> Result<Self> {
        Ok(Self::from_namespace(
            rt,
            namespace(rt, FlagsConfig::default(), false)?,
        ))
    }

    /// The flag sets of `rt`, set up with `config`: an [`Error::InvalidConfig`] if a
    /// setting is out of range, or if they were set up with another configuration already.
    pub fn with_config(rt: &Runtime, config: FlagsConfig) -> Result<Self> {
        Ok(Self::from_namespace(rt, namespace(rt, config, true)?))
    }

    fn from_namespace(rt: &Runtime, sets: Namespace<FlagSet>) -> Self {
        FlagsClient {
            inner: Arc::new(Inner {
                sets,
                clock: rt.clock().clone(),
            }),
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> &FlagsConfig {
        &self.inner.sets.env().config
    }

    fn set(&self, set: &str) -> Result<stead_core::Stub<FlagSet>, FlagsError> {
        stead_core::validate_name("flag set", set)?;
        Ok(self.inner.sets.get_by_name(set))
    }

    /// Replaces the whole definition of `set` with a flagd document (checked: a fault is a
    /// [`FlagsError::Definition`] naming the flag and the path).
    pub async fn replace(&self, set: &str, doc: &Value, edit: Edit) -> Result<Changed, FlagsError> {
        // The object compiles the rules, once, as it commits.
        let definition = FlagSetDefinition::parse_structure(doc)?;
        let changed = self.set(set)?.call(Configure { definition, edit }).await?;
        Ok(self.seen(set, changed))
    }

    /// A change made through this node is seen here at once, even when the set's object
    /// lives on another node of a cluster.
    fn seen(&self, set: &str, changed: Changed) -> Changed {
        if self.inner.sets.in_cluster() {
            let snapshots = &self.inner.sets.env().snapshots;
            snapshots.publish(set, changed.snapshot.clone());
        }
        changed
    }

    /// Creates or replaces flag `key` of `set` (flagd's form or the simple form).
    pub async fn put_flag(
        &self,
        set: &str,
        key: &str,
        flag: &Value,
        edit: Edit,
    ) -> Result<Changed, FlagsError> {
        let flag = FlagDefinition::parse(key, flag)?;
        let changed = self
            .set(set)?
            .call(PutFlag {
                key: key.to_owned(),
                flag,
                edit,
            })
            .await?;
        Ok(self.seen(set, changed))
    }

    /// Deletes flag `key` of `set`.
    pub async fn delete_flag(
        &self,
        set: &str,
        key: &str,
        edit: Edit,
    ) -> Result<Changed, FlagsError> {
        check_flag_key(key).map_err(stead_core::InvalidInput::new)?;
        let changed = self
            .set(set)?
            .call(DeleteFlag {
                key: key.to_owned(),
                edit,
            })
            .await?;
        Ok(self.seen(set, changed))
    }

    /// A page of the audit log of `set`, numbered by version (`LogQuery::newest(10)`: the
    /// last ten changes, newest first).
    pub async fn audit(
        &self,
        set: &str,
        page: LogQuery,
    ) -> Result<LogPage<AuditEntry>, FlagsError> {
        page.validate()?;
        self.set(set)?.call(ReadAudit(page)).await
    }

    /// The committed snapshot of `set`: the published one, or (the first time in this
    /// process) the one its object loads. Never older than a change whose reply was given.
    ///
    /// On a node of a cluster, the set's object may live on another node: a snapshot is
    /// used for [`CLUSTER_STALENESS`] after it was published or fetched, then fetched again
    /// from the owner (a change made through this node is seen at once).
    pub async fn snapshot(&self, set: &str) -> Result<Arc<Snapshot>, FlagsError> {
        let snapshots = &self.inner.sets.env().snapshots;
        if !self.inner.sets.in_cluster() {
            if let Some(s) = snapshots.get(set) {
                return Ok(s);
            }
            return self.set(set)?.call(Inspect).await;
        }
        if let Some(s) = snapshots.get_within(set, CLUSTER_STALENESS) {
            return Ok(s);
        }
        let s = self.set(set)?.call(Inspect).await?;
        snapshots.publish(set, s.clone());
        Ok(s)
    }

    /// Waits until `set` is past `version` or `timeout` has passed; answers the version
    /// then (a long-poll on the set's changes).
    pub async fn wait_for_change(
        &self,
        set: &str,
        version: u64,
        timeout: Duration,
    ) -> Result<u64, FlagsError> {
        let current = self.snapshot(set).await?.version();
        if current != version {
            return Ok(current);
        }
        if self.inner.sets.in_cluster() {
            // The change may be made on another node: look again at the staleness bound.
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(version);
                }
                tokio::time::sleep(left.min(CLUSTER_STALENESS)).await;
                let now = self.snapshot(set).await?.version();
                if now != version {
                    return Ok(now);
                }
            }
        }
        let mut watch = self.inner.sets.env().snapshots.watch(set);
        let _ = tokio::time::timeout(timeout, watch.changed_from(version)).await;
        Ok(self.snapshot(set).await?.version())
    }

    /// Evaluates flag `key` of `set` for `context`, whatever its type.
    pub async fn evaluate(
        &self,
        set: &str,
        key: &str,
        context: &Map<String, Value>,
    ) -> Result<Evaluation, FlagsError> {
        let snap = self.snapshot(set).await?;
        Ok(snap.evaluate(key, context, self.now_secs()))
    }

    /// Evaluates flag `key` of `set` as a `T`: the flag's value, or `default` when it gives
    /// none (disabled, an error, a type mismatch), with the reason.
    pub async fn value<T: FlagValue>(
        &self,
        set: &str,
        key: &str,
        default: T,
        context: &Map<String, Value>,
    ) -> Result<Details<T>, FlagsError> {
        let e = self.evaluate(set, key, context).await?.expect(key, T::TYPE);
        Ok(typed(e, default))
    }

    /// The runtime's time in seconds, what targeting reads as `$flagd.timestamp`.
    pub fn now_secs(&self) -> i64 {
        self.inner.clock.now().timestamp()
    }
}

/// A typed view of an evaluation.
pub fn typed<T: FlagValue>(e: Evaluation, default: T) -> Details<T> {
    let value = e.value.as_ref().and_then(T::from_json);
    let (value, e) = match value {
        Some(v) => (v, e),
        None if e.value.is_some() => (
            default,
            Evaluation {
                value: None,
                variant: None,
                reason: Reason::Error,
                error: Some((
                    ErrorCode::TypeMismatch,
                    format!("the value is not a {}", T::TYPE),
                )),
                metadata: e.metadata,
            },
        ),
        None => (default, e),
    };
    Details {
        value,
        variant: e.variant,
        reason: e.reason,
        error: e.error,
        metadata: e.metadata,
    }
}
