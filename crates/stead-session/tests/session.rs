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
    let sessions =
        SessionClient::with_config(&rt, SessionConfig::default().max_sessions_per_user(1000))
            .unwrap();
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
        sessions.user_sessions("eve").await.unwrap()[0].handle,
        stead_session::handle_of(&second.id.to_string())
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
        (json!(1), a.session.expires_at)
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
    let http = TestClient::new(axum::Router::new().nest(
        "/sessions",
        stead_session::router(&rt).unwrap().unauthenticated(),
    ));
    let created = http
        .post("/sessions")
        .json(&json!({"user": "ada", "ttl_ms": 60000, "data": {"cart": [1]}, "label": "phone"}))
        .send()
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.value()["id"].as_str().unwrap().to_owned();
    let handle = created.value()["handle"].as_str().unwrap().to_owned();
    assert_eq!((id.len(), handle.len()), (22, 64));
    assert_eq!(handle, stead_session::handle_of(&id));
    // Every other route names the session by its handle: the id never travels in a URL.
    assert_eq!(
        http.get(&format!("/sessions/{id}")).send().await.status,
        400
    );
    let s = http
        .get(&format!("/sessions/{handle}"))
        .send()
        .await
        .value();
    assert_eq!(
        (s["user"].as_str(), s["data"]["cart"].clone()),
        (Some("ada"), json!([1]))
    );
    let patched = http
        .patch(&format!("/sessions/{handle}"))
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
    let third = http
        .post("/sessions")
        .json(&json!({"user": "ada", "ttl_ms": 60000}))
        .send()
        .await
        .value();
    let list = http.get("/sessions/users/ada").send().await;
    assert_eq!(list.value()["sessions"].as_array().unwrap().len(), 3);
    // The list shows handles, never an id: nothing in it can be sent back as a cookie.
    assert!(!list.text().contains(&id) && !list.text().contains(third["id"].as_str().unwrap()));
    // One session revoked by the handle the list shows.
    let third_handle = third["handle"].as_str().unwrap();
    assert!(list.text().contains(third_handle));
    let one = http
        .delete(&format!("/sessions/{third_handle}"))
        .send()
        .await;
    assert_eq!(one.status, 204);
    let revoked = http.delete("/sessions/users/ada").send().await.value();
    assert_eq!(revoked["revoked"], 2);
    let gone = http.get(&format!("/sessions/{handle}")).send().await;
    assert_eq!(
        (gone.status.as_u16(), gone.content_type()),
        (404, "application/problem+json")
    );
    assert!(!gone.text().contains(&id), "a problem never carries the id");
    assert_eq!(
        http.delete(&format!("/sessions/{handle}"))
            .send()
            .await
            .status,
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

/// Every file under `dir`, read whole.
fn files(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // the middleware dates records by the system clock
async fn a_session_id_is_never_stored() {
    let rt = TestRuntime::sqlite().await;
    let sessions = SessionClient::new(&rt).unwrap();
    let made = sessions
        .create(NewSession::new(HOUR).user("ada").label("laptop"))
        .await
        .unwrap();
    assert!(
        !format!("{made:?}").contains(&made.id),
        "Debug hides the id"
    );
    let store = SteadSessionStore::new(sessions.clone());
    let mut record = Record {
        id: Id::default(),
        data: [("user_id".to_owned(), json!("ada"))].into_iter().collect(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::days(1),
    };
    store.create(&mut record).await.unwrap();
    let ids = [made.id.clone(), record.id.to_string()];
    let listed = sessions.user_sessions("ada").await.unwrap();
    assert_eq!(listed.len(), 2);
    let mut handles: Vec<_> = listed.iter().map(|s| s.handle.clone()).collect();
    let mut expected: Vec<_> = ids.iter().map(|id| stead_session::handle_of(id)).collect();
    handles.sort();
    expected.sort();
    assert_eq!(handles, expected);
    let dir = rt.dir().to_owned();
    let rt = rt.restart().await; // everything on disk
    let mut all = Vec::new();
    files(&dir, &mut all);
    assert!(!all.is_empty());
    for id in &ids {
        for (path, bytes) in &all {
            assert!(
                !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
                "the id is stored in {}",
                path.display()
            );
        }
    }
    // Yet each id still finds its session, and a handle revokes one.
    let sessions = SessionClient::new(&rt).unwrap();
    assert!(sessions.peek(&made.id).await.unwrap().is_some());
    assert!(
        sessions
            .revoke(&stead_session::handle_of(&ids[1]))
            .await
            .unwrap()
    );
    let store = SteadSessionStore::new(sessions.clone());
    assert!(store.load(&record.id).await.unwrap().is_none());
    assert!(matches!(
        sessions.revoke(&made.id).await,
        Err(SessionError::Invalid(_))
    ));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_index_write_never_hides_a_session_from_sign_out() {
    let faulty = std::sync::Arc::new(stead_core::testing::FaultyBackend::new(
        stead_core::MemoryBackend::new(),
    ));
    let backend = faulty.clone();
    let rt = TestRuntime::builder()
        .tune(move |b| b.backend(backend.clone()))
        .start()
        .await;
    let sessions = SessionClient::new(&rt).unwrap();
    // An anonymous session, then a log-in: its save names the user.
    let anon = sessions.create(NewSession::new(HOUR)).await.unwrap();
    let until = stead_core::Clock::now(&rt.clock) + chrono::Duration::hours(1);
    let login = data(json!({"user_id": "ada"}));
    // The next commit is the index's entry: it fails once.
    faulty.fail_commit(faulty.submitted() + 1);
    assert!(
        sessions
            .save(&anon.id, login.clone(), until, None)
            .await
            .is_err()
    );
    // The session was not stored under the user while the index did not hold it.
    let seen = sessions.peek(&anon.id).await.unwrap().unwrap();
    assert_eq!(seen.user, None);
    // The middleware saves again (the next request): now both are written.
    sessions
        .save(&anon.id, login.clone(), until, None)
        .await
        .unwrap();
    sessions.save(&anon.id, login, until, None).await.unwrap();
    assert_eq!(sessions.user_sessions("ada").await.unwrap().len(), 1);
    assert_eq!(sessions.revoke_user("ada").await.unwrap(), 1);
    assert!(sessions.peek(&anon.id).await.unwrap().is_none());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // the middleware dates records by the system clock
async fn with_inactivity_a_read_is_a_use() {
    let rt = TestRuntime::memory().await;
    let sessions = SessionClient::new(&rt).unwrap();
    let idle = Duration::from_secs(30 * 60);
    let sliding = SteadSessionStore::new(sessions.clone()).with_inactivity(idle);
    let fixed = SteadSessionStore::new(sessions.clone());
    let make = |store: &SteadSessionStore| {
        let store = store.clone();
        async move {
            let mut r = Record {
                id: Id::default(),
                data: [("user_id".to_owned(), json!("ada"))].into_iter().collect(),
                // What the layer's `OnInactivity(30 min)` dates a record.
                expiry_date: time::OffsetDateTime::now_utc() + time::Duration::minutes(30),
            };
            store.create(&mut r).await.unwrap();
            r.id
        }
    };
    let (a, b) = (make(&sliding).await, make(&fixed).await);
    // Two hours of reads every 20 minutes, never a write.
    for _ in 0..6 {
        rt.advance(Duration::from_secs(20 * 60)).await;
        assert!(
            sliding.load(&a).await.unwrap().is_some(),
            "read keeps it alive"
        );
    }
    // Without it, reads never moved the expiry: gone 30 minutes after the last save.
    assert!(fixed.load(&b).await.unwrap().is_none());
    // A read between slides writes nothing: the expiry moves at most every 1/16 of it.
    let before = sessions.peek(&a.to_string()).await.unwrap().unwrap();
    rt.advance(Duration::from_secs(60)).await;
    sliding.load(&a).await.unwrap().unwrap();
    let after = sessions.peek(&a.to_string()).await.unwrap().unwrap();
    assert_eq!(before.expires_at, after.expires_at);
    // 31 minutes without a request end it.
    rt.advance(Duration::from_secs(31 * 60)).await;
    assert!(sliding.load(&a).await.unwrap().is_none());
    rt.advance(HOUR).await;
    assert!(sessions.user_sessions("ada").await.unwrap().is_empty());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_user_keeps_at_most_the_configured_sessions() {
    let rt = TestRuntime::memory().await;
    let sessions =
        SessionClient::with_config(&rt, SessionConfig::default().max_sessions_per_user(3)).unwrap();
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(
            sessions
                .create(NewSession::new(HOUR).user("ada"))
                .await
                .unwrap(),
        );
        rt.advance(Duration::from_secs(1)).await;
    }
    let listed = sessions.user_sessions("ada").await.unwrap();
    let handles: Vec<_> = listed.iter().map(|s| s.handle.clone()).collect();
    let newest: Vec<_> = made[2..].iter().map(|m| m.session.handle.clone()).collect();
    assert_eq!(handles, newest, "the three newest are kept");
    for old in &made[..2] {
        assert!(
            sessions.peek(&old.id).await.unwrap().is_none(),
            "the oldest ended"
        );
    }
    assert!(
        SessionClient::with_config(&rt, SessionConfig::default().max_sessions_per_user(0)).is_err()
    );
    rt.shutdown().await.unwrap();
}
