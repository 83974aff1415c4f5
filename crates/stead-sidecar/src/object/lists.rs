//! Lists: items appended, read by index, trimmed to a length.

use super::*;

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
