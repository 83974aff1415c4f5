//! One active node per deployment: a standby waits and takes over, a node that lost the
//! lease commits nothing, start-up failures say why, and lost connections heal.

mod support;

use std::time::Duration;

use stead_core::testing::probe::{GetJson, Incr, Probe};
use stead_core::{Backend, ObjectId, ObjectRef, Runtime, Stub};
use stead_postgres::{LeaseState, PostgresBackend, PostgresError, PostgresOptions};
use support::{drop_schema, on_own_runtime, options, probe_runtime, require_server, url};

fn fresh_schema() -> String {
    require_server();
    format!("stead_test_{:016x}", rand::random::<u64>())
}

async fn runtime(backend: &PostgresBackend) -> (Runtime, Stub<Probe>) {
    let (rt, ns) = probe_runtime(backend).await;
    (rt, ns.get_by_name("x"))
}

async fn node(schema: &str, name: &str) -> PostgresBackend {
    PostgresBackend::connect(options(schema).node_id(name))
        .await
        .unwrap()
}

/// Runs `sql` on a connection of its own.
fn exec(sql: String) {
    on_own_runtime(|client| async move {
        client.batch_execute(&sql).await.unwrap();
    });
}

/// One increment, its failure whether the call or the turn failed.
async fn incr(x: &Stub<Probe>) -> stead_core::Result<i64> {
    x.ask(Incr("c".into())).await.and_then(|r| r)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_waits_and_takes_over_when_the_active_node_closes() {
    let schema = fresh_schema();
    let a = node(&schema, "a").await;
    assert!(matches!(a.state(), LeaseState::Active { epoch: 1 }));
    let (rt_a, x) = runtime(&a).await;
    for n in 1..=5 {
        assert_eq!(incr(&x).await.unwrap(), n);
    }

    let b = node(&schema, "b").await;
    assert!(
        matches!(b.state(), LeaseState::Standby { .. }),
        "{:?}",
        b.state()
    );
    assert!(!b.is_active());
    // A standby serves nothing: it reads and writes nothing.
    let obj = ObjectRef {
        class: "probe",
        id: ObjectId::from_bytes([7; 32]),
    };
    let read = Backend::get(&b, &obj, "c").await;
    assert!(format!("{read:?}").contains("standby"), "{read:?}");

    // A clean shutdown gives the lease back: the standby takes over at once.
    rt_a.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), b.wait_active())
        .await
        .expect("the standby takes over")
        .unwrap();
    assert!(matches!(b.state(), LeaseState::Active { epoch: 2 }));
    let (rt_b, x) = runtime(&b).await;
    assert_eq!(incr(&x).await.unwrap(), 6);
    rt_b.shutdown().await.unwrap();
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_as_a_standby_leaves_the_lease_to_others_for_one_duration() {
    let schema = fresh_schema();
    let started = std::time::Instant::now();
    let lone = PostgresBackend::connect(options(&schema).node_id("s").standby(true))
        .await
        .unwrap();
    assert!(
        matches!(lone.state(), LeaseState::Standby { .. }),
        "{:?}",
        lone.state()
    );
    // An active node started beside it wins the free lease.
    let a = node(&schema, "a").await;
    assert!(matches!(a.state(), LeaseState::Active { epoch: 1 }));
    let (rt_a, x) = runtime(&a).await;
    assert_eq!(incr(&x).await.unwrap(), 1);
    rt_a.shutdown().await.unwrap();
    // Given back: the standby still waits out its first lease duration (2 s), then takes
    // it as any node would.
    tokio::time::timeout(Duration::from_secs(5), lone.wait_active())
        .await
        .expect("the standby takes the lease after its first duration")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "took the lease after {:?}",
        started.elapsed()
    );
    assert!(matches!(lone.state(), LeaseState::Active { epoch: 2 }));
    let (rt, x) = runtime(&lone).await;
    assert_eq!(incr(&x).await.unwrap(), 2);
    rt.shutdown().await.unwrap();

    // Alone from the start, a standby becomes active after one lease duration.
    let alone = fresh_schema();
    let started = std::time::Instant::now();
    let s = PostgresBackend::connect(options(&alone).node_id("s").standby(true))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.wait_active())
        .await
        .expect("a lone standby takes the lease")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2));
    Backend::close(&s).await.unwrap();
    drop_schema(&schema);
    drop_schema(&alone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_the_lease_commits_nothing() {
    let schema = fresh_schema();
    let a = node(&schema, "a").await;
    let (rt_a, xa) = runtime(&a).await;
    assert_eq!(incr(&xa).await.unwrap(), 1);

    // As if `a` had been paused past its lease: it expires, and `b` takes over.
    exec(format!(
        "UPDATE \"{schema}\".lease SET expires_at = clock_timestamp() - interval '1 second'"
    ));
    let b = node(&schema, "b").await;
    assert!(
        matches!(b.state(), LeaseState::Active { epoch: 2 }),
        "{:?}",
        b.state()
    );
    let (rt_b, xb) = runtime(&b).await;
    assert_eq!(incr(&xb).await.unwrap(), 2);

    // `a` still believes it holds the lease (its own clock has not run out), but its
    // commit finds another holder: the turn fails, and nothing of it is written.
    let late = incr(&xa).await;
    assert!(
        late.is_err(),
        "a write of the old node must not succeed: {late:?}"
    );
    assert_eq!(
        xb.ask(GetJson("c".into())).await.unwrap().unwrap(),
        Some(serde_json::json!(2))
    );
    // It notices at its next renewal, and stops serving.
    eventually("a steps down", || {
        matches!(a.state(), LeaseState::Standby { .. })
    })
    .await;
    assert!(!a.is_active());
    assert!(incr(&xa).await.is_err());
    assert_eq!(incr(&xb).await.unwrap(), 3);

    rt_b.shutdown().await.unwrap();
    drop(rt_a);
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_from_an_earlier_epoch_never_commits() {
    let schema = fresh_schema();
    let a = node(&schema, "a").await;
    let (rt, x) = runtime(&a).await;
    assert_eq!(incr(&x).await.unwrap(), 1);
    // The node loses its lease and takes it back (a new epoch) while the object stays
    // in memory: its next turn finds the ownership moved, drops the object (and what it
    // read under epoch 1) and runs on a fresh activation, from what the database holds.
    exec(format!(
        "UPDATE \"{schema}\".lease SET holder = 'someone-else', epoch = epoch + 1, \
         expires_at = clock_timestamp() - interval '1 second'"
    ));
    exec(format!(
        "UPDATE \"{schema}\".kv SET value = convert_to('41', 'UTF8')"
    ));
    eventually("a takes the lease back", || {
        matches!(a.state(), LeaseState::Active { epoch: 3 })
    })
    .await;
    assert_eq!(
        incr(&x).await.unwrap(),
        42,
        "not 2: the value read under epoch 1"
    );
    assert_eq!(incr(&x).await.unwrap(), 43);
    rt.shutdown().await.unwrap();
    drop_schema(&schema);
}

#[tokio::test]
async fn a_failed_statement_keeps_its_sqlstate_and_its_cause() {
    use std::error::Error as _;
    let schema = fresh_schema();
    let b = node(&schema, "a").await;
    // The tables go from under the node: its next read fails in PostgreSQL.
    drop_schema(&schema);
    let obj = ObjectRef {
        class: "probe",
        id: ObjectId::from_bytes([0xab; 32]),
    };
    let e = Backend::get(&b, &obj, "k").await.unwrap_err();
    let stead_core::Error::Storage(source) = &e else {
        panic!("{e:?}")
    };
    let pg = source
        .downcast_ref::<PostgresError>()
        .unwrap_or_else(|| panic!("{e:?}"));
    // 42P01: undefined table (the schema and its tables are gone).
    assert!(matches!(pg.sqlstate(), Some("42P01" | "3F000")), "{pg}");
    let cause = pg
        .source()
        .expect("the client's error is kept as the source");
    assert!(cause.to_string().contains("db error"), "{cause}");
    // A bad start says its SQLSTATE too: no such database is 3D000.
    let e = PostgresBackend::connect(
        PostgresOptions::new(url().replace("/test", "/no_such_database")).schema(&schema),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("3D000"), "{e}");
}

#[tokio::test]
async fn start_failures_say_why() {
    let schema = fresh_schema();
    let err = |r: stead_core::Result<PostgresBackend>| format!("{:?}", r.unwrap_err());

    let e = err(PostgresBackend::connect(PostgresOptions::new(
        "postgres://postgres@127.0.0.1:1/test",
    ))
    .await);
    assert!(
        e.contains("cannot connect to PostgreSQL at postgres://…@127.0.0.1:1/test"),
        "{e}"
    );
    let e = err(PostgresBackend::connect(PostgresOptions::new(
        "postgres://u:secret@127.0.0.1:1/x?bogus=1",
    ))
    .await);
    assert!(e.contains("PostgreSQL URL") && !e.contains("secret"), "{e}");
    let e = err(PostgresBackend::connect(options("Bad-Name")).await);
    assert!(e.contains("schema name"), "{e}");
    let e = err(PostgresBackend::connect(options(&schema).pool_size(2).writers(2)).await);
    assert!(e.contains("more connections than writers"), "{e}");
    let e = err(PostgresBackend::connect(
        PostgresOptions::new(url().replace("/test", "/no_such_database")).schema(&schema),
    )
    .await);
    assert!(e.contains("no_such_database"), "{e}");

    // A schema written by a newer stead is refused, and left as it is.
    let b = node(&schema, "a").await;
    drop(b);
    exec(format!(
        "INSERT INTO \"{schema}\".stead_migrations (version, description) VALUES (999, 'future')"
    ));
    let e = err(PostgresBackend::connect(options(&schema)).await);
    assert!(
        e.contains("version 999") && e.contains("newer stead"),
        "{e}"
    );
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_fail_turns_cleanly_and_heal() {
    let schema = fresh_schema();
    let a = node(&schema, "a").await;
    let (rt, x) = runtime(&a).await;
    let mut acked = 0;
    for _ in 0..20 {
        acked = incr(&x).await.unwrap();
    }
    // Every connection of this deployment is cut, as when the server restarts.
    exec(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'stead {schema}'"
    ));
    let mut failed = 0;
    let mut last = acked;
    for _ in 0..50 {
        match incr(&x).await {
            Ok(v) => {
                assert!(
                    v > last,
                    "an acknowledged increment was lost: {v} after {last}"
                );
                last = v;
            }
            Err(_) => failed += 1,
        }
    }
    assert!(last > acked, "the node serves again by itself");
    // What was acknowledged is there, and nothing else.
    let stored = x.ask(GetJson("c".into())).await.unwrap().unwrap();
    assert_eq!(
        stored,
        Some(serde_json::json!(last)),
        "{failed} turns failed"
    );
    rt.shutdown().await.unwrap();
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_node_name_never_share_the_lease() {
    let schema = fresh_schema();
    let a = node(&schema, "twin").await;
    assert!(matches!(a.state(), LeaseState::Active { epoch: 1 }));
    // A second process started under the same name is a standby like any other: the
    // lease belongs to the process that took it, not to the name.
    let b = node(&schema, "twin").await;
    assert!(
        matches!(b.state(), LeaseState::Standby { .. }),
        "{:?}",
        b.state()
    );
    // Over two whole lease durations neither hands the lease to the other.
    let until = std::time::Instant::now() + Duration::from_millis(4500);
    while std::time::Instant::now() < until {
        assert!(
            matches!(a.state(), LeaseState::Active { epoch: 1 }),
            "{:?}",
            a.state()
        );
        assert!(!b.is_active(), "{:?}", b.state());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Given back explicitly, it goes to the other process at once.
    Backend::close(&a).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), b.wait_active())
        .await
        .expect("the twin takes over once the lease is given back")
        .unwrap();
    assert!(matches!(b.state(), LeaseState::Active { epoch: 2 }));
    Backend::close(&b).await.unwrap();
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_survives_a_commit_load_that_saturates_the_pool() {
    let schema = fresh_schema();
    // Three connections for two writers and every read: the load keeps them all busy.
    let a = PostgresBackend::connect(options(&schema).node_id("busy").pool_size(3).writers(2))
        .await
        .unwrap();
    assert!(matches!(a.state(), LeaseState::Active { epoch: 1 }));
    let mut states = a.watch_state();
    let (rt, ns) = probe_runtime(&a).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..64 {
        let stub = ns.get_by_name(&format!("o{i}"));
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut acked = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if incr(&stub).await.is_ok() {
                    acked += 1;
                }
            }
            acked
        }));
    }
    // Three lease durations under load: the state never leaves epoch 1.
    let watched = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            if states.changed().await.is_err() {
                return None;
            }
            let now = states.borrow().clone();
            if !matches!(now, LeaseState::Active { epoch: 1 }) {
                return Some(now);
            }
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = 0;
    for t in load {
        acked += t.await.unwrap();
    }
    assert!(
        watched.is_err(),
        "the lease changed under load: {watched:?}"
    );
    assert!(acked > 0, "the load committed nothing");
    assert!(a.is_active());
    eprintln!("{acked} increments committed while the lease held");
    rt.shutdown().await.unwrap();
    drop_schema(&schema);
}
