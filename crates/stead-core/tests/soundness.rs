//! Faults found by trying the runtime as a new user would: each test here failed before the
//! fix it names.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Incr, Park, Probe, ProbeEnv, SetAlarm, start_time};
use serde::{Deserialize, Serialize};
use stead_core::{
    AlarmInfo, Context, Durability, DurableObject, Error, Handler, ManualClock, Namespace, Result,
    Runtime, RuntimeBuilder, ScheduledJob,
};

/// An object whose activation reads nothing, so that a handler's schedule write is the
/// first storage access of the activation.
struct Lazy {
    env: Arc<LazyEnv>,
}

#[derive(Default)]
struct LazyEnv {
    /// What ran: "alarm" or the job's name, with the retry count.
    ran: Mutex<Vec<(String, u32)>>,
    /// Jobs (or "alarm") that fail whenever they run.
    failing: Mutex<HashSet<String>>,
}

impl LazyEnv {
    fn ran(&self, what: &str) -> Vec<u32> {
        self.ran
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| w == what)
            .map(|(_, r)| *r)
            .collect()
    }
}

impl DurableObject for Lazy {
    const CLASS: &'static str = "lazy";
    type Env = LazyEnv;

    async fn activate(_ctx: &mut Context, env: Arc<LazyEnv>) -> Result<Self> {
        Ok(Lazy { env })
    }

    async fn alarm(&mut self, ctx: &mut Context, info: AlarmInfo) -> Result<()> {
        self.env
            .ran
            .lock()
            .unwrap()
            .push(("alarm".into(), info.retry_count));
        ctx.storage().put("alarm-ran", &true)?;
        if self.env.failing.lock().unwrap().contains("alarm") {
            return Err(Error::other(std::io::Error::other("alarm fails")));
        }
        Ok(())
    }

    async fn on_schedule(&mut self, ctx: &mut Context, job: ScheduledJob) -> Result<()> {
        self.env
            .ran
            .lock()
            .unwrap()
            .push((job.name.clone(), job.retry_count));
        ctx.storage().put(&format!("ran-{}", job.name), &true)?;
        if self.env.failing.lock().unwrap().contains(&job.name) {
            return Err(Error::other(std::io::Error::other("job fails")));
        }
        Ok(())
    }
}

/// Schedules jobs every `secs` and, optionally, an alarm, in one turn.
#[derive(Serialize, Deserialize)]
struct Plan {
    jobs: Vec<(String, u64)>,
    alarm_in_secs: Option<i64>,
    alarm_first: bool,
}

impl Handler<Plan> for Lazy {
    type Reply = Result<()>;
    async fn handle(&mut self, plan: Plan, ctx: &mut Context) -> Result<()> {
        let alarm = plan
            .alarm_in_secs
            .map(|s| ctx.now() + chrono::Duration::seconds(s));
        if plan.alarm_first
            && let Some(at) = alarm
        {
            ctx.storage().set_alarm(at)?;
        }
        for (name, secs) in &plan.jobs {
            ctx.schedules().every(name, Duration::from_secs(*secs))?;
        }
        if !plan.alarm_first
            && let Some(at) = alarm
        {
            ctx.storage().set_alarm(at)?;
        }
        Ok(())
    }
}

fn manual() -> ManualClock {
    ManualClock::new(start_time())
}

async fn memory_rt(clock: &ManualClock) -> Runtime {
    Runtime::builder()
        .memory()
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap()
}

fn sqlite(clock: &ManualClock, dir: &std::path::Path) -> RuntimeBuilder {
    Runtime::builder()
        .sqlite(dir)
        .shards(1)
        .clock(Arc::new(clock.clone()))
}

/// A store whose probes `name` have alarms `secs` after the start, opened again with the
/// probe class registered at build.
async fn restarted_with_alarms(
    clock: &ManualClock,
    dir: &std::path::Path,
    alarms: &[(&str, i64)],
) -> Runtime {
    let rt = sqlite(clock, dir).build().await.unwrap();
    let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    for (name, secs) in alarms {
        ns.get_by_name(name)
            .ask(SetAlarm(start_time() + chrono::Duration::seconds(*secs)))
            .await
            .unwrap()
            .unwrap();
    }
    rt.shutdown().await.unwrap();
    sqlite(clock, dir)
        .register::<Probe>(ProbeEnv::default())
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_schedule_written_first_in_an_activation_is_kept_with_its_alarm() {
    for alarm_first in [false, true] {
        for durable in [false, true] {
            let clock = manual();
            let dir = tempfile::tempdir().unwrap();
            let rt = if durable {
                sqlite(&clock, dir.path()).build().await.unwrap()
            } else {
                memory_rt(&clock).await
            };
            let ns = rt.namespace::<Lazy>(LazyEnv::default()).unwrap();
            let env = ns.env().clone();
            let o = ns.get_by_name("planner");
            o.ask(Plan {
                jobs: vec![("tick".into(), 10)],
                alarm_in_secs: Some(5),
                alarm_first,
            })
            .await
            .unwrap()
            .unwrap();
            // A job added by a later turn of the same activation counts too.
            o.ask(Plan {
                jobs: vec![("tock".into(), 20)],
                alarm_in_secs: None,
                alarm_first,
            })
            .await
            .unwrap()
            .unwrap();
            clock.advance(Duration::from_secs(5)).await;
            assert_eq!(
                env.ran("alarm"),
                [0],
                "alarm_first {alarm_first}, durable {durable}"
            );
            clock.advance(Duration::from_secs(15)).await;
            assert_eq!(
                env.ran("tick"),
                [0, 0],
                "alarm_first {alarm_first}, durable {durable}"
            );
            assert_eq!(
                env.ran("tock"),
                [0],
                "alarm_first {alarm_first}, durable {durable}"
            );
            rt.shutdown().await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_schedule_alone_in_a_first_turn_fires() {
    let clock = manual();
    let rt = memory_rt(&clock).await;
    let ns = rt.namespace::<Lazy>(LazyEnv::default()).unwrap();
    let env = ns.env().clone();
    ns.get_by_name("only-a-job")
        .ask(Plan {
            jobs: vec![("tick".into(), 10)],
            alarm_in_secs: None,
            alarm_first: false,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rt.pending_alarms().await,
        1,
        "the job set the object's alarm"
    );
    clock.advance(Duration::from_secs(10)).await;
    assert_eq!(env.ran("tick"), [0]);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_runtime_on_one_data_directory_is_refused_until_the_first_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let first = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    let err = Runtime::builder()
        .sqlite(dir.path())
        .build()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(
        text.contains(&std::process::id().to_string()),
        "names the holder's pid: {text}"
    );
    first.shutdown().await.unwrap();
    // Shut down, the first runtime (still in scope) no longer holds the directory.
    let second = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn alarms_pending_from_an_earlier_run_fire_for_classes_registered_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    // Registered with the builder: nothing else needs to touch the class.
    let rt = restarted_with_alarms(&clock, dir.path(), &[("a", 10), ("b", 10)]).await;
    assert_eq!(rt.pending_alarms().await, 2);
    clock.advance(Duration::from_secs(10)).await;
    let ns = rt.get_namespace::<Probe>().unwrap().unwrap();
    let fired: Vec<String> = ns
        .env()
        .alarms
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(rt.pending_alarms().await, 0);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_due_job_runs_and_retries_on_its_own() {
    let clock = manual();
    let rt = Runtime::builder()
        .memory()
        .clock(Arc::new(clock.clone()))
        .alarm_retries(Duration::from_secs(1), 2)
        .build()
        .await
        .unwrap();
    let ns = rt.namespace::<Lazy>(LazyEnv::default()).unwrap();
    let env = ns.env().clone();
    env.failing.lock().unwrap().insert("bad".into());
    let o = ns.get_by_name("jobs");
    o.ask(Plan {
        jobs: vec![("good".into(), 60), ("bad".into(), 60), ("also".into(), 60)],
        alarm_in_secs: Some(60),
        alarm_first: false,
    })
    .await
    .unwrap()
    .unwrap();
    clock.advance(Duration::from_secs(60)).await;
    assert_eq!(env.ran("good"), [0]);
    assert_eq!(env.ran("also"), [0]);
    assert_eq!(env.ran("alarm"), [0]);
    assert_eq!(env.ran("bad"), [0]);
    // The failing job retries alone: after 1 s, then 2 s more, then it is dropped.
    clock.advance(Duration::from_secs(1)).await;
    assert_eq!(env.ran("bad"), [0, 1]);
    clock.advance(Duration::from_secs(2)).await;
    assert_eq!(env.ran("bad"), [0, 1, 2]);
    clock.advance(Duration::from_secs(10)).await;
    assert_eq!(env.ran("bad"), [0, 1, 2], "dropped after its last retry");
    assert_eq!(
        env.ran("good"),
        [0],
        "never re-run by another job's failure"
    );
    assert_eq!(env.ran("also"), [0]);
    assert_eq!(env.ran("alarm"), [0]);
    // The good jobs' writes were kept; the failing job's were not.
    #[derive(Serialize, Deserialize)]
    struct Read(String);
    impl Handler<Read> for Lazy {
        type Reply = Result<Option<bool>>;
        async fn handle(&mut self, Read(key): Read, ctx: &mut Context) -> Result<Option<bool>> {
            ctx.storage().get(&key).await
        }
    }
    assert_eq!(o.call(Read("ran-good".into())).await.unwrap(), Some(true));
    assert_eq!(o.call(Read("ran-bad".into())).await.unwrap(), None);
    // The next slot of the failing job runs at its own time, with its retries reset.
    clock.advance(Duration::from_secs(47)).await;
    assert_eq!(env.ran("bad"), [0, 1, 2, 0]);
    assert_eq!(env.ran("good"), [0, 0]);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_alarm_retry_count_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    let rt = sqlite(&clock, dir.path()).build().await.unwrap();
    let ns = rt.namespace::<Lazy>(LazyEnv::default()).unwrap();
    ns.env().failing.lock().unwrap().insert("alarm".into());
    ns.get_by_name("flaky")
        .ask(Plan {
            jobs: vec![],
            alarm_in_secs: Some(5),
            alarm_first: true,
        })
        .await
        .unwrap()
        .unwrap();
    clock.advance(Duration::from_secs(5)).await;
    clock.advance(Duration::from_secs(1)).await;
    assert_eq!(ns.env().ran("alarm"), [0, 1]);
    rt.shutdown().await.unwrap();
    drop((rt, ns));

    let rt = sqlite(&clock, dir.path())
        .register::<Lazy>(LazyEnv::default())
        .build()
        .await
        .unwrap();
    let ns = rt.get_namespace::<Lazy>().unwrap().unwrap();
    // The second retry is due 2 s after the first: the backoff goes on where it was.
    clock.advance(Duration::from_secs(2)).await;
    assert_eq!(ns.env().ran("alarm"), [2]);
    rt.shutdown().await.unwrap();
}

/// Asks another object of its class to ask it back: a cycle.
struct Cyclic {
    ns: Arc<OnceLock<Namespace<Cyclic>>>,
}

impl DurableObject for Cyclic {
    const CLASS: &'static str = "cyclic";
    type Env = OnceLock<Namespace<Cyclic>>;
    async fn activate(_ctx: &mut Context, env: Arc<Self::Env>) -> Result<Self> {
        Ok(Cyclic { ns: env })
    }
}

/// Passed on `hops` times, alternating between two objects.
#[derive(Serialize, Deserialize)]
struct Bounce {
    to: String,
    hops: u32,
}

impl Handler<Bounce> for Cyclic {
    type Reply = Result<()>;
    async fn handle(&mut self, msg: Bounce, ctx: &mut Context) -> Result<()> {
        if msg.hops == 0 {
            return Ok(());
        }
        let me = ctx.name().unwrap_or_default().to_owned();
        let other = self.ns.get().expect("set").get_by_name(&msg.to);
        other
            .call(Bounce {
                to: me,
                hops: msg.hops - 1,
            })
            .await
    }
}

#[tokio::test]
async fn a_call_cycle_ends_in_timeout_instead_of_hanging() {
    let clock = manual();
    let rt = memory_rt(&clock).await;
    let ns = rt.namespace::<Cyclic>(OnceLock::new()).unwrap();
    let _ = ns.env().set(ns.clone());
    let a = ns.get_by_name("a");
    let call = tokio::spawn(async move {
        // a asks b, which asks a: a is busy waiting for b.
        a.call(Bounce {
            to: "b".into(),
            hops: 2,
        })
        .await
    });
    // Let the cycle form, then pass the deadline.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!call.is_finished());
    clock.advance(Duration::from_secs(30)).await;
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends")
        .unwrap();
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    // Both objects answer again once the cycle has unwound.
    let b = ns.get_by_name("b").with_timeout(Duration::from_secs(1));
    b.call(Bounce {
        to: "a".into(),
        hops: 1,
    })
    .await
    .unwrap();
    rt.shutdown().await.unwrap();
}

/// On real time, a call's deadline lives in the runtime's shared deadline wheel: a reply
/// that never comes ends in `Timeout` after the deadline, never before and not much later;
/// calls answered in time are not touched by the wheel afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_time_a_call_without_an_answer_times_out_at_its_deadline() {
    let rt = Runtime::builder().memory().build().await.unwrap();
    let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    for timeout in [Duration::from_millis(30), Duration::from_millis(250)] {
        let o = ns.get_by_name("parked").with_timeout(timeout);
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), o.ask(Park))
            .await
            .expect("the deadline ends the call");
        let took = started.elapsed();
        assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
        assert!(took >= timeout, "timed out early: {took:?} for {timeout:?}");
        assert!(
            took < timeout + Duration::from_secs(2),
            "timed out late: {took:?}"
        );
    }
    // Many calls answered long before their deadline, while one waits for its own.
    let waiting = tokio::spawn({
        let o = ns
            .get_by_name("parked-too")
            .with_timeout(Duration::from_millis(400));
        async move { o.ask(Park).await }
    });
    let o = ns
        .get_by_name("busy")
        .with_timeout(Duration::from_millis(50));
    for i in 1..=2_000 {
        assert_eq!(o.ask(Incr("n".into())).await.unwrap().unwrap(), i);
    }
    let result = waiting.await.unwrap();
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    // Answered calls are still answered after their deadlines have passed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(o.ask(Incr("n".into())).await.unwrap().unwrap(), 2_001);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reply_parked_at_shutdown_fails_with_shutting_down() {
    let clock = manual();
    let rt = memory_rt(&clock).await;
    let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let parked = tokio::spawn({
        let o = ns.get_by_name("parked");
        async move { o.ask(Park).await }
    });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    rt.shutdown().await.unwrap();
    let result = parked.await.unwrap();
    assert!(matches!(result, Err(Error::ShuttingDown)), "{result:?}");
}

#[tokio::test]
async fn the_builder_refuses_what_cannot_work_and_keeps_what_it_was_told() {
    let err = Runtime::builder().build().await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert!(err.to_string().contains(".sqlite(dir)"), "{err}");

    let err = Runtime::builder()
        .memory()
        .durability(Durability::Fsync)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");

    let err = Runtime::builder()
        .memory()
        .shards(2)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");

    // The shard count holds in either order.
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .shards(3)
        .sqlite(dir.path())
        .build()
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
    let shards = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("shard-") && name.ends_with(".db")
        })
        .count();
    assert_eq!(shards, 3);

    let err = Runtime::builder()
        .sqlite(dir.path())
        .shards(0)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
}

#[tokio::test]
async fn alarms_due_later_wait_in_the_store_until_the_horizon_reaches_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    // Two soon, three in hours and days.
    let alarms = [
        ("o0", 10),
        ("o1", 50),
        ("o2", 2 * 3600),
        ("o3", 26 * 3600),
        ("o4", 26 * 3600 + 1),
    ];
    let rt = restarted_with_alarms(&clock, dir.path(), &alarms).await;
    assert_eq!(
        rt.pending_alarms().await,
        2,
        "only those due within the lookahead"
    );
    let ns = rt.get_namespace::<Probe>().unwrap().unwrap();
    let fired = |ns: &Namespace<Probe>| -> Vec<(String, String)> {
        ns.env()
            .alarms
            .lock()
            .unwrap()
            .iter()
            .map(|(n, info)| {
                (
                    n.clone(),
                    info.scheduled_at.format("%d %H:%M:%S").to_string(),
                )
            })
            .collect()
    };
    clock.advance(Duration::from_secs(60)).await;
    assert_eq!(fired(&ns).len(), 2);
    // Each far alarm fires at its own time as the clock passes it.
    clock.advance(Duration::from_secs(3 * 3600)).await;
    assert_eq!(fired(&ns)[2], ("o2".to_owned(), "01 02:00:00".to_owned()));
    clock.advance(Duration::from_secs(24 * 3600)).await;
    assert_eq!(
        fired(&ns)[3..],
        [
            ("o3".to_owned(), "02 02:00:00".to_owned()),
            ("o4".to_owned(), "02 02:00:01".to_owned())
        ]
    );
    assert_eq!(rt.pending_alarms().await, 0);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn many_stored_alarms_cost_no_memory_until_they_are_due() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    let rt = sqlite(&clock, dir.path()).build().await.unwrap();
    let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    ns.get_by_name("seed")
        .ask(SetAlarm(start_time() + chrono::Duration::days(30)))
        .await
        .unwrap()
        .unwrap();
    rt.shutdown().await.unwrap();
    drop((rt, ns));
    // Twenty thousand more alarms, a day or more away, written straight into the store.
    {
        let conn = rusqlite::Connection::open(dir.path().join("shard-00.db")).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        let base = (start_time() + chrono::Duration::days(1)).timestamp_millis();
        for i in 0..20_000i64 {
            // As a turn writes it: the object's alarm key, and the alarm the scheduler reads.
            let id = stead_core::ObjectId::from_name("probe", &format!("far-{i}"));
            let at = base + i * 1000;
            tx.execute(
                "INSERT INTO kv (class, id, key, value) VALUES ('probe', ?1, ?2, ?3)",
                rusqlite::params![&id.as_bytes()[..], "\0alarm", at.to_string().as_bytes()],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO alarms (class, id, at_ms) VALUES ('probe', ?1, ?2)",
                rusqlite::params![&id.as_bytes()[..], at],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let rt = sqlite(&clock, dir.path())
        .register::<Probe>(ProbeEnv::default())
        .build()
        .await
        .unwrap();
    assert_eq!(rt.pending_alarms().await, 0);
    // A day later the first of them come due, a minute's worth at a time.
    clock.advance(Duration::from_secs(24 * 3600 + 5)).await;
    let ns = rt.get_namespace::<Probe>().unwrap().unwrap();
    assert_eq!(ns.env().alarms.lock().unwrap().len(), 6);
    let held = rt.pending_alarms().await;
    assert!(held <= 61, "only the next minute is held: {held}");
    rt.shutdown().await.unwrap();
}

/// A runtime on a one-shard SQLite store whose objects leave memory after a second idle.
async fn one_shard_store() -> (
    tempfile::TempDir,
    ManualClock,
    Arc<stead_core::SqliteBackend>,
    Runtime,
) {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    let backend = Arc::new(
        stead_core::SqliteBackend::open(dir.path(), stead_core::SqliteOptions::default().shards(1))
            .unwrap(),
    );
    let rt = Runtime::builder()
        .backend(backend.clone())
        .clock(Arc::new(clock.clone()))
        .idle_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    (dir, clock, backend, rt)
}

/// Starts the open window's commit (held by `hold_commits`) and waits until it is held.
async fn start_held_commit(backend: &stead_core::SqliteBackend) {
    backend.start_commit();
    for _ in 0..1000 {
        if backend.commits_held() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(backend.commits_held(), 1, "a commit is held");
}

// Several workers: on a regression the read blocks one of them, and the deadline below
// still fires on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_read_does_not_wait_for_a_commit_in_progress() {
    let (_dir, clock, backend, rt) = one_shard_store().await;
    let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    ns.get_by_name("cold")
        .ask(common::Incr("n".into()))
        .await
        .unwrap()
        .unwrap();
    stead_core::Backend::flush(&*backend).await.unwrap();
    // "cold" leaves memory; its data is committed.
    clock.advance(Duration::from_secs(2)).await;
    assert_eq!(ns.active_objects(), 0);
    // Another object's write sits in the open window, whose commit is then held (the
    // writer keeps its connection, as a slow fsync would).
    backend.hold_commits();
    ns.get_by_name("busy")
        .ask(common::Incr("n".into()))
        .await
        .unwrap()
        .unwrap();
    start_held_commit(&backend).await;
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        ns.get_by_name("cold")
            .ask(common::Script(vec![common::Op::Get("n".into())])),
    )
    .await;
    backend.release_commits();
    let seen = read
        .expect("the read finishes while the commit is held")
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec![common::Seen::Value(Some(1))]);
    rt.shutdown().await.unwrap();
}

// Several workers: on a regression the read blocks one of them, and the deadline below
// still fires on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_an_object_in_the_open_window_does_not_wait_for_its_commit() {
    let (_dir, clock, backend, rt) = one_shard_store().await;
    let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let hot = ns.get_by_name("hot");
    // Committed: a=1, b=2, gone=3.
    hot.ask(common::Script(vec![
        common::Op::Put("a".into(), 1),
        common::Op::Put("b".into(), 2),
        common::Op::Put("gone".into(), 3),
    ]))
    .await
    .unwrap()
    .unwrap();
    stead_core::Backend::flush(&*backend).await.unwrap();
    // In the open window, whose commit is then held: a=10, gone deleted, c=30, and an alarm.
    backend.hold_commits();
    hot.ask(common::Script(vec![
        common::Op::Put("a".into(), 10),
        common::Op::Delete("gone".into()),
        common::Op::Put("c".into(), 30),
    ]))
    .await
    .unwrap()
    .unwrap();
    let at = start_time() + chrono::Duration::hours(1);
    hot.ask(SetAlarm(at)).await.unwrap().unwrap();
    start_held_commit(&backend).await;
    // The object leaves memory, so its next turn reads the store.
    clock.advance(Duration::from_secs(2)).await;
    assert_eq!(ns.active_objects(), 0);
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let seen = hot
            .ask(common::Script(vec![
                common::Op::Get("a".into()),
                common::Op::Get("gone".into()),
                common::Op::List {
                    prefix: None,
                    start: None,
                    end: None,
                    limit: Some(2),
                    reverse: true,
                },
            ]))
            .await;
        let alarm = hot.ask(common::GetAlarm).await;
        (seen, alarm)
    })
    .await;
    backend.release_commits();
    let (seen, alarm) = read.expect("the read finishes while the commit is held");
    assert_eq!(
        seen.unwrap().unwrap(),
        vec![
            common::Seen::Value(Some(10)),
            common::Seen::Value(None),
            common::Seen::Entries(vec![("c".into(), 30), ("b".into(), 2)]),
        ]
    );
    assert_eq!(alarm.unwrap().unwrap(), Some(at));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_turn_under_a_stale_fencing_token_runs_on_a_fresh_activation() {
    let clock = manual();
    let faulty = Arc::new(stead_core::testing::FaultyBackend::new(
        stead_core::MemoryBackend::new(),
    ));
    faulty.set_epoch(1);
    let rt = Runtime::builder()
        .backend(faulty.clone())
        .durability(Durability::Fsync)
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap();
    let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let o = ns.get_by_name("fenced");
    assert_eq!(o.ask(common::Incr("n".into())).await.unwrap().unwrap(), 1);
    // Another owner takes over: this activation's token is stale. The next turn drops it
    // and runs on a fresh activation, which reads the store and writes under the current
    // token.
    faulty.set_epoch(2);
    assert_eq!(o.ask(common::Incr("n".into())).await.unwrap().unwrap(), 2);
    assert_eq!(o.ask(common::Incr("n".into())).await.unwrap().unwrap(), 3);
    assert_eq!(
        ns.env()
            .activations
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    rt.shutdown().await.unwrap();
}

// tokio's own timers run on paused, automatically advancing time here: an alarm delivery
// that waited on them would go ahead without the manual clock moving.
#[tokio::test(start_paused = true)]
async fn an_alarm_for_an_overloaded_object_is_delivered_again_on_the_runtime_clock() {
    let clock = manual();
    let rt = Runtime::builder()
        .memory()
        .clock(Arc::new(clock.clone()))
        .mailbox_capacity(1)
        .build()
        .await
        .unwrap();
    let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let env = ns.env().clone();
    let o = ns.get_by_name("busy");
    o.ask(SetAlarm(start_time() + chrono::Duration::seconds(1)))
        .await
        .unwrap()
        .unwrap();
    // Busy in a turn, with a full mailbox: the alarm's delivery is refused as overloaded.
    o.tell(common::Block).unwrap();
    while !env.blocked.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    o.tell(common::WhoAmI).unwrap();
    let advance = tokio::spawn({
        let clock = clock.clone();
        async move { clock.advance(Duration::from_secs(1)).await }
    });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    env.gate.add_permits(1);
    // Much time passes for tokio's timers; none for the runtime's clock.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        env.alarms.lock().unwrap().is_empty(),
        "redelivered on tokio's timer"
    );
    // The runtime's clock moves past the retry: the alarm arrives.
    clock.advance(Duration::from_secs(6)).await;
    advance.await.unwrap();
    assert_eq!(env.alarms.lock().unwrap().len(), 1);
    rt.shutdown().await.unwrap();
}
