//! The sidecar object: one per entity (a workflow run, an order, a user), holding versioned
//! JSON values, append lists, a lifetime and the entity's checkpointed steps.
//!
//! Storage layout (keys of the object's own storage):
//! - `meta`: counts, the versions reserved, the lifetime;
//! - `k/{key}`: a value's version and size, and a small value itself; a larger one's text
//!   in chunks at `v/{len}/{key}/{i}`;
//! - `l/{key}`: a list's first and next index; its items at `i/{len}/{key}/{index}`;
//! - `steps`: the declared steps; a step's output at `o/{name}`.
//!
//! `{len}` is the key's length in hex: with it, no key's chunks or items fall inside the
//! range of another key that starts with the same text.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use stead_core::{AlarmInfo, Context, DurableObject, Handler, InvalidInput, ListOptions, Result};

use crate::error::{Quota, SidecarError, StepStatus};

mod lifetime;
mod lists;
mod steps;
mod values;

pub use lifetime::*;
pub use lists::*;
pub use steps::*;
pub use values::*;

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
pub use stead_core::MAX_PAGE;
/// The most steps a sidecar declares.
pub const MAX_STEPS: usize = 1000;
/// The longest lifetime, in ms (a year).
pub const MAX_TTL_MS: u64 = 366 * 24 * 3600 * 1000;
/// The longest step lease, in ms (a day).
pub const MAX_LEASE_MS: u64 = 24 * 3600 * 1000;
/// The longest error a failed step keeps, in characters (longer ones are cut).
pub const MAX_ERROR_CHARS: usize = 4096;

const META: &str = "meta";
const STEPS: &str = "steps";

/// Limits of every sidecar of a runtime (from [`SidecarConfig`](crate::SidecarConfig)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest value, in bytes of JSON text.
    pub max_value_bytes: u64,
    /// The largest list item or step output, in bytes of JSON text.
    pub max_item_bytes: u64,
    /// Total bytes of values, items and outputs per sidecar.
    pub max_total_bytes: u64,
    /// Values and lists per sidecar.
    pub max_keys: u64,
    /// The most bytes one stored chunk may take, encoded (the runtime's value limit).
    pub chunk_bytes: usize,
}

/// Versions are reserved this many at a time, so that a write that changes nothing else
/// need not write the bookkeeping.
const VERSION_BLOCK: u64 = 1024;
/// Values of at most this many bytes (without whitespace around them) are kept as JSON in
/// their entry (one stored key per value); others in chunks of their own.
const INLINE_BYTES: usize = 4096;

/// The object's bookkeeping, stored at `meta`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    /// Every version (or step token) up to this one may have been issued: after an
    /// activation, issuing starts above it, so they only grow, across deletes and crashes.
    version: u64,
    bytes: u64,
    keys: u64,
    lifetime: Option<Lifetime>,
    expires_at: Option<DateTime<Utc>>,
}

/// How long a sidecar lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Lifetime {
    /// How long, in ms.
    pub ttl_ms: u64,
    /// Whether every write starts the time again (else it runs from when it was set).
    pub renew_on_write: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    version: u64,
    size: u64,
    /// The value itself when it is small and has no whitespace around it, as JSON; else it
    /// is in `chunks` chunks. Absent means "in chunks"; present, even as `null`, is the value.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_raw"
    )]
    raw: Option<Box<RawValue>>,
    #[serde(default)]
    chunks: u32,
}

/// An inline value that is there, whatever JSON it holds (`null` included: an `Option`
/// would read a present `null` as no value).
fn present_raw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// An [`Entry`] read without its inline value.
#[derive(Debug, Clone, Deserialize)]
struct EntryHead {
    version: u64,
    size: u64,
    #[serde(default)]
    chunks: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ListMeta {
    /// The index of the oldest item kept.
    first: u64,
    /// The index the next item gets.
    next: u64,
    bytes: u64,
}

fn entry_key(key: &str) -> String {
    format!("k/{key}")
}

fn chunk_key(key: &str, i: u32) -> String {
    format!("v/{:04x}/{key}/{i:08x}", key.len())
}

fn list_key(key: &str) -> String {
    format!("l/{key}")
}

fn item_key(key: &str, index: u64) -> String {
    format!("i/{:04x}/{key}/{index:016x}", key.len())
}

fn output_key(step: &str) -> String {
    format!("o/{step}")
}

/// Checks a sidecar key: 1 to [`MAX_KEY_BYTES`] bytes, no control characters.
pub fn validate_key(key: &str) -> std::result::Result<(), InvalidInput> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(InvalidInput::new(format!(
            "key must be 1 to {MAX_KEY_BYTES} bytes (got {})",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(InvalidInput::new("key may not contain control characters"));
    }
    Ok(())
}

/// Checks that `text` is one JSON value.
pub(crate) fn validate_json(what: &str, text: &str) -> std::result::Result<(), InvalidInput> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(drop)
        .map_err(|e| InvalidInput::new(format!("{what} is not JSON: {e}")))
}

/// How many bytes the byte `b` of a string takes inside a JSON string: every byte of a
/// multi-byte character is written as it is.
fn escaped_byte_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
        0..0x20 => 6,
        _ => 1,
    }
}

/// How many bytes `c` takes inside a JSON string.
fn escaped_len(c: char) -> usize {
    if c.is_ascii() {
        escaped_byte_len(c as u8)
    } else {
        c.len_utf8()
    }
}

/// How many bytes `text` takes stored (as a JSON string).
fn encoded_len(text: &str) -> usize {
    2 + text.bytes().map(escaped_byte_len).sum::<usize>()
}

/// Splits `text` at character boundaries into pieces that each take at most `budget` bytes
/// stored as a JSON string.
fn split_chunks(text: &str, budget: usize) -> Vec<&str> {
    let budget = budget.saturating_sub(2).max(6);
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (at, c) in text.char_indices() {
        let n = escaped_len(c);
        if used + n > budget {
            out.push(&text[start..at]);
            (start, used) = (at, 0);
        }
        used += n;
    }
    if start < text.len() || out.is_empty() {
        out.push(&text[start..]);
    }
    out
}

/// The entity's storage sidecar. See the crate documentation.
#[derive(Debug)]
pub struct Sidecar {
    /// The bookkeeping as it is in memory; written when it differs from `stored`.
    meta: Meta,
    stored: Meta,
    /// The last version (or step token) issued.
    issued: u64,
    limits: Arc<Limits>,
}

/// A value as read: its text and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The version, which changes on every write of the key.
    pub version: u64,
    /// The JSON text, byte for byte as written.
    pub value: String,
}

/// When a write applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// Always.
    #[default]
    Always,
    /// Only if the key is at this version (`If-Match`).
    IfVersion(u64),
    /// Only if the key is at one of these versions (an `If-Match` list; an empty list
    /// never holds).
    IfVersionIn(Vec<u64>),
    /// Only if the key does not exist (`If-None-Match: *`).
    IfAbsent,
    /// Only if the key exists (`If-Match: *`).
    IfPresent,
}

impl Sidecar {
    /// Forgets everything once the lifetime has run out (before the alarm, if the alarm is
    /// late): an expired sidecar reads as empty.
    fn expire_if_due(&mut self, ctx: &mut Context) -> Result<()> {
        if self.meta.expires_at.is_some_and(|at| at <= ctx.now()) {
            self.clear(ctx)?;
        }
        Ok(())
    }

    /// Deletes everything but the version counter, so that no version (or step token) is
    /// ever issued twice.
    fn clear(&mut self, ctx: &mut Context) -> Result<()> {
        ctx.storage().delete_all();
        self.meta = Meta {
            version: self.meta.version,
            ..Meta::default()
        };
        self.stored = Meta::default();
        if self.meta.version > 0 {
            self.save_meta(ctx)?;
        }
        Ok(())
    }

    fn next_version(&mut self) -> u64 {
        self.issued += 1;
        if self.issued > self.meta.version {
            self.meta.version = self.issued + VERSION_BLOCK - 1;
        }
        self.issued
    }

    /// After a write: renews the lifetime if it renews on writes, and writes the
    /// bookkeeping if it changed.
    fn wrote(&mut self, ctx: &mut Context) -> Result<()> {
        if let Some(l) = self.meta.lifetime
            && l.renew_on_write
        {
            self.set_expiry(ctx, l)?;
        }
        self.save_meta(ctx)
    }

    fn save_meta(&mut self, ctx: &mut Context) -> Result<()> {
        if self.meta != self.stored {
            ctx.storage().put(META, &self.meta)?;
            self.stored = self.meta.clone();
        }
        Ok(())
    }

    fn set_expiry(&mut self, ctx: &mut Context, l: Lifetime) -> Result<()> {
        let at = ctx.now() + chrono::Duration::milliseconds(l.ttl_ms as i64);
        self.meta.expires_at = Some(at);
        ctx.storage().set_alarm(at)
    }

    fn check_quota(
        &self,
        added_bytes: u64,
        freed_bytes: u64,
        new_key: bool,
    ) -> Result<(), SidecarError> {
        let bytes = self.meta.bytes.saturating_sub(freed_bytes) + added_bytes;
        if bytes > self.limits.max_total_bytes {
            return Err(SidecarError::QuotaExceeded {
                quota: Quota::Bytes,
                limit: self.limits.max_total_bytes,
                requested: bytes,
            });
        }
        if new_key && self.meta.keys + 1 > self.limits.max_keys {
            return Err(SidecarError::QuotaExceeded {
                quota: Quota::Keys,
                limit: self.limits.max_keys,
                requested: self.meta.keys + 1,
            });
        }
        Ok(())
    }

    async fn entry(ctx: &mut Context, key: &str) -> Result<Option<Entry>> {
        ctx.storage().get(&entry_key(key)).await
    }

    /// An entry without its inline value (a write needs only its version and size).
    async fn head(ctx: &mut Context, key: &str) -> Result<Option<EntryHead>> {
        ctx.storage().get(&entry_key(key)).await
    }

    fn check_condition(
        key: &str,
        cond: Condition,
        current: Option<u64>,
    ) -> Result<(), SidecarError> {
        let ok = match cond {
            Condition::Always => true,
            Condition::IfVersion(v) => current == Some(v),
            Condition::IfVersionIn(vs) => current.is_some_and(|c| vs.contains(&c)),
            Condition::IfAbsent => current.is_none(),
            Condition::IfPresent => current.is_some(),
        };
        if ok {
            Ok(())
        } else {
            Err(SidecarError::PreconditionFailed {
                key: key.to_owned(),
                current,
            })
        }
    }
}

impl DurableObject for Sidecar {
    const CLASS: &'static str = "sidecar";
    type Env = Limits;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<Append>()
            .message::<Range>()
            .message::<Remove>()
            .message::<SetLifetime>()
            .message::<Inspect>()
            .message::<Get>()
            .message::<Put>()
            .message::<Delete>()
            .message::<ListKeys>()
            .message::<DeclareSteps>()
            .message::<NextStep>()
            .message::<FinishStep>()
            .message::<ResumeStep>()
            .message::<Steps>();
    }

    async fn activate(ctx: &mut Context, env: Arc<Limits>) -> Result<Self> {
        let meta: Meta = ctx.storage().get(META).await?.unwrap_or_default();
        Ok(Sidecar {
            issued: meta.version,
            stored: meta.clone(),
            meta,
            limits: env,
        })
    }

    async fn alarm(&mut self, ctx: &mut Context, _info: AlarmInfo) -> Result<()> {
        match self.meta.expires_at {
            Some(at) if at <= ctx.now() => self.clear(ctx)?,
            // Renewed since the alarm was set: wait for the new time.
            Some(at) => ctx.storage().set_alarm(at)?,
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_their_budget_and_join_back_exactly() {
        let texts = [
            String::new(),
            "\"".repeat(1000),
            "é".repeat(777),
            "{\"a\":\"\\n\\t\"}".repeat(300),
            "x".repeat(5000),
        ];
        for t in &texts {
            for budget in [8, 16, 100, 1000] {
                let parts = split_chunks(t, budget);
                assert!(!parts.is_empty());
                assert_eq!(parts.concat(), *t);
                for p in &parts {
                    let encoded = serde_json::to_vec(p).unwrap().len();
                    assert_eq!(encoded, encoded_len(p));
                    assert!(encoded <= budget.max(8), "{encoded} > {budget}");
                }
            }
        }
    }

    #[test]
    fn keys_are_checked() {
        assert!(validate_key("a/b c").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(validate_key("a\nb").is_err());
    }
}

/// Serializes JSON text as the JSON value it holds (and reads one back as its text), so
/// that a step's output goes out as it came in: a JSON value, not a string of JSON.
mod json_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub(super) fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            // Text that is not one JSON value (never stored: outputs are checked) goes out
            // as a string rather than as broken JSON.
            Some(text) => match RawValue::from_string(text.clone()) {
                Ok(raw) => raw.serialize(s),
                Err(_) => s.serialize_str(text),
            },
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let raw: Option<Box<RawValue>> = Option::deserialize(d)?;
        Ok(raw.map(|r| r.get().to_owned()))
    }
}
