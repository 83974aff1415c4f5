//! An axum app with tower-sessions on the stead session store: log in, a counter kept in
//! the session, log out, and "sign me out everywhere".
//!
//! `cargo run --example sessions`, then with a cookie jar:
//! `curl -c j -b j -XPOST 'localhost:3000/login?user=ada'`, `curl -c j -b j localhost:3000/count`.

// ANCHOR: app
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use stead::session::{SessionClient, SteadSessionStore};
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// Who logs in.
#[derive(serde::Deserialize)]
struct Login {
    user: String,
}

/// The app: sessions end after 30 minutes without a request (a read counts), in stead.
pub fn app(sessions: SessionClient) -> Router {
    let store = SteadSessionStore::new(sessions.clone())
        .with_inactivity(std::time::Duration::from_secs(30 * 60));
    // The store ends idle sessions; the cookie lives as long as the browser session, so
    // that it never ends before the session it names.
    let layer = SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(Expiry::OnSessionEnd);
    Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/count", get(count))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .with_state(sessions)
        .layer(layer)
}

async fn login(session: Session, Query(who): Query<Login>) -> Result<&'static str, StatusCode> {
    // A new id at log-in, so that an id seen before it is worth nothing after.
    session
        .cycle_id()
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    // `user_id` enters the session in the user's index.
    session
        .insert("user_id", &who.user)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok("welcome")
}

async fn me(session: Session) -> Result<String, StatusCode> {
    let user: Option<String> = session
        .get("user_id")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    user.ok_or(StatusCode::UNAUTHORIZED)
}

async fn count(session: Session) -> Result<String, StatusCode> {
    let user: Option<String> = session
        .get("user_id")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let Some(user) = user else {
        return Err(StatusCode::UNAUTHORIZED);
    };
    let n: u64 = session
        .get("count")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .unwrap_or(0)
        + 1;
    session
        .insert("count", n)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(format!("{user}: {n}"))
}

async fn logout(session: Session) -> Result<&'static str, StatusCode> {
    session
        .flush()
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok("bye")
}

async fn logout_everywhere(
    State(sessions): State<SessionClient>,
    session: Session,
) -> Result<String, StatusCode> {
    let user: Option<String> = session
        .get("user_id")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let Some(user) = user else {
        return Err(StatusCode::UNAUTHORIZED);
    };
    let n = sessions
        .revoke_user(&user)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(format!("{n} sessions ended"))
}
// ANCHOR_END: app

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from("./data-sessions-example");
    let rt = stead::Runtime::builder().sqlite(&dir).build().await?;
    let app = app(SessionClient::new(&rt)?);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 3000))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    rt.shutdown().await?;
    Ok(())
}
