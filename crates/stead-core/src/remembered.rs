//! Ids remembered for idempotency, and the one rule every pattern keeps them by.
//!
//! A retried request must meet its first attempt's outcome, so an id is remembered from the
//! moment its request was resolved, for a configured time. The number remembered is bounded
//! too (an object's storage must not grow at a client's will). The rule when both bounds
//! meet: **refuse a new id rather than forget a young one** (forgetting it would let its
//! retry take effect twice). The refusal says when the oldest id may go.
//!
//! [`check_room`] is the rule alone (for a pattern that keeps its resolved requests as
//! records of its own, as the budget does); [`Remembered`] keeps ids in an object's storage
//! by that rule (the counter's idempotency keys, the reactor's event ids).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::backend::ListOptions;
use crate::error::Result;
use crate::storage::Storage;

/// A new id was refused: `remembered` ids are remembered and none is old enough to forget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "{remembered} ids are remembered and none is old enough to forget; retry in {retry_after_ms} ms"
)]
pub struct Remembering {
    /// How many are remembered.
    pub remembered: u64,
    /// When the oldest may be forgotten, from now (at least 1).
    pub retry_after_ms: u64,
}

/// The rule: one more id may be remembered while fewer than `max` are; at `max`, it waits
/// until the oldest (remembered from `oldest_ms`) is `keep_ms` old. Ids that old should have
/// been forgotten first.
///
/// ```
/// use stead_core::{Remembering, check_room};
///
/// assert!(check_room(9, 10, Some(0), 1_000, 500).is_ok());
/// assert_eq!(
///     check_room(10, 10, Some(0), 1_000, 400),
///     Err(Remembering { remembered: 10, retry_after_ms: 600 })
/// );
/// ```
pub fn check_room(
    count: u64,
    max: u64,
    oldest_ms: Option<i64>,
    keep_ms: i64,
    now_ms: i64,
) -> std::result::Result<(), Remembering> {
    if count < max {
        return Ok(());
    }
    let free_at = oldest_ms.unwrap_or(now_ms).saturating_add(keep_ms);
    Err(Remembering {
        remembered: count,
        retry_after_ms: u64::try_from(free_at.saturating_sub(now_ms))
            .unwrap_or(0)
            .max(1),
    })
}

/// Where a [`Remembered`] keeps its ids in an object's storage (three prefixes no other key
/// of the object starts with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RememberedLayout {
    /// `{ids}{id}`: when the id was remembered from (ms since the epoch).
    pub ids: &'static str,
    /// `{index}{when, 20 digits}/{id}`: the id, walked in time order to forget.
    pub index: &'static str,
    /// How many ids are remembered.
    pub count: &'static str,
}

/// Ids remembered in an object's storage for `keep_ms` each, at most `max` of them, by the
/// rule of [`check_room`]. Its state in memory is that of storage after the turn's writes;
/// a turn that fails after changing it drops the object, as every failed turn that wrote
/// does, so the two never part.
///
/// In a turn: [`seen`](Self::seen) answers whether a young id is remembered;
/// [`make_room`](Self::make_room) forgets what is old enough and refuses when nothing is;
/// [`remember`](Self::remember) keeps an id from now on. [`forget_expired`](Self::forget_expired)
/// forgets in batches (from an alarm or a schedule, or on the way).
#[derive(Debug)]
pub struct Remembered {
    layout: RememberedLayout,
    keep_ms: i64,
    max: u64,
    count: u64,
    /// Every remembered id while there are at most [`MIRROR_MAX`](Self::MIRROR_MAX);
    /// `None`: look in storage.
    mirror: Option<HashMap<String, i64>>,
    /// No id was remembered before this (`i64::MAX`: none is remembered); `None`: unknown.
    /// Lets [`forget_expired`](Self::forget_expired) answer without reading storage while
    /// nothing is due.
    floor: Option<i64>,
}

impl Remembered {
    /// Up to this many ids are also kept in memory; past it, [`seen`](Self::seen) reads
    /// storage.
    pub const MIRROR_MAX: u64 = 10_000;

    /// Reads what the object remembers (the count, and the ids while they are few). An
    /// object whose ids were stored before the count was kept has them counted once, here.
    pub async fn load(
        storage: &mut Storage,
        layout: RememberedLayout,
        keep_ms: u64,
        max: u64,
    ) -> Result<Self> {
        let count = match storage.get::<u64>(layout.count).await? {
            Some(n) => n,
            None => {
                let n = count_prefix(storage, layout.ids).await?;
                if n > 0 {
                    storage.put(layout.count, &n)?;
                }
                n
            }
        };
        let mirror = if count == 0 {
            Some(HashMap::new())
        } else if count <= Self::MIRROR_MAX {
            let ids: Vec<(String, i64)> = storage.list(ListOptions::prefix(layout.ids)).await?;
            Some(
                ids.into_iter()
                    .map(|(k, at)| (k[layout.ids.len()..].to_owned(), at))
                    .collect(),
            )
        } else {
            None
        };
        Ok(Remembered {
            layout,
            keep_ms: i64::try_from(keep_ms).unwrap_or(i64::MAX),
            max,
            count,
            mirror,
            floor: None,
        })
    }

    /// How many ids are remembered (young or not yet forgotten).
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// When `id` was remembered from, if it is remembered and younger than `keep_ms`.
    pub async fn seen(&self, storage: &mut Storage, id: &str, now_ms: i64) -> Result<Option<i64>> {
        let at = self.stored_at(storage, id).await?;
        Ok(at.filter(|at| now_ms.saturating_sub(*at) < self.keep_ms))
    }

    async fn stored_at(&self, storage: &mut Storage, id: &str) -> Result<Option<i64>> {
        match &self.mirror {
            Some(m) => Ok(m.get(id).copied()),
            None => storage.get(&format!("{}{id}", self.layout.ids)).await,
        }
    }

    /// Makes room for one more id: forgets those old enough (a batch at most), and refuses
    /// with [`Remembering`] when `max` remain and none may go yet.
    pub async fn make_room(
        &mut self,
        storage: &mut Storage,
        now_ms: i64,
    ) -> Result<std::result::Result<(), Remembering>> {
        if self.count < self.max {
            return Ok(Ok(()));
        }
        self.forget_expired(storage, now_ms, 1000).await?;
        let oldest = self.oldest(storage).await?;
        Ok(check_room(
            self.count,
            self.max,
            oldest,
            self.keep_ms,
            now_ms,
        ))
    }

    /// Remembers `id` from `now_ms` (a forgotten-but-stored id is remembered afresh). Call
    /// [`make_room`](Self::make_room) first.
    pub async fn remember(&mut self, storage: &mut Storage, id: &str, now_ms: i64) -> Result<()> {
        let (ids, index) = (self.layout.ids, self.layout.index);
        match self.stored_at(storage, id).await? {
            Some(old) => storage.delete(&index_key(index, old, id))?,
            None => {
                self.count += 1;
                storage.put(self.layout.count, &self.count)?;
            }
        }
        storage.put(&format!("{ids}{id}"), &now_ms)?;
        storage.put(&index_key(index, now_ms, id), id)?;
        if let Some(m) = &mut self.mirror {
            if self.count > Self::MIRROR_MAX {
                self.mirror = None;
            } else {
                m.insert(id.to_owned(), now_ms);
            }
        }
        self.floor = self.floor.map(|f| f.min(now_ms));
        Ok(())
    }

    /// Forgets up to `batch` ids remembered `keep_ms` ago or longer, oldest first; how many
    /// it forgot.
    pub async fn forget_expired(
        &mut self,
        storage: &mut Storage,
        now_ms: i64,
        batch: usize,
    ) -> Result<usize> {
        let cutoff = now_ms.saturating_sub(self.keep_ms);
        if cutoff < 0 || self.count == 0 || self.floor.is_some_and(|f| f > cutoff) {
            return Ok(0);
        }
        let index = self.layout.index;
        let end = format!("{index}{:020}", cutoff.saturating_add(1));
        let due: Vec<(String, String)> = storage
            .list(ListOptions::prefix(index).end(end).limit(batch))
            .await?;
        let mut forgot = 0;
        for (key, id) in &due {
            storage.delete(key)?;
            let at = parse_at(index, key);
            // An index entry left by a build that did not remove it when the id was
            // remembered again: the id stays, with its newer time.
            if at.is_some() && self.stored_at(storage, id).await? == at {
                storage.delete(&format!("{}{id}", self.layout.ids))?;
                if let Some(m) = &mut self.mirror {
                    m.remove(id);
                }
                self.count = self.count.saturating_sub(1);
                forgot += 1;
            }
        }
        if forgot > 0 {
            storage.put(self.layout.count, &self.count)?;
        }
        if self.count == 0 && self.mirror.is_none() {
            self.mirror = Some(HashMap::new());
        }
        self.floor = Some(self.oldest(storage).await?.unwrap_or(i64::MAX));
        Ok(forgot)
    }

    /// When the oldest remembered id was remembered from.
    pub async fn oldest(&self, storage: &mut Storage) -> Result<Option<i64>> {
        let index = self.layout.index;
        let first: Vec<(String, serde::de::IgnoredAny)> =
            storage.list(ListOptions::prefix(index).limit(1)).await?;
        Ok(first.first().and_then(|(k, _)| parse_at(index, k)))
    }

    /// Forgets everything, in memory, after the object deleted its storage (`delete_all`).
    pub fn cleared(&mut self) {
        self.count = 0;
        self.mirror = Some(HashMap::new());
        self.floor = Some(i64::MAX);
    }
}

fn index_key(index: &str, at: i64, id: &str) -> String {
    format!("{index}{at:020}/{id}")
}

fn parse_at(index: &str, key: &str) -> Option<i64> {
    key.get(index.len()..index.len() + 20)?.parse().ok()
}

/// How many keys start with `prefix`, read a page at a time.
async fn count_prefix(storage: &mut Storage, prefix: &str) -> Result<u64> {
    const PAGE: usize = 10_000;
    let mut n = 0u64;
    let mut start: Option<String> = None;
    loop {
        let mut opts = ListOptions::prefix(prefix).limit(PAGE);
        if let Some(s) = &start {
            opts = opts.start(s.clone());
        }
        let page: Vec<(String, serde::de::IgnoredAny)> = storage.list(opts).await?;
        n += page.len() as u64;
        match page.last() {
            Some((k, _)) if page.len() == PAGE => start = Some(format!("{k}\0")),
            _ => return Ok(n),
        }
    }
}
