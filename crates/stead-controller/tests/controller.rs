//! The controller object through its client, on the manual clock: leases and reports, the
//! interval, pause and start, a dead worker, the breaker, restarts, the decision log, and a
//! processor attached in process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use stead_controller::{
    Batch, BatchProcessor, Cause, ControllerClient, ControllerConfig, ControllerError,
    ControllerSpec, DecisionEntry, Reason, Sample, Status, Transition,
};
use stead_core::{Clock, LogPage, LogQuery};
use stead_fixtures::{TestRuntime, eventually};

fn spec(json: &str) -> ControllerSpec {
    serde_json::from_str(json).unwrap()
}

fn samples(n: u32, ok: u32, latency_ms: u64) -> Vec<Sample> {
    (0..n)
        .map(|i| Sample {
            ok: i < ok,
            latency_ms,
        })
        .collect()
}

/// A downstream with a capacity: items beyond it fail, and latency grows with the load.
fn downstream(batch: u32, capacity: u32) -> Vec<Sample> {
    let latency = if batch <= capacity || capacity == 0 {
        20
    } else {
        20 * u64::from(batch) / u64::from(capacity)
    };
    samples(batch, batch.min(capacity), latency)
}

/// Every entry, oldest first.
async fn log(c: &ControllerClient, name: &str) -> Vec<DecisionEntry> {
    c.decisions(name, LogQuery::oldest(1000))
        .await
        .unwrap()
        .entries
}

/// The log explains every change: each entry starts where the one before it ended, and the
/// last ends where the controller is.
async fn assert_log_explains(c: &ControllerClient, name: &str) {
    let entries = log(c, name).await;
    for pair in entries.windows(2) {
        assert_eq!(pair[0].seq + 1, pair[1].seq);
        assert_eq!(
            pair[0].after, pair[1].before,
            "entry {} does not start where {} ended",
            pair[1].seq, pair[0].seq
        );
    }
    let state = c.state(name).await.unwrap();
    let last = entries.last().unwrap().after;
    assert_eq!(
        (last.status, last.batch_size, last.interval_ms),
        (state.status, state.batch_size, state.interval_ms)
    );
}

#[tokio::test]
async fn lease_report_interval_pause_and_start() {
    let rt = TestRuntime::memory().await;
    let c = ControllerClient::new(&rt).unwrap();
    assert!(matches!(
        c.state("enrich").await,
        Err(ControllerError::NotFound)
    ));
    assert!(matches!(
        c.lease("enrich", None).await,
        Err(ControllerError::NotFound)
    ));

    let (state, created) = c
        .configure("enrich", ControllerSpec::default())
        .await
        .unwrap();
    assert!(created);
    assert_eq!(
        (state.status, state.batch_size, state.interval_ms),
        (Status::Running, 10, 60_000)
    );
    let start = rt.clock.now();
    let lease = c.lease("enrich", Some("w1")).await.unwrap();
    assert_eq!((lease.batch_size, lease.probe), (10, false));
    assert_eq!(lease.deadline, start + chrono::Duration::seconds(60));

    // The next batch is due one interval after this one started.
    match c.lease("enrich", Some("w2")).await {
        Err(ControllerError::NotDue { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(60))
        }
        other => panic!("{other:?}"),
    }
    let r = c
        .report("enrich", &lease.lease_id, samples(10, 10, 30))
        .await
        .unwrap();
    assert_eq!(
        (r.setting.batch_size, r.reason),
        (15, Some(Reason::Increase))
    );
    // A lease reports once.
    assert!(matches!(
        c.report("enrich", &lease.lease_id, samples(1, 1, 30)).await,
        Err(ControllerError::UnknownLease { .. })
    ));

    rt.advance(Duration::from_secs(60)).await;
    let second = c.lease("enrich", Some("w1")).await.unwrap();
    assert_eq!(second.batch_size, 15);
    assert_ne!(second.lease_id, lease.lease_id);

    // Paused: nothing is leased, but the lease out still reports.
    let paused = c.pause("enrich").await.unwrap();
    assert_eq!(paused.status, Status::Paused);
    assert_eq!(paused.leases.len(), 1);
    rt.advance(Duration::from_secs(30)).await;
    assert!(matches!(
        c.lease("enrich", None).await,
        Err(ControllerError::Paused)
    ));
    c.report("enrich", &second.lease_id, samples(15, 15, 30))
        .await
        .unwrap();
    // Started: the next batch is due at once.
    assert_eq!(c.start("enrich").await.unwrap().status, Status::Running);
    assert_eq!(c.lease("enrich", None).await.unwrap().batch_size, 23);

    let state = c.state("enrich").await.unwrap();
    assert_eq!(state.totals.leases, 3);
    assert_eq!(state.totals.batches, 2);
    assert_eq!(state.totals.succeeded, 25);
    assert_eq!(state.window.samples, 25);
    assert_eq!(state.leases[0].worker, None);
    let causes: Vec<Cause> = log(&c, "enrich").await.iter().map(|e| e.cause).collect();
    assert_eq!(
        causes,
        [
            Cause::Configured,
            Cause::Batch,
            Cause::Paused,
            Cause::Batch,
            Cause::Started
        ]
    );
    assert_log_explains(&c, "enrich").await;
}

#[tokio::test]
async fn leases_out_are_bounded_by_the_concurrency() {
    let rt = TestRuntime::memory().await;
    let c = ControllerClient::new(&rt).unwrap();
    c.configure("c", spec(r#"{"interval_ms":0,"concurrency":2}"#))
        .await
        .unwrap();
    let a = c.lease("c", Some("a")).await.unwrap();
    let _b = c.lease("c", Some("b")).await.unwrap();
    let busy = c.lease("c", Some("c")).await.unwrap_err();
    assert!(matches!(busy, ControllerError::Busy { .. }), "{busy:?}");
    assert!(busy.retry_after().unwrap() <= Duration::from_secs(1));
    c.report("c", &a.lease_id, samples(10, 10, 5))
        .await
        .unwrap();
    c.lease("c", Some("c")).await.unwrap();
}

#[tokio::test]
async fn a_dead_worker_is_a_failed_batch_and_the_next_worker_gets_a_lease() {
    let rt = TestRuntime::memory().await;
    let c = ControllerClient::new(&rt).unwrap();
    c.configure("q", spec(r#"{"interval_ms":0,"lease_ms":5000}"#))
        .await
        .unwrap();
    let dead = c.lease("q", Some("dies")).await.unwrap();
    // The worker dies; nobody asks again. The alarm expires the lease at its deadline.
    rt.advance(Duration::from_secs(5)).await;
    let state = c.state("q").await.unwrap();
    assert!(state.leases.is_empty());
    assert_eq!((state.totals.expired, state.totals.failed), (1, 10));
    assert_eq!(state.breaker.consecutive_failures, 1);
    // 0% success: the seed's table backs off.
    assert_eq!((state.status, state.batch_size), (Status::Backoff, 5));
    let last = &c.decisions("q", LogQuery::newest(1)).await.unwrap().entries[0];
    assert_eq!(last.cause, Cause::LeaseExpired);
    assert_eq!(last.batch.as_ref().unwrap().failed, 10);
    assert_eq!(last.batch.as_ref().unwrap().lease_id, dead.lease_id);

    // Its late report changes nothing; the next worker is served.
    assert!(matches!(
        c.report("q", &dead.lease_id, samples(10, 10, 1)).await,
        Err(ControllerError::UnknownLease { .. })
    ));
    assert_eq!(c.state("q").await.unwrap().totals, state.totals);
    rt.advance(Duration::from_millis(1500)).await;
    let next = c.lease("q", Some("alive")).await.unwrap();
    assert_eq!(next.batch_size, 5);
}

#[tokio::test]
async fn an_outage_opens_the_circuit_which_probes_and_closes() {
    let rt = TestRuntime::memory().await;
    let c = ControllerClient::new(&rt).unwrap();
    c.configure(
        "o",
        spec(r#"{"policy":"aimd","interval_ms":0,"cooldown_ms":10000,"max_cooldown_ms":40000}"#),
    )
    .await
    .unwrap();
    let mut transitions = Vec::new();
    for i in 0..5 {
        rt.advance(Duration::from_secs(2)).await;
        let l = c.lease("o", None).await.unwrap();
        let r = c
            .report("o", &l.lease_id, samples(l.batch_size, 0, 100))
            .await
            .unwrap();
        transitions.extend(r.breaker);
        assert_eq!(r.breaker.is_some(), i == 4, "opens on the fifth");
    }
    assert_eq!(transitions, [Transition::Opened]);
    match c.lease("o", None).await {
        Err(ControllerError::CircuitOpen { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(10))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.state("o").await.unwrap().status, Status::Open);

    // The cool-down ends: one probe, of the smallest batch.
    rt.advance(Duration::from_secs(10)).await;
    let probe = c.lease("o", None).await.unwrap();
    assert!(probe.probe);
    assert_eq!(probe.batch_size, 5);
    assert_eq!(c.state("o").await.unwrap().status, Status::HalfOpen);
    assert!(matches!(
        c.lease("o", None).await,
        Err(ControllerError::CircuitOpen { .. })
    ));
    // It fails: open again, twice as long.
    let r = c
        .report("o", &probe.lease_id, samples(5, 0, 100))
        .await
        .unwrap();
    assert_eq!(r.breaker, Some(Transition::Reopened));
    let s = c.state("o").await.unwrap();
    assert_eq!(s.breaker.cooldown_ms, Some(20_000));
    rt.advance(Duration::from_secs(20)).await;
    // The downstream is back: the probe closes the circuit.
    let probe = c.lease("o", None).await.unwrap();
    assert!(probe.probe);
    let r = c
        .report("o", &probe.lease_id, samples(5, 5, 10))
        .await
        .unwrap();
    assert_eq!(r.breaker, Some(Transition::Closed));
    assert_eq!(r.setting.status, Status::Running);
    let breaker: Vec<Transition> = log(&c, "o")
        .await
        .iter()
        .filter_map(|e| e.breaker)
        .collect();
    assert_eq!(
        breaker,
        [
            Transition::Opened,
            Transition::HalfOpened,
            Transition::Reopened,
            Transition::HalfOpened,
            Transition::Closed
        ]
    );
    assert_log_explains(&c, "o").await;

    // A reset returns to the start.
    let reset = c.reset("o").await.unwrap();
    assert_eq!(
        (reset.status, reset.batch_size, reset.interval_ms),
        (Status::Running, 10, 0)
    );
    assert_eq!(reset.window.samples, 0);
}

#[tokio::test]
async fn a_probe_with_nothing_to_do_lets_the_next_batch_probe() {
    let rt = TestRuntime::memory().await;
    let c = ControllerClient::new(&rt).unwrap();
    c.configure(
        "p",
        spec(r#"{"policy":"aimd","interval_ms":0,"failures_to_open":1,"cooldown_ms":1000}"#),
    )
    .await
    .unwrap();
    let l = c.lease("p", None).await.unwrap();
    c.report("p", &l.lease_id, samples(10, 0, 1)).await.unwrap();
    rt.advance(Duration::from_secs(1)).await;
    let probe = c.lease("p", None).await.unwrap();
    let r = c.report("p", &probe.lease_id, vec![]).await.unwrap();
    assert_eq!((r.reason, r.breaker), (None, None));
    let again = c.lease("p", None).await.unwrap();
    assert!(again.probe);
    assert_eq!(c.state("p").await.unwrap().totals.empty, 1);
}

#[tokio::test]
async fn the_seed_table_holds_at_23_for_a_capacity_of_20_and_the_log_says_why() {
    let rt = TestRuntime::memory().await;
    let c = ControllerClient::new(&rt).unwrap();
    c.configure("t", ControllerSpec::default()).await.unwrap();
    let mut sizes = Vec::new();
    for _ in 0..12 {
        let l = c.lease("t", None).await.unwrap();
        sizes.push(l.batch_size);
        c.report("t", &l.lease_id, downstream(l.batch_size, 20))
            .await
            .unwrap();
        rt.advance(Duration::from_secs(60)).await;
    }
    assert_eq!(&sizes[..3], &[10, 15, 23]);
    assert!(sizes[2..].iter().all(|&s| s == 23), "{sizes:?}");
    // Two changes, each with its reason and numbers; holds are not logged.
    let entries: Vec<DecisionEntry> = log(&c, "t")
        .await
        .into_iter()
        .filter(|e| e.cause == Cause::Batch)
        .collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (entries[1].before.batch_size, entries[1].after.batch_size),
        (15, 23)
    );
    assert_eq!(entries[1].reason, Some(Reason::Increase));
    assert_eq!(entries[1].success_rate, Some(1.0));
    assert_log_explains(&c, "t").await;
    let state = c.state("t").await.unwrap();
    // 10 + 15 + 10 × 20 ok of 23.
    assert_eq!(state.totals.succeeded, 10 + 15 + 10 * 20);
    assert_eq!(state.totals.failed, 10 * 3);
}

#[tokio::test]
async fn a_restart_mid_cycle_keeps_status_window_leases_and_schedule() {
    let rt = TestRuntime::sqlite().await;
    let c = ControllerClient::new(&rt).unwrap();
    c.configure(
        "r",
        spec(r#"{"policy":"aimd","interval_ms":1000,"lease_ms":30000}"#),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let l = c.lease("r", None).await.unwrap();
        c.report("r", &l.lease_id, samples(l.batch_size, l.batch_size - 1, 7))
            .await
            .unwrap();
        rt.advance(Duration::from_secs(1)).await;
    }
    let out = c.lease("r", Some("w")).await.unwrap();
    let before = c.state("r").await.unwrap();
    let entries = log(&c, "r").await;

    let rt = rt.restart().await;
    let c = ControllerClient::new(&rt).unwrap();
    assert_eq!(c.state("r").await.unwrap(), before);
    assert_eq!(log(&c, "r").await, entries);
    // The lease's deadline is kept: its alarm fires after the restart.
    rt.advance(Duration::from_secs(30)).await;
    let after = c.state("r").await.unwrap();
    assert_eq!(after.totals.expired, 1);
    assert!(after.leases.is_empty());
    assert!(matches!(
        c.report("r", &out.lease_id, samples(1, 1, 1)).await,
        Err(ControllerError::UnknownLease { .. })
    ));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let rt = TestRuntime::memory().await;
    let c = ControllerClient::new(&rt).unwrap();
    let err = c
        .configure("b", spec(r#"{"min_batch":10,"initial_batch":3}"#))
        .await
        .unwrap_err();
    assert!(matches!(err, ControllerError::Invalid(_)));
    assert!(matches!(c.state("b").await, Err(ControllerError::NotFound)));
    c.configure("b", ControllerSpec::default()).await.unwrap();
    let l = c.lease("b", None).await.unwrap();
    let before = c.state("b").await.unwrap();
    let err = c
        .report("b", &l.lease_id, samples(11, 11, 1))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the report has 11 results; the lease was for at most 10"
    );
    let err = c
        .report(
            "b",
            &l.lease_id,
            vec![Sample {
                ok: true,
                latency_ms: u64::MAX,
            }],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("latency_ms must be at most"));
    assert_eq!(c.state("b").await.unwrap(), before);
    assert!(matches!(
        c.lease("b", Some("")).await,
        Err(ControllerError::Invalid(_))
    ));
    assert!(matches!(
        c.decisions("b", LogQuery::newest(0)).await,
        Err(ControllerError::Invalid(_))
    ));
    // A change keeps the batch within the new bounds.
    let (s, created) = c
        .configure("b", spec(r#"{"min_batch":20,"max_batch":40}"#))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(s.batch_size, 20);
    assert!(c.remove("b").await.unwrap());
    assert!(!c.remove("b").await.unwrap());
}

#[tokio::test]
async fn the_decision_log_is_bounded_and_paged() {
    let rt = TestRuntime::memory().await;
    let c =
        ControllerClient::with_config(&rt, ControllerConfig::default().decision_log(3)).unwrap();
    c.configure("l", ControllerSpec::default()).await.unwrap();
    for _ in 0..3 {
        c.pause("l").await.unwrap();
        c.start("l").await.unwrap();
    }
    let seqs = |p: &LogPage<DecisionEntry>| p.entries.iter().map(|e| e.seq).collect::<Vec<_>>();
    let all = c.decisions("l", LogQuery::newest(100)).await.unwrap();
    assert_eq!((seqs(&all), all.next), (vec![7, 6, 5], None));
    // Pages of two, newest first: the cursor of the first page starts the second.
    let first = c.decisions("l", LogQuery::newest(2)).await.unwrap();
    assert_eq!((seqs(&first), first.next), (vec![7, 6], Some(6)));
    let second = c
        .decisions("l", LogQuery::newest(2).from(first.next))
        .await
        .unwrap();
    assert_eq!((seqs(&second), second.next), (vec![5], None));
    // Oldest first, the same way.
    let first = c.decisions("l", LogQuery::oldest(2)).await.unwrap();
    assert_eq!((seqs(&first), first.next), (vec![5, 6], Some(6)));
    let second = c
        .decisions("l", LogQuery::oldest(2).from(first.next))
        .await
        .unwrap();
    assert_eq!((seqs(&second), second.next), (vec![7], None));
    assert_eq!(c.state("l").await.unwrap().decisions, 7);
}

/// Counts the batches it ran; `capacity` items per batch succeed.
struct Downstream {
    capacity: Arc<AtomicU32>,
    batches: Arc<AtomicU32>,
}

impl BatchProcessor for Downstream {
    async fn process(&self, batch: Batch) -> Vec<Sample> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        downstream(batch.size, self.capacity.load(Ordering::SeqCst))
    }
}

#[tokio::test]
async fn an_attached_processor_is_driven_on_the_schedule_and_followed() {
    let rt = TestRuntime::memory().await;
    let c = ControllerClient::new(&rt).unwrap();
    c.configure("d", spec(r#"{"policy":"aimd","interval_ms":1000}"#))
        .await
        .unwrap();
    let capacity = Arc::new(AtomicU32::new(20));
    let batches = Arc::new(AtomicU32::new(0));
    let attachment = c
        .attach(
            "d",
            Downstream {
                capacity: capacity.clone(),
                batches: batches.clone(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        c.attach(
            "d",
            Downstream {
                capacity: capacity.clone(),
                batches: batches.clone()
            }
        )
        .await,
        Err(ControllerError::Invalid(_))
    ));
    let mut sizes = Vec::new();
    for cycle in 1..=60u32 {
        // The batch due now runs on a task of its own, and reports.
        eventually("the batch is reported", || {
            let c = c.clone();
            async move {
                let s = c.state("d").await.unwrap();
                s.totals.batches == u64::from(cycle) && s.leases.is_empty()
            }
        })
        .await;
        sizes.push(c.state("d").await.unwrap().batch_size);
        rt.advance(Duration::from_secs(1)).await;
    }
    assert!(batches.load(Ordering::SeqCst) >= 60);
    // AIMD around a capacity of 20: a sawtooth between C/2 and just above C.
    assert!(
        sizes[15..].iter().all(|s| (10..=22).contains(s)),
        "{sizes:?}"
    );
    assert!(sizes[15..].contains(&21), "{sizes:?}");

    // Detached: nothing more runs, and the lease route is free for others.
    attachment.detach();
    eventually("the last batch is reported", || {
        let c = c.clone();
        async move { c.state("d").await.unwrap().leases.is_empty() }
    })
    .await;
    let ran = batches.load(Ordering::SeqCst);
    rt.advance(Duration::from_secs(5)).await;
    assert_eq!(batches.load(Ordering::SeqCst), ran);
    c.lease("d", Some("elsewhere")).await.unwrap();
}

struct Panics;

impl BatchProcessor for Panics {
    async fn process(&self, _batch: Batch) -> Vec<Sample> {
        panic!("the processor failed");
    }
}

#[tokio::test]
async fn a_processor_that_panics_fails_its_batch_by_the_deadline() {
    let rt = TestRuntime::memory().await;
    let c = ControllerClient::new(&rt).unwrap();
    c.configure("x", spec(r#"{"interval_ms":60000,"lease_ms":2000}"#))
        .await
        .unwrap();
    let _a = c.attach("x", Panics).await.unwrap();
    let s = c.state("x").await.unwrap();
    assert_eq!(s.leases.len(), 1);
    assert_eq!(
        s.leases[0].worker.as_deref(),
        Some(stead_controller::IN_PROCESS)
    );
    rt.advance(Duration::from_secs(2)).await;
    let s = c.state("x").await.unwrap();
    assert_eq!((s.totals.expired, s.leases.len()), (1, 0));
}
