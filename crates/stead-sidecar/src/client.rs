//! The typed client: values, lists, the lifetime and steps of named sidecars.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stead_core::{
    Durability, Error, InvalidInput, Namespace, NamespaceOptions, Result, Runtime, Stub,
    duration_ms,
};

use crate::error::SidecarError;
use crate::object::{
    Append, Appended, Condition, DeclareSteps, Delete, FinishStep, Get, Inspect, Items, KeyPage,
    Lifetime, Limits, ListKeys, NextReply, NextStep, Put, Range, Remove, ResumeStep, SetLifetime,
    Sidecar, SidecarInfo, Step, Steps, Versioned, Written,
};

/// The settings of a runtime's sidecars (the server's `[sidecars]` table).
///
/// ```
/// use stead_sidecar::SidecarConfig;
/// let cfg: SidecarConfig = serde_json::from_str(r#"{"max_keys": 500}"#).unwrap();
/// assert_eq!(cfg.max_keys, 500);
/// assert_eq!(cfg.max_value_bytes, 16 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SidecarConfig {
    /// The largest value, in bytes of JSON text (default 16 MiB).
    pub max_value_bytes: u64,
    /// The largest list item or step output (default 60 KiB: stored as one value, it must
    /// fit the runtime's value limit even when every character is escaped).
    pub max_item_bytes: u64,
    /// Total bytes per sidecar (default 64 MiB).
    pub max_total_bytes: u64,
    /// Values and lists per sidecar (default 10,000).
    pub max_keys: u64,
    /// How durable sidecar state is; `None` takes the runtime's default.
    pub durability: Option<Durability>,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            max_value_bytes: 16 << 20,
            max_item_bytes: 60 << 10,
            max_total_bytes: 64 << 20,
            max_keys: 10_000,
            durability: None,
        }
    }
}

/// The largest any size setting may be (1 GiB).
const MAX_SETTING_BYTES: u64 = 1 << 30;

impl SidecarConfig {
    /// Sets the largest value.
    pub fn max_value_bytes(mut self, n: u64) -> Self {
        self.max_value_bytes = n;
        self
    }

    /// Sets the largest list item or step output.
    pub fn max_item_bytes(mut self, n: u64) -> Self {
        self.max_item_bytes = n;
        self
    }

    /// Sets the quota of total bytes per sidecar.
    pub fn max_total_bytes(mut self, n: u64) -> Self {
        self.max_total_bytes = n;
        self
    }

    /// Sets the quota of keys per sidecar.
    pub fn max_keys(mut self, n: u64) -> Self {
        self.max_keys = n;
        self
    }

    /// Sets the durability of sidecar state.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    fn limits(&self, rt: &Runtime) -> Result<Limits> {
        let bad = |what: &str| Err(Error::invalid_config(format!("sidecars: {what}")));
        for (name, v) in [
            ("max_value_bytes", self.max_value_bytes),
            ("max_item_bytes", self.max_item_bytes),
            ("max_total_bytes", self.max_total_bytes),
        ] {
            if !(1..=MAX_SETTING_BYTES).contains(&v) {
                return bad(&format!("{name} must be between 1 and {MAX_SETTING_BYTES}"));
            }
        }
        if !(1..=1_000_000).contains(&self.max_keys) {
            return bad("max_keys must be between 1 and 1000000");
        }
        let chunk_bytes = rt.config().max_value_bytes;
        // An item is one stored value: it must fit the runtime's value limit, quoted.
        if self.max_item_bytes as usize > chunk_bytes.saturating_sub(2) / 2 {
            return bad(&format!(
                "max_item_bytes may be at most {} on this runtime (half its max_value_bytes)",
                chunk_bytes.saturating_sub(2) / 2
            ));
        }
        Ok(Limits {
            max_value_bytes: self.max_value_bytes,
            max_item_bytes: self.max_item_bytes,
            max_total_bytes: self.max_total_bytes,
            max_keys: self.max_keys,
            chunk_bytes,
        })
    }
}

/// Entity-scoped storage: one sidecar object per entity name, with versioned values, append
/// lists, a lifetime and checkpointed steps.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_sidecar::{Condition, SidecarClient};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let sidecars = SidecarClient::new(&rt)?;
/// let w = sidecars.put("order-7", "cart", &serde_json::json!({"items": 2}), Condition::IfAbsent).await?;
/// // A second writer that read nothing loses: no silent overwrite.
/// let lost = sidecars.put("order-7", "cart", &serde_json::json!({}), Condition::IfAbsent).await;
/// assert!(lost.is_err());
/// // Replace exactly the version read.
/// sidecars.put("order-7", "cart", &serde_json::json!({"items": 3}), Condition::IfVersion(w.version)).await?;
/// let (cart, _) = sidecars.get_as::<serde_json::Value>("order-7", "cart").await?.unwrap();
/// assert_eq!(cart["items"], 3);
/// # rt.shutdown().await?;
/// # Ok::<(), stead_sidecar::SidecarError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct SidecarClient {
    inner: Arc<Inner>,
}

struct Inner {
    ns: Namespace<Sidecar>,
}

impl std::fmt::Debug for SidecarClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarClient")
            .field("limits", self.inner.ns.env())
            .finish()
    }
}

fn to_json(what: &str, value: &(impl Serialize + ?Sized)) -> Result<String, SidecarError> {
    serde_json::to_string(value)
        .map_err(|e| InvalidInput::new(format!("{what} cannot be encoded as JSON: {e}")).into())
}

impl SidecarClient {
    /// The sidecars of `rt`, as they were configured ([`with_config`](Self::with_config)),
    /// or with the defaults if they were not.
    pub fn new(rt: &Runtime) -> Result<Self> {
        let limits = SidecarConfig::default().limits(rt)?;
        let (ns, _) = rt.get_or_register::<Sidecar>(Default::default(), || limits)?;
        Ok(Self::from_namespace(ns))
    }

    /// The sidecars of `rt`, set up with `config`: an [`Error::InvalidConfig`] if a setting
    /// is out of range, or if they were set up with another configuration already.
    pub fn with_config(rt: &Runtime, config: SidecarConfig) -> Result<Self> {
        let limits = config.limits(rt)?;
        let opts = config
            .durability
            .map(NamespaceOptions::durability)
            .unwrap_or_default();
        let ns = rt.configured_namespace::<Sidecar>(limits, opts)?;
        Ok(Self::from_namespace(ns))
    }

    fn from_namespace(ns: Namespace<Sidecar>) -> Self {
        SidecarClient {
            inner: Arc::new(Inner { ns }),
        }
    }

    /// The limits every sidecar of this runtime keeps.
    pub fn limits(&self) -> &Limits {
        self.inner.ns.env()
    }

    fn stub(&self, entity: &str) -> Result<Stub<Sidecar>, SidecarError> {
        stead_core::validate_name("entity", entity)?;
        Ok(self.inner.ns.get_by_name(entity))
    }

    /// A value's JSON text and version, or `None`.
    pub async fn get(&self, entity: &str, key: &str) -> Result<Option<Versioned>, SidecarError> {
        self.stub(entity)?
            .call(Get {
                key: key.to_owned(),
            })
            .await
    }

    /// A value decoded as `T`, with its version, or `None`.
    pub async fn get_as<T: DeserializeOwned>(
        &self,
        entity: &str,
        key: &str,
    ) -> Result<Option<(T, u64)>, SidecarError> {
        let Some(v) = self.get(entity, key).await? else {
            return Ok(None);
        };
        let value = serde_json::from_str(&v.value).map_err(|e| {
            InvalidInput::new(format!(
                "the value of {key:?} is not the type asked for: {e}"
            ))
        })?;
        Ok(Some((value, v.version)))
    }

    /// Writes `value` (encoded as JSON) if `condition` holds.
    pub async fn put(
        &self,
        entity: &str,
        key: &str,
        value: &(impl Serialize + ?Sized),
        condition: Condition,
    ) -> Result<Written, SidecarError> {
        let text = to_json("value", value)?;
        self.put_raw(entity, key, text, condition).await
    }

    /// Writes JSON text as it is (it must be one JSON value) if `condition` holds.
    pub async fn put_raw(
        &self,
        entity: &str,
        key: &str,
        json: String,
        condition: Condition,
    ) -> Result<Written, SidecarError> {
        self.stub(entity)?
            .call(Put {
                key: key.to_owned(),
                value: json,
                condition,
            })
            .await
    }

    /// Deletes a value if `condition` holds; answers whether it existed.
    pub async fn delete(
        &self,
        entity: &str,
        key: &str,
        condition: Condition,
    ) -> Result<bool, SidecarError> {
        self.stub(entity)?
            .call(Delete {
                key: key.to_owned(),
                condition,
            })
            .await
    }

    /// A page of keys that start with `prefix`, after `cursor` (the previous page's
    /// `next_cursor`). Walking pages while others write never repeats a key, and never skips
    /// one that exists for the whole walk.
    pub async fn list(
        &self,
        entity: &str,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, SidecarError> {
        self.stub(entity)?
            .call(ListKeys {
                prefix: prefix.to_owned(),
                cursor: cursor.map(str::to_owned),
                limit,
            })
            .await
    }

    /// Appends `item` (encoded as JSON) to a list; answers its index. With `max_len`, the
    /// oldest items beyond that many are dropped.
    pub async fn append(
        &self,
        entity: &str,
        key: &str,
        item: &(impl Serialize + ?Sized),
        max_len: Option<u64>,
    ) -> Result<Appended, SidecarError> {
        let item = to_json("item", item)?;
        self.append_raw(entity, key, item, max_len).await
    }

    /// Appends JSON text as it is.
    pub async fn append_raw(
        &self,
        entity: &str,
        key: &str,
        item: String,
        max_len: Option<u64>,
    ) -> Result<Appended, SidecarError> {
        self.stub(entity)?
            .call(Append {
                key: key.to_owned(),
                item,
                max_len,
            })
            .await
    }

    /// Items of a list from index `from` on, at most `limit`; `None` if there is no list.
    pub async fn range(
        &self,
        entity: &str,
        key: &str,
        from: u64,
        limit: usize,
    ) -> Result<Option<Items>, SidecarError> {
        self.stub(entity)?
            .call(Range {
                key: key.to_owned(),
                from,
                limit,
            })
            .await
    }

    /// Deletes everything the sidecar holds.
    pub async fn delete_all(&self, entity: &str) -> Result<(), SidecarError> {
        self.stub(entity)?.call(Remove).await
    }

    /// Sets the sidecar's lifetime (from now), or removes it with `None`: when it runs out,
    /// everything is deleted.
    pub async fn set_lifetime(
        &self,
        entity: &str,
        lifetime: Option<Lifetime>,
    ) -> Result<SidecarInfo, SidecarError> {
        self.stub(entity)?.call(SetLifetime { lifetime }).await
    }

    /// What the sidecar holds, its quotas and lifetime.
    pub async fn info(&self, entity: &str) -> Result<SidecarInfo, SidecarError> {
        self.stub(entity)?.call(Inspect).await
    }

    /// Declares the steps of the entity's workflow, in order (again with the same steps: no
    /// change).
    pub async fn declare_steps(
        &self,
        entity: &str,
        steps: &[&str],
    ) -> Result<Vec<Step>, SidecarError> {
        self.stub(entity)?
            .call(DeclareSteps {
                steps: steps.iter().map(|s| (*s).to_owned()).collect(),
            })
            .await
    }

    /// Leases the next step to `worker` for `lease`.
    pub async fn next_step(
        &self,
        entity: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<NextReply, SidecarError> {
        self.stub(entity)?
            .call(NextStep {
                worker: worker.to_owned(),
                lease_ms: duration_ms(lease),
            })
            .await
    }

    /// Completes a leased step with its output (encoded as JSON).
    pub async fn complete_step(
        &self,
        entity: &str,
        name: &str,
        token: u64,
        output: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Step, SidecarError> {
        let output = output.map(|o| to_json("output", o)).transpose()?;
        self.finish(entity, name, token, Ok(output)).await
    }

    /// Records that a leased step failed.
    pub async fn fail_step(
        &self,
        entity: &str,
        name: &str,
        token: u64,
        error: &str,
    ) -> Result<Step, SidecarError> {
        self.finish(entity, name, token, Err(error.to_owned()))
            .await
    }

    pub(crate) async fn finish(
        &self,
        entity: &str,
        name: &str,
        token: u64,
        outcome: std::result::Result<Option<String>, String>,
    ) -> Result<Step, SidecarError> {
        self.stub(entity)?
            .call(FinishStep {
                name: name.to_owned(),
                token,
                outcome,
            })
            .await
    }

    /// Re-opens a failed step.
    pub async fn resume_step(&self, entity: &str, name: &str) -> Result<Step, SidecarError> {
        self.stub(entity)?
            .call(ResumeStep {
                name: name.to_owned(),
            })
            .await
    }

    /// The steps, with their outputs.
    pub async fn steps(&self, entity: &str) -> Result<Vec<Step>, SidecarError> {
        self.stub(entity)?.call(Steps).await
    }
}
