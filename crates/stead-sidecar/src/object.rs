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
    /// The value itself when it is small, has no whitespace around it and is not `null`, as
    /// JSON; else it is in `chunks` chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw: Option<Box<RawValue>>,
    #[serde(default)]
    chunks: u32,
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

// ----- values ------------------------------------------------------------------------------

/// Reads a value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Get {
    /// The key.
    pub key: String,
}

impl Handler<Get> for Sidecar {
    type Reply = Result<Option<Versioned>, SidecarError>;
    async fn handle(&mut self, msg: Get, ctx: &mut Context) -> Self::Reply {
        validate_key(&msg.key)?;
        self.expire_if_due(ctx)?;
        let Some(entry) = Self::entry(ctx, &msg.key).await? else {
            return Ok(None);
        };
        if let Some(value) = entry.raw.map(|r| String::from(Box::<str>::from(r))) {
            return Ok(Some(Versioned {
                version: entry.version,
                value,
            }));
        }
        // Neither inline nor in chunks, four bytes: a `null` an earlier build kept inline
        // (and so stored as "no inline value").
        if entry.chunks == 0 && entry.size == 4 {
            return Ok(Some(Versioned {
                version: entry.version,
                value: "null".to_owned(),
            }));
        }
        let mut value = String::with_capacity(entry.size as usize);
        for i in 0..entry.chunks {
            let chunk: String = ctx
                .storage()
                .get(&chunk_key(&msg.key, i))
                .await?
                .unwrap_or_default();
            value.push_str(&chunk);
        }
        Ok(Some(Versioned {
            version: entry.version,
            value,
        }))
    }
}

/// Writes a value (JSON text, kept byte for byte), if `condition` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Put {
    /// The key.
    pub key: String,
    /// The value's JSON text.
    pub value: String,
    /// When to write.
    pub condition: Condition,
}

/// The answer to a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Written {
    /// The key's new version.
    pub version: u64,
    /// Whether the key was created (else replaced).
    pub created: bool,
}

impl Handler<Put> for Sidecar {
    type Reply = Result<Written, SidecarError>;
    async fn handle(&mut self, msg: Put, ctx: &mut Context) -> Self::Reply {
        validate_key(&msg.key)?;
        let size = msg.value.len() as u64;
        if size > self.limits.max_value_bytes {
            return Err(SidecarError::TooLarge {
                size,
                max: self.limits.max_value_bytes,
            });
        }
        // A small value without whitespace around it is kept as JSON inside its entry
        // (checked as it is read, and written without escaping); any other is checked here
        // and kept in chunks.
        let Put {
            key,
            value,
            condition,
        } = msg;
        // `null` is never kept inline: an inline `null` would read back as "no inline value".
        let inline = value.len() <= INLINE_BYTES && value.trim() == value && value != "null";
        let (raw, text) = if inline {
            let raw = RawValue::from_string(value)
                .map_err(|e| InvalidInput::new(format!("value is not JSON: {e}")))?;
            (Some(raw), None)
        } else {
            validate_json("value", &value)?;
            (None, Some(value))
        };
        self.expire_if_due(ctx)?;
        let old = Self::head(ctx, &key).await?;
        Self::check_condition(&key, condition, old.as_ref().map(|e| e.version))?;
        let freed = old.as_ref().map_or(0, |e| e.size);
        self.check_quota(size, freed, old.is_none())?;
        let chunks = text
            .as_deref()
            .map_or_else(Vec::new, |t| split_chunks(t, self.limits.chunk_bytes));
        for (i, chunk) in chunks.iter().enumerate() {
            ctx.storage().put(&chunk_key(&key, i as u32), chunk)?;
        }
        let n_chunks = chunks.len() as u32;
        // Chunks of a longer old value that the new one does not overwrite.
        if let Some(old) = &old {
            for i in n_chunks..old.chunks {
                ctx.storage().delete(&chunk_key(&key, i))?;
            }
        }
        let version = self.next_version();
        let entry = Entry {
            version,
            size,
            chunks: n_chunks,
            raw,
        };
        ctx.storage().put(&entry_key(&key), &entry)?;
        self.meta.bytes = self.meta.bytes - freed + size;
        if old.is_none() {
            self.meta.keys += 1;
        }
        self.wrote(ctx)?;
        Ok(Written {
            version,
            created: old.is_none(),
        })
    }
}

/// Deletes a value, if `condition` holds; answers whether it existed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delete {
    /// The key.
    pub key: String,
    /// When to delete.
    pub condition: Condition,
}

impl Handler<Delete> for Sidecar {
    type Reply = Result<bool, SidecarError>;
    async fn handle(&mut self, msg: Delete, ctx: &mut Context) -> Self::Reply {
        validate_key(&msg.key)?;
        self.expire_if_due(ctx)?;
        let old = Self::head(ctx, &msg.key).await?;
        Self::check_condition(&msg.key, msg.condition, old.as_ref().map(|e| e.version))?;
        let Some(old) = old else {
            return Ok(false);
        };
        for i in 0..old.chunks {
            ctx.storage().delete(&chunk_key(&msg.key, i))?;
        }
        ctx.storage().delete(&entry_key(&msg.key))?;
        self.meta.bytes -= old.size;
        self.meta.keys -= 1;
        self.wrote(ctx)?;
        Ok(true)
    }
}

/// Lists keys by prefix, in key order, after `cursor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListKeys {
    /// Only keys that start with this.
    pub prefix: String,
    /// Only keys after this one (the `next_cursor` of the previous page).
    pub cursor: Option<String>,
    /// At most this many (1 to [`MAX_PAGE`]).
    pub limit: usize,
}

/// One key of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct KeyInfo {
    /// The key.
    pub key: String,
    /// Its version.
    pub version: u64,
    /// The size of its JSON text, in bytes.
    pub size: u64,
}

/// A page of keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct KeyPage {
    /// The keys, in order.
    pub keys: Vec<KeyInfo>,
    /// Where the next page starts; absent on the last page.
    pub next_cursor: Option<String>,
}

impl Handler<ListKeys> for Sidecar {
    type Reply = Result<KeyPage, SidecarError>;
    async fn handle(&mut self, msg: ListKeys, ctx: &mut Context) -> Self::Reply {
        stead_core::validate_page_limit(msg.limit as u64)?;
        if msg.prefix.len() > MAX_KEY_BYTES {
            return Err(
                InvalidInput::new(format!("prefix may be at most {MAX_KEY_BYTES} bytes")).into(),
            );
        }
        self.expire_if_due(ctx)?;
        let mut opts = ListOptions::prefix(entry_key(&msg.prefix)).limit(msg.limit + 1);
        if let Some(c) = &msg.cursor {
            // Strictly after the cursor: NUL sorts before every character a key may hold.
            opts = opts.start(format!("{}\u{0}", entry_key(c)));
        }
        let rows: Vec<(String, EntryHead)> = ctx.storage().list(opts).await?;
        let more = rows.len() > msg.limit;
        let keys: Vec<KeyInfo> = rows
            .into_iter()
            .take(msg.limit)
            .map(|(k, e)| KeyInfo {
                key: k[2..].to_owned(),
                version: e.version,
                size: e.size,
            })
            .collect();
        let next_cursor = more.then(|| keys.last().map(|k| k.key.clone())).flatten();
        Ok(KeyPage { keys, next_cursor })
    }
}

// ----- lists -------------------------------------------------------------------------------

/// Appends an item (JSON text) to a list; answers its index. With `max_len`, the oldest
/// items beyond that many are dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Append {
    /// The list's key.
    pub key: String,
    /// The item's JSON text.
    pub item: String,
    /// Keep at most this many items (the oldest go first).
    pub max_len: Option<u64>,
}

/// The answer to an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Appended {
    /// The item's index (they start at 0 and never repeat).
    pub index: u64,
    /// How many items the list keeps now.
    pub len: u64,
}

impl Handler<Append> for Sidecar {
    type Reply = Result<Appended, SidecarError>;
    async fn handle(&mut self, msg: Append, ctx: &mut Context) -> Self::Reply {
        validate_key(&msg.key)?;
        let size = msg.item.len() as u64;
        let max = self.limits.max_item_bytes;
        if size > max || encoded_len(&msg.item) > self.limits.chunk_bytes {
            return Err(SidecarError::TooLarge { size, max });
        }
        if msg.max_len == Some(0) {
            return Err(InvalidInput::new("max_len must be at least 1").into());
        }
        validate_json("item", &msg.item)?;
        self.expire_if_due(ctx)?;
        let old: Option<ListMeta> = ctx.storage().get(&list_key(&msg.key)).await?;
        let mut list = old.clone().unwrap_or_default();
        // What trimming to `max_len` frees, read before the quota is checked.
        let mut dropped = Vec::new();
        if let Some(max_len) = msg.max_len {
            let keep_from = (list.next + 1).saturating_sub(max_len);
            for index in list.first..keep_from.max(list.first) {
                let k = item_key(&msg.key, index);
                let item: Option<String> = ctx.storage().get(&k).await?;
                dropped.push((k, item.map_or(0, |i| i.len() as u64)));
            }
        }
        let freed: u64 = dropped.iter().map(|(_, n)| n).sum();
        self.check_quota(size, freed, old.is_none())?;
        for (k, _) in &dropped {
            ctx.storage().delete(k)?;
        }
        list.first += dropped.len() as u64;
        let index = list.next;
        ctx.storage().put(&item_key(&msg.key, index), &msg.item)?;
        list.next += 1;
        list.bytes = list.bytes - freed + size;
        ctx.storage().put(&list_key(&msg.key), &list)?;
        self.meta.bytes = self.meta.bytes - freed + size;
        if old.is_none() {
            self.meta.keys += 1;
        }
        self.wrote(ctx)?;
        Ok(Appended {
            index,
            len: list.next - list.first,
        })
    }
}

/// Reads items of a list by index, from `from` on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Range {
    /// The list's key.
    pub key: String,
    /// The first index wanted (items before the oldest kept are skipped).
    pub from: u64,
    /// At most this many (1 to [`MAX_PAGE`]).
    pub limit: usize,
}

/// One item of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Its index.
    pub index: u64,
    /// Its JSON text.
    pub item: String,
}

/// Items of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Items {
    /// The items, by index.
    pub items: Vec<Item>,
    /// The index of the oldest item kept.
    pub first: u64,
    /// The index the next append gets.
    pub next: u64,
}

impl Handler<Range> for Sidecar {
    type Reply = Result<Option<Items>, SidecarError>;
    async fn handle(&mut self, msg: Range, ctx: &mut Context) -> Self::Reply {
        validate_key(&msg.key)?;
        stead_core::validate_page_limit(msg.limit as u64)?;
        self.expire_if_due(ctx)?;
        let Some(list) = ctx.storage().get::<ListMeta>(&list_key(&msg.key)).await? else {
            return Ok(None);
        };
        let from = msg.from.max(list.first);
        let mut items = Vec::new();
        if from < list.next {
            let opts = ListOptions::all()
                .start(item_key(&msg.key, from))
                .end(item_key(&msg.key, list.next))
                .limit(msg.limit);
            let rows: Vec<(String, String)> = ctx.storage().list(opts).await?;
            for (k, item) in rows {
                let index = u64::from_str_radix(&k[k.len() - 16..], 16).unwrap_or_default();
                items.push(Item { index, item });
            }
        }
        Ok(Some(Items {
            items,
            first: list.first,
            next: list.next,
        }))
    }
}

// ----- the whole sidecar -------------------------------------------------------------------

/// Deletes everything the sidecar holds (its lifetime and steps too).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Remove;

impl Handler<Remove> for Sidecar {
    type Reply = Result<(), SidecarError>;
    async fn handle(&mut self, _: Remove, ctx: &mut Context) -> Self::Reply {
        self.clear(ctx)?;
        Ok(())
    }
}

/// Sets (or, with `None`, removes) the sidecar's lifetime; the time runs from now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetLifetime {
    /// The lifetime.
    pub lifetime: Option<Lifetime>,
}

/// What a sidecar holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct SidecarInfo {
    /// Values and lists.
    pub keys: u64,
    /// Bytes of values, items and step outputs.
    pub bytes: u64,
    /// The quota on keys.
    pub max_keys: u64,
    /// The quota on bytes.
    pub max_bytes: u64,
    /// The lifetime, if any.
    pub lifetime: Option<Lifetime>,
    /// When everything is deleted, if a lifetime is set.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Sidecar {
    fn info(&self) -> SidecarInfo {
        SidecarInfo {
            keys: self.meta.keys,
            bytes: self.meta.bytes,
            max_keys: self.limits.max_keys,
            max_bytes: self.limits.max_total_bytes,
            lifetime: self.meta.lifetime,
            expires_at: self.meta.expires_at,
        }
    }
}

impl Handler<SetLifetime> for Sidecar {
    type Reply = Result<SidecarInfo, SidecarError>;
    async fn handle(&mut self, msg: SetLifetime, ctx: &mut Context) -> Self::Reply {
        if let Some(l) = msg.lifetime {
            stead_core::validate_ms("ttl_ms", l.ttl_ms, MAX_TTL_MS)?;
        }
        self.expire_if_due(ctx)?;
        self.meta.lifetime = msg.lifetime;
        match msg.lifetime {
            Some(l) => self.set_expiry(ctx, l)?,
            None => {
                self.meta.expires_at = None;
                ctx.storage().delete_alarm();
            }
        }
        self.save_meta(ctx)?;
        Ok(self.info())
    }
}

/// Reads what the sidecar holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inspect;

impl Handler<Inspect> for Sidecar {
    type Reply = Result<SidecarInfo, SidecarError>;
    async fn handle(&mut self, _: Inspect, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx)?;
        Ok(self.info())
    }
}

// ----- steps -------------------------------------------------------------------------------

/// One checkpointed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Step {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub status: StepStatus,
    /// How many times it was leased.
    pub attempts: u32,
    /// The worker holding (or that last held) it.
    pub worker: Option<String>,
    /// The token of its current (or last) lease.
    pub token: Option<u64>,
    /// When the current lease lapses (a running step whose lease lapsed is leased again).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The error of its last failure.
    pub error: Option<String>,
    /// Its output (JSON text), once done (kept apart from the step list, and read with
    /// [`Steps`]). Serialized as the JSON value itself, not as a string of JSON.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_text")]
    #[cfg_attr(feature = "http", schema(value_type = Option<serde_json::Value>))]
    pub output: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StepList {
    steps: Vec<Step>,
}

/// Declares the steps, in order. Declaring the same steps again changes nothing; other
/// steps once some are declared are a conflict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeclareSteps {
    /// The step names, in the order they run.
    pub steps: Vec<String>,
}

/// Leases the next step: the first that is not done, if it is pending (or running with a
/// lapsed lease).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextStep {
    /// Who takes it.
    pub worker: String,
    /// How long the lease lasts, in ms.
    pub lease_ms: u64,
}

/// A leased step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct StepLease {
    /// The step.
    pub name: String,
    /// The lease's token: completing or failing the step needs it.
    pub token: u64,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// When the lease lapses.
    pub lease_expires_at: DateTime<Utc>,
    /// The output of the step before it (JSON text), if any. Serialized as the JSON value
    /// itself, not as a string of JSON.
    #[serde(default, with = "json_text")]
    #[cfg_attr(feature = "http", schema(value_type = Option<serde_json::Value>))]
    pub previous_output: Option<String>,
}

/// The answer to [`NextStep`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct NextReply {
    /// The step leased, if one could be.
    pub lease: Option<StepLease>,
    /// Every step is done.
    pub finished: bool,
    /// The step that holds the workflow up (running under another lease, or failed).
    pub blocked_by: Option<Step>,
}

/// Records a leased step's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishStep {
    /// The step.
    pub name: String,
    /// The lease's token.
    pub token: u64,
    /// `Ok(output JSON)` completes it, `Err(error)` fails it.
    pub outcome: std::result::Result<Option<String>, String>,
}

/// Re-opens a failed step: it becomes pending again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeStep {
    /// The step.
    pub name: String,
}

/// Reads the steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Steps;

impl Sidecar {
    async fn steps(ctx: &mut Context) -> Result<StepList> {
        Ok(ctx.storage().get(STEPS).await?.unwrap_or_default())
    }

    fn find<'a>(list: &'a mut StepList, name: &str) -> Result<&'a mut Step, SidecarError> {
        list.steps
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| SidecarError::StepNotFound {
                name: name.to_owned(),
            })
    }
}

impl Handler<DeclareSteps> for Sidecar {
    type Reply = Result<Vec<Step>, SidecarError>;
    async fn handle(&mut self, msg: DeclareSteps, ctx: &mut Context) -> Self::Reply {
        if msg.steps.is_empty() || msg.steps.len() > MAX_STEPS {
            return Err(InvalidInput::new(format!("declare 1 to {MAX_STEPS} steps")).into());
        }
        for (i, s) in msg.steps.iter().enumerate() {
            stead_core::validate_name("step", s)?;
            if msg.steps[..i].contains(s) {
                return Err(InvalidInput::new(format!("step {s:?} is declared twice")).into());
            }
        }
        self.expire_if_due(ctx)?;
        let list = Self::steps(ctx).await?;
        if !list.steps.is_empty() {
            let names: Vec<&String> = list.steps.iter().map(|s| &s.name).collect();
            if names.iter().copied().eq(msg.steps.iter()) {
                return Ok(list.steps);
            }
            return Err(SidecarError::StepsDeclared {
                steps: list.steps.into_iter().map(|s| s.name).collect(),
            });
        }
        let list = StepList {
            steps: msg
                .steps
                .into_iter()
                .map(|name| Step {
                    name,
                    status: StepStatus::Pending,
                    attempts: 0,
                    worker: None,
                    token: None,
                    lease_expires_at: None,
                    error: None,
                    output: None,
                })
                .collect(),
        };
        ctx.storage().put(STEPS, &list)?;
        self.wrote(ctx)?;
        Ok(list.steps)
    }
}

impl Handler<NextStep> for Sidecar {
    type Reply = Result<NextReply, SidecarError>;
    async fn handle(&mut self, msg: NextStep, ctx: &mut Context) -> Self::Reply {
        stead_core::validate_name("worker", &msg.worker)?;
        stead_core::validate_ms("lease_ms", msg.lease_ms, MAX_LEASE_MS)?;
        self.expire_if_due(ctx)?;
        let mut list = Self::steps(ctx).await?;
        let now = ctx.now();
        let Some(at) = list.steps.iter().position(|s| s.status != StepStatus::Done) else {
            return Ok(NextReply {
                lease: None,
                finished: !list.steps.is_empty(),
                blocked_by: None,
            });
        };
        let step = &list.steps[at];
        let lapsed =
            step.status == StepStatus::Running && step.lease_expires_at.is_none_or(|t| t <= now);
        if step.status == StepStatus::Failed || (step.status == StepStatus::Running && !lapsed) {
            return Ok(NextReply {
                lease: None,
                finished: false,
                blocked_by: Some(step.clone()),
            });
        }
        let previous_output = match at.checked_sub(1) {
            Some(p) => ctx.storage().get(&output_key(&list.steps[p].name)).await?,
            None => None,
        };
        let token = self.next_version();
        let expires = now + chrono::Duration::milliseconds(msg.lease_ms as i64);
        let step = &mut list.steps[at];
        step.status = StepStatus::Running;
        step.attempts += 1;
        step.worker = Some(msg.worker);
        step.token = Some(token);
        step.lease_expires_at = Some(expires);
        let lease = StepLease {
            name: step.name.clone(),
            token,
            attempt: step.attempts,
            lease_expires_at: expires,
            previous_output,
        };
        ctx.storage().put(STEPS, &list)?;
        self.wrote(ctx)?;
        Ok(NextReply {
            lease: Some(lease),
            finished: false,
            blocked_by: None,
        })
    }
}

impl Handler<FinishStep> for Sidecar {
    type Reply = Result<Step, SidecarError>;
    async fn handle(&mut self, msg: FinishStep, ctx: &mut Context) -> Self::Reply {
        if let Ok(Some(output)) = &msg.outcome {
            let size = output.len() as u64;
            if size > self.limits.max_item_bytes || encoded_len(output) > self.limits.chunk_bytes {
                return Err(SidecarError::TooLarge {
                    size,
                    max: self.limits.max_item_bytes,
                });
            }
            validate_json("output", output)?;
        }
        self.expire_if_due(ctx)?;
        let mut list = Self::steps(ctx).await?;
        let step = Self::find(&mut list, &msg.name)?;
        if step.status != StepStatus::Running || step.token != Some(msg.token) {
            return Err(SidecarError::StepLeaseLost {
                name: msg.name,
                status: step.status,
                token: msg.token,
                current: step.token,
            });
        }
        match &msg.outcome {
            Ok(output) => {
                let key = output_key(&msg.name);
                let old: Option<String> = ctx.storage().get(&key).await?;
                let freed = old.map_or(0, |o| o.len() as u64);
                let added = output.as_ref().map_or(0, |o| o.len() as u64);
                self.check_quota(added, freed, false)?;
                match output {
                    Some(o) => ctx.storage().put(&key, o)?,
                    None => ctx.storage().delete(&key)?,
                }
                self.meta.bytes = self.meta.bytes - freed + added;
                let step = Self::find(&mut list, &msg.name)?;
                step.status = StepStatus::Done;
                step.error = None;
                step.lease_expires_at = None;
            }
            Err(error) => {
                step.status = StepStatus::Failed;
                step.error = Some(error.chars().take(MAX_ERROR_CHARS).collect());
                step.lease_expires_at = None;
            }
        }
        ctx.storage().put(STEPS, &list)?;
        self.wrote(ctx)?;
        let mut step = Self::find(&mut list, &msg.name)?.clone();
        step.output = msg.outcome.ok().flatten();
        Ok(step)
    }
}

impl Handler<ResumeStep> for Sidecar {
    type Reply = Result<Step, SidecarError>;
    async fn handle(&mut self, msg: ResumeStep, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx)?;
        let mut list = Self::steps(ctx).await?;
        let step = Self::find(&mut list, &msg.name)?;
        if step.status != StepStatus::Failed {
            return Err(SidecarError::StepNotFailed {
                name: msg.name,
                status: step.status,
            });
        }
        step.status = StepStatus::Pending;
        let step = step.clone();
        ctx.storage().put(STEPS, &list)?;
        self.wrote(ctx)?;
        Ok(step)
    }
}

impl Handler<Steps> for Sidecar {
    type Reply = Result<Vec<Step>, SidecarError>;
    async fn handle(&mut self, _: Steps, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx)?;
        let mut steps = Self::steps(ctx).await?.steps;
        for s in &mut steps {
            if s.status == StepStatus::Done {
                s.output = ctx.storage().get(&output_key(&s.name)).await?;
            }
        }
        Ok(steps)
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
