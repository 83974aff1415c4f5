//! A `tower_sessions::SessionStore` backed by stead: each session is a durable object that
//! expires by itself, and sessions that name a user are entered in that user's index.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Map;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

use crate::client::SessionClient;
use crate::error::SessionError;

/// The store to give `tower_sessions::SessionManagerLayer::new`.
///
/// - `create` never overwrites: an id that exists already is drawn again.
/// - Expiry comes from the record (`Expiry` of the layer); the session's object deletes
///   itself at that time, and reads as absent from then on. Nothing sweeps.
/// - The middleware saves a session only when a request changed it, so with its
///   `Expiry::OnInactivity` alone "30 minutes of inactivity" means 30 minutes after the
///   last *change*. [`with_inactivity`](Self::with_inactivity) makes every request a use:
///   a load pushes the expiry out (at most once per 1/16 of the timeout, so a read costs a
///   write only that often). Pair it with `Expiry::OnSessionEnd` on the layer, so that the
///   browser's cookie does not end before the session does.
/// - The id is never stored: the session's object is named by its handle
///   ([`handle_of`](crate::handle_of)).
/// - A session whose data holds the configured user field (`user_id` by default) is
///   entered in that user's index: [`SessionClient::user_sessions`] lists it and
///   [`SessionClient::revoke_user`] ends it.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_session::{SessionClient, SteadSessionStore};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let store = SteadSessionStore::new(SessionClient::new(&rt)?);
/// let layer = tower_sessions::SessionManagerLayer::new(store);
/// # let _ = layer;
/// # rt.shutdown().await?;
/// # Ok::<(), stead_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SteadSessionStore {
    sessions: SessionClient,
    inactivity: Option<std::time::Duration>,
}

impl SteadSessionStore {
    /// A store over `sessions`; expiry is the middleware's, moved by saves only.
    pub fn new(sessions: SessionClient) -> Self {
        SteadSessionStore {
            sessions,
            inactivity: None,
        }
    }

    /// Sessions end after `idle` without a request: every load counts as a use and pushes
    /// the expiry out (and no save sets it further than `idle` away).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use stead_session::{SessionClient, SteadSessionStore};
    /// use tower_sessions::{Expiry, SessionManagerLayer};
    /// let rt = stead_core::Runtime::builder().memory().build().await?;
    /// let store = SteadSessionStore::new(SessionClient::new(&rt)?)
    ///     .with_inactivity(Duration::from_secs(30 * 60));
    /// let layer = SessionManagerLayer::new(store).with_expiry(Expiry::OnSessionEnd);
    /// # let _ = layer;
    /// # rt.shutdown().await?;
    /// # Ok::<(), stead_core::Error>(()) }).unwrap();
    /// ```
    pub fn with_inactivity(mut self, idle: std::time::Duration) -> Self {
        self.inactivity = Some(idle);
        self
    }

    /// The client behind the store (for listing and revoking a user's sessions).
    pub fn client(&self) -> &SessionClient {
        &self.sessions
    }
}

fn backend(e: SessionError) -> session_store::Error {
    match e {
        SessionError::TooLarge { .. } | SessionError::Invalid(_) => {
            session_store::Error::Encode(e.to_string())
        }
        other => session_store::Error::Backend(other.to_string()),
    }
}

/// The middleware dates a record's expiry by the system clock; the store keeps the same
/// time to live on the runtime's clock (the same instant in production, and one that moves
/// with a manual clock in tests).
#[allow(clippy::disallowed_methods)] // the middleware's own clock, read to translate from it
fn system_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl SteadSessionStore {
    fn expiry_on_runtime_clock(&self, t: time::OffsetDateTime) -> DateTime<Utc> {
        let ttl = (t - system_now()).whole_milliseconds();
        let ttl = chrono::Duration::milliseconds(i64::try_from(ttl).unwrap_or(i64::MAX));
        self.sessions
            .now()
            .checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    fn expiry_on_system_clock(
        &self,
        t: DateTime<Utc>,
    ) -> Result<time::OffsetDateTime, session_store::Error> {
        let ttl = (t - self.sessions.now()).num_milliseconds();
        Ok(system_now() + time::Duration::milliseconds(ttl))
    }
}

fn data_of(record: &Record) -> Map<String, serde_json::Value> {
    record
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[async_trait]
impl SessionStore for SteadSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        loop {
            let id = record.id.to_string();
            match self
                .sessions
                .create_with_id(
                    &id,
                    data_of(record),
                    self.expiry_on_runtime_clock(record.expiry_date),
                    self.inactivity,
                )
                .await
            {
                // A collision: draw another id, never overwrite.
                Err(SessionError::Exists) => record.id = Id::default(),
                other => return other.map_err(backend),
            }
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.sessions
            .save(
                &record.id.to_string(),
                data_of(record),
                self.expiry_on_runtime_clock(record.expiry_date),
                self.inactivity,
            )
            .await
            .map_err(backend)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        // A use: a sliding session's expiry moves out (the object writes only when due).
        let Some(view) = self.sessions.get(&id.to_string()).await.map_err(backend)? else {
            return Ok(None);
        };
        Ok(Some(Record {
            id: *id,
            data: view.data.into_iter().collect::<HashMap<_, _>>(),
            expiry_date: self.expiry_on_system_clock(view.expires_at)?,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.sessions
            .delete(&id.to_string())
            .await
            .map(drop)
            .map_err(backend)
    }
}
