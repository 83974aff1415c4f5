//! The two objects: one [`StoredSession`] per session, which deletes itself when it
//! expires, and one [`UserSessions`] index per user, whose entries of expired sessions
//! disappear by themselves.
//!
//! A session's object is named by its **handle**, the SHA-256 of its id
//! ([`handle_of`](crate::handle_of)): the id, a bearer secret as good as a login, is never
//! stored, listed or logged; the handle can be shown and revoked but never turned back into
//! a cookie.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stead_core::{
    AlarmInfo, Context, DurableObject, Handler, InvalidInput, ListOptions, Namespace, Result,
};

use crate::client::SessionConfig;
use crate::error::SessionError;

/// The longest label (a user agent, a device name), in characters.
pub const MAX_LABEL_CHARS: usize = 256;
/// The longest sliding TTL or absolute lifetime, in ms (a year).
pub const MAX_TTL_MS: u64 = 366 * 24 * 3600 * 1000;
/// A use moves a sliding expiry out at most once per this fraction of its TTL, so that a
/// read does not cost a write every time (1/16: a 30-minute session slides at most every
/// 112 s, and ends at most that much earlier than "30 minutes after the last use").
pub const SLIDE_EVERY: u64 = 16;

const STATE: &str = "s";
const ENTRY_PREFIX: &str = "e/";
const COUNT: &str = "n";

/// What a session holds, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    data: Map<String, Value>,
    user: Option<String>,
    label: Option<String>,
    created_at: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// The sliding TTL: each use pushes the expiry this far out.
    idle_ms: Option<u64>,
    /// The absolute end: `created_at + max_lifetime`, however active.
    deadline: Option<DateTime<Utc>>,
    /// The user whose index holds this session (entered before the session named the
    /// user, so that sign-out everywhere never misses it).
    #[serde(default)]
    indexed_user: Option<String>,
}

/// A session as read. It carries the session's handle, never its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct SessionView {
    /// The session's handle: the SHA-256 of its id, in hex. It names the session in lists
    /// and revocations and cannot be turned back into the id.
    pub handle: String,
    /// The user it belongs to, if any.
    pub user: Option<String>,
    /// The client label given at creation (a user agent...).
    pub label: Option<String>,
    /// The session's data.
    #[cfg_attr(feature = "http", schema(value_type = Object))]
    pub data: Map<String, Value>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last written, or its sliding expiry last moved.
    pub last_seen: DateTime<Utc>,
    /// When it expires unless used again (never after its absolute end).
    pub expires_at: DateTime<Utc>,
}

/// One session: its data and expiry. It deletes itself (by alarm) when it expires, and
/// reads as absent from that instant on, even before the alarm has run.
#[derive(Debug)]
pub struct StoredSession {
    record: Option<Record>,
    config: Arc<SessionConfig>,
}

fn data_size(data: &Map<String, Value>) -> usize {
    serde_json::to_vec(data).map_or(usize::MAX, |v| v.len())
}

fn view_of(ctx: &Context, r: &Record) -> SessionView {
    SessionView {
        handle: ctx.name().unwrap_or_default().to_owned(),
        user: r.user.clone(),
        label: r.label.clone(),
        data: r.data.clone(),
        created_at: r.created_at,
        last_seen: r.last_seen,
        expires_at: r.expires_at,
    }
}

fn after(t: DateTime<Utc>, ms: u64) -> DateTime<Utc> {
    t.checked_add_signed(chrono::Duration::milliseconds(
        i64::try_from(ms).unwrap_or(i64::MAX),
    ))
    .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Checks a label: at most [`MAX_LABEL_CHARS`] characters, no control characters.
pub(crate) fn check_label(label: &str) -> std::result::Result<(), InvalidInput> {
    if label.chars().count() > MAX_LABEL_CHARS || label.chars().any(char::is_control) {
        return Err(InvalidInput::new(format!(
            "label must be at most {MAX_LABEL_CHARS} characters, without control characters"
        )));
    }
    Ok(())
}

impl StoredSession {
    fn view(&self, ctx: &Context) -> Option<SessionView> {
        self.record.as_ref().map(|r| view_of(ctx, r))
    }

    /// Forgets an expired session at once: it reads as absent from its expiry on.
    fn expire_if_due(&mut self, ctx: &mut Context) {
        if self
            .record
            .as_ref()
            .is_some_and(|r| r.expires_at <= ctx.now())
        {
            self.forget(ctx);
        }
    }

    fn forget(&mut self, ctx: &mut Context) {
        ctx.storage().delete_all();
        self.record = None;
    }

    fn check_size(&self, data: &Map<String, Value>) -> Result<(), SessionError> {
        let size = data_size(data);
        if size > self.config.max_data_bytes {
            return Err(SessionError::TooLarge {
                size,
                max: self.config.max_data_bytes,
            });
        }
        Ok(())
    }

    /// Writes the record and sets the alarm to its expiry.
    fn store(&mut self, ctx: &mut Context, record: Record) -> Result<()> {
        ctx.storage().put(STATE, &record)?;
        ctx.storage().set_alarm(record.expires_at)?;
        self.record = Some(record);
        Ok(())
    }

    /// A use: the sliding expiry moves out (never past the absolute end).
    fn touched(record: &Record, now: DateTime<Utc>) -> Record {
        let mut r = record.clone();
        r.last_seen = now;
        if let Some(idle) = r.idle_ms {
            let next = after(now, idle);
            r.expires_at = r.deadline.map_or(next, |d| next.min(d));
        }
        r
    }

    /// Whether a read that counts as a use should move the expiry now: only a sliding
    /// session, and at most once per [`SLIDE_EVERY`]th of its TTL.
    fn slide_due(record: &Record, now: DateTime<Utc>) -> bool {
        record
            .idle_ms
            .is_some_and(|idle| now >= after(record.last_seen, (idle / SLIDE_EVERY).max(1)))
    }
}

impl DurableObject for StoredSession {
    const CLASS: &'static str = "session";
    type Env = SessionConfig;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<Create>()
            .message::<Load>()
            .message::<Patch>()
            .message::<Remove>()
            .message::<Save>();
    }

    async fn activate(ctx: &mut Context, env: Arc<SessionConfig>) -> Result<Self> {
        Ok(StoredSession {
            record: ctx.storage().get(STATE).await?,
            config: env,
        })
    }

    async fn alarm(&mut self, ctx: &mut Context, _info: AlarmInfo) -> Result<()> {
        match &self.record {
            Some(r) if r.expires_at > ctx.now() => ctx.storage().set_alarm(r.expires_at)?,
            Some(_) => self.forget(ctx),
            None => {}
        }
        Ok(())
    }
}

/// Creates the session; a session that exists under this handle already is
/// [`SessionError::Exists`] (never overwritten). The caller has entered it in its user's
/// index first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Create {
    /// Its data.
    pub data: Map<String, Value>,
    /// The user it belongs to (already in that user's index).
    pub user: Option<String>,
    /// A client label.
    pub label: Option<String>,
    /// Sliding TTL in ms (each use pushes the expiry out), or `None` for a fixed expiry.
    pub idle_ms: Option<u64>,
    /// The expiry when there is no sliding TTL (or the first one, when there is).
    pub expires_at: DateTime<Utc>,
    /// The absolute lifetime in ms, from now.
    pub max_lifetime_ms: Option<u64>,
}

impl Handler<Create> for StoredSession {
    type Reply = Result<SessionView, SessionError>;
    async fn handle(&mut self, msg: Create, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx);
        if self.record.is_some() {
            return Err(SessionError::Exists);
        }
        self.check_size(&msg.data)?;
        let now = ctx.now();
        let deadline = msg.max_lifetime_ms.map(|ms| after(now, ms));
        let expires_at = deadline.map_or(msg.expires_at, |d| msg.expires_at.min(d));
        if expires_at <= now {
            return Err(InvalidInput::new("the session would expire at once").into());
        }
        let record = Record {
            data: msg.data,
            indexed_user: msg.user.clone(),
            user: msg.user,
            label: msg.label,
            created_at: now,
            last_seen: now,
            expires_at,
            idle_ms: msg.idle_ms,
            deadline,
        };
        let view = view_of(ctx, &record);
        self.store(ctx, record)?;
        Ok(view)
    }
}

/// Reads the session; with `touch`, it counts as a use: a sliding session's expiry moves
/// out (at most once per [`SLIDE_EVERY`]th of its TTL; between those a use writes nothing).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Load {
    /// Whether this read is a use of the session.
    pub touch: bool,
}

impl Handler<Load> for StoredSession {
    type Reply = Result<Option<SessionView>, SessionError>;
    async fn handle(&mut self, msg: Load, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx);
        let now = ctx.now();
        if msg.touch
            && let Some(r) = &self.record
            && Self::slide_due(r, now)
        {
            let r = Self::touched(r, now);
            self.store(ctx, r)?;
        }
        Ok(self.view(ctx))
    }
}

/// Writes the session's data and expiry as a session middleware keeps them (creating it if
/// it is absent).
///
/// A session whose data names a user is never stored before it is in that user's index:
/// unless `indexed` says the caller has entered it there, a save that would name a user the
/// index does not hold it under writes nothing and answers
/// [`needs_index`](Saved::needs_index).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Save {
    /// The data.
    pub data: Map<String, Value>,
    /// The user the data names.
    pub user: Option<String>,
    /// The expiry the middleware decided.
    pub expires_at: DateTime<Utc>,
    /// The store's inactivity timeout, if it slides sessions on use: the expiry is at most
    /// this far out, and later uses push it out again.
    pub idle_ms: Option<u64>,
    /// The caller entered the session in `user`'s index.
    pub indexed: bool,
}

/// What a save changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Nothing was written: enter the session in its user's index, then save again with
    /// `indexed`.
    pub needs_index: bool,
    /// Whether the session was created by this save.
    pub created: bool,
    /// The user whose index held the session before the save.
    pub previous_user: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it expires now.
    pub expires_at: DateTime<Utc>,
}

impl Handler<Save> for StoredSession {
    type Reply = Result<Saved, SessionError>;
    async fn handle(&mut self, msg: Save, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx);
        self.check_size(&msg.data)?;
        let now = ctx.now();
        // The new record keeps the old one's identity and limits (its data is not copied).
        let old = self.record.as_ref();
        let deadline = old.and_then(|p| p.deadline);
        let idle_ms = msg.idle_ms.or(old.and_then(|p| p.idle_ms));
        let mut expires_at = msg.expires_at;
        if let Some(idle) = msg.idle_ms {
            expires_at = expires_at.min(after(now, idle));
        }
        let previous_user = old.and_then(|p| p.indexed_user.clone());
        let r = Record {
            data: msg.data,
            indexed_user: if msg.indexed {
                msg.user.clone()
            } else {
                previous_user.clone()
            },
            user: msg.user,
            label: old.and_then(|p| p.label.clone()),
            created_at: old.map_or(now, |p| p.created_at),
            last_seen: now,
            expires_at: deadline.map_or(expires_at, |d| expires_at.min(d)),
            idle_ms,
            deadline,
        };
        let expired = r.expires_at <= now;
        let needs_index = !expired && r.user.is_some() && r.indexed_user != r.user;
        let saved = Saved {
            needs_index,
            created: old.is_none() && !expired && !needs_index,
            previous_user,
            created_at: r.created_at,
            expires_at: r.expires_at,
        };
        if needs_index {
            // Nothing written: the caller indexes first.
        } else if expired {
            // Saved already expired: the same as deleted.
            self.forget(ctx);
        } else {
            self.store(ctx, r)?;
        }
        Ok(saved)
    }
}

/// Applies a JSON merge patch (RFC 7396) to the session's data; a use of the session.
/// The patch cannot change whose session it is: the user stays as created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Patch {
    /// The merge patch (an object; `null` members delete keys).
    pub patch: Value,
}

impl Handler<Patch> for StoredSession {
    type Reply = Result<Option<SessionView>, SessionError>;
    async fn handle(&mut self, msg: Patch, ctx: &mut Context) -> Self::Reply {
        if !msg.patch.is_object() {
            return Err(
                InvalidInput::new("a merge patch of session data must be a JSON object").into(),
            );
        }
        self.expire_if_due(ctx);
        let Some(r) = &self.record else {
            return Ok(None);
        };
        let mut data = Value::Object(r.data.clone());
        json_patch::merge(&mut data, &msg.patch);
        let Value::Object(data) = data else {
            return Err(
                InvalidInput::new("a merge patch of session data must be a JSON object").into(),
            );
        };
        self.check_size(&data)?;
        let mut next = Self::touched(r, ctx.now());
        next.data = data;
        self.store(ctx, next)?;
        Ok(self.view(ctx))
    }
}

/// Deletes the session; answers whether it existed, and the user whose index held it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Remove {
    /// Only if the session belongs to this user (a sign-out everywhere never ends another
    /// user's session through a stale index entry).
    pub if_user: Option<String>,
}

/// What a delete removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Whether there was a live session (of `if_user`, when given).
    pub existed: bool,
    /// The user whose index held it.
    pub user: Option<String>,
}

impl Handler<Remove> for StoredSession {
    type Reply = Result<Deleted, SessionError>;
    async fn handle(&mut self, msg: Remove, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx);
        if let (Some(want), Some(r)) = (&msg.if_user, &self.record)
            && r.user.as_ref() != Some(want)
            && r.indexed_user.as_ref() != Some(want)
        {
            return Ok(Deleted {
                existed: false,
                user: None,
            });
        }
        let user = self.record.as_ref().and_then(|r| r.indexed_user.clone());
        let existed = self.record.is_some();
        if existed {
            self.forget(ctx);
        }
        Ok(Deleted { existed, user })
    }
}

// ----- the per-user index ------------------------------------------------------------------

/// One session in a user's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// When the session was created.
    pub created_at: DateTime<Utc>,
    /// Its label.
    pub label: Option<String>,
    /// Its expiry when last told; the index checks the session once this passes.
    pub expires_at: DateTime<Utc>,
}

/// What the index needs: the sessions, to check entries whose recorded expiry passed.
#[derive(Debug)]
pub struct IndexEnv {
    /// The sessions namespace.
    pub sessions: Namespace<StoredSession>,
}

/// A user's sessions, by handle: which exist, so that they can be listed and revoked.
/// Entries of sessions that expired are removed by the index's own alarm, set to the
/// earliest recorded expiry; the count of entries is kept beside them, so that adding and
/// removing one never reads the others.
#[derive(Debug)]
pub struct UserSessions {
    env: Arc<IndexEnv>,
}

fn entry_key(handle: &str) -> String {
    format!("{ENTRY_PREFIX}{handle}")
}

impl UserSessions {
    async fn entries(ctx: &mut Context) -> Result<Vec<(String, IndexEntry)>> {
        let rows: Vec<(String, IndexEntry)> = ctx
            .storage()
            .list(ListOptions::prefix(ENTRY_PREFIX))
            .await?;
        Ok(rows
            .into_iter()
            .map(|(k, e)| (k[ENTRY_PREFIX.len()..].to_owned(), e))
            .collect())
    }

    async fn count(ctx: &mut Context) -> Result<u64> {
        Ok(ctx.storage().get(COUNT).await?.unwrap_or(0))
    }

    /// Records the new count; an empty index deletes itself (its listing in the registry
    /// too), so that nothing is left of a user without sessions.
    fn set_count(ctx: &mut Context, n: u64) -> Result<()> {
        if n == 0 {
            ctx.storage().delete_all();
            Ok(())
        } else {
            ctx.storage().put(COUNT, &n)
        }
    }

    /// Makes sure the alarm rings by `at` (an earlier alarm is kept: it checks and re-arms).
    async fn alarm_by(ctx: &mut Context, at: DateTime<Utc>) -> Result<()> {
        match ctx.storage().alarm().await? {
            Some(current) if current <= at => Ok(()),
            _ => ctx.storage().set_alarm(at),
        }
    }
}

impl DurableObject for UserSessions {
    const CLASS: &'static str = "session_index";
    type Env = IndexEnv;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<AddEntry>()
            .message::<ListEntries>()
            .message::<RemoveEntries>();
    }

    async fn activate(_ctx: &mut Context, env: Arc<IndexEnv>) -> Result<Self> {
        Ok(UserSessions { env })
    }

    /// Checks every entry whose recorded expiry passed, concurrently: gone sessions (and
    /// sessions that are no longer this user's) leave the index, live ones get their new
    /// expiry.
    async fn alarm(&mut self, ctx: &mut Context, _info: AlarmInfo) -> Result<()> {
        let now = ctx.now();
        let user = ctx.name().unwrap_or_default().to_owned();
        let (due, later): (Vec<_>, Vec<_>) = Self::entries(ctx)
            .await?
            .into_iter()
            .partition(|(_, e)| e.expires_at <= now);
        let reads = due.iter().map(|(handle, _)| {
            let stub = self.env.sessions.get_by_name(handle);
            async move { stub.call(Load { touch: false }).await }
        });
        let answers = futures_util::future::join_all(reads).await;
        let mut kept: Vec<DateTime<Utc>> = later.iter().map(|(_, e)| e.expires_at).collect();
        for ((handle, mut entry), live) in due.into_iter().zip(answers) {
            let live = live.map_err(|e| match e {
                SessionError::Runtime(e) => e,
                other => stead_core::Error::other(other),
            })?;
            match live {
                Some(s) if s.user.as_deref() == Some(user.as_str()) => {
                    entry.expires_at = s.expires_at;
                    ctx.storage().put(&entry_key(&handle), &entry)?;
                    kept.push(entry.expires_at);
                }
                _ => ctx.storage().delete(&entry_key(&handle))?,
            }
        }
        let n = kept.len() as u64;
        let earliest = kept.into_iter().min();
        Self::set_count(ctx, n)?;
        if let Some(at) = earliest {
            ctx.storage().set_alarm(at)?;
        }
        Ok(())
    }
}

/// Enters a session in the index (or updates its entry). Past `max` entries, answers the
/// handles of the oldest sessions beyond it, for the caller to end and then remove.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddEntry {
    /// The session's handle.
    pub handle: String,
    /// Its entry.
    pub entry: IndexEntry,
    /// The most sessions a user keeps.
    pub max: u64,
}

impl Handler<AddEntry> for UserSessions {
    type Reply = Result<Vec<String>>;
    async fn handle(&mut self, msg: AddEntry, ctx: &mut Context) -> Self::Reply {
        let key = entry_key(&msg.handle);
        let mut n = Self::count(ctx).await?;
        if ctx.storage().get::<IndexEntry>(&key).await?.is_none() {
            n += 1;
        }
        ctx.storage().put(&key, &msg.entry)?;
        Self::set_count(ctx, n)?;
        Self::alarm_by(ctx, msg.entry.expires_at).await?;
        if n <= msg.max {
            return Ok(Vec::new());
        }
        let mut others: Vec<_> = Self::entries(ctx)
            .await?
            .into_iter()
            .filter(|(h, _)| *h != msg.handle)
            .collect();
        others.sort_by_key(|(h, e)| (e.created_at, h.clone()));
        let over = usize::try_from(n - msg.max).unwrap_or(usize::MAX);
        Ok(others.into_iter().take(over).map(|(h, _)| h).collect())
    }
}

/// Removes sessions from the index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveEntries {
    /// The sessions' handles.
    pub handles: Vec<String>,
}

impl Handler<RemoveEntries> for UserSessions {
    type Reply = Result<()>;
    async fn handle(&mut self, msg: RemoveEntries, ctx: &mut Context) -> Result<()> {
        let mut n = Self::count(ctx).await?;
        for handle in &msg.handles {
            let key = entry_key(handle);
            if ctx.storage().get::<IndexEntry>(&key).await?.is_some() {
                ctx.storage().delete(&key)?;
                n = n.saturating_sub(1);
            }
        }
        Self::set_count(ctx, n)
    }
}

/// The index's entries, by session handle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListEntries;

impl Handler<ListEntries> for UserSessions {
    type Reply = Result<Vec<(String, IndexEntry)>>;
    async fn handle(&mut self, _: ListEntries, ctx: &mut Context) -> Self::Reply {
        Self::entries(ctx).await
    }
}
