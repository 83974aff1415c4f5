//! The sessions' promises: sliding and absolute expiry by alarm (nothing left behind),
//! indexes that empty themselves, no overwrite on an id collision, a restart, concurrent
//! merge patches, and the HTTP surface.

use std::time::Duration;

use serde_json::{Map, Value, json};
use stead_fixtures::{TestClient, TestRuntime};
use stead_session::{
    NewSession, SessionClient, SessionConfig, SessionError, SteadSessionStore, StoredSession,
    UserSessions,
};
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};

const HOUR: Duration = Duration::from_secs(3600);

fn data(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn sliding_and_absolute_expiry_leave_nothing_behind() {
    let rt = TestRuntime::sqlite().await;
    let sessions = SessionClient::new(&rt).unwrap();
    let s = sessions
        .create(
            NewSession::new(Duration::from_secs(600))
                .user("ada")
                .max_lifetime(Duration::from_secs(1500)),
        )
        .await
        .unwrap();
    // Each use pushes the expiry 10 minutes out...
    for _ in 0..2 {
        rt.advance(Duration::from_secs(540)).await;
        assert!(sessions.get(&s.id).await.unwrap().is_some());
    }
    // ...but never past the absolute end, 25 minutes after creation.
    rt.advance(Duration::from_secs(400)).await; // 1480 s
    let last = sessions.get(&s.id).await.unwrap().unwrap();
    assert_eq!(
        last.expires_at,
        last.created_at + chrono::Duration::seconds(1500)
    );
    rt.advance(Duration::from_secs(20)).await; // 1500 s
    assert!(sessions.get(&s.id).await.unwrap().is_none(), "absolute end");

    // A session not used for its TTL ends; it reads as absent at once.
    let t = sessions
        .create(NewSession::new(Duration::from_secs(60)).user("bob"))
        .await
        .unwrap();
    rt.advance(Duration::from_secs(59)).await;
    assert!(sessions.peek(&t.id).await.unwrap().is_some());
    rt.clock.jump(Duration::from_secs(1)).await;
    assert!(sessions.peek(&t.id).await.unwrap().is_none());
    // Nothing is left: no session object, no index entry, no alarm.
    rt.advance(HOUR).await;
    let ns = rt.get_namespace::<StoredSession>().unwrap().unwrap();
    assert!(ns.list_objects(None, 10).await.unwrap().objects.is_empty());
    let idx = rt.get_namespace::<UserSessions>().unwrap().unwrap();
    assert!(idx.list_objects(None, 10).await.unwrap().objects.is_empty());
    assert_eq!(rt.pending_alarms().await, 0);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_index_of_a_thousand_expired_sessions_empties_itself() {
    let rt = TestRuntime::memory().await;
    let sessions = SessionClient::new(&rt).unwrap();
    for i in 0..1000u64 {
        sessions
            .create(NewSession::new(Duration::from_secs(60 + i % 60)).user("many"))
            .await
            .unwrap();
    }
    assert_eq!(sessions.user_sessions("many").await.unwrap().len(), 1000);
    rt.advance(Duration::from_secs(121)).await;
    let idx = rt.get_namespace::<UserSessions>().unwrap().unwrap();
    let entries = idx
        .get_by_name("many")
        .call(stead_session::ListEntries)
        .await
        .unwrap();
    assert!(entries.is_empty(), "{} entries left", entries.len());
    assert_eq!(rt.pending_alarms().await, 0);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // the middleware dates records by the system clock
async fn a_colliding_id_is_drawn_again_never_overwritten() {
    let rt = TestRuntime::memory().await;
    let sessions = SessionClient::new(&rt).unwrap();
    let store = SteadSessionStore::new(sessions.clone());
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let mut first = Record {
        id: Id(42),
        data: [("user_id".to_owned(), json!("ada"))].into_iter().collect(),
        expiry_date: expiry,
    };
    store.create(&mut first).await.unwrap();
    assert_eq!(first.id, Id(42));
    // A second session that drew the same id.
    let mut second = Record {
        id: Id(42),
        data: [("user_id".to_owned(), json!("eve"))].into_iter().collect(),
        expiry_date: expiry,
    };
    store.create(&mut second).await.unwrap();
    assert_ne!(second.id, Id(42), "a new id was drawn");
    let kept = store.load(&Id(42)).await.unwrap().unwrap();
    assert_eq!(
        kept.data["user_id"], "ada",
        "the first session is untouched"
    );
    let other = store.load(&second.id).await.unwrap().unwrap();
    assert_eq!(other.data["user_id"], "eve");
    assert_eq!(
        sessions.user_sessions("eve").await.unwrap()[0].id,
        second.id.to_string()
    );
    // Save and delete through the store keep the index in step.
    let mut moved = kept.clone();
    moved.data.insert("user_id".into(), json!("eve"));
    store.save(&moved).await.unwrap();
    assert!(sessions.user_sessions("ada").await.unwrap().is_empty());
    assert_eq!(sessions.user_sessions("eve").await.unwrap().len(), 2);
    store.delete(&Id(42)).await.unwrap();
    assert_eq!(sessions.user_sessions("eve").await.unwrap().len(), 1);
    assert!(store.load(&Id(42)).await.unwrap().is_none());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn sessions_and_indexes_survive_a_restart() {
    let rt = TestRuntime::sqlite().await;
    let sessions = SessionClient::new(&rt).unwrap();
    let a = sessions
        .create(
            NewSession::new(HOUR)
                .user("ada")
                .label("laptop")
                .data(data(json!({"n": 1}))),
        )
        .await
        .unwrap();
    let rt = rt.restart().await;
    let sessions = SessionClient::new(&rt).unwrap();
    let got = sessions.peek(&a.id).await.unwrap().unwrap();
    assert_eq!(
        (got.data["n"].clone(), got.expires_at),
        (json!(1), a.expires_at)
    );
    let listed = sessions.user_sessions("ada").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].label.as_deref(), Some("laptop"));
    // Its expiry still holds after the restart.
    rt.advance(HOUR).await;
    assert!(sessions.peek(&a.id).await.unwrap().is_none());
    assert!(sessions.user_sessions("ada").await.unwrap().is_empty());
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_merge_patches_lose_no_key() {
    let rt = TestRuntime::memory().await;
    let sessions = SessionClient::new(&rt).unwrap();
    let s = sessions.create(NewSession::new(HOUR)).await.unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let (sessions, id) = (sessions.clone(), s.id.clone());
            tokio::spawn(async move {
                for i in 0..10 {
                    let patch = json!({ format!("t{t}-{i}"): i });
                    sessions.patch(&id, patch).await.unwrap().unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let got = sessions.get(&s.id).await.unwrap().unwrap();
    assert_eq!(got.data.len(), 640, "no key lost");
    // null deletes a key.
    let after = sessions
        .patch(&s.id, json!({"t0-0": null}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.data.len(), 639);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_clearly() {
    let rt = TestRuntime::memory().await;
    let sessions =
        SessionClient::with_config(&rt, SessionConfig::default().max_data_bytes(100)).unwrap();
    let big = data(json!({"x": "y".repeat(200)}));
    assert!(matches!(
        sessions.create(NewSession::new(HOUR).data(big)).await,
        Err(SessionError::TooLarge { max: 100, .. })
    ));
    assert!(matches!(
        sessions.create(NewSession::new(Duration::ZERO)).await,
        Err(SessionError::Invalid(_))
    ));
    assert!(matches!(
        sessions
            .create(NewSession::new(HOUR).label(&"l".repeat(300)))
            .await,
        Err(SessionError::Invalid(_))
    ));
    assert!(matches!(
        sessions.get("short").await,
        Err(SessionError::Invalid(_))
    ));
    let s = sessions.create(NewSession::new(HOUR)).await.unwrap();
    assert!(matches!(
        sessions.patch(&s.id, json!([1])).await,
        Err(SessionError::Invalid(_))
    ));
    let e = sessions
        .patch(&s.id, json!({"x": "y".repeat(200)}))
        .await
        .unwrap_err();
    assert!(!e.to_string().contains(&s.id), "errors never carry an id");
    assert!(SessionClient::with_config(&rt, SessionConfig::default()).is_err());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn over_http() {
    let rt = TestRuntime::memory().await;
    let http =
        TestClient::new(axum::Router::new().nest("/sessions", stead_session::router(&rt).unwrap()));
    let created = http
        .post("/sessions")
        .json(&json!({"user": "ada", "ttl_ms": 60000, "data": {"cart": [1]}, "label": "phone"}))
        .send()
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.value()["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 22);
    let s = http.get(&format!("/sessions/{id}")).send().await.value();
    assert_eq!(
        (s["user"].as_str(), s["data"]["cart"].clone()),
        (Some("ada"), json!([1]))
    );
    let patched = http
        .patch(&format!("/sessions/{id}"))
        .header("content-type", "application/merge-patch+json")
        .bytes(r#"{"cart": null, "theme": "dark"}"#)
        .send()
        .await;
    assert_eq!(
        patched.value()["data"],
        json!({"theme": "dark"}),
        "{}",
        patched.text()
    );
    http.post("/sessions")
        .json(&json!({"user": "ada", "ttl_ms": 60000}))
        .send()
        .await;
    let list = http.get("/sessions?user=ada").send().await.value();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    let revoked = http.delete("/sessions?user=ada").send().await.value();
    assert_eq!(revoked["revoked"], 2);
    let gone = http.get(&format!("/sessions/{id}")).send().await;
    assert_eq!(
        (gone.status.as_u16(), gone.content_type()),
        (404, "application/problem+json")
    );
    assert!(!gone.text().contains(&id), "a problem never carries the id");
    assert_eq!(
        http.delete(&format!("/sessions/{id}")).send().await.status,
        404
    );
    assert_eq!(http.get("/sessions/not-an-id").send().await.status, 400);
    let bad = http
        .post("/sessions")
        .json(&json!({"ttl_ms": 0}))
        .send()
        .await;
    assert_eq!(bad.status, 400);
    let unknown = http
        .post("/sessions")
        .json(&json!({"ttl_ms": 5, "colour": 1}))
        .send()
        .await;
    assert_eq!(unknown.status, 400);
    rt.shutdown().await.unwrap();
}
