//! # stead-session: sessions that expire by themselves
//!
//! One durable object per session: its data (a JSON map), when it was created and last
//! used, a sliding TTL (each use pushes the expiry out) and an optional absolute lifetime.
//! Expiry is the object's alarm: it deletes itself, nothing sweeps, and an expired session
//! reads as absent from that instant on. Ids are 128 random bits, shown base64url, never
//! derived from the user. An id is a bearer secret: it is shown once, by the call that
//! creates the session, and never stored, listed or logged. A session's object is named by
//! its **handle** ([`handle_of`]: the SHA-256 of the id), which lists show and revocation
//! takes, and which cannot be turned back into a cookie.
//!
//! A per-user index object answers "which sessions does this user have" and "sign this
//! user out everywhere"; its entries of expired sessions disappear by themselves.
//!
//! With the `tower-sessions` feature (on by default), [`SteadSessionStore`] is a
//! `tower_sessions::SessionStore`, so an axum app keeps its session middleware and gets
//! durable sessions with per-user sign-out, and inactivity that counts reads as uses
//! ([`SteadSessionStore::with_inactivity`]).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use stead_session::{NewSession, SessionClient};
//!
//! let rt = stead_core::Runtime::builder().memory().build().await?;
//! let sessions = SessionClient::new(&rt)?;
//! let s = sessions
//!     .create(NewSession::new(Duration::from_secs(1800)).user("ada").label("Firefox"))
//!     .await?;
//! sessions.patch(&s.id, serde_json::json!({"theme": "dark"})).await?;
//! let got = sessions.get(&s.id).await?.unwrap();
//! assert_eq!(got.data["theme"], "dark");
//! # rt.shutdown().await?;
//! # Ok::<(), stead_session::SessionError>(()) }).unwrap();
//! ```
//!
//! Over HTTP (see `router`, feature `http`, on by default), for an operator or a trusted
//! service only (every route is admin: they create logins and reveal session data):
//! `POST /sessions` (the only answer that carries an id), `GET|PATCH|DELETE
//! /sessions/{handle}`, `GET|DELETE /sessions?user=`.

mod client;
mod error;
#[cfg(feature = "http")]
mod http;
mod object;
#[cfg(feature = "tower-sessions")]
mod store;

pub use client::{
    CreatedSession, NewSession, SessionClient, SessionConfig, UserSession, check_handle, check_id,
    handle_of,
};
pub use error::SessionError;
#[cfg(feature = "http")]
pub use http::SessionPattern;
pub use object::{
    AddEntry, Create, Deleted, IndexEntry, IndexEnv, ListEntries, Load, MAX_LABEL_CHARS,
    MAX_TTL_MS, Patch, Remove, RemoveEntries, SLIDE_EVERY, Save, Saved, SessionView, StoredSession,
    UserSessions,
};
#[cfg(feature = "tower-sessions")]
pub use store::SteadSessionStore;

/// The session routes, without a prefix (the umbrella crate mounts them under `/sessions`),
/// in any app state.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`].
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <SessionPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <SessionPattern as stead_core::http::Pattern>::openapi()
}
