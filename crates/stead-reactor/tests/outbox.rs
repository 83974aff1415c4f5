//! Ingest and the pull side of the outbox, in process: events decide once however often
//! they come, commands are numbered, read, long-polled and acknowledged, the outbox is
//! bounded, and everything survives a restart.

use std::time::Duration;

use serde_json::json;
use stead_core::LogQuery;
use stead_fixtures::TestRuntime;
use stead_reactor::{Event, ReactorClient, ReactorConfig, ReactorError};

fn orders() -> serde_json::Value {
    json!({
        "state": {"big": 0, "seen": 0},
        "rules": [
            {"on": "*", "increment": {"seen": 1}},
            {"name": "big order", "on": "order.placed", "when": {">": [{"var": "event.payload.amount"}, 100]},
             "increment": {"big": 1},
             "emit": [{"type": "review.request", "payload": {"order": {"var": "event.payload.id"}}}],
             "decision": "review", "reason": {"cat": ["large order ", {"var": "event.payload.id"}]}}
        ]
    })
}

fn order(n: u32, amount: u32) -> Event {
    Event::new(
        format!("e-{n}"),
        "order.placed",
        json!({"id": format!("o-{n}"), "amount": amount}),
    )
}

#[tokio::test]
async fn every_event_sent_twice_concurrently_and_later_decides_once() {
    let t = TestRuntime::memory().await;
    let r = ReactorClient::new(&t).unwrap();
    r.define("orders", orders()).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..50 {
        for _ in 0..2 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                r.send("orders", "acme", order(n, 500)).await.unwrap()
            }));
        }
    }
    let mut firsts = 0;
    for task in tasks {
        let got = task.await.unwrap();
        assert!(got.accepted);
        if !got.duplicate {
            firsts += 1;
            assert_eq!(got.commands, 1);
        } else {
            assert_eq!(got.commands, 0);
        }
    }
    assert_eq!(firsts, 50);
    // And again, later.
    t.advance(Duration::from_secs(3600)).await;
    for n in 0..50 {
        assert!(
            r.send("orders", "acme", order(n, 500))
                .await
                .unwrap()
                .duplicate
        );
    }
    let view = r.state("orders", "acme").await.unwrap();
    assert_eq!(view.state, json!({"big": 50, "seen": 50}));
    assert_eq!(view.events, 50);
    assert_eq!(view.last_seq, 50);
    assert_eq!(
        r.decisions("orders", "acme", LogQuery::newest(1000))
            .await
            .unwrap()
            .entries
            .len(),
        50
    );
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_event_id_is_forgotten_after_the_retention_window() {
    let t = TestRuntime::memory().await;
    let mut config = ReactorConfig::default();
    config.event_retention_ms = 60_000;
    let r = ReactorClient::with_config(&t, config).unwrap();
    r.define("orders", orders()).await.unwrap();
    r.send("orders", "a", order(1, 500)).await.unwrap();
    t.advance(Duration::from_secs(30)).await;
    assert!(
        r.send("orders", "a", order(1, 500))
            .await
            .unwrap()
            .duplicate
    );
    t.advance(Duration::from_secs(31)).await;
    assert!(
        !r.send("orders", "a", order(1, 500))
            .await
            .unwrap()
            .duplicate
    );
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn at_the_bound_a_new_event_waits_rather_than_a_young_id_being_forgotten() {
    let t = TestRuntime::sqlite().await;
    let mut config = ReactorConfig::default();
    config.event_retention_ms = 60_000;
    config.max_event_ids = 3;
    let r = ReactorClient::with_config(&t, config.clone()).unwrap();
    r.define("orders", orders()).await.unwrap();
    for n in 1..=3 {
        r.send("orders", "a", order(n, 5)).await.unwrap();
        t.advance(Duration::from_secs(10)).await;
    }
    // Three remembered, the oldest 30 s old: a fourth waits 30 s, and changes nothing.
    let before = r.state("orders", "a").await.unwrap();
    match r.send("orders", "a", order(4, 5)).await {
        Err(ReactorError::Remembering(w)) => {
            assert_eq!((w.remembered, w.retry_after_ms), (3, 30_000))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.state("orders", "a").await.unwrap(), before);
    // Every one of the three is still known: a retry is a duplicate, even the oldest.
    for n in 1..=3 {
        assert!(r.send("orders", "a", order(n, 5)).await.unwrap().duplicate);
    }
    // After a restart too.
    let t = t.restart().await;
    let r = ReactorClient::with_config(&t, config).unwrap();
    r.define("orders", orders()).await.unwrap();
    assert!(r.send("orders", "a", order(1, 5)).await.unwrap().duplicate);
    assert!(matches!(
        r.send("orders", "a", order(4, 5)).await,
        Err(ReactorError::Remembering(_))
    ));
    // Once the oldest is a minute old it goes, and the fourth is taken.
    t.advance(Duration::from_secs(30)).await;
    let taken = r.send("orders", "a", order(4, 5)).await.unwrap();
    assert!(!taken.duplicate);
    assert!(r.send("orders", "a", order(2, 5)).await.unwrap().duplicate);
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn event_ids_stored_by_an_earlier_build_are_still_known() {
    let t = TestRuntime::sqlite().await;
    let mut config = ReactorConfig::default();
    config.event_retention_ms = 60_000;
    let r = ReactorClient::with_config(&t, config.clone()).unwrap();
    r.define("orders", orders()).await.unwrap();
    r.send("orders", "a", order(1, 5)).await.unwrap();
    t.advance(Duration::from_secs(30)).await;
    r.send("orders", "a", order(2, 5)).await.unwrap();
    // The entity as an earlier build stored it: `seen/<hashed id>` -> when, nothing else.
    let mut doc = t.export_object("reactor", "orders/a").await.unwrap();
    let ids: Vec<(String, serde_json::Value)> = doc
        .entries
        .iter()
        .filter(|(k, _)| k.starts_with("ev/"))
        .map(|(k, v)| (k["ev/".len()..].to_owned(), v.clone()))
        .collect();
    assert_eq!(ids.len(), 2);
    doc.entries
        .retain(|k, _| !(k.starts_with("ev/") || k.starts_with("evt/") || k == "evn"));
    for (id, at) in ids {
        doc.entries.insert(format!("seen/{id}"), at);
    }
    t.import_object("reactor", "orders/a", doc).await.unwrap();
    let t = t.restart().await;
    let r = ReactorClient::with_config(&t, config).unwrap();
    r.define("orders", orders()).await.unwrap();
    assert!(r.send("orders", "a", order(1, 5)).await.unwrap().duplicate);
    assert!(r.send("orders", "a", order(2, 5)).await.unwrap().duplicate);
    // Moved under the new keys, and forgotten on time: the first after a minute.
    t.advance(Duration::from_secs(31)).await;
    assert!(!r.send("orders", "a", order(1, 5)).await.unwrap().duplicate);
    assert!(r.send("orders", "a", order(2, 5)).await.unwrap().duplicate);
    let doc = t.export_object("reactor", "orders/a").await.unwrap();
    assert!(doc.entries.keys().all(|k| !k.starts_with("seen/")));
    assert_eq!(doc.entries["evn"], 2);
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn commands_are_numbered_read_in_order_and_leave_when_acknowledged() {
    let t = TestRuntime::memory().await;
    let r = ReactorClient::new(&t).unwrap();
    r.define("orders", orders()).await.unwrap();
    for n in 1..=5 {
        r.send("orders", "a", order(n, 500)).await.unwrap();
    }
    r.send("orders", "a", order(6, 5)).await.unwrap(); // no command
    let page = r
        .commands("orders", "a", 0, 3, Duration::ZERO)
        .await
        .unwrap();
    let seqs: Vec<u64> = page.commands.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let c = &page.commands[0];
    assert_eq!(
        (c.kind.as_str(), &c.payload, c.cause.as_str()),
        ("review.request", &json!({"order": "o-1"}), "event:e-1")
    );
    assert!(c.id.starts_with("cmd_") && c.id.ends_with("_1"));
    let other = r
        .commands("orders", "a", 3, 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        other.commands.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [4, 5]
    );
    // The decisions say which commands they emitted.
    let log = r
        .decisions("orders", "a", LogQuery::newest(2))
        .await
        .unwrap();
    assert_eq!(
        log.entries
            .iter()
            .map(|d| (d.seq, d.commands.clone()))
            .collect::<Vec<_>>(),
        [(5, vec![5]), (4, vec![4])]
    );
    assert_eq!(log.next, Some(4));

    assert_eq!(r.ack("orders", "a", 3).await.unwrap(), 3);
    assert_eq!(r.state("orders", "a").await.unwrap().pending, 2);
    // Reading from 0 starts after the acknowledged ones.
    let rest = r
        .commands("orders", "a", 0, 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        rest.commands.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [4, 5]
    );
    // Acknowledging less than before changes nothing; more than exists is refused.
    assert_eq!(r.ack("orders", "a", 1).await.unwrap(), 3);
    assert!(matches!(
        r.ack("orders", "a", 9).await,
        Err(ReactorError::AckBeyondOutbox { up_to: 9, last: 5 })
    ));
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_long_poll_answers_when_a_command_comes_or_when_its_wait_is_over() {
    let t = TestRuntime::memory().await;
    let r = ReactorClient::new(&t).unwrap();
    r.define("orders", orders()).await.unwrap();
    let poll = {
        let r = r.clone();
        tokio::spawn(async move {
            r.commands("orders", "a", 0, 10, Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!poll.is_finished(), "no command yet: the poll waits");
    r.send("orders", "a", order(1, 500)).await.unwrap();
    let page = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.commands.len(), 1);

    // Nothing after 1: the wait runs out on the manual clock and the answer is empty.
    let poll = {
        let r = r.clone();
        tokio::spawn(async move {
            r.commands("orders", "a", 1, 10, Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!poll.is_finished());
    t.advance(Duration::from_secs(31)).await;
    let page = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    assert!(page.commands.is_empty());
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_outbox_refuses_events_until_its_consumers_catch_up() {
    let t = TestRuntime::memory().await;
    let mut config = ReactorConfig::default();
    config.max_outbox = 3;
    let r = ReactorClient::with_config(&t, config).unwrap();
    r.define("orders", orders()).await.unwrap();
    for n in 1..=3 {
        r.send("orders", "a", order(n, 500)).await.unwrap();
    }
    let refused = r.send("orders", "a", order(4, 500)).await;
    assert!(
        matches!(refused, Err(ReactorError::OutboxFull { pending: 3 })),
        "{refused:?}"
    );
    // The refused event was not recorded: sent again later it decides.
    r.ack("orders", "a", 2).await.unwrap();
    let got = r.send("orders", "a", order(4, 500)).await.unwrap();
    assert!(!got.duplicate);
    assert_eq!(r.state("orders", "a").await.unwrap().state["big"], 4);
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn rejected_events_change_nothing_and_bad_input_is_refused() {
    let t = TestRuntime::memory().await;
    let r = ReactorClient::new(&t).unwrap();
    r.define("strict", json!({"rules": [
        {"on": "x", "increment": {"n": 1}},
        {"name": "needs a number", "on": "x", "increment": {"total": {"var": "event.payload.amount"}}}
    ]})).await.unwrap();
    let e = r
        .send(
            "strict",
            "a",
            Event::new("1", "x", json!({"amount": "lots"})),
        )
        .await;
    match e {
        Err(ReactorError::Rejected(why)) => assert!(why.0.contains("needs a number"), "{why}"),
        other => panic!("{other:?}"),
    }
    let view = r.state("strict", "a").await.unwrap();
    assert_eq!((view.state, view.events), (json!({}), 0));
    // The same id, fixed, is taken: a refused event is not remembered.
    assert!(
        !r.send("strict", "a", Event::new("1", "x", json!({"amount": 2})))
            .await
            .unwrap()
            .duplicate
    );
    assert!(matches!(
        r.send("nope", "a", Event::new("1", "x", json!({}))).await,
        Err(ReactorError::UnknownType(_))
    ));
    assert!(matches!(
        r.send("strict", "", Event::new("1", "x", json!({}))).await,
        Err(ReactorError::Invalid(_))
    ));
    assert!(matches!(
        r.send("a/b", "a", Event::new("1", "x", json!({}))).await,
        Err(ReactorError::Invalid(_))
    ));
    assert!(matches!(
        r.send("strict", "a", Event::new("", "x", json!({}))).await,
        Err(ReactorError::Invalid(_))
    ));
    // State over its bound is refused.
    let small = TestRuntime::memory().await;
    let mut config = ReactorConfig::default();
    config.max_state_bytes = 64;
    let r = ReactorClient::with_config(&small, config).unwrap();
    r.define("log", json!({"rules": [{"on": "x", "append": {"l": {"value": {"var": "event.payload"}, "max": 100}}}]})).await.unwrap();
    r.send("log", "a", Event::new("1", "x", json!("short")))
        .await
        .unwrap();
    let big = r
        .send("log", "a", Event::new("2", "x", json!("x".repeat(100))))
        .await;
    assert!(
        matches!(big, Err(ReactorError::StateTooLarge { max: 64, .. })),
        "{big:?}"
    );
    small.shutdown().await.unwrap();
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn state_outbox_seen_ids_and_cycles_survive_a_restart() {
    let t = TestRuntime::sqlite().await;
    let r = ReactorClient::new(&t).unwrap();
    r.define("orders", json!({
        "state": {"big": 0, "ticks": 0},
        "rules": [{"on": "order.placed", "increment": {"big": 1},
                   "emit": [{"type": "review", "payload": {"var": "event.payload.id"}}], "reason": "order"}],
        "cycles": [{"name": "tick", "cron": "*/10 * * * *", "increment": {"ticks": 1}}]
    })).await.unwrap();
    for n in 1..=3 {
        r.send("orders", "a", order(n, 500)).await.unwrap();
    }
    r.ack("orders", "a", 1).await.unwrap();
    let t = t.restart().await;
    let r = ReactorClient::new(&t).unwrap();
    assert!(
        r.send("orders", "a", order(2, 500))
            .await
            .unwrap()
            .duplicate
    );
    let page = r
        .commands("orders", "a", 0, 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        page.commands.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [2, 3]
    );
    // The cycle's schedule was stored by the first runtime and fires in the second.
    t.advance(Duration::from_secs(600)).await;
    t.advance(Duration::from_secs(600)).await;
    let view = r.state("orders", "a").await.unwrap();
    assert_eq!(view.state, json!({"big": 3, "ticks": 2}));
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_event_whose_command_cannot_be_stored_is_refused_whole_and_decides_on_retry() {
    let t = TestRuntime::memory().await;
    let r = ReactorClient::new(&t).unwrap();
    r.define(
        "echo",
        json!({
            "state": {"n": 0},
            "rules": [{"on": "blob", "increment": {"n": 1},
                       "emit": [{"type": "copy", "payload": {"var": "event.payload"}}]}]
        }),
    )
    .await
    .unwrap();
    // The command copies a 140 KB payload: more than a stored value may hold.
    let big = Event::new("e-1", "blob", json!({"data": "x".repeat(140_000)}));
    for _ in 0..2 {
        // Refused whole, and refused again: the retry is not taken for a duplicate.
        let err = r.send("echo", "a", big.clone()).await.unwrap_err();
        assert!(!matches!(err, ReactorError::OutboxFull { .. }), "{err:?}");
        let view = r.state("echo", "a").await.unwrap();
        assert_eq!(view.state, json!({"n": 0}));
        assert_eq!(view.events, 0);
        assert_eq!(view.last_seq, 0);
    }
    // The same event id with a payload that fits decides, once.
    let small = Event::new("e-1", "blob", json!({"data": "x"}));
    let got = r.send("echo", "a", small.clone()).await.unwrap();
    assert!(!got.duplicate);
    assert_eq!(got.commands, 1);
    assert!(r.send("echo", "a", small).await.unwrap().duplicate);
    assert_eq!(r.state("echo", "a").await.unwrap().state, json!({"n": 1}));
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rule_over_its_budget_fails_the_event_and_a_cycle_never_stops_a_restart() {
    let t = TestRuntime::sqlite().await;
    let r = ReactorClient::new(&t).unwrap();
    // A rule that nests its result at every step of an iteration, over stored state and
    // over an event: over budget, never a stack overflow.
    let nest = json!({"reduce": [{"var": "state.items"}, [{"var": "accumulator"}], 0]});
    r.define(
        "hostile",
        json!({
            "state": {"items": [], "deep": 0, "ticks": 0},
            "rules": [
                {"on": "fill", "set": {"items": {"var": "event.payload.items"}}},
                {"on": "nest", "set": {"deep": nest.clone()}}
            ],
            "cycles": [{"name": "tick", "cron": "* * * * *",
                        "set": {"deep": nest}, "increment": {"ticks": 1}}]
        }),
    )
    .await
    .unwrap();
    let items: Vec<u32> = (0..10_000).collect();
    r.send(
        "hostile",
        "a",
        Event::new("e-1", "fill", json!({"items": items})),
    )
    .await
    .unwrap();
    let err = r
        .send("hostile", "a", Event::new("e-2", "nest", json!({})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("budget"), "{err}");
    // The cycle fails the same way, every minute: retried, then dropped; the process and
    // the data directory stay usable, across a restart too.
    t.advance(Duration::from_secs(120)).await;
    let t = t.restart().await;
    t.advance(Duration::from_secs(120)).await;
    let r = ReactorClient::new(&t).unwrap();
    let view = r.state("hostile", "a").await.unwrap();
    assert_eq!(view.state["deep"], json!(0));
    assert_eq!(
        view.state["ticks"],
        json!(0),
        "the failing cycle changed nothing"
    );
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_outbox_and_one_events_output_are_bounded_by_bytes() {
    let t = TestRuntime::memory().await;
    let mut config = ReactorConfig::default();
    config.max_event_output_bytes = 64 * 1024;
    config.max_outbox_bytes = 100 * 1024;
    let r = ReactorClient::with_config(&t, config).unwrap();
    let copy = json!({"type": "copy", "payload": {"var": "event.payload"}});
    r.define(
        "fan",
        json!({"state": {"n": 0},
               "rules": [{"on": "e", "increment": {"n": 1}, "emit": [copy.clone(), copy.clone(), copy]}]}),
    )
    .await
    .unwrap();
    let event = |id: &str, bytes: usize| Event::new(id, "e", json!({"data": "x".repeat(bytes)}));
    // Three copies of 30 KB: more than one event may emit. Refused whole.
    let err = r.send("fan", "a", event("big", 30_000)).await.unwrap_err();
    assert!(matches!(err, ReactorError::Invalid(_)), "{err:?}");
    assert_eq!(r.state("fan", "a").await.unwrap().state, json!({"n": 0}));
    // Three copies of 10 KB fit; the outbox fills by bytes long before its count bound.
    let mut sent = 0;
    let full = loop {
        match r.send("fan", "a", event(&format!("e{sent}"), 10_000)).await {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 10, "the byte bound never held");
    };
    assert!(matches!(full, ReactorError::OutboxFull { .. }), "{full:?}");
    assert_eq!(sent, 3, "three events of about 30 KB fit in 100 KiB");
    // Consumers catch up: room again.
    let last = r.state("fan", "a").await.unwrap().last_seq;
    r.ack("fan", "a", last).await.unwrap();
    assert!(r.send("fan", "a", event("after", 10_000)).await.is_ok());
    t.shutdown().await.unwrap();
}

/// Emits a payload that cannot be JSON (a map with keys that are not strings).
struct Unserializable;

impl stead_reactor::Reactor for Unserializable {
    type State = u64;
    fn on_event(
        &self,
        seen: &mut u64,
        _: &Event,
        out: &mut stead_reactor::Decide,
    ) -> Result<(), stead_reactor::Rejected> {
        *seen += 1;
        let payload: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        out.emit("bad", payload)?;
        Ok(())
    }
}

#[tokio::test]
async fn a_payload_that_cannot_be_json_rejects_the_event() {
    let rt = TestRuntime::memory().await;
    let r = ReactorClient::new(&rt).unwrap();
    r.register("u", Unserializable, stead_reactor::Delivery::pull())
        .unwrap();
    let err = r
        .send("u", "a", Event::new("e-1", "x", json!({})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not serialize"), "{err}");
    // Nothing kept: no command (never a `null` payload), no state, the event not seen.
    let view = r.state("u", "a").await.unwrap();
    assert_eq!((view.pending, view.events), (0, 0));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_past_the_cap_are_refused_not_held() {
    let t = TestRuntime::memory().await;
    let r = ReactorClient::new(&t).unwrap();
    r.define("orders", orders()).await.unwrap();
    let max = stead_core::MAX_PARKED_PER_OBJECT;
    let polls: Vec<_> = (0..=max)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move {
                r.commands("orders", "busy", 0, 10, Duration::from_secs(30))
                    .await
            })
        })
        .collect();
    // One more than the cap: exactly one is refused at once, as an overload to retry.
    stead_fixtures::eventually("one poll refused", || async {
        polls.iter().filter(|p| p.is_finished()).count() == 1
    })
    .await;
    for p in polls {
        if p.is_finished() {
            let err = p.await.unwrap().unwrap_err();
            assert!(
                matches!(
                    err,
                    ReactorError::Runtime(stead_core::Error::Overloaded { .. })
                ),
                "{err:?}"
            );
        } else {
            p.abort();
        }
    }
    t.shutdown().await.unwrap();
}
