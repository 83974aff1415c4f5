//! Values: read, written, deleted and listed by key, each with its version.

use super::*;

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
        let (raw, text) = if value.len() <= INLINE_BYTES && value.trim() == value {
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
