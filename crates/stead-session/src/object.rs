//! The two objects: one [`StoredSession`] per session id, which deletes itself when it
//! expires, and one [`UserSessions`] index per user, whose entries of expired sessions
//! disappear by themselves.

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

const STATE: &str = "s";
const ENTRY_PREFIX: &str = "e/";

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
}

/// A session as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct SessionView {
    /// The session id.
    pub id: String,
    /// The user it belongs to, if any.
    pub user: Option<String>,
    /// The client label given at creation (a user agent...).
    pub label: Option<String>,
    /// The session's data.
    #[cfg_attr(feature = "http", schema(value_type = Object))]
    pub data: Map<String, Value>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used.
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
        id: ctx.name().unwrap_or_default().to_owned(),
        user: r.user.clone(),
        label: r.label.clone(),
        data: r.data.clone(),
        created_at: r.created_at,
        last_seen: r.last_seen,
        expires_at: r.expires_at,
    }
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
            let next = now + chrono::Duration::milliseconds(idle as i64);
            r.expires_at = r.deadline.map_or(next, |d| next.min(d));
        }
        r
    }
}

impl DurableObject for StoredSession {
    const CLASS: &'static str = "session";
    type Env = SessionConfig;

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

/// Creates the session; a session that exists under this id already is
/// [`SessionError::Exists`] (never overwritten).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Create {
    /// Its data.
    pub data: Map<String, Value>,
    /// The user it belongs to.
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
        let deadline = msg
            .max_lifetime_ms
            .map(|ms| now + chrono::Duration::milliseconds(ms as i64));
        let expires_at = deadline.map_or(msg.expires_at, |d| msg.expires_at.min(d));
        if expires_at <= now {
            return Err(InvalidInput::new("the session would expire at once").into());
        }
        let record = Record {
            data: msg.data,
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

/// Reads the session; with `touch`, it counts as a use (sliding expiry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Load {
    /// Whether this read is a use of the session.
    pub touch: bool,
}

impl Handler<Load> for StoredSession {
    type Reply = Result<Option<SessionView>, SessionError>;
    async fn handle(&mut self, msg: Load, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx);
        if msg.touch
            && let Some(r) = &self.record
        {
            let r = Self::touched(r, ctx.now());
            self.store(ctx, r)?;
        }
        Ok(self.view(ctx))
    }
}

/// Writes the session's data and expiry as a session middleware keeps them (creating it if
/// it is absent); answers the user it belonged to before, for the user index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Save {
    /// The data.
    pub data: Map<String, Value>,
    /// The user the data names.
    pub user: Option<String>,
    /// The expiry the middleware decided.
    pub expires_at: DateTime<Utc>,
}

/// What a save changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Whether the session was created by this save.
    pub created: bool,
    /// The user before the save.
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
        let r = Record {
            data: msg.data,
            user: msg.user,
            label: old.and_then(|p| p.label.clone()),
            created_at: old.map_or(now, |p| p.created_at),
            last_seen: now,
            expires_at: deadline.map_or(msg.expires_at, |d| msg.expires_at.min(d)),
            idle_ms: old.and_then(|p| p.idle_ms),
            deadline,
        };
        let expired = r.expires_at <= now;
        let saved = Saved {
            created: old.is_none() && !expired,
            previous_user: old.and_then(|p| p.user.clone()),
            created_at: r.created_at,
            expires_at: r.expires_at,
        };
        if expired {
            // Saved already expired: the same as deleted.
            self.forget(ctx);
        } else {
            self.store(ctx, r)?;
        }
        Ok(saved)
    }
}

/// Applies a JSON merge patch (RFC 7396) to the session's data; a use of the session.
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

/// Deletes the session; answers whether it existed, and its user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delete;

/// What a delete removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Whether there was a live session.
    pub existed: bool,
    /// Its user.
    pub user: Option<String>,
}

impl Handler<Delete> for StoredSession {
    type Reply = Result<Deleted, SessionError>;
    async fn handle(&mut self, _: Delete, ctx: &mut Context) -> Self::Reply {
        self.expire_if_due(ctx);
        let user = self.record.as_ref().and_then(|r| r.user.clone());
        let existed = self.record.is_some();
        self.forget(ctx);
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

/// A user's sessions: which exist, so that they can be listed and revoked. Entries of
/// sessions that expired are removed by the index's own alarm.
#[derive(Debug)]
pub struct UserSessions {
    env: Arc<IndexEnv>,
}

fn entry_key(id: &str) -> String {
    format!("{ENTRY_PREFIX}{id}")
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

    /// Sets the alarm to the earliest recorded expiry; an empty index deletes itself (its
    /// listing in the registry too), so that nothing is left of a user without sessions.
    async fn rearm(ctx: &mut Context) -> Result<()> {
        let earliest = Self::entries(ctx)
            .await?
            .into_iter()
            .map(|(_, e)| e.expires_at)
            .min();
        match earliest {
            Some(at) => ctx.storage().set_alarm(at),
            None => {
                ctx.storage().delete_all();
                Ok(())
            }
        }
    }
}

impl DurableObject for UserSessions {
    const CLASS: &'static str = "session_index";
    type Env = IndexEnv;

    async fn activate(_ctx: &mut Context, env: Arc<IndexEnv>) -> Result<Self> {
        Ok(UserSessions { env })
    }

    /// Checks every entry whose recorded expiry passed: gone sessions leave the index, live
    /// ones (used since) get their new expiry.
    async fn alarm(&mut self, ctx: &mut Context, _info: AlarmInfo) -> Result<()> {
        let now = ctx.now();
        for (id, mut entry) in Self::entries(ctx).await? {
            if entry.expires_at > now {
                continue;
            }
            let live = self
                .env
                .sessions
                .get_by_name(&id)
                .call(Load { touch: false })
                .await
                .map_err(|e| match e {
                    SessionError::Runtime(e) => e,
                    other => stead_core::Error::other(other),
                })?;
            match live {
                Some(s) => {
                    entry.expires_at = s.expires_at;
                    ctx.storage().put(&entry_key(&id), &entry)?;
                }
                None => {
                    ctx.storage().delete(&entry_key(&id))?;
                }
            }
        }
        Self::rearm(ctx).await
    }
}

/// Enters a session in the index (or updates its entry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddEntry {
    /// The session id.
    pub id: String,
    /// Its entry.
    pub entry: IndexEntry,
}

impl Handler<AddEntry> for UserSessions {
    type Reply = Result<()>;
    async fn handle(&mut self, msg: AddEntry, ctx: &mut Context) -> Result<()> {
        ctx.storage().put(&entry_key(&msg.id), &msg.entry)?;
        Self::rearm(ctx).await
    }
}

/// Removes sessions from the index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveEntries {
    /// The session ids.
    pub ids: Vec<String>,
}

impl Handler<RemoveEntries> for UserSessions {
    type Reply = Result<()>;
    async fn handle(&mut self, msg: RemoveEntries, ctx: &mut Context) -> Result<()> {
        for id in &msg.ids {
            ctx.storage().delete(&entry_key(id))?;
        }
        Self::rearm(ctx).await
    }
}

/// The index's entries, by session id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListEntries;

impl Handler<ListEntries> for UserSessions {
    type Reply = Result<Vec<(String, IndexEntry)>>;
    async fn handle(&mut self, _: ListEntries, ctx: &mut Context) -> Self::Reply {
        Self::entries(ctx).await
    }
}
