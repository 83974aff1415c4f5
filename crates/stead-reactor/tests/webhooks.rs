//! Push delivery to a real local receiver that checks every signature with the Standard
//! Webhooks reference library: order per entity, retries with backoff on the manual clock,
//! dead letters, retrying them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use stead_core::{Clock, LogQuery};
use stead_fixtures::{TestRuntime, eventually};
use stead_reactor::{Command, DeadLetterAction, Event, ReactorClient, ReactorConfig};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    timestamp: i64,
    command: Command,
    accepted: bool,
}

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Got>>,
    /// How many of the next requests to fail, per command seq.
    fail: Mutex<Vec<(u64, u32)>>,
    bad_signatures: Mutex<u32>,
    /// A command seq whose first request is held until `release` is notified.
    hold: Mutex<Option<u64>>,
    holding: std::sync::atomic::AtomicBool,
    release: tokio::sync::Notify,
}

impl Receiver {
    fn accepted(&self) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.accepted)
            .cloned()
            .collect()
    }
    fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let hook = standardwebhooks::Webhook::new(SECRET).unwrap();
    if hook.verify(&body, &headers).is_err() {
        *r.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let command: Command = serde_json::from_slice(&body).unwrap();
    let held = {
        let mut hold = r.hold.lock().unwrap();
        hold.take_if(|s| *s == command.seq).is_some()
    };
    if held {
        r.holding.store(true, std::sync::atomic::Ordering::SeqCst);
        r.release.notified().await;
    }
    let mut accepted = true;
    if let Some(f) = r
        .fail
        .lock()
        .unwrap()
        .iter_mut()
        .find(|(s, n)| *s == command.seq && *n > 0)
    {
        f.1 -= 1;
        accepted = false;
    }
    r.got.lock().unwrap().push(Got {
        id: headers["webhook-id"].to_str().unwrap().to_owned(),
        timestamp: headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap(),
        command,
        accepted,
    });
    if accepted {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

async fn receiver() -> (Arc<Receiver>, String) {
    let state = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, url)
}

/// The receiver checks timestamps against the wall clock, as the reference library does,
/// so these runtimes' manual clocks start now.
#[allow(clippy::disallowed_methods)]
async fn runtime(config: ReactorConfig) -> (TestRuntime, ReactorClient) {
    let now = chrono::Utc::now().to_rfc3339();
    let t = TestRuntime::builder().starting_at(&now).start().await;
    let r = ReactorClient::with_config(&t, config).unwrap();
    (t, r)
}

fn definition(url: &str) -> Value {
    json!({
        "rules": [{"on": "order.placed", "emit": [{"type": "ship", "payload": {"order": {"var": "event.payload.id"}}}]}],
        "webhooks": [{"url": url, "secret": SECRET}]
    })
}

fn order(n: u64) -> Event {
    Event::new(format!("e-{n}"), "order.placed", json!({"id": n}))
}

#[tokio::test]
async fn deliveries_are_signed_in_order_and_leave_the_outbox() {
    let (rx, url) = receiver().await;
    let (t, r) = runtime(ReactorConfig::default()).await;
    r.define("orders", definition(&url)).await.unwrap();
    for n in 1..=20 {
        r.send("orders", "a", order(n)).await.unwrap();
        r.send("orders", "b", order(n)).await.unwrap();
    }
    eventually("every command delivered", || async {
        rx.accepted().len() == 40
    })
    .await;
    assert_eq!(*rx.bad_signatures.lock().unwrap(), 0);
    for entity in ["a", "b"] {
        let got: Vec<Got> = rx
            .accepted()
            .into_iter()
            .filter(|g| g.command.entity == entity)
            .collect();
        assert_eq!(
            got.iter().map(|g| g.command.seq).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        for g in &got {
            assert_eq!(g.id, g.command.id, "webhook-id is the command's id");
            assert_eq!(g.command.payload, json!({"order": g.command.seq}));
        }
    }
    let mut ids: Vec<String> = rx.accepted().into_iter().map(|g| g.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40, "ids are unique across entities");
    // Delivered everywhere it goes (no pull): nothing is left in storage.
    eventually("the outbox empties", || async {
        r.state("orders", "a").await.unwrap().pending == 0
    })
    .await;
    let view = r.state("orders", "a").await.unwrap();
    assert_eq!(view.endpoints[0].delivered, 20);
    // The type is not pulled.
    assert!(
        r.commands("orders", "a", 0, 10, Duration::ZERO)
            .await
            .is_err()
    );
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tampered_body_or_a_wrong_secret_fails_the_reference_check() {
    let key =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &SECRET[6..]).unwrap();
    let body = br#"{"seq":1}"#;
    let signature = stead_reactor::sign(&key, "cmd_1", 1_700_000_000, body);
    let hook = standardwebhooks::Webhook::new(SECRET).unwrap();
    assert_eq!(hook.sign("cmd_1", 1_700_000_000, body).unwrap(), signature);
    let mut headers = http::HeaderMap::new();
    headers.insert("webhook-id", "cmd_1".parse().unwrap());
    #[allow(clippy::disallowed_methods)]
    let now = chrono::Utc::now().timestamp();
    headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
    headers.insert(
        "webhook-signature",
        stead_reactor::sign(&key, "cmd_1", now, body)
            .parse()
            .unwrap(),
    );
    assert!(hook.verify(body, &headers).is_ok());
    assert!(
        hook.verify(br#"{"seq":2}"#, &headers).is_err(),
        "a tampered body"
    );
    let other =
        standardwebhooks::Webhook::new("whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXkh").unwrap();
    assert!(other.verify(body, &headers).is_err(), "another secret");
}

#[tokio::test]
async fn a_dead_letter_retried_while_a_command_is_out_does_not_make_its_answer_a_duplicate() {
    let (rx, url) = receiver().await;
    let mut config = ReactorConfig::default();
    config.max_attempts = 1;
    let (_t, r) = runtime(config).await;
    r.define("orders", definition(&url)).await.unwrap();
    // Command 1 fails once and is given up at once; command 2 is held at the receiver.
    rx.fail.lock().unwrap().push((1, 1));
    *rx.hold.lock().unwrap() = Some(2);
    r.send("orders", "a", order(1)).await.unwrap();
    r.send("orders", "a", order(2)).await.unwrap();
    eventually("command 2 out", || async {
        rx.holding.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    assert_eq!(
        r.dead_letters("orders", "a", LogQuery::oldest(10))
            .await
            .unwrap()
            .entries
            .len(),
        1
    );
    // The dead letter is queued for retry while command 2 is out; then 2 is answered.
    assert_eq!(
        r.resolve_dead_letters("orders", "a", DeadLetterAction::Retry, None)
            .await
            .unwrap(),
        1
    );
    rx.release.notify_one();
    // Command 2's answer counts, and the dead letter goes next.
    eventually("the dead letter delivered", || async {
        rx.accepted().iter().any(|g| g.command.seq == 1)
    })
    .await;
    let accepted: Vec<u64> = rx.accepted().iter().map(|g| g.command.seq).collect();
    assert_eq!(accepted, [2, 1]);
    eventually("both counted", || async {
        let view = r.state("orders", "a").await.unwrap();
        view.endpoints[0].delivered == 2 && view.dead_letters == 0
    })
    .await;
}

#[tokio::test]
async fn failures_back_off_then_dead_letter_and_a_retried_dead_letter_is_delivered() {
    let (rx, url) = receiver().await;
    let mut config = ReactorConfig::default();
    config.max_attempts = 4;
    config.retry_base_ms = 1000;
    let (t, r) = runtime(config).await;
    r.define("orders", definition(&url)).await.unwrap();
    // Command 1 fails every attempt (4); command 2 would be taken at once.
    rx.fail.lock().unwrap().push((1, 4));
    r.send("orders", "a", order(1)).await.unwrap();
    r.send("orders", "a", order(2)).await.unwrap();
    eventually("the first attempt", || async { !rx.all().is_empty() }).await;
    // Retries come after 0.5-1 s, 1-2 s, 2-4 s: each wait of the full backoff covers one.
    for (attempt, wait) in [(2, 1), (3, 2), (4, 4)] {
        eventually("the failure recorded", || async {
            r.state("orders", "a").await.unwrap().endpoints[0].attempts == attempt as u32 - 1
        })
        .await;
        // Only command 1 was tried so far: command 2 waits behind it.
        assert!(rx.all().iter().all(|g| g.command.seq == 1));
        let view = r.state("orders", "a").await.unwrap();
        let retry_at = view.endpoints[0].retry_at.expect("waiting for a retry");
        let full = t.clock.now() + chrono::Duration::seconds(wait);
        let half = t.clock.now() + chrono::Duration::milliseconds(wait * 500);
        assert!(
            retry_at >= half && retry_at <= full,
            "attempt {attempt}: {retry_at} not in [{half}, {full}]"
        );
        t.advance(Duration::from_secs(wait as u64)).await;
        eventually("the next attempt", || async { rx.all().len() >= attempt }).await;
    }
    // After the last attempt, 1 is a dead letter and 2 is delivered.
    eventually("command 2 delivered", || async {
        rx.accepted().iter().any(|g| g.command.seq == 2)
    })
    .await;
    let seqs: Vec<u64> = rx.all().iter().map(|g| g.command.seq).collect();
    assert_eq!(
        seqs,
        [1, 1, 1, 1, 2],
        "in order: 2 only after 1 was given up"
    );
    let dead = r
        .dead_letters("orders", "a", LogQuery::oldest(10))
        .await
        .unwrap()
        .entries;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].command.seq,
            dead[0].attempts,
            dead[0].endpoint.as_str()
        ),
        (1, 4, url.as_str())
    );
    assert!(dead[0].error.contains("500"), "{}", dead[0].error);
    assert_eq!(r.state("orders", "a").await.unwrap().dead_letters, 1);
    // Retry it: delivered (with the same id), and it leaves the list.
    assert_eq!(
        r.resolve_dead_letters("orders", "a", DeadLetterAction::Retry, None)
            .await
            .unwrap(),
        1
    );
    eventually("the dead letter delivered", || async {
        rx.accepted().iter().any(|g| g.command.seq == 1)
    })
    .await;
    eventually("the list empties", || async {
        r.dead_letters("orders", "a", LogQuery::oldest(10))
            .await
            .unwrap()
            .entries
            .is_empty()
    })
    .await;
    assert_eq!(
        r.state("orders", "a").await.unwrap().dead_letters,
        0,
        "the count follows"
    );
    // Timestamps are the runtime's clock at each attempt: they grew with the backoff.
    let stamps: Vec<i64> = rx
        .all()
        .iter()
        .filter(|g| g.command.seq == 1)
        .map(|g| g.timestamp)
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    assert!(stamps[3] - stamps[0] >= 3, "{stamps:?}");
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn order_per_entity_holds_across_retries_and_dropped_dead_letters_go() {
    let (rx, url) = receiver().await;
    let mut config = ReactorConfig::default();
    config.max_attempts = 2;
    let (t, r) = runtime(config).await;
    r.define("orders", definition(&url)).await.unwrap();
    rx.fail.lock().unwrap().push((2, 1)); // command 2 fails once
    rx.fail.lock().unwrap().push((4, 2)); // command 4 fails twice: a dead letter
    for n in 1..=6 {
        r.send("orders", "a", order(n)).await.unwrap();
    }
    for _ in 0..10 {
        t.advance(Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("all but 4 accepted", || async { rx.accepted().len() == 5 }).await;
    let seqs: Vec<u64> = rx.all().iter().map(|g| g.command.seq).collect();
    assert_eq!(
        seqs,
        [1, 2, 2, 3, 4, 4, 5, 6],
        "each endpoint sees an entity's commands in order"
    );
    let dead = r
        .dead_letters("orders", "a", LogQuery::oldest(10))
        .await
        .unwrap()
        .entries;
    assert_eq!(dead.iter().map(|d| d.command.seq).collect::<Vec<_>>(), [4]);
    assert_eq!(r.state("orders", "a").await.unwrap().dead_letters, 1);
    assert_eq!(
        r.resolve_dead_letters(
            "orders",
            "a",
            DeadLetterAction::Drop,
            Some(vec![dead[0].seq])
        )
        .await
        .unwrap(),
        1
    );
    assert!(
        r.dead_letters("orders", "a", LogQuery::oldest(10))
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    assert_eq!(r.state("orders", "a").await.unwrap().dead_letters, 0);
    assert!(
        r.resolve_dead_letters("orders", "a", DeadLetterAction::Drop, Some(vec![99]))
            .await
            .is_err()
    );
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_destination_is_checked_when_the_definition_is_stored_without_sending_to_it() {
    let t = TestRuntime::memory().await;
    let hook = |url: &str| json!({"pull": false, "webhooks": [{"url": url, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]});
    // By default: anything but link-local and metadata destinations.
    let r = ReactorClient::new(&t).unwrap();
    let err = r
        .define("meta", hook("http://169.254.169.254/latest/meta-data"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("metadata"), "{err}");
    assert!(
        r.define("local", hook("http://127.0.0.1:9/x"))
            .await
            .is_ok()
    );
    t.shutdown().await.unwrap();
    // An operator's allow-list admits its hosts and networks alone.
    let t = TestRuntime::memory().await;
    let mut config = ReactorConfig::default();
    config.webhook_hosts = vec!["hooks.internal".into(), "10.0.0.0/8".into()];
    let r = ReactorClient::with_config(&t, config).unwrap();
    assert!(r.define("a", hook("http://10.1.2.3/x")).await.is_ok());
    assert!(r.define("b", hook("http://hooks.internal/x")).await.is_ok());
    let err = r
        .define("c", hook("http://127.0.0.1:9/x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not among the allowed"), "{err}");
    t.shutdown().await.unwrap();
}
