//! A bounded log in an object's storage, and the one page shape every log answers with.
//!
//! Entries are numbered from 1 by the object and stored under `{prefix}{seq:020}`, so that
//! key order is number order. [`Log::append`] writes an entry and forgets the one that falls
//! off the end when only the last `keep` are kept; [`Log::forget_below`] trims by number (for
//! logs trimmed by age, the object knows the first number still young). [`Log::page`] reads a
//! [`LogPage`]: newest first unless asked otherwise, with a cursor to the next page.
//!
//! Writes go through the turn's [`Storage`], so an entry is committed with everything else
//! the turn did, or not at all.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::ListOptions;
use crate::error::Result;
use crate::input::{InvalidInput, validate_page_limit};
use crate::storage::Storage;

/// Which end of a log a page starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogOrder {
    /// The newest entry first (the default).
    #[default]
    Newest,
    /// The oldest entry first.
    Oldest,
}

/// Which page of a log to read.
///
/// ```
/// use stead_core::{LogQuery, LogOrder};
///
/// let first = LogQuery::newest(50);
/// assert_eq!(first.order, LogOrder::Newest);
/// // The page after one whose `next` was 120: entries numbered below 120.
/// let second = first.from(Some(120));
/// assert!(second.admits(119) && !second.admits(120));
/// assert!(LogQuery::oldest(0).validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// At most this many entries (1 to [`MAX_PAGE`](crate::MAX_PAGE)).
    pub limit: u32,
    /// Which end first.
    pub order: LogOrder,
    /// The `next` of the previous page: newest first, only entries numbered below it; oldest
    /// first, only entries numbered above it. `None` starts at the end `order` names.
    pub cursor: Option<u64>,
}

impl LogQuery {
    /// The newest `limit` entries, newest first.
    pub fn newest(limit: u32) -> Self {
        LogQuery {
            limit,
            order: LogOrder::Newest,
            cursor: None,
        }
    }

    /// The oldest `limit` entries, oldest first.
    pub fn oldest(limit: u32) -> Self {
        LogQuery {
            limit,
            order: LogOrder::Oldest,
            cursor: None,
        }
    }

    /// The same query, continuing from a previous page's `next`.
    pub fn from(mut self, cursor: Option<u64>) -> Self {
        self.cursor = cursor;
        self
    }

    /// Refuses a limit of 0 or above [`MAX_PAGE`](crate::MAX_PAGE).
    pub fn validate(&self) -> std::result::Result<(), InvalidInput> {
        validate_page_limit(u64::from(self.limit))
    }

    /// Whether the entry numbered `seq` lies on this side of the cursor.
    pub fn admits(&self, seq: u64) -> bool {
        match (self.order, self.cursor) {
            (_, None) => true,
            (LogOrder::Newest, Some(c)) => seq < c,
            (LogOrder::Oldest, Some(c)) => seq > c,
        }
    }
}

/// One page of a log: its entries in the order asked for, and where the next page starts.
///
/// Every log of the catalog answers with this shape, in Rust and over HTTP
/// (`{"entries": [...], "next": 17}`); `next` is `None` (`null`) on the last page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct LogPage<T> {
    /// The entries.
    pub entries: Vec<T>,
    /// The cursor of the next page (pass it back as `cursor`), absent on the last page.
    pub next: Option<u64>,
}

impl<T> LogPage<T> {
    /// A page of entries kept in memory, given oldest first, each numbered by `seq`.
    ///
    /// ```
    /// use stead_core::{LogPage, LogQuery};
    ///
    /// let all = [1u64, 2, 3, 4, 5];
    /// let page = LogPage::from_numbered(all, |n| *n, &LogQuery::newest(2));
    /// assert_eq!((page.entries.as_slice(), page.next), (&[5, 4][..], Some(4)));
    /// let last = LogPage::from_numbered(all, |n| *n, &LogQuery::newest(3).from(page.next));
    /// assert_eq!((last.entries.as_slice(), last.next), (&[3, 2, 1][..], None));
    /// ```
    pub fn from_numbered<I>(oldest_first: I, seq: impl Fn(&T) -> u64, q: &LogQuery) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: DoubleEndedIterator,
    {
        let it = oldest_first.into_iter();
        let admitted = |e: &T| q.admits(seq(e));
        let mut entries: Vec<T> = match q.order {
            LogOrder::Newest => it
                .rev()
                .filter(admitted)
                .take(q.limit as usize + 1)
                .collect(),
            LogOrder::Oldest => it.filter(admitted).take(q.limit as usize + 1).collect(),
        };
        let more = cut(&mut entries, q.limit);
        let next = if more { entries.last().map(seq) } else { None };
        LogPage { entries, next }
    }

    /// The same page with each entry changed by `f`.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> LogPage<U> {
        LogPage {
            entries: self.entries.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

/// Keeps `limit` entries of the `limit + 1` read; the extra one says there is more.
fn cut<T>(entries: &mut Vec<T>, limit: u32) -> bool {
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    more
}

/// A bounded log kept in an object's storage under one key prefix.
///
/// ```
/// use stead_core::{Context, DurableObject, Handler, Log, LogPage, LogQuery, Result};
///
/// const EVENTS: Log = Log::new("ev/");
///
/// struct Audit {
///     next: u64,
/// }
///
/// impl DurableObject for Audit {
///     const CLASS: &'static str = "audit";
///     type Env = ();
///     async fn activate(ctx: &mut Context, _: std::sync::Arc<()>) -> Result<Self> {
///         Ok(Audit { next: ctx.storage().get("next").await?.unwrap_or(1) })
///     }
/// }
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Record(String);
///
/// impl Handler<Record> for Audit {
///     type Reply = Result<u64>;
///     async fn handle(&mut self, m: Record, ctx: &mut Context) -> Result<u64> {
///         let seq = self.next;
///         // Kept: the last 100 entries.
///         EVENTS.append(ctx.storage(), seq, &m.0, 100)?;
///         self.next += 1;
///         ctx.storage().put("next", &self.next)?;
///         Ok(seq)
///     }
/// }
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Read(LogQuery);
///
/// impl Handler<Read> for Audit {
///     type Reply = Result<LogPage<String>>;
///     async fn handle(&mut self, m: Read, ctx: &mut Context) -> Self::Reply {
///         EVENTS.page(ctx.storage(), &m.0).await
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log {
    prefix: &'static str,
}

impl Log {
    /// The log whose entries are stored under `prefix` (which no other key of the object
    /// starts with).
    pub const fn new(prefix: &'static str) -> Self {
        Log { prefix }
    }

    /// The key of entry `seq`.
    pub fn key(&self, seq: u64) -> String {
        format!("{}{seq:020}", self.prefix)
    }

    /// Stores entry `seq` and forgets entry `seq - keep`, so that at most the last `keep`
    /// are kept when entries are appended one number at a time (`keep` 0 keeps all).
    pub fn append<T: Serialize + ?Sized>(
        &self,
        storage: &mut Storage,
        seq: u64,
        entry: &T,
        keep: u64,
    ) -> Result<()> {
        storage.put(&self.key(seq), entry)?;
        if keep > 0 && seq > keep {
            storage.delete(&self.key(seq - keep))?;
        }
        Ok(())
    }

    /// Forgets entry `seq`.
    pub fn forget(&self, storage: &mut Storage, seq: u64) -> Result<()> {
        storage.delete(&self.key(seq))
    }

    /// Forgets every entry numbered below `seq` (a log trimmed by age, or one whose `keep`
    /// was lowered); returns how many.
    pub async fn forget_below(&self, storage: &mut Storage, seq: u64) -> Result<u64> {
        let old: Vec<(String, serde::de::IgnoredAny)> = storage
            .list(ListOptions::prefix(self.prefix).end(self.key(seq)))
            .await?;
        for (k, _) in &old {
            storage.delete(k)?;
        }
        Ok(old.len() as u64)
    }

    /// Every entry with its number, oldest first (for an object that also keeps its log in
    /// memory, loading it when it activates).
    pub async fn all<T: DeserializeOwned>(&self, storage: &mut Storage) -> Result<Vec<(u64, T)>> {
        let rows: Vec<(String, T)> = storage.list(ListOptions::prefix(self.prefix)).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, e)| Some((self.seq_of(&k)?, e)))
            .collect())
    }

    /// Reads one page. Refuses a limit of 0 or above [`MAX_PAGE`](crate::MAX_PAGE).
    pub async fn page<T: DeserializeOwned>(
        &self,
        storage: &mut Storage,
        q: &LogQuery,
    ) -> Result<LogPage<T>> {
        q.validate()?;
        let mut opts = ListOptions::prefix(self.prefix).limit(q.limit as usize + 1);
        match (q.order, q.cursor) {
            (LogOrder::Newest, c) => {
                opts = opts.reverse();
                if let Some(c) = c {
                    opts = opts.end(self.key(c));
                }
            }
            (LogOrder::Oldest, Some(c)) => opts = opts.start(self.key(c.saturating_add(1))),
            (LogOrder::Oldest, None) => {}
        }
        let mut rows: Vec<(String, T)> = storage.list(opts).await?;
        let more = cut(&mut rows, q.limit);
        let next = if more {
            rows.last().and_then(|(k, _)| self.seq_of(k))
        } else {
            None
        };
        Ok(LogPage {
            entries: rows.into_iter().map(|(_, e)| e).collect(),
            next,
        })
    }

    fn seq_of(&self, key: &str) -> Option<u64> {
        key.strip_prefix(self.prefix)?.parse().ok()
    }
}
