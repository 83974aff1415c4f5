//! The conformance cases: each takes a [`Harness`] (a runtime on the backend under test)
//! and checks one group of promises. [`conformance!`](crate::conformance) runs them all.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::probe::*;
use super::{Harness, Setup, start_time};
use crate::{Clock, Error, Namespace};

fn probes(h: &Harness) -> (Namespace<Probe>, Arc<ProbeEnv>) {
    let ns = h.rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let env = ns.env().clone();
    (ns, env)
}

pub async fn read_your_writes(h: Harness) {
    let (ns, _) = probes(&h);
    let o = ns.get_by_name("ryw");
    let seen = o
        .ask(Script(vec![
            Op::Put("a".into(), 1),
            Op::Get("a".into()),
            Op::Delete("a".into()),
            Op::Get("a".into()),
            Op::Delete("a".into()),
            Op::Put("b".into(), 2),
        ]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        vec![
            Seen::Nothing,
            Seen::Value(Some(1)),
            Seen::Existed(true),
            Seen::Value(None),
            Seen::Existed(false),
            Seen::Nothing
        ]
    );
    let seen = o
        .ask(Script(vec![Op::Get("b".into()), Op::Get("a".into())]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec![Seen::Value(Some(2)), Seen::Value(None)]);
    h.rt.shutdown().await.unwrap();
}

pub async fn panic_discards_the_whole_turn(h: Harness) {
    let (ns, env) = probes(&h);
    let o = ns.get_by_name("atomic");
    o.ask(Script(vec![Op::Put("before".into(), 7)]))
        .await
        .unwrap()
        .unwrap();
    let err = o
        .ask(PutThenPanic(vec!["x".into(), "y".into(), "z".into()]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Panicked { ref message } if message.contains("deliberate")),
        "{err}"
    );
    let seen = o
        .ask(Script(vec![
            Op::Get("x".into()),
            Op::Get("y".into()),
            Op::Get("z".into()),
            Op::Get("before".into()),
        ]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        vec![
            Seen::Value(None),
            Seen::Value(None),
            Seen::Value(None),
            Seen::Value(Some(7))
        ]
    );
    // The object was activated again after the panic; the runtime lives on.
    assert_eq!(env.activations.load(Ordering::SeqCst), 2);
    assert_eq!(
        ns.get_by_name("other")
            .ask(Incr("k".into()))
            .await
            .unwrap()
            .unwrap(),
        1
    );
    h.rt.shutdown().await.unwrap();
}

pub async fn rollback_discards_earlier_writes_of_the_turn(h: Harness) {
    let (ns, _) = probes(&h);
    let o = ns.get_by_name("rb");
    o.ask(PutRollbackPut).await.unwrap().unwrap();
    let seen = o
        .ask(Script(vec![
            Op::Get("discarded".into()),
            Op::Get("kept".into()),
        ]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec![Seen::Value(None), Seen::Value(Some(2))]);
    h.rt.shutdown().await.unwrap();
}

pub async fn turns_are_serial_under_concurrent_callers(h: Harness) {
    let (ns, _) = probes(&h);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let o = ns.get_by_name("hot");
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..50 {
                seen.push(o.ask(Incr("n".into())).await.unwrap().unwrap());
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=3200).collect::<Vec<i64>>(),
        "every increment seen exactly once"
    );
    let seen = ns
        .get_by_name("hot")
        .ask(Script(vec![Op::Get("n".into())]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec![Seen::Value(Some(3200))]);
    h.rt.shutdown().await.unwrap();
}

pub async fn keys_and_values_are_validated(h: Harness) {
    let (ns, _) = probes(&h);
    let o = ns.get_by_name("limits");
    for bad in ["", "\0internal"] {
        let err = o
            .ask(Script(vec![Op::Put(bad.into(), 1)]))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{bad:?}: {err}");
    }
    let long = "k".repeat(2049);
    let err = o
        .ask(Script(vec![Op::Get(long)]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }));
    o.ask(Script(vec![Op::Put("k".repeat(2048), 1)]))
        .await
        .unwrap()
        .unwrap();
    let err = o
        .ask(PutBytes("big".into(), 200 * 1024))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, Error::ValueTooLarge { max: 131072, .. }),
        "{err}"
    );
    o.ask(PutBytes("fits".into(), 100 * 1024))
        .await
        .unwrap()
        .unwrap();
    let v = o
        .ask(GetJson("fits".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(v.as_str().unwrap().len(), 100 * 1024, "never truncated");
    h.rt.shutdown().await.unwrap();
}

pub async fn delete_all_removes_keys_alarm_and_registry_entry(h: Harness) {
    let (ns, env) = probes(&h);
    let o = ns.get_by_name("wipe");
    o.ask(Script(vec![Op::Put("a".into(), 1), Op::Put("b".into(), 2)]))
        .await
        .unwrap()
        .unwrap();
    o.ask(SetAlarm(start_time() + chrono::Duration::seconds(10)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ns.list_objects(None, 10).await.unwrap().objects.len(), 1);
    let seen = o
        .ask(Script(vec![
            Op::DeleteAll,
            Op::Get("a".into()),
            Op::Put("c".into(), 3),
        ]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen[1], Seen::Value(None));
    o.ask(Script(vec![Op::DeleteAll])).await.unwrap().unwrap();
    assert_eq!(o.ask(GetAlarm).await.unwrap().unwrap(), None);
    h.clock.advance(Duration::from_secs(20)).await;
    assert!(
        env.alarms.lock().unwrap().is_empty(),
        "a deleted alarm never fires"
    );
    let all = o
        .ask(Script(vec![Op::List {
            prefix: None,
            start: None,
            end: None,
            limit: None,
            reverse: false,
        }]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all, vec![Seen::Entries(vec![])]);
    assert!(ns.list_objects(None, 10).await.unwrap().objects.is_empty());
    h.rt.shutdown().await.unwrap();
}

pub async fn registry_lists_objects_with_names(h: Harness) {
    let (ns, _) = probes(&h);
    let mut names: Vec<String> = (0..25).map(|i| format!("obj-{i}")).collect();
    for n in &names {
        ns.get_by_name(n)
            .ask(Incr("k".into()))
            .await
            .unwrap()
            .unwrap();
    }
    // An object that never wrote is not listed.
    ns.get_by_name("reader").ask(WhoAmI).await.unwrap();
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = ns.list_objects(cursor.as_deref(), 10).await.unwrap();
        pages += 1;
        for o in &page.objects {
            assert_eq!(o.id, ns.id_from_name(o.name.as_deref().unwrap()));
        }
        listed.extend(page.objects.into_iter().map(|o| o.name.unwrap()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    listed.sort();
    names.sort();
    assert_eq!(listed, names);
    assert!(matches!(
        ns.list_objects(Some("nope"), 10).await,
        Err(Error::InvalidId)
    ));
    h.rt.shutdown().await.unwrap();
}

pub async fn identity_is_known_inside_the_object(h: Harness) {
    let (ns, _) = probes(&h);
    let (name, id, _) = ns.get_by_name("alice").ask(WhoAmI).await.unwrap();
    assert_eq!(name.as_deref(), Some("alice"));
    assert_eq!(id, ns.id_from_name("alice").to_string());
    let anon = ns.unique_id();
    let (name, id, _) = ns.get(anon).ask(WhoAmI).await.unwrap();
    assert_eq!(name, None);
    assert_eq!(id, anon.to_string());
    h.rt.shutdown().await.unwrap();
}

pub async fn alarms_fire_once_after_their_time(h: Harness) {
    let (ns, env) = probes(&h);
    let o = ns.get_by_name("wake-me");
    let at = start_time() + chrono::Duration::seconds(10);
    o.ask(SetAlarm(at)).await.unwrap().unwrap();
    assert_eq!(o.ask(GetAlarm).await.unwrap().unwrap(), Some(at));
    h.clock.advance(Duration::from_secs(9)).await;
    assert!(env.alarms.lock().unwrap().is_empty(), "not before its time");
    h.clock.advance(Duration::from_secs(1)).await;
    {
        let fired = env.alarms.lock().unwrap();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].0, "wake-me");
        assert_eq!(fired[0].1.scheduled_at, at);
        assert_eq!(fired[0].1.retry_count, 0);
    }
    assert_eq!(o.ask(GetAlarm).await.unwrap().unwrap(), None);
    h.clock.advance(Duration::from_secs(60)).await;
    assert_eq!(env.alarms.lock().unwrap().len(), 1, "delivered once");
    // A replaced alarm fires at its new time only; a deleted one never.
    o.ask(SetAlarm(h.clock.now() + chrono::Duration::seconds(5)))
        .await
        .unwrap()
        .unwrap();
    o.ask(SetAlarm(h.clock.now() + chrono::Duration::seconds(50)))
        .await
        .unwrap()
        .unwrap();
    h.clock.advance(Duration::from_secs(10)).await;
    assert_eq!(env.alarms.lock().unwrap().len(), 1);
    h.clock.advance(Duration::from_secs(40)).await;
    assert_eq!(env.alarms.lock().unwrap().len(), 2);
    o.ask(SetAlarm(h.clock.now() + chrono::Duration::seconds(5)))
        .await
        .unwrap()
        .unwrap();
    o.ask(DeleteAlarm).await.unwrap();
    h.clock.advance(Duration::from_secs(10)).await;
    assert_eq!(env.alarms.lock().unwrap().len(), 2);
    h.rt.shutdown().await.unwrap();
}

pub async fn alarms_wake_evicted_objects(h: Harness) {
    let (ns, env) = probes(&h);
    let o = ns.get_by_name("sleeper");
    o.ask(SetAlarm(start_time() + chrono::Duration::seconds(600)))
        .await
        .unwrap()
        .unwrap();
    h.clock.advance(Duration::from_secs(120)).await;
    assert_eq!(h.rt.active_objects(), 0, "evicted after the idle timeout");
    h.clock.advance(Duration::from_secs(480)).await;
    assert_eq!(env.alarms.lock().unwrap().len(), 1);
    assert_eq!(env.activations.load(Ordering::SeqCst), 2);
    h.rt.shutdown().await.unwrap();
}

pub async fn schedules_run_once_interval_and_cron(h: Harness) {
    let (ns, env) = probes(&h);
    let o = ns.get_by_name("jobs");
    o.ask(Sched::Every("tick".into(), Duration::from_secs(10)))
        .await
        .unwrap()
        .unwrap();
    o.ask(Sched::Cron("five".into(), "*/5 * * * *".into()))
        .await
        .unwrap()
        .unwrap();
    o.ask(Sched::Once(
        "once".into(),
        start_time() + chrono::Duration::seconds(15),
    ))
    .await
    .unwrap()
    .unwrap();
    let err = o
        .ask(Sched::Cron("bad".into(), "61 * * * *".into()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { .. }), "{err}");
    let names = |env: &ProbeEnv| -> Vec<String> {
        env.jobs
            .lock()
            .unwrap()
            .iter()
            .map(|(_, j)| j.name.clone())
            .collect()
    };
    h.clock.advance(Duration::from_secs(10)).await;
    assert_eq!(names(&env), vec!["tick"]);
    h.clock.advance(Duration::from_secs(5)).await;
    assert_eq!(names(&env), vec!["tick", "once"]);
    // The manual clock steps through every instant on the way: one run per period passed,
    // each at its own time.
    h.clock.advance(Duration::from_secs(35)).await;
    assert_eq!(
        names(&env),
        vec!["tick", "once", "tick", "tick", "tick", "tick"]
    );
    let ticks: Vec<String> = env
        .jobs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, j)| j.name == "tick")
        .map(|(_, j)| j.scheduled_at.format("%M:%S").to_string())
        .collect();
    assert_eq!(ticks, ["00:10", "00:20", "00:30", "00:40", "00:50"]);
    // Cron fires at 00:05:00.
    h.clock.advance(Duration::from_secs(250)).await;
    let got = names(&env);
    assert!(got.contains(&"five".to_string()), "{got:?}");
    let five = env
        .jobs
        .lock()
        .unwrap()
        .iter()
        .find(|(_, j)| j.name == "five")
        .unwrap()
        .1
        .clone();
    assert_eq!(five.scheduled_at.to_rfc3339(), "2026-01-01T00:05:00+00:00");
    assert!(o.ask(Sched::Cancel("tick".into())).await.unwrap().unwrap());
    assert!(!o.ask(Sched::Cancel("tick".into())).await.unwrap().unwrap());
    let before = names(&env).iter().filter(|n| *n == "tick").count();
    h.clock.advance(Duration::from_secs(100)).await;
    let after = names(&env).iter().filter(|n| *n == "tick").count();
    assert_eq!(before, after, "a cancelled job does not run");
    assert_eq!(names(&env).iter().filter(|n| *n == "once").count(), 1);
    // Schedules and the user's alarm share the one alarm without disturbing each other.
    o.ask(SetAlarm(h.clock.now() + chrono::Duration::seconds(30)))
        .await
        .unwrap()
        .unwrap();
    h.clock.advance(Duration::from_secs(30)).await;
    assert_eq!(env.alarms.lock().unwrap().len(), 1);
    h.rt.shutdown().await.unwrap();
}

pub async fn deferred_replies_wait_for_a_later_turn(h: Harness) {
    let (ns, _) = probes(&h);
    let o = ns.get_by_name("poll");
    let a = tokio::spawn({
        let o = o.clone();
        async move { o.ask(Park).await }
    });
    let b = tokio::spawn({
        let o = o.clone();
        async move { o.ask(Park).await }
    });
    // Both parked before the wake: a script turn runs after them in FIFO order.
    while o.ask(WhoAmI).await.unwrap().2 < 1 {}
    let mut woken = 0;
    for _ in 0..100 {
        woken = o.ask(Wake("hello".into())).await.unwrap().unwrap();
        if woken > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(woken >= 1);
    if woken == 1 {
        o.ask(Wake("hello".into())).await.unwrap().unwrap();
    }
    assert_eq!(a.await.unwrap().unwrap(), "hello");
    assert_eq!(b.await.unwrap().unwrap(), "hello");
    h.rt.shutdown().await.unwrap();
}

pub async fn list_agrees_with_a_model(setup: &Setup) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let key = prop::sample::select(vec![
        "a",
        "ab",
        "abc",
        "b",
        "ba",
        "bb",
        "c",
        "é",
        "z\u{10FFFF}",
        "z",
    ])
    .prop_map(String::from);
    let bound = prop::option::of(key.clone());
    let op = prop_oneof![
        4 => (key.clone(), 0i64..100).prop_map(|(k, v)| Op::Put(k, v)),
        2 => key.clone().prop_map(Op::Delete),
        1 => key.clone().prop_map(Op::Get),
        3 => (prop::option::of(prop::sample::select(vec!["a", "b", "z", "", "é"]).prop_map(String::from)),
              bound.clone(), bound, prop::option::of(0usize..6), any::<bool>())
            .prop_map(|(prefix, start, end, limit, reverse)| Op::List { prefix, start, end, limit, reverse }),
    ];
    let phase = prop::collection::vec(op, 0..12);
    let phases = (
        phase.clone(),
        phase.clone(),
        phase.clone(),
        phase,
        any::<bool>(),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    let result = runner.run(&phases, |(mut a, mut b, c, d, wipe, bulk)| {
        if wipe {
            b.insert(b.len() / 2, Op::DeleteAll);
        }
        if bulk {
            // More entries than an object that is read whole at activation may have.
            a.splice(0..0, (0..70).map(|i| Op::Put(format!("f{i:02}"), i)));
        }
        let (a2, b2, c2, d2) = (a.clone(), b.clone(), c.clone(), d.clone());
        let got = std::thread::scope(|s| {
            s.spawn(|| {
                handle.block_on(async {
                    let h = Harness::start_with(setup, |b| {
                        b.cache_bytes_per_object(if bulk { 4096 } else { 256 })
                            .idle_timeout(std::time::Duration::from_secs(1))
                    })
                    .await;
                    let ns = h.rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
                    let o = ns.get_by_name("model");
                    let ra = o.ask(Script(a2)).await.unwrap().unwrap();
                    // b is still in flight (unacknowledged) while c runs.
                    let (rb, rc) = tokio::join!(o.ask(Script(b2)), o.ask(Script(c2)));
                    // d runs in a new activation, which reads what is stored afresh.
                    h.clock.advance(std::time::Duration::from_secs(5)).await;
                    assert_eq!(ns.active_objects(), 0, "the object left memory");
                    let rd = o.ask(Script(d2)).await.unwrap().unwrap();
                    assert_eq!(
                        ns.env()
                            .activations
                            .load(std::sync::atomic::Ordering::SeqCst),
                        2
                    );
                    h.rt.shutdown().await.unwrap();
                    (ra, rb.unwrap().unwrap(), rc.unwrap().unwrap(), rd)
                })
            })
            .join()
            .unwrap()
        });
        let mut model = BTreeMap::new();
        let want = (
            model_apply(&mut model, &a),
            model_apply(&mut model, &b),
            model_apply(&mut model, &c),
            model_apply(&mut model, &d),
        );
        prop_assert_eq!(got, want);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn stmt(sql: &str, params: Vec<crate::SqlValue>) -> (String, Vec<crate::SqlValue>) {
    (sql.to_owned(), params)
}

fn rows_of(out: &[SqlOutcome]) -> Vec<Vec<crate::SqlValue>> {
    match out.last() {
        Some(Ok((_, rows))) => rows.clone(),
        other => panic!("the last statement answers rows, not {other:?}"),
    }
}

pub async fn sql_commits_with_the_turn(h: Harness) {
    use crate::SqlValue::{Integer, Text};
    let ns = h.rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let o = ns.get_by_name("sql");
    let out = o
        .ask(SqlScript(vec![
            stmt(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
                vec![],
            ),
            stmt(
                "INSERT INTO t (name) VALUES (?1), (?2)",
                vec![Text("a".into()), Text("b".into())],
            ),
        ]))
        .await
        .unwrap()
        .unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    // A turn that answers an error, and one that panics, keep none of their SQL changes
    // (nor their key-value writes).
    let failing = vec![
        stmt("INSERT INTO t (name) VALUES ('c')", vec![]),
        stmt("UPDATE t SET name = 'changed'", vec![]),
        stmt("CREATE TABLE u (x)", vec![]),
    ];
    o.ask(SqlScriptThenFail(failing.clone()))
        .await
        .unwrap()
        .unwrap_err();
    o.ask(SqlScriptThenPanic(failing)).await.unwrap_err();
    let select = || SqlScript(vec![stmt("SELECT id, name FROM t ORDER BY id", vec![])]);
    let want = vec![
        vec![Integer(1), Text("a".into())],
        vec![Integer(2), Text("b".into())],
    ];
    assert_eq!(rows_of(&o.ask(select()).await.unwrap().unwrap()), want);
    let tables = o
        .ask(SqlScript(vec![stmt(
            "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name",
            vec![],
        )]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows_of(&tables), vec![vec![Text("t".into())]]);
    // SQL and key-value writes of one turn are one transaction.
    o.ask(Script(vec![Op::Put("kv".into(), 1)]))
        .await
        .unwrap()
        .unwrap();
    // A failed statement fails alone: the turn goes on and keeps the others.
    let out = o
        .ask(SqlScript(vec![
            stmt("INSERT INTO t (name) VALUES (NULL)", vec![]),
            stmt("INSERT INTO t (name) VALUES ('c')", vec![]),
        ]))
        .await
        .unwrap()
        .unwrap();
    assert!(out[0].as_ref().unwrap_err().contains("NOT NULL"), "{out:?}");
    assert!(out[1].is_ok());
    // Read back by a new activation, from the store.
    h.clock.advance(Duration::from_secs(120)).await;
    assert_eq!(ns.active_objects(), 0, "the object left memory");
    let mut want = want;
    want.push(vec![Integer(3), Text("c".into())]);
    assert_eq!(rows_of(&o.ask(select()).await.unwrap().unwrap()), want);
    assert_eq!(
        o.ask(Script(vec![Op::Get("kv".into())]))
            .await
            .unwrap()
            .unwrap(),
        vec![Seen::Value(Some(1))]
    );
    // Another object has a database of its own.
    let other = ns.get_by_name("sql-other");
    let out = other.ask(select()).await.unwrap().unwrap();
    assert!(
        out[0].as_ref().unwrap_err().contains("no such table"),
        "{out:?}"
    );
    h.rt.shutdown().await.unwrap();
}

pub async fn sql_is_deleted_with_the_object(h: Harness) {
    let ns = h.rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let o = ns.get_by_name("sql-deleted");
    o.ask(SqlScript(vec![
        stmt("CREATE TABLE t (x)", vec![]),
        stmt("INSERT INTO t VALUES (zeroblob(50000))", vec![]),
    ]))
    .await
    .unwrap()
    .unwrap();
    let schema = || SqlScript(vec![stmt("SELECT count(*) FROM sqlite_schema", vec![])]);
    let one = vec![vec![crate::SqlValue::Integer(1)]];
    assert_eq!(rows_of(&o.ask(schema()).await.unwrap().unwrap()), one);
    o.ask(Script(vec![Op::DeleteAll])).await.unwrap().unwrap();
    let none = vec![vec![crate::SqlValue::Integer(0)]];
    assert_eq!(rows_of(&o.ask(schema()).await.unwrap().unwrap()), none);
    h.clock.advance(Duration::from_secs(120)).await;
    assert_eq!(rows_of(&o.ask(schema()).await.unwrap().unwrap()), none);
    h.rt.shutdown().await.unwrap();
}

/// Random SQL workloads, applied turn by turn to an object and to a plain SQLite database
/// (each turn in a transaction there too, a failing turn rolled back): every statement
/// answers the same, through evictions (the database read back from the store), pipelined
/// turns and failed turns.
pub async fn sql_agrees_with_plain_sqlite(h: Harness) {
    use rand::{RngExt, SeedableRng};
    use std::sync::atomic::Ordering::Relaxed;
    let ns = h.rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let (ok0, err0) = (AGREED_OK.load(Relaxed), AGREED_ERR.load(Relaxed));
    for seed in 0..4u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let o = ns.get_by_name(&format!("differential-{seed}"));
        let plain = rusqlite::Connection::open_in_memory().unwrap();
        plain.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        for turn in 0..40 {
            let script: Vec<_> = (0..rng.random_range(1..6))
                .map(|_| random_statement(&mut rng))
                .collect();
            let fail = rng.random_ratio(1, 8);
            let want = plain_turn(&plain, &script, fail);
            let got = if fail {
                o.ask(SqlScriptThenFail(script.clone()))
                    .await
                    .unwrap()
                    .unwrap_err();
                None
            } else if rng.random_ratio(1, 4) {
                // Two turns in flight at once: the second runs before the first is durable.
                let extra = vec![random_statement(&mut rng)];
                let want_extra = plain_turn(&plain, &extra, false);
                let (a, b) = tokio::join!(
                    o.ask(SqlScript(script.clone())),
                    o.ask(SqlScript(extra.clone()))
                );
                compare(
                    seed,
                    turn,
                    &extra,
                    &b.unwrap().unwrap(),
                    want_extra.as_ref().unwrap(),
                );
                Some(a.unwrap().unwrap())
            } else {
                Some(o.ask(SqlScript(script.clone())).await.unwrap().unwrap())
            };
            if let (Some(got), Some(want)) = (got, want) {
                compare(seed, turn, &script, &got, &want[..]);
            }
            if rng.random_ratio(1, 6) {
                h.clock.advance(Duration::from_secs(120)).await;
                assert_eq!(ns.active_objects(), 0, "the object left memory");
            }
        }
        // Everything, compared at the end.
        let dump = vec![stmt(
            "SELECT type, name, sql FROM sqlite_schema ORDER BY name",
            vec![],
        )];
        let got = o.ask(SqlScript(dump.clone())).await.unwrap().unwrap();
        compare(
            seed,
            999,
            &dump,
            &got,
            &plain_turn(&plain, &dump, false).unwrap(),
        );
        let all = vec![stmt("SELECT * FROM w ORDER BY k", vec![])];
        let got = o.ask(SqlScript(all.clone())).await.unwrap().unwrap();
        compare(
            seed,
            998,
            &all,
            &got,
            &plain_turn(&plain, &all, false).unwrap(),
        );
        for t in 0..3 {
            let all = vec![stmt(&format!("SELECT * FROM t{t} ORDER BY id"), vec![])];
            let got = o.ask(SqlScript(all.clone())).await.unwrap().unwrap();
            compare(
                seed,
                1000 + t,
                &all,
                &got,
                &plain_turn(&plain, &all, false).unwrap(),
            );
        }
    }
    // The workload does things: most statements succeed (the counters are shared by the
    // backends' tests of one binary, so this run's own figures are at least these).
    let (ok, err) = (
        AGREED_OK.load(Relaxed) - ok0,
        AGREED_ERR.load(Relaxed) - err0,
    );
    assert!(
        ok > 200 && ok > err,
        "{ok} statements answered, {err} failed alike"
    );
    eprintln!("differential: {ok} statements answered alike, {err} failed alike");
    h.rt.shutdown().await.unwrap();
}

/// Statements the differential test compared: answered, and failed alike on both sides.
static AGREED_OK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static AGREED_ERR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn compare(
    seed: u64,
    turn: usize,
    script: &[(String, Vec<crate::SqlValue>)],
    got: &[SqlOutcome],
    want: &[SqlOutcome],
) {
    assert_eq!(got.len(), want.len());
    for ((s, (g, w)), i) in script.iter().zip(got.iter().zip(want)).zip(0..) {
        let counter = if g.is_ok() { &AGREED_OK } else { &AGREED_ERR };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match (g, w) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "seed {seed} turn {turn} statement {i}: {s:?}"),
            (Err(_), Err(_)) => {}
            _ => panic!(
                "seed {seed} turn {turn} statement {i}: {s:?}: the object answered {g:?}, plain SQLite {w:?}"
            ),
        }
    }
}

/// A turn on the plain database: its statements in one transaction, rolled back when the
/// turn fails (then no outcome).
fn plain_turn(
    db: &rusqlite::Connection,
    script: &[(String, Vec<crate::SqlValue>)],
    fail: bool,
) -> Option<Vec<SqlOutcome>> {
    db.execute_batch("BEGIN").unwrap();
    let mut out = Vec::new();
    for (sql, params) in script {
        let r = (|| {
            let mut st = db.prepare(sql)?;
            let columns: Vec<String> = st.column_names().map(str::to_owned).collect();
            for (i, p) in params.iter().enumerate() {
                st.raw_bind_parameter(i + 1, crate::sql::as_sql(p))?;
            }
            let mut rows = Vec::new();
            let mut q = st.raw_query();
            while let Some(r) = q.next()? {
                let mut row = Vec::new();
                for i in 0..columns.len() {
                    row.push(crate::sql::value_of(r.get_ref(i)?));
                }
                rows.push(row);
            }
            Ok::<_, rusqlite::Error>((columns, rows))
        })();
        out.push(r.map_err(|e| e.to_string()));
    }
    if fail {
        db.execute_batch("ROLLBACK").unwrap();
        None
    } else {
        db.execute_batch("COMMIT").unwrap();
        Some(out)
    }
}

fn random_value(rng: &mut rand::rngs::StdRng) -> crate::SqlValue {
    use crate::SqlValue::*;
    use rand::RngExt;
    match rng.random_range(0..10) {
        0 => Null,
        1 => Integer(
            *[i64::MIN, i64::MAX, -1, 0, 1 << 53, (1 << 53) + 1]
                .get(rng.random_range(0..6))
                .unwrap(),
        ),
        2 | 3 => Integer(rng.random_range(-50..50)),
        4 => Real(rng.random_range(-1e6..1e6)),
        5 => Text(["", "é", "a'b", "NULL", "日本語"][rng.random_range(0..5)].to_owned()),
        6 => Text("x".repeat(rng.random_range(0..3000))),
        7 => Blob(vec![rng.random(); rng.random_range(0..9000)]),
        _ => Integer(rng.random_range(0..20)),
    }
}

fn random_statement(rng: &mut rand::rngs::StdRng) -> (String, Vec<crate::SqlValue>) {
    use rand::RngExt;
    let t = rng.random_range(0..3);
    let v = |rng: &mut rand::rngs::StdRng| random_value(rng);
    let k = |rng: &mut rand::rngs::StdRng| {
        crate::SqlValue::Text(["x", "y", "z", "t0", "t1"][rng.random_range(0..5)].to_owned())
    };
    match rng.random_range(0..30) {
        0 | 1 => stmt(
            &format!(
                "CREATE TABLE IF NOT EXISTS t{t} (id INTEGER PRIMARY KEY, a, b TEXT, c BLOB, d REAL, UNIQUE (a, d))"
            ),
            vec![],
        ),
        2 => stmt(&format!("DROP TABLE IF EXISTS t{t}"), vec![]),
        3 => stmt(
            &format!(
                "ALTER TABLE t{t} ADD COLUMN e{} INTEGER DEFAULT 7",
                rng.random_range(0..3)
            ),
            vec![],
        ),
        4 => stmt(
            &format!("CREATE INDEX IF NOT EXISTS i{t} ON t{t} (b, a)"),
            vec![],
        ),
        5..=8 => stmt(
            &format!("INSERT INTO t{t} (a, b, c, d) VALUES (?, ?, ?, ?)"),
            vec![v(rng), v(rng), v(rng), v(rng)],
        ),
        9 => stmt(
            &format!("INSERT INTO t{t} (id, a) VALUES (?, ?)"),
            vec![crate::SqlValue::Integer(rng.random_range(1..30)), v(rng)],
        ),
        10 => stmt(
            &format!(
                "INSERT INTO t{t} (a, b) SELECT x, printf('%d-%s', x, ?) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) SELECT x FROM c)"
            ),
            vec![v(rng), crate::SqlValue::Integer(rng.random_range(0..400))],
        ),
        11 => stmt(
            &format!("UPDATE t{t} SET a = a + ?, b = ? WHERE id % 3 = ?"),
            vec![
                v(rng),
                v(rng),
                crate::SqlValue::Integer(rng.random_range(0..3)),
            ],
        ),
        12 => stmt(
            &format!("DELETE FROM t{t} WHERE a < ? OR id % 5 = 0"),
            vec![v(rng)],
        ),
        13 => stmt(&format!("DELETE FROM t{t}"), vec![]),
        14 => stmt("SAVEPOINT s", vec![]),
        15 => stmt(
            if rng.random() {
                "ROLLBACK TO s"
            } else {
                "RELEASE s"
            },
            vec![],
        ),
        16 => stmt(
            &format!(
                "SELECT a, count(*), sum(length(c)), max(d) FROM t{t} GROUP BY a ORDER BY a NULLS FIRST"
            ),
            vec![],
        ),
        17 => stmt(
            &format!("SELECT * FROM t{t} WHERE b IS NULL OR a > ? ORDER BY id DESC LIMIT 20"),
            vec![v(rng)],
        ),
        18 => stmt(
            "CREATE TABLE IF NOT EXISTS w (k TEXT PRIMARY KEY, n INTEGER NOT NULL CHECK (n >= 0)) WITHOUT ROWID",
            vec![],
        ),
        19 => stmt(
            "INSERT INTO w (k, n) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET n = n + excluded.n",
            vec![k(rng), crate::SqlValue::Integer(rng.random_range(-3..10))],
        ),
        20 => stmt(
            &format!(
                "CREATE TRIGGER IF NOT EXISTS g{t} AFTER INSERT ON t{t} BEGIN \
                 INSERT INTO w (k, n) VALUES ('t{t}', 1) ON CONFLICT (k) DO UPDATE SET n = n + 1; END"
            ),
            vec![],
        ),
        21 => stmt(
            &format!(
                "CREATE VIEW IF NOT EXISTS v{t} AS SELECT a, count(*) AS n FROM t{t} GROUP BY a"
            ),
            vec![],
        ),
        22 => stmt(
            &format!("SELECT * FROM v{t} ORDER BY a NULLS FIRST"),
            vec![],
        ),
        23 => stmt("SELECT k, n FROM w ORDER BY k", vec![]),
        24 => stmt(&format!("ALTER TABLE t{t} RENAME TO t{t}x"), vec![]),
        25 => stmt(&format!("ALTER TABLE t{t}x RENAME TO t{t}"), vec![]),
        26 => stmt(
            &format!("SELECT json_object('a', a, 'b', b) FROM t{t} ORDER BY id LIMIT 5"),
            vec![],
        ),
        27 => stmt(
            &if rng.random() {
                format!("DROP TRIGGER IF EXISTS g{t}")
            } else {
                format!("DROP VIEW IF EXISTS v{t}")
            },
            vec![],
        ),
        _ => stmt(
            &format!("SELECT id, a, b, c, d FROM t{t} ORDER BY id"),
            vec![],
        ),
    }
}
