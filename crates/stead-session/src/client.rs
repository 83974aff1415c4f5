//! The typed client: sessions by id, a user's sessions, and sign-out everywhere.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use stead_core::{
    Clock, Durability, Error, InvalidInput, Namespace, NamespaceOptions, Result, Runtime,
    duration_ms,
};
use tower_sessions_core::session::Id;

use crate::error::SessionError;
use crate::object::{
    AddEntry, Create, Deleted, IndexEntry, IndexEnv, ListEntries, Load, MAX_TTL_MS, Patch, Remove,
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
    /// The most live sessions one user keeps (default 100): a new one past it ends the
    /// user's oldest.
    pub max_sessions_per_user: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_data_bytes: 64 * 1024,
            user_field: "user_id".to_owned(),
            durability: None,
            max_sessions_per_user: 100,
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

    /// Sets the most live sessions one user keeps.
    pub fn max_sessions_per_user(mut self, n: u64) -> Self {
        self.max_sessions_per_user = n;
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
        if !(1..=100_000).contains(&self.max_sessions_per_user) {
            return bad("max_sessions_per_user must be between 1 and 100000".to_owned());
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
    /// The session's handle (never its id): revoke it with
    /// [`SessionClient::revoke`].
    pub handle: String,
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
/// let listed = sessions.user_sessions("ada").await?;
/// assert_eq!(listed.len(), 2);
/// // Listed by handle, never by id; a handle revokes one session.
/// assert!(listed.iter().all(|s| s.handle != a.id && s.handle != b.id));
/// assert!(sessions.revoke(&listed[0].handle).await?);
/// assert_eq!(sessions.revoke_user("ada").await?, 1);
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

/// A store's inactivity timeout, checked, in ms.
fn idle_ms(idle: Option<Duration>) -> Result<Option<u64>, SessionError> {
    let idle = idle.map(duration_ms);
    if let Some(i) = idle {
        stead_core::validate_ms("idle", i, MAX_TTL_MS)?;
    }
    Ok(idle)
}

/// Checks a session id: the 22 base64url characters of 128 random bits.
pub fn check_id(id: &str) -> std::result::Result<(), InvalidInput> {
    if id.len() == 22 && Id::from_str(id).is_ok() {
        Ok(())
    } else {
        Err(InvalidInput::new("a session id is 22 base64url characters"))
    }
}

/// The handle of a session id: the SHA-256 of the id's text, as 64 lowercase hex
/// characters. A session's object is named by it, lists show it, and revocation takes it;
/// it cannot be turned back into the id.
///
/// ```
/// let h = stead_session::handle_of("AAAAAAAAAAAAAAAAAAAAAA");
/// assert_eq!(h.len(), 64);
/// assert!(stead_session::check_handle(&h).is_ok());
/// ```
pub fn handle_of(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Checks a session handle: 64 lowercase hex characters.
pub fn check_handle(handle: &str) -> std::result::Result<(), InvalidInput> {
    if handle.len() == 64
        && handle
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(InvalidInput::new(
            "a session handle is 64 lowercase hex characters",
        ))
    }
}

/// A session just created: its id (the secret to hand to the client, shown this once) and
/// the session. `Debug` never shows the id.
#[derive(Clone)]
pub struct CreatedSession {
    /// The session id: a bearer secret, as good as the session itself.
    pub id: String,
    /// The session (with its handle).
    pub session: SessionView,
}

impl std::fmt::Debug for CreatedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedSession")
            .field("id", &"***")
            .field("session", &self.session)
            .finish()
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

    /// The handle of a checked id.
    fn handle(id: &str) -> Result<String, SessionError> {
        check_id(id)?;
        Ok(handle_of(id))
    }

    /// The session whose id is `id`, addressed by its handle.
    fn session(&self, id: &str) -> Result<stead_core::Stub<StoredSession>, SessionError> {
        Ok(self.inner.sessions.get_by_name(&Self::handle(id)?))
    }

    /// The session whose handle is `handle`.
    fn by_handle(&self, handle: &str) -> Result<stead_core::Stub<StoredSession>, SessionError> {
        check_handle(handle)?;
        Ok(self.inner.sessions.get_by_name(handle))
    }

    fn index(&self, user: &str) -> Result<stead_core::Stub<UserSessions>, SessionError> {
        stead_core::validate_name("user", user)?;
        Ok(self.inner.index.get_by_name(user))
    }

    /// Creates a session under a fresh random id (drawing again on a collision). The
    /// answer is the only place its id is ever shown.
    pub async fn create(&self, new: NewSession) -> Result<CreatedSession, SessionError> {
        let ttl = duration_ms(new.ttl);
        stead_core::validate_ms("ttl_ms", ttl, MAX_TTL_MS)?;
        if let Some(max) = new.max_lifetime {
            stead_core::validate_ms("max_lifetime_ms", duration_ms(max), MAX_TTL_MS)?;
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
                max_lifetime_ms: new.max_lifetime.map(duration_ms),
            };
            match self.create_under(&id, create).await {
                Err(SessionError::Exists) => continue,
                Err(e) => return Err(e),
                Ok(session) => return Ok(CreatedSession { id, session }),
            }
        }
    }

    /// Creates the session `id`, entering it in its user's index first (so that no live
    /// session of a user is ever missing from the index).
    async fn create_under(&self, id: &str, create: Create) -> Result<SessionView, SessionError> {
        let handle = Self::handle(id)?;
        if let Some(user) = &create.user {
            let now = self.now();
            self.enter(user, &handle, now, create.label.clone(), create.expires_at)
                .await?;
        }
        self.inner.sessions.get_by_name(&handle).call(create).await
    }

    /// Enters a session in `user`'s index; past the per-user cap, ends the user's oldest
    /// sessions (and then removes their entries).
    async fn enter(
        &self,
        user: &str,
        handle: &str,
        created_at: DateTime<Utc>,
        label: Option<String>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), SessionError> {
        let index = self.index(user)?;
        let evict = index
            .call(AddEntry {
                handle: handle.to_owned(),
                entry: IndexEntry {
                    created_at,
                    label,
                    expires_at,
                },
                max: self.config().max_sessions_per_user,
            })
            .await?;
        if !evict.is_empty() {
            self.end_all(user, evict).await?;
        }
        Ok(())
    }

    /// Ends these sessions of `user` (concurrently), then removes them from the index;
    /// answers how many were live.
    async fn end_all(&self, user: &str, handles: Vec<String>) -> Result<u64, SessionError> {
        let deletes = handles.iter().map(|h| {
            let stub = self.inner.sessions.get_by_name(h);
            let if_user = Some(user.to_owned());
            async move { stub.call(Remove { if_user }).await }
        });
        let mut ended = 0;
        for d in futures_util::future::join_all(deletes).await {
            if d?.existed {
                ended += 1;
            }
        }
        self.leave(user, handles).await?;
        Ok(ended)
    }

    async fn leave(&self, user: &str, handles: Vec<String>) -> Result<(), SessionError> {
        self.index(user)?.call(RemoveEntries { handles }).await?;
        Ok(())
    }

    /// The session, counted as a use (a sliding expiry moves out); `None` if unknown,
    /// expired or revoked.
    pub async fn get(&self, id: &str) -> Result<Option<SessionView>, SessionError> {
        self.session(id)?.call(Load { touch: true }).await
    }

    /// The session, without counting as a use.
    pub async fn peek(&self, id: &str) -> Result<Option<SessionView>, SessionError> {
        self.session(id)?.call(Load { touch: false }).await
    }

    /// The session with this handle, without counting as a use (for an operator).
    pub async fn peek_handle(&self, handle: &str) -> Result<Option<SessionView>, SessionError> {
        self.by_handle(handle)?.call(Load { touch: false }).await
    }

    /// Applies a JSON merge patch (RFC 7396) to the session's data; `None` if it is gone.
    pub async fn patch(&self, id: &str, patch: Value) -> Result<Option<SessionView>, SessionError> {
        self.session(id)?.call(Patch { patch }).await
    }

    /// [`patch`](Self::patch), by handle (for an operator).
    pub async fn patch_handle(
        &self,
        handle: &str,
        patch: Value,
    ) -> Result<Option<SessionView>, SessionError> {
        self.by_handle(handle)?.call(Patch { patch }).await
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
    /// if absent), and keeps its user's index in step: the session is entered in the
    /// index before it is stored under that user, and leaves the old user's index after.
    /// The user is the data's [`SessionConfig::user_field`], if it is a string or a number.
    /// With `idle`, the session slides: each use pushes its expiry `idle` out.
    pub async fn save(
        &self,
        id: &str,
        data: Map<String, Value>,
        expires_at: DateTime<Utc>,
        idle: Option<Duration>,
    ) -> Result<(), SessionError> {
        let user = self.user_of(&data)?;
        let handle = Self::handle(id)?;
        let stub = self.inner.sessions.get_by_name(&handle);
        let idle_ms = idle_ms(idle)?;
        let mut save = Save {
            data,
            user: user.clone(),
            expires_at,
            idle_ms,
            indexed: false,
        };
        let mut saved = stub.call(save.clone()).await?;
        if saved.needs_index
            && let Some(u) = &user
        {
            self.enter(u, &handle, saved.created_at, None, saved.expires_at)
                .await?;
            save.indexed = true;
            saved = stub.call(save).await?;
        }
        if saved.previous_user != user
            && let Some(old) = &saved.previous_user
        {
            self.leave(old, vec![handle]).await?;
        }
        Ok(())
    }

    /// Creates a session under `id` as a middleware does; [`SessionError::Exists`] if the id
    /// is taken (never overwritten). With `idle`, the session slides.
    pub async fn create_with_id(
        &self,
        id: &str,
        data: Map<String, Value>,
        expires_at: DateTime<Utc>,
        idle: Option<Duration>,
    ) -> Result<(), SessionError> {
        let user = self.user_of(&data)?;
        let idle_ms = idle_ms(idle)?;
        let expires_at = match idle_ms {
            Some(i) => expires_at.min(self.now() + chrono::Duration::milliseconds(i as i64)),
            None => expires_at,
        };
        let create = Create {
            data,
            user,
            label: None,
            idle_ms,
            expires_at,
            max_lifetime_ms: None,
        };
        self.create_under(id, create).await.map(drop)
    }

    /// Deletes the session with this (checked) handle and its index entry.
    async fn delete_handle(&self, handle: String) -> Result<bool, SessionError> {
        let stub = self.inner.sessions.get_by_name(&handle);
        let Deleted { existed, user } = stub.call(Remove::default()).await?;
        if let Some(user) = &user {
            self.leave(user, vec![handle]).await?;
        }
        Ok(existed)
    }

    /// Deletes (revokes) a session by id; answers whether it was live.
    pub async fn delete(&self, id: &str) -> Result<bool, SessionError> {
        self.delete_handle(Self::handle(id)?).await
    }

    /// Revokes a session by its handle (as [`user_sessions`](Self::user_sessions) lists
    /// it); answers whether it was live.
    pub async fn revoke(&self, handle: &str) -> Result<bool, SessionError> {
        check_handle(handle)?;
        self.delete_handle(handle.to_owned()).await
    }

    /// A user's live sessions, oldest first, by handle (the sessions are read
    /// concurrently).
    pub async fn user_sessions(&self, user: &str) -> Result<Vec<UserSession>, SessionError> {
        let entries = self.index(user)?.call(ListEntries).await?;
        let reads = entries.iter().map(|(handle, _)| {
            let stub = self.inner.sessions.get_by_name(handle);
            async move { stub.call(Load { touch: false }).await }
        });
        let views = futures_util::future::join_all(reads).await;
        let mut out = Vec::with_capacity(entries.len());
        for ((handle, entry), view) in entries.into_iter().zip(views) {
            if let Some(s) = view?
                && s.user.as_deref() == Some(user)
            {
                out.push(UserSession {
                    handle,
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
        let handles = entries.into_iter().map(|(h, _)| h).collect();
        self.end_all(user, handles).await
    }
}
