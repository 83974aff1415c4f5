//! The typed client: sessions by id, a user's sessions, and sign-out everywhere.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stead_core::{
    Clock, Durability, Error, InvalidInput, Namespace, NamespaceOptions, Result, Runtime,
};
use tower_sessions_core::session::Id;

use crate::error::SessionError;
use crate::object::{
    AddEntry, Create, Delete, IndexEntry, IndexEnv, ListEntries, Load, MAX_TTL_MS, Patch,
    RemoveEntries, Save, SessionView, StoredSession, UserSessions, check_label,
};

/// The settings of a runtime's sessions (the server's `[sessions]` table).
///
/// ```
/// use stead_session::SessionConfig;
/// let cfg: SessionConfig = serde_json::from_str(r#"{"user_field": "account"}"#).unwrap();
/// assert_eq!(cfg.user_field, "account");
/// assert_eq!(cfg.max_data_bytes, 64 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The largest session data, in bytes of JSON (default 64 KiB).
    pub max_data_bytes: usize,
    /// The data field that names the session's user, for the user index (default
    /// `user_id`): a session store enters a session whose data holds it in that user's index.
    pub user_field: String,
    /// How durable sessions are; `None` takes the runtime's default.
    pub durability: Option<Durability>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_data_bytes: 64 * 1024,
            user_field: "user_id".to_owned(),
            durability: None,
        }
    }
}

impl SessionConfig {
    /// Sets the largest session data.
    pub fn max_data_bytes(mut self, n: usize) -> Self {
        self.max_data_bytes = n;
        self
    }

    /// Sets the data field that names the user.
    pub fn user_field(mut self, field: &str) -> Self {
        self.user_field = field.to_owned();
        self
    }

    /// Sets the durability of sessions.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    fn check(&self, rt: &Runtime) -> Result<()> {
        let bad = |what: String| Err(Error::invalid_config(format!("sessions: {what}")));
        // A session is one stored value: its data must fit the runtime's value limit.
        let max = rt.config().max_value_bytes.saturating_sub(1024);
        if !(1..=max).contains(&self.max_data_bytes) {
            return bad(format!(
                "max_data_bytes must be between 1 and {max} on this runtime"
            ));
        }
        if let Err(e) = stead_core::validate_name("user_field", &self.user_field) {
            return bad(e.to_string());
        }
        Ok(())
    }
}

/// A new session.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    /// The user it belongs to (entered in that user's index).
    pub user: Option<String>,
    /// Its data.
    pub data: Map<String, Value>,
    /// A client label (a user agent, a device name).
    pub label: Option<String>,
    /// The sliding TTL: each use pushes the expiry this far out.
    pub ttl: Duration,
    /// The absolute lifetime: the session ends this long after its creation however active.
    pub max_lifetime: Option<Duration>,
}

impl NewSession {
    /// A session with a sliding TTL.
    pub fn new(ttl: Duration) -> Self {
        NewSession {
            ttl,
            ..NewSession::default()
        }
    }

    /// For `user`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    /// With `data`.
    pub fn data(mut self, data: Map<String, Value>) -> Self {
        self.data = data;
        self
    }

    /// With a client label.
    pub fn label(mut self, label: &str) -> Self {
        self.label = Some(label.to_owned());
        self
    }

    /// Ending `max` after creation, however active.
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }
}

/// One of a user's live sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct UserSession {
    /// The session id.
    pub id: String,
    /// Its client label.
    pub label: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used.
    pub last_seen: DateTime<Utc>,
    /// When it expires unless used.
    pub expires_at: DateTime<Utc>,
}

/// Sessions that expire by themselves (an alarm, no sweeper), with an index per user for
/// "which sessions does this user have" and "sign this user out everywhere".
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use stead_session::{NewSession, SessionClient};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let sessions = SessionClient::new(&rt)?;
/// let a = sessions.create(NewSession::new(Duration::from_secs(3600)).user("ada")).await?;
/// let b = sessions.create(NewSession::new(Duration::from_secs(3600)).user("ada")).await?;
/// assert_eq!(sessions.user_sessions("ada").await?.len(), 2);
/// assert_eq!(sessions.revoke_user("ada").await?, 2);
/// assert!(sessions.get(&a.id).await?.is_none() && sessions.get(&b.id).await?.is_none());
/// # rt.shutdown().await?;
/// # Ok::<(), stead_session::SessionError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct SessionClient {
    inner: Arc<Inner>,
}

struct Inner {
    sessions: Namespace<StoredSession>,
    index: Namespace<UserSessions>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SessionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionClient")
            .field("config", self.inner.sessions.env())
            .finish()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Checks a session id: the 22 base64url characters of 128 random bits.
pub fn check_id(id: &str) -> std::result::Result<(), InvalidInput> {
    if id.len() == 22 && Id::from_str(id).is_ok() {
        Ok(())
    } else {
        Err(InvalidInput::new("a session id is 22 base64url characters"))
    }
}

/// Sets the sessions up on `rt`: the config lives in the index namespace's environment.
fn namespaces(
    rt: &Runtime,
    config: &SessionConfig,
    configured: bool,
) -> Result<(Namespace<StoredSession>, Namespace<UserSessions>)> {
    config.check(rt)?;
    let opts = config
        .durability
        .map(NamespaceOptions::durability)
        .unwrap_or_default();
    let sessions = if configured {
        rt.configured_namespace::<StoredSession>(config.clone(), opts.clone())?
    } else {
        rt.get_or_register::<StoredSession>(opts.clone(), || config.clone())?
            .0
    };
    let (index, _) = rt.get_or_register::<UserSessions>(opts, || IndexEnv {
        sessions: sessions.clone(),
    })?;
    Ok((sessions, index))
}

impl SessionClient {
    /// The sessions of `rt`, as they were configured ([`with_config`](Self::with_config)),
    /// or with the defaults if they were not.
    pub fn new(rt: &Runtime) -> Result<Self> {
        let (sessions, index) = namespaces(rt, &SessionConfig::default(), false)?;
        Ok(Self::from_parts(rt, sessions, index))
    }

    /// The sessions of `rt`, set up with `config`: an [`Error::InvalidConfig`] if a setting
    /// is out of range, or if they were set up with another configuration already.
    pub fn with_config(rt: &Runtime, config: SessionConfig) -> Result<Self> {
        let (sessions, index) = namespaces(rt, &config, true)?;
        Ok(Self::from_parts(rt, sessions, index))
    }

    fn from_parts(
        rt: &Runtime,
        sessions: Namespace<StoredSession>,
        index: Namespace<UserSessions>,
    ) -> Self {
        SessionClient {
            inner: Arc::new(Inner {
                sessions,
                index,
                clock: rt.clock().clone(),
            }),
        }
    }

    /// The runtime's time.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The configuration in effect (the one the sessions were set up with).
    pub fn config(&self) -> &SessionConfig {
        self.inner.sessions.env()
    }

    fn session(&self, id: &str) -> Result<stead_core::Stub<StoredSession>, SessionError> {
        check_id(id)?;
        Ok(self.inner.sessions.get_by_name(id))
    }

    fn index(&self, user: &str) -> Result<stead_core::Stub<UserSessions>, SessionError> {
        stead_core::validate_name("user", user)?;
        Ok(self.inner.index.get_by_name(user))
    }

    /// Creates a session under a fresh random id (drawing again on a collision).
    pub async fn create(&self, new: NewSession) -> Result<SessionView, SessionError> {
        let ttl = ms(new.ttl);
        stead_core::validate_ms("ttl_ms", ttl, MAX_TTL_MS)?;
        if let Some(max) = new.max_lifetime {
            stead_core::validate_ms("max_lifetime_ms", ms(max), MAX_TTL_MS)?;
        }
        if let Some(u) = &new.user {
            stead_core::validate_name("user", u)?;
        }
        if let Some(l) = &new.label {
            check_label(l)?;
        }
        let now = self.inner.clock.now();
        let expires_at = now + chrono::Duration::milliseconds(ttl as i64);
        loop {
            let id = Id::default().to_string();
            let create = Create {
                data: new.data.clone(),
                user: new.user.clone(),
                label: new.label.clone(),
                idle_ms: Some(ttl),
                expires_at,
                max_lifetime_ms: new.max_lifetime.map(ms),
            };
            match self.create_under(&id, create).await {
                Err(SessionError::Exists) => continue,
                other => return other,
            }
        }
    }

    /// Creates the session `id` and enters it in its user's index.
    async fn create_under(&self, id: &str, create: Create) -> Result<SessionView, SessionError> {
        let view = self.session(id)?.call(create).await?;
        if let Some(user) = &view.user {
            self.enter(
                user,
                id,
                view.created_at,
                view.label.clone(),
                view.expires_at,
            )
            .await?;
        }
        Ok(view)
    }

    pub(crate) async fn enter(
        &self,
        user: &str,
        id: &str,
        created_at: DateTime<Utc>,
        label: Option<String>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), SessionError> {
        self.index(user)?
            .call(AddEntry {
                id: id.to_owned(),
                entry: IndexEntry {
                    created_at,
                    label,
                    expires_at,
                },
            })
            .await?;
        Ok(())
    }

    pub(crate) async fn leave(&self, user: &str, ids: Vec<String>) -> Result<(), SessionError> {
        self.index(user)?.call(RemoveEntries { ids }).await?;
        Ok(())
    }

    /// The session, counted as a use (its sliding expiry moves out); `None` if unknown,
    /// expired or revoked.
    pub async fn get(&self, id: &str) -> Result<Option<SessionView>, SessionError> {
        self.session(id)?.call(Load { touch: true }).await
    }

    /// The session, without counting as a use.
    pub async fn peek(&self, id: &str) -> Result<Option<SessionView>, SessionError> {
        self.session(id)?.call(Load { touch: false }).await
    }

    /// Applies a JSON merge patch (RFC 7396) to the session's data; `None` if it is gone.
    pub async fn patch(&self, id: &str, patch: Value) -> Result<Option<SessionView>, SessionError> {
        self.session(id)?.call(Patch { patch }).await
    }

    /// The user a session's data names: its [`SessionConfig::user_field`], if that is a
    /// string or a number.
    fn user_of(&self, data: &Map<String, Value>) -> Result<Option<String>, SessionError> {
        let user = match data.get(&self.config().user_field) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        if let Some(u) = &user {
            stead_core::validate_name("user", u)?;
        }
        Ok(user)
    }

    /// Writes a session's data and expiry as a session middleware keeps them (creating it
    /// if absent), and keeps its user's index in step. The user is the data's
    /// [`SessionConfig::user_field`], if it is a string or a number.
    pub async fn save(
        &self,
        id: &str,
        data: Map<String, Value>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), SessionError> {
        let user = self.user_of(&data)?;
        let saved = self
            .session(id)?
            .call(Save {
                data,
                user: user.clone(),
                expires_at,
            })
            .await?;
        if saved.previous_user != user
            && let Some(old) = &saved.previous_user
        {
            self.leave(old, vec![id.to_owned()]).await?;
        }
        if let Some(u) = &user
            && (saved.created || saved.previous_user.as_ref() != Some(u))
        {
            self.enter(u, id, saved.created_at, None, saved.expires_at)
                .await?;
        }
        Ok(())
    }

    /// Creates a session under `id` as a middleware does; [`SessionError::Exists`] if the id
    /// is taken (never overwritten).
    pub async fn create_with_id(
        &self,
        id: &str,
        data: Map<String, Value>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), SessionError> {
        let user = self.user_of(&data)?;
        let create = Create {
            data,
            user,
            label: None,
            idle_ms: None,
            expires_at,
            max_lifetime_ms: None,
        };
        self.create_under(id, create).await.map(drop)
    }

    /// Deletes (revokes) a session; answers whether it was live.
    pub async fn delete(&self, id: &str) -> Result<bool, SessionError> {
        let deleted = self.session(id)?.call(Delete).await?;
        if let Some(user) = &deleted.user {
            self.leave(user, vec![id.to_owned()]).await?;
        }
        Ok(deleted.existed)
    }

    /// A user's live sessions, oldest first.
    pub async fn user_sessions(&self, user: &str) -> Result<Vec<UserSession>, SessionError> {
        let entries = self.index(user)?.call(ListEntries).await?;
        let mut out = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            if let Some(s) = self.peek(&id).await?
                && s.user.as_deref() == Some(user)
            {
                out.push(UserSession {
                    id,
                    label: entry.label.or(s.label),
                    created_at: s.created_at,
                    last_seen: s.last_seen,
                    expires_at: s.expires_at,
                });
            }
        }
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    /// Signs a user out everywhere: deletes every session of the user; answers how many
    /// were live.
    pub async fn revoke_user(&self, user: &str) -> Result<u64, SessionError> {
        let entries = self.index(user)?.call(ListEntries).await?;
        let mut revoked = 0;
        let mut ids = Vec::with_capacity(entries.len());
        for (id, _) in entries {
            let deleted = self.session(&id)?.call(Delete).await?;
            if deleted.existed {
                revoked += 1;
            }
            ids.push(id);
        }
        self.leave(user, ids).await?;
        Ok(revoked)
    }
}
