//! SIGKILL at random while a child process ingests events: after a restart, every command
//! whose event was acknowledged is there to pull and is pushed to a webhook consumer that
//! deduplicates by `webhook-id`; no event decided twice, none lost.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use stead_reactor::{Command, Event, ReactorClient};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WRITERS: u64 = 8;
const ROUNDS: u64 = 3;

fn definition(url: &str) -> serde_json::Value {
    json!({
        "state": {"n": 0},
        "rules": [{"on": "tick", "increment": {"n": 1},
                   "emit": [{"type": "work", "payload": {"event": {"var": "event.id"}}}]}],
        "webhooks": [{"url": url, "secret": SECRET}],
        "pull": true
    })
}

/// The child: ingests events from several writers until it is killed, printing each
/// acknowledged event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by crash_keeps_every_acknowledged_command"]
async fn crash_child() {
    let dir = std::env::var("STEAD_REACTOR_CRASH_DIR").unwrap();
    let url = std::env::var("STEAD_REACTOR_CRASH_URL").unwrap();
    let round: u64 = std::env::var("STEAD_REACTOR_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let rt = stead_core::Runtime::builder()
        .sqlite(dir)
        .build()
        .await
        .unwrap();
    let r = ReactorClient::new(&rt).unwrap();
    r.define("jobs", definition(&url)).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("r{round}-w{w}-{i}");
                let entity = format!("e{}", w % 4);
                if r.send("jobs", &entity, Event::new(&id, "tick", json!({})))
                    .await
                    .is_ok()
                {
                    println!("ACK {entity} {id}");
                }
                // An event of an earlier round again: acknowledged as a duplicate.
                if i % 10 == 0 && round > 0 {
                    let old = format!("r{}-w{w}-{i}", round - 1);
                    let _ = r
                        .send("jobs", &entity, Event::new(&old, "tick", json!({})))
                        .await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[derive(Default)]
struct Consumer {
    /// Deliveries by webhook-id (the consumer's deduplication), with how often each came.
    seen: Mutex<BTreeMap<String, (Command, u32)>>,
}

async fn consume(State(c): State<Arc<Consumer>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let hook = standardwebhooks::Webhook::new(SECRET).unwrap();
    if hook.verify(&body, &headers).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    let id = headers["webhook-id"].to_str().unwrap().to_owned();
    let command: Command = serde_json::from_slice(&body).unwrap();
    c.seen.lock().unwrap().entry(id).or_insert((command, 0)).1 += 1;
    StatusCode::OK
}

#[test]
fn crash_keeps_every_acknowledged_command() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let consumer = Arc::new(Consumer::default());
    let url = tokio.block_on(async {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(consume))
            .with_state(consumer.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    });
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // entity -> acknowledged event ids
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for round in 0..ROUNDS {
        let mut child = Process::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STEAD_REACTOR_CRASH_DIR", dir.path())
            .env("STEAD_REACTOR_CRASH_URL", &url)
            .env("STEAD_REACTOR_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                if parts.next() == Some("ACK")
                    && let (Some(e), Some(id)) = (parts.next(), parts.next())
                {
                    acks.push((e.to_owned(), id.to_owned()));
                }
            }
            acks
        });
        std::thread::sleep(Duration::from_millis(400 + rand::random::<u64>() % 600));
        child.kill().unwrap();
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        assert!(
            !acks.is_empty(),
            "round {round}: nothing acknowledged before the kill"
        );
        for (e, id) in acks {
            acked.entry(e).or_default().insert(id);
        }
    }
    // Restart: pending deliveries resume; every acknowledged event's command is there.
    tokio.block_on(async {
        let rt = stead_core::Runtime::builder()
            .sqlite(dir.path())
            .build()
            .await
            .unwrap();
        let r = ReactorClient::new(&rt).unwrap();
        for (entity, ids) in &acked {
            let mut pulled: BTreeMap<String, u32> = BTreeMap::new();
            let mut after = 0;
            loop {
                let page = r
                    .commands("jobs", entity, after, 1000, Duration::ZERO)
                    .await
                    .unwrap();
                let Some(last) = page.commands.last() else {
                    break;
                };
                after = last.seq;
                for c in &page.commands {
                    *pulled
                        .entry(c.payload["event"].as_str().unwrap().to_owned())
                        .or_default() += 1;
                }
            }
            for id in ids {
                assert_eq!(
                    pulled.get(id),
                    Some(&1),
                    "{entity}: the command of acknowledged event {id}, once"
                );
            }
            assert!(
                pulled.values().all(|n| *n == 1),
                "{entity}: an event decided twice"
            );
            let view = r.state("jobs", entity).await.unwrap();
            assert_eq!(
                view.state["n"].as_u64().unwrap(),
                view.last_seq,
                "{entity}: state and outbox agree"
            );
            assert_eq!(
                pulled.len() as u64,
                view.last_seq,
                "{entity}: numbered without gaps"
            );
        }
        // Push: every command reaches the consumer; by webhook-id, each once.
        let total: u64 = {
            let mut n = 0;
            for entity in acked.keys() {
                n += r.state("jobs", entity).await.unwrap().last_seq;
            }
            n
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while (consumer.seen.lock().unwrap().len() as u64) < total {
            assert!(
                tokio::time::Instant::now() < deadline,
                "deliveries did not finish"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = consumer.seen.lock().unwrap().clone();
        let mut by_event: BTreeMap<String, u32> = BTreeMap::new();
        for (id, (command, _)) in seen.iter() {
            assert_eq!(*id, command.id);
            *by_event
                .entry(command.payload["event"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        for ids in acked.values() {
            for id in ids {
                assert_eq!(by_event.get(id), Some(&1), "pushed: the command of {id}");
            }
        }
        assert!(
            by_event.values().all(|n| *n == 1),
            "pushed: a command under two ids"
        );
        let redelivered = seen.values().filter(|(_, n)| *n > 1).count();
        println!(
            "{} commands pushed, {redelivered} of them more than once (at least once)",
            seen.len()
        );
        rt.shutdown().await.unwrap();
    });
}
