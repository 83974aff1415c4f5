//! The governor object through its client, on the manual clock: reservations, expiry,
//! idempotency, cycles by schedule with rollover and a bounded history, alerts, the plan,
//! restarts, and 64 concurrent tasks that never overspend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use stead_budget::{BudgetClient, BudgetError, BudgetSpec, EventKind};
use stead_core::LogQuery;
use stead_fixtures::TestRuntime;

/// The seed's scenario: three processors (weights 5/3/2, phases 1/1/2) on three tiers.
fn seed(extra: serde_json::Value) -> BudgetSpec {
    let mut v = json!({
        "total": 10000,
        "unit": "millicents",
        "processors": [
            {"id": "keywords", "weight": 5, "phase": 1, "tier": "premium"},
            {"id": "content", "weight": 3, "phase": 1, "tier": "standard"},
            {"id": "seo", "weight": 2, "phase": 2, "tier": "economy"}
        ],
        "tiers": {
            "premium": {"model": "large", "cost_per_call": 300, "max_concurrency": 5},
            "standard": {"model": "small", "cost_per_call": 50, "max_concurrency": 20},
            "economy": {"model": "flash", "cost_per_call": 10, "max_concurrency": 50}
        }
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn available(state: &stead_budget::BudgetState, processor: &str) -> u64 {
    state
        .cycle
        .as_ref()
        .unwrap()
        .accounts
        .iter()
        .find(|a| a.processor == processor)
        .unwrap()
        .available
}

#[tokio::test]
async fn reserve_commit_void_and_every_refusal() {
    let rt = TestRuntime::memory().await;
    let b = BudgetClient::new(&rt).unwrap();
    assert!(matches!(b.state("d").await, Err(BudgetError::NotFound)));
    let (state, created) = b.configure("d", seed(json!({}))).await.unwrap();
    assert!(created);
    let cycle = state.cycle.unwrap();
    assert_eq!(cycle.number, 1);
    let alloc: Vec<u64> = cycle.accounts.iter().map(|a| a.allocated).collect();
    assert_eq!(alloc, [5000, 3000, 2000]);

    let r = b
        .reserve("d", "job-1", "keywords", 1200, 60_000)
        .await
        .unwrap();
    assert!(r.created);
    assert_eq!(r.reservation.state, "pending");
    // Sent again: the first outcome, no second hold.
    let again = b
        .reserve("d", "job-1", "keywords", 1200, 60_000)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(available(&b.state("d").await.unwrap(), "keywords"), 3800);
    assert!(matches!(
        b.reserve("d", "job-1", "keywords", 1300, 60_000).await,
        Err(BudgetError::IdReused(_))
    ));
    match b.reserve("d", "job-2", "keywords", 3801, 60_000).await {
        Err(BudgetError::Insufficient {
            available,
            budget_available,
            ..
        }) => assert_eq!((available, budget_available), (3800, 8800)),
        other => panic!("{other:?}"),
    }
    let c = b.commit("d", "job-1", 400).await.unwrap();
    assert_eq!((c.state.as_str(), c.actual), ("committed", Some(400)));
    // A repeated commit returns the same outcome; a void after it is refused.
    assert_eq!(b.commit("d", "job-1", 400).await.unwrap(), c);
    assert!(matches!(
        b.void("d", "job-1").await,
        Err(BudgetError::AlreadyResolved { .. })
    ));
    assert_eq!(available(&b.state("d").await.unwrap(), "keywords"), 4600);

    b.reserve("d", "job-3", "seo", 500, 60_000).await.unwrap();
    assert!(matches!(
        b.commit("d", "job-3", 501).await,
        Err(BudgetError::AboveReserved { .. })
    ));
    assert_eq!(b.void("d", "job-3").await.unwrap().state, "voided");
    assert!(matches!(
        b.commit("d", "nope", 1).await,
        Err(BudgetError::UnknownReservation(_))
    ));
    assert!(matches!(
        b.reserve("d", "x", "nobody", 1, 1000).await,
        Err(BudgetError::UnknownProcessor(_))
    ));
    assert!(matches!(
        b.reserve("d", "x", "seo", 0, 1000).await,
        Err(BudgetError::Invalid(_))
    ));
    assert!(matches!(
        b.reserve("d", "x", "seo", 1, 0).await,
        Err(BudgetError::Invalid(_))
    ));
}

#[tokio::test]
async fn an_unresolved_reservation_expires_and_frees_its_amount() {
    let rt = TestRuntime::memory().await;
    let b = BudgetClient::new(&rt).unwrap();
    b.configure("e", seed(json!({}))).await.unwrap();
    b.reserve("e", "slow", "content", 3000, 5_000)
        .await
        .unwrap();
    b.reserve("e", "later", "content", 1, 50_000)
        .await
        .unwrap_err();
    rt.advance(Duration::from_secs(5)).await;
    let s = b.state("e").await.unwrap();
    assert_eq!((s.pending, available(&s, "content")), (0, 3000));
    // The job finished anyway and spent 10: that money is recorded, not refused.
    let late = b.commit("e", "slow", 10).await.unwrap();
    assert_eq!(
        (late.state.as_str(), late.actual, late.late),
        ("committed", Some(10), true)
    );
    assert_eq!(b.commit("e", "slow", 10).await.unwrap(), late, "idempotent");
    assert_eq!(available(&b.state("e").await.unwrap(), "content"), 2990);
    let events = b.events("e", LogQuery::newest(10)).await.unwrap().entries;
    assert!(events.iter().any(|e| e.kind == EventKind::LateCommit));
    assert!(matches!(
        b.void("e", "slow").await,
        Err(BudgetError::AlreadyResolved { .. })
    ));
}

#[tokio::test]
async fn a_late_commit_past_the_allocation_is_an_overrun() {
    let rt = TestRuntime::memory().await;
    let b = BudgetClient::new(&rt).unwrap();
    b.configure("o", seed(json!({}))).await.unwrap();
    b.reserve("o", "big", "seo", 2000, 1_000).await.unwrap();
    rt.advance(Duration::from_secs(2)).await;
    // Freed at expiry, then taken by another job.
    b.reserve("o", "other", "seo", 1500, 60_000).await.unwrap();
    b.commit("o", "big", 2000).await.unwrap();
    let kinds: Vec<_> = b
        .events("o", LogQuery::newest(10))
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&EventKind::Overrun), "{kinds:?}");
    assert!(matches!(
        b.reserve("o", "more", "seo", 1, 60_000).await,
        Err(BudgetError::Overrun(_))
    ));
}

#[tokio::test]
async fn an_id_is_remembered_from_its_resolution_never_forgotten_young() {
    let rt = TestRuntime::memory().await;
    let mut config = stead_budget::BudgetConfig::default();
    config.remember_ms = 60_000;
    config.remember_max = 3;
    let b = BudgetClient::with_config(&rt, config).unwrap();
    b.configure("i", seed(json!({}))).await.unwrap();
    // A long job: reserved with a day's TTL, committed after two hours (well past
    // remember_ms since it was made).
    b.reserve("i", "job", "keywords", 1000, 86_400_000)
        .await
        .unwrap();
    rt.advance(Duration::from_secs(7200)).await;
    b.commit("i", "job", 1000).await.unwrap();
    // A cycle starts, and the job's retry comes: the same reservation, nothing spent again.
    b.start_cycle("i", None).await.unwrap();
    let retry = b
        .reserve("i", "job", "keywords", 1000, 86_400_000)
        .await
        .unwrap();
    assert!(
        !retry.created,
        "a retry of a committed job is not a new reservation"
    );
    assert_eq!(retry.reservation.state, "committed");
    // Two more resolved: three remembered, all young. A fourth reservation waits rather
    // than forget one of them.
    for id in ["a", "b"] {
        b.reserve("i", id, "seo", 1, 60_000).await.unwrap();
        b.void("i", id).await.unwrap();
    }
    rt.advance(Duration::from_secs(10)).await;
    match b.reserve("i", "c", "seo", 1, 60_000).await {
        Err(BudgetError::Remembering(r)) => {
            assert_eq!((r.remembered, r.retry_after_ms), (3, 50_000))
        }
        other => panic!("{other:?}"),
    }
    // Once the oldest is a minute past its resolution, it is forgotten and room is made.
    rt.advance(Duration::from_secs(50)).await;
    assert!(b.reserve("i", "c", "seo", 1, 60_000).await.unwrap().created);
    // A forgotten id may be used again.
    assert!(b.reserve("i", "a", "seo", 1, 60_000).await.unwrap().created);
}

#[tokio::test]
async fn cycles_by_schedule_roll_over_up_to_the_cap_and_the_history_is_bounded() {
    let rt = TestRuntime::memory().await;
    let b = BudgetClient::new(&rt).unwrap();
    b.configure(
        "c",
        seed(
            json!({"cron": "0 0 * * *", "history": 2, "rollover": {"mode": "capped", "cap": 1000}}),
        ),
    )
    .await
    .unwrap();
    let s = b.state("c").await.unwrap();
    let next = s.next_cycle_at.unwrap();
    assert_eq!(next.format("%H:%M:%S").to_string(), "00:00:00");
    b.reserve("c", "r", "keywords", 4500, 1_000).await.unwrap();
    b.commit("c", "r", 4500).await.unwrap();
    // Midnight: a new cycle. keywords left 500, content 3000 (capped at 1000), seo 2000
    // (capped).
    let until = (next - stead_core::Clock::now(&rt.clock)).to_std().unwrap();
    rt.advance(until).await;
    let s = b.state("c").await.unwrap();
    let cycle = s.cycle.unwrap();
    assert_eq!(cycle.number, 2);
    assert_eq!(cycle.rollover_in, 2500);
    let alloc: Vec<u64> = cycle.accounts.iter().map(|a| a.allocated).collect();
    assert_eq!(alloc, [5500, 4000, 3000]);
    let h = b.history("c", LogQuery::newest(10)).await.unwrap().entries;
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].spent, h[0].rollover_out), (4500, 2500));
    assert_eq!(h[0].allocated + h[0].rollover_out, h[0].total);
    for _ in 0..4 {
        rt.advance(Duration::from_secs(86_400)).await;
    }
    let h = b.history("c", LogQuery::newest(10)).await.unwrap();
    assert_eq!(
        h.entries.iter().map(|c| c.number).collect::<Vec<_>>(),
        [5, 4]
    );
    assert_eq!(h.next, None);
    // Paged, oldest first: the cursor is a cycle's number.
    let first = b.history("c", LogQuery::oldest(1)).await.unwrap();
    assert_eq!((first.entries[0].number, first.next), (4, Some(4)));
    let second = b
        .history("c", LogQuery::oldest(1).from(first.next))
        .await
        .unwrap();
    assert_eq!((second.entries[0].number, second.next), (5, None));
    // A cycle by API, with another total.
    let c = b.start_cycle("c", Some(100)).await.unwrap();
    assert_eq!(c.number, 7);
    assert!(c.total == 100 && c.allocated >= 100);
}

#[tokio::test]
async fn alerts_and_an_overrun_are_events() {
    let rt = TestRuntime::memory().await;
    let b = BudgetClient::new(&rt).unwrap();
    b.configure("a", seed(json!({}))).await.unwrap();
    b.reserve("a", "r1", "seo", 1000, 60_000).await.unwrap();
    b.commit("a", "r1", 1000).await.unwrap(); // seo 50%
    b.reserve("a", "r2", "seo", 700, 60_000).await.unwrap();
    b.commit("a", "r2", 700).await.unwrap(); // seo 85%
    let acc = b.usage("a", "seo", 400, 4, 1).await.unwrap(); // seo 105%: overrun
    assert!(acc.overrun);
    assert_eq!(acc.available, 0);
    assert!(matches!(
        b.reserve("a", "r3", "seo", 1, 60_000).await,
        Err(BudgetError::Overrun(_))
    ));
    let events = b.events("a", LogQuery::oldest(100)).await.unwrap().entries;
    let seen: Vec<(EventKind, Option<String>, Option<u32>)> = events
        .iter()
        .map(|e| (e.kind, e.processor.clone(), e.threshold))
        .collect();
    let seo = || Some("seo".to_owned());
    assert_eq!(
        seen,
        [
            (EventKind::CycleStarted, None, None),
            (EventKind::Alert, seo(), Some(50)),
            (EventKind::Alert, seo(), Some(80)),
            (EventKind::Overrun, seo(), None),
            (EventKind::Alert, seo(), Some(100)),
        ]
    );
}

#[tokio::test]
async fn the_plan_is_phase_ordered_and_affordable() {
    let rt = TestRuntime::memory().await;
    let b = BudgetClient::new(&rt).unwrap();
    b.configure("p", seed(json!({}))).await.unwrap();
    b.reserve("p", "r", "content", 2500, 60_000).await.unwrap();
    let plan = b.plan("p").await.unwrap();
    assert_eq!(plan.len(), 2);
    assert_eq!(plan[0].phase, 1);
    let lines: Vec<(&str, u64)> = plan
        .iter()
        .flat_map(|p| {
            p.processors
                .iter()
                .map(|l| (l.processor.as_str(), l.max_items))
        })
        .collect();
    // keywords: 5000 / 300 = 16, capped at 5; content: 500 / 50 = 10; seo: 2000 / 10 = 200,
    // capped at 50.
    assert_eq!(lines, [("keywords", 5), ("content", 10), ("seo", 50)]);
}

#[tokio::test]
async fn a_restart_keeps_open_reservations_and_their_expiries() {
    let rt = TestRuntime::sqlite().await;
    let b = BudgetClient::new(&rt).unwrap();
    b.configure("r", seed(json!({"cycle_ms": 3_600_000})))
        .await
        .unwrap();
    b.reserve("r", "a", "keywords", 1000, 10_000).await.unwrap();
    b.reserve("r", "b", "keywords", 2000, 60_000).await.unwrap();
    b.commit("r", "b", 500).await.unwrap();
    let before = b.state("r").await.unwrap();
    let rt = rt.restart().await;
    let b = BudgetClient::new(&rt).unwrap();
    assert_eq!(b.state("r").await.unwrap(), before);
    // The repeat of a resolved request still has no second effect.
    assert!(
        !b.reserve("r", "b", "keywords", 2000, 60_000)
            .await
            .unwrap()
            .created
    );
    rt.advance(Duration::from_secs(10)).await;
    let s = b.state("r").await.unwrap();
    assert_eq!((s.pending, available(&s, "keywords")), (0, 4500));
    // The cycle schedule survived too.
    rt.advance(Duration::from_secs(3600)).await;
    assert_eq!(b.state("r").await.unwrap().cycle.unwrap().number, 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_configurations_name_the_field() {
    let rt = TestRuntime::memory().await;
    let b = BudgetClient::new(&rt).unwrap();
    for (extra, msg) in [
        (
            json!({"processors": [{"id": "a", "weight": 1, "tier": "gold"}]}),
            "processors[0].tier gold is not among the tiers",
        ),
        (
            json!({"processors": [{"id": "a", "weight": 0, "tier": "economy"}]}),
            "at least one enabled processor needs a weight above 0",
        ),
        (
            json!({"cycle_ms": 60000, "cron": "0 * * * *"}),
            "give cycle_ms or cron, not both",
        ),
        (
            json!({"alerts": [80, 50]}),
            "alerts must be at most 16 ascending percentages from 1 to 1000",
        ),
    ] {
        let err = b.configure("x", seed(extra)).await.unwrap_err();
        assert_eq!(err.to_string(), msg);
    }
    let err = b
        .configure("x", seed(json!({"cron": "not a cron"})))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("cron:"), "{err}");
    assert!(matches!(b.state("x").await, Err(BudgetError::NotFound)));
}

/// 64 tasks reserve, commit (any actual up to the amount) and void at once, some requests
/// sent twice; afterwards nothing is overspent and every unit is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_tasks_never_overspend() {
    let rt = TestRuntime::memory().await;
    let b = BudgetClient::new(&rt).unwrap();
    b.configure("conc", seed(json!({}))).await.unwrap();
    let spent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let (b, spent) = (b.clone(), spent.clone());
        tasks.push(tokio::spawn(async move {
            let procs = ["keywords", "content", "seo"];
            for i in 0..20u64 {
                let id = format!("t{t}-{i}");
                let p = procs[((t + i) % 3) as usize];
                let amount = 1 + (t * 37 + i * 101) % 400;
                let Ok(r) = b.reserve("conc", &id, p, amount, 60_000).await else {
                    continue;
                };
                assert!(r.created);
                if (t + i) % 4 == 0 {
                    b.void("conc", &id).await.unwrap();
                } else {
                    let actual = amount * ((t + i) % 3) / 2;
                    // Sent twice at once: one effect.
                    let (x, y) =
                        tokio::join!(b.commit("conc", &id, actual), b.commit("conc", &id, actual));
                    assert_eq!(x.unwrap(), y.unwrap());
                    spent.fetch_add(actual, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let cycle = b.state("conc").await.unwrap().cycle.unwrap();
    assert_eq!(cycle.reserved, 0);
    assert_eq!(cycle.spent, spent.load(Ordering::SeqCst));
    for a in &cycle.accounts {
        assert!(a.spent + a.reserved <= a.allocated, "{a:?}");
        assert_eq!(a.available, a.allocated - a.spent);
    }
}
