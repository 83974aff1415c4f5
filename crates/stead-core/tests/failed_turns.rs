//! A turn whose reply is an error keeps nothing; every turn runs under the ownership its
//! activation holds; names are checked; deletes are blind.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Kind, Op, Probe, ProbeEnv, Sched, Script, ScriptThenFail, Seen, harness};
use proptest::prelude::*;
use stead_core::testing::FaultyBackend;
use stead_core::{Error, MemoryBackend, Runtime, Stub};

fn put(k: &str, v: i64) -> Op {
    Op::Put(k.into(), v)
}

fn list_all() -> Op {
    Op::List {
        prefix: None,
        start: None,
        end: None,
        limit: None,
        reverse: false,
    }
}

async fn entries(o: &Stub<Probe>) -> Vec<(String, i64)> {
    match o
        .ask(Script(vec![list_all()]))
        .await
        .unwrap()
        .unwrap()
        .pop()
    {
        Some(Seen::Entries(e)) => e,
        other => panic!("a list answers entries, not {other:?}"),
    }
}

#[tokio::test]
async fn a_turn_that_answers_an_error_keeps_no_write_alarm_or_schedule() {
    for kind in [Kind::Memory, Kind::Sqlite, Kind::FaultyMemory] {
        let h = harness(kind).await;
        let ns = h.rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
        let o = ns.get_by_name("refuser");
        o.ask(Script(vec![put("a", 1), put("b", 2)]))
            .await
            .unwrap()
            .unwrap();
        let before = entries(&o).await;
        let at = common::start_time() + chrono::Duration::minutes(5);
        for ops in [
            vec![put("a", 10), put("c", 3)],
            vec![Op::Delete("a".into())],
            vec![Op::DeleteAll, put("z", 26)],
        ] {
            let err = o
                .ask(ScriptThenFail {
                    ops,
                    alarm: Some(at),
                    job: Some("nightly".into()),
                })
                .await
                .unwrap()
                .unwrap_err();
            // The caller gets the handler's own error, not a reset.
            assert!(matches!(err, Error::Other(_)), "{kind:?}: {err:?}");
        }
        assert_eq!(entries(&o).await, before, "{kind:?}: storage unchanged");
        assert_eq!(o.ask(common::GetAlarm).await.unwrap().unwrap(), None);
        assert!(
            !o.ask(Sched::Cancel("nightly".into()))
                .await
                .unwrap()
                .unwrap(),
            "{kind:?}: no job was scheduled"
        );
        // Durable too: after a restart of the object nothing of the failed turns shows.
        h.clock.advance(Duration::from_secs(3600)).await;
        assert!(
            ns.env().alarms.lock().unwrap().is_empty(),
            "{kind:?}: no alarm ran"
        );
        assert_eq!(entries(&o).await, before, "{kind:?}");
        assert!(ns.env().jobs.lock().unwrap().is_empty(), "{kind:?}");
        h.rt.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_failed_turn_that_wrote_is_activated_again_from_durable_state() {
    let h = harness(Kind::Memory).await;
    let ns = h.rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let env = ns.env().clone();
    let o = ns.get_by_name("fields");
    o.ask(Script(vec![put("a", 1)])).await.unwrap().unwrap();
    let activations = || env.activations.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(activations(), 1);
    // An error that changed nothing keeps the object in memory; one that wrote drops it
    // (its fields may hold what was discarded).
    for (ops, after) in [(vec![Op::Get("a".into())], 1), (vec![put("a", 2)], 2)] {
        let failing = ScriptThenFail {
            ops,
            alarm: None,
            job: None,
        };
        o.ask(failing).await.unwrap().unwrap_err();
        o.ask(common::WhoAmI).await.unwrap();
        assert_eq!(activations(), after);
    }
    h.rt.shutdown().await.unwrap();
}

/// One step of the property test: a script that commits, or one that fails after running.
#[derive(Debug, Clone)]
enum Step {
    Commit(Vec<Op>),
    Fail(Vec<Op>),
}

fn op() -> impl Strategy<Value = Op> {
    let key = prop::sample::select(vec!["a", "b", "c", "d", "e"]).prop_map(String::from);
    prop_oneof![
        4 => (key.clone(), -50i64..50).prop_map(|(k, v)| Op::Put(k, v)),
        2 => key.clone().prop_map(Op::Delete),
        1 => Just(Op::DeleteAll),
        2 => key.prop_map(Op::Get),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let ops = || prop::collection::vec(op(), 0..6);
    prop_oneof![ops().prop_map(Step::Commit), ops().prop_map(Step::Fail),]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random turns write and then fail at random points; the store always equals a model
    /// in which the failed turns never happened, as seen by later turns, after eviction
    /// and after a restart.
    #[test]
    fn failed_turns_never_happened(steps in prop::collection::vec(step(), 1..24)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let h = harness(Kind::Sqlite).await;
            let ns = h.rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
            let o = ns.get_by_name("model");
            let mut model = BTreeMap::new();
            for s in &steps {
                match s {
                    Step::Commit(ops) => {
                        let want = common::model_apply(&mut model, ops);
                        let got = o.ask(Script(ops.clone())).await.unwrap().unwrap();
                        assert_eq!(got, want);
                    }
                    Step::Fail(ops) => {
                        // Seen within the turn as if it went ahead; then thrown away.
                        let mut scratch = model.clone();
                        common::model_apply(&mut scratch, ops);
                        let r = o.ask(ScriptThenFail { ops: ops.clone(), alarm: None, job: None }).await.unwrap();
                        assert!(r.is_err());
                    }
                }
                let want: Vec<(String, i64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
                assert_eq!(entries(&o).await, want);
            }
            let want: Vec<(String, i64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let dir = h.dir.path().to_path_buf();
            h.rt.shutdown().await.unwrap();
            let rt2 = Runtime::builder().sqlite(&dir).shards(2).build().await.unwrap();
            let o = rt2.namespace::<Probe>(ProbeEnv::default()).unwrap().get_by_name("model");
            assert_eq!(entries(&o).await, want);
            rt2.shutdown().await.unwrap();
        });
    }
}

#[tokio::test]
async fn a_name_that_breaks_the_rule_is_refused_and_creates_nothing() {
    let h = harness(Kind::Memory).await;
    let ns = h.rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    for name in ["", "a\0b", &"x".repeat(4097)] {
        let err = ns
            .get_by_name(name)
            .ask(Script(vec![put("k", 1)]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BadRequest { .. }), "{name:?}: {err:?}");
        assert!(ns.get_by_name(name).tell(common::WhoAmI).is_err());
    }
    assert!(ns.list_objects(None, 10).await.unwrap().objects.is_empty());
    assert_eq!(ns.active_objects(), 0);
    h.rt.shutdown().await.unwrap();
}

/// Two runtimes on one store, as two nodes: the faulty wrapper's epoch is the first one's
/// view of the lease.
async fn two_nodes() -> (Arc<FaultyBackend<Arc<MemoryBackend>>>, Runtime, Runtime) {
    let store = Arc::new(MemoryBackend::new());
    let faulty = Arc::new(FaultyBackend::new(store.clone()));
    faulty.set_epoch(1);
    let clock = Arc::new(stead_core::ManualClock::new(common::start_time()));
    let first = Runtime::builder()
        .backend(faulty.clone())
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    let second = Runtime::builder()
        .backend(store)
        .clock(clock)
        .build()
        .await
        .unwrap();
    (faulty, first, second)
}

#[tokio::test]
async fn a_read_under_a_moved_fence_runs_on_a_fresh_activation_that_reads_afresh() {
    let (faulty, first, second) = two_nodes().await;
    let a = first.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let b = second.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let read = Script(vec![Op::Get("n".into())]);
    let oa = a.get_by_name("moved");
    oa.ask(common::Incr("n".into())).await.unwrap().unwrap();
    assert_eq!(
        oa.ask(Script(vec![Op::Get("n".into())]))
            .await
            .unwrap()
            .unwrap(),
        vec![Seen::Value(Some(1))]
    );
    // The lease moves away: the other node writes. Then it moves back (epoch 3).
    faulty.set_epoch(2);
    b.get_by_name("moved")
        .ask(common::Incr("n".into()))
        .await
        .unwrap()
        .unwrap();
    faulty.set_epoch(3);
    // A read-only turn after the move is never served from the old activation's memory:
    // the object is dropped and the turn runs on a fresh activation, which reads the store.
    assert_eq!(
        oa.ask(read).await.unwrap().unwrap(),
        vec![Seen::Value(Some(2))],
        "the new activation reads the store, not the old cache"
    );
    assert_eq!(oa.ask(common::Incr("n".into())).await.unwrap().unwrap(), 3);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panic_then_a_new_fence_reactivates_with_a_fresh_cache() {
    let (faulty, first, second) = two_nodes().await;
    let a = first.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let b = second.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let oa = a.get_by_name("panicky");
    oa.ask(common::Incr("n".into())).await.unwrap().unwrap();
    // The object panics (its instance is dropped, its cache stays), the lease moves and the
    // other node writes, the lease comes back.
    let _ = oa.ask(common::PutThenPanic(vec!["x".into()])).await;
    faulty.set_epoch(2);
    b.get_by_name("panicky")
        .ask(common::Incr("n".into()))
        .await
        .unwrap()
        .unwrap();
    faulty.set_epoch(3);
    // The re-activation under the new token computes from the store (2), not the cache (1).
    assert_eq!(oa.ask(common::Incr("n".into())).await.unwrap().unwrap(), 3);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_delete_reads_nothing() {
    let h = harness(Kind::FaultyMemory).await;
    let faulty = h.faulty.clone().unwrap();
    let ns = h.rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let o = ns.get_by_name("blind");
    // More entries than an activation reads whole: its cache is not complete.
    let keys: Vec<String> = (0..100).map(|i| format!("k{i:03}")).collect();
    o.ask(Script(keys.iter().map(|k| put(k, 1)).collect()))
        .await
        .unwrap()
        .unwrap();
    // Out of memory and back: the new activation has read only what it needed.
    h.clock.advance(Duration::from_secs(61)).await;
    o.ask(common::WhoAmI).await.unwrap();
    // With every read of the store failing, deleting keys it never read still works: a
    // delete sends no read to the store.
    faulty.fail_reads(true);
    o.ask(common::DeleteKeys(keys[..50].to_vec()))
        .await
        .unwrap()
        .unwrap();
    faulty.fail_reads(false);
    let left = entries(&o).await;
    assert_eq!(left.len(), 50);
    assert_eq!(left[0].0, "k050");
    h.rt.shutdown().await.unwrap();
}
