//! Turns of an idle object run in the caller's task (no task is woken for them), with every
//! promise of a turn kept: one at a time, in order, behind the output gate, and never cut
//! short by a caller that goes away.

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stead_core::{Context, DurableObject, Handler, Result, Runtime};
use tokio::sync::Notify;

/// What the tests' object is given: a gate its `Gated` turn waits at.
#[derive(Default)]
struct Gate(Notify);

struct Tally {
    n: u64,
    gate: Arc<Gate>,
}

impl DurableObject for Tally {
    const CLASS: &'static str = "tally";
    type Env = Gate;
    async fn activate(ctx: &mut Context, gate: Arc<Gate>) -> Result<Self> {
        Ok(Tally {
            n: ctx.storage().get("n").await?.unwrap_or(0),
            gate,
        })
    }
}

/// Adds one and answers the new count.
#[derive(Serialize, Deserialize)]
struct Add;

impl Handler<Add> for Tally {
    type Reply = Result<u64>;
    async fn handle(&mut self, _: Add, ctx: &mut Context) -> Result<u64> {
        self.n += 1;
        ctx.storage().put("n", &self.n)?;
        Ok(self.n)
    }
}

/// The task the turn runs in.
#[derive(Serialize, Deserialize)]
struct WhichTask;

impl Handler<WhichTask> for Tally {
    type Reply = Option<String>;
    async fn handle(&mut self, _: WhichTask, _: &mut Context) -> Option<String> {
        tokio::task::try_id().map(|id| id.to_string())
    }
}

/// Writes `before`, waits at the gate, then writes `after`.
#[derive(Serialize, Deserialize)]
struct Gated;

impl Handler<Gated> for Tally {
    type Reply = Result<()>;
    async fn handle(&mut self, _: Gated, ctx: &mut Context) -> Result<()> {
        ctx.storage().put("before", &1u8)?;
        self.gate.0.notified().await;
        ctx.storage().put("after", &2u8)?;
        Ok(())
    }
}

/// What `Gated` wrote, read in a turn.
#[derive(Serialize, Deserialize)]
struct ReadGated;

impl Handler<ReadGated> for Tally {
    type Reply = Result<(Option<u8>, Option<u8>)>;
    async fn handle(
        &mut self,
        _: ReadGated,
        ctx: &mut Context,
    ) -> Result<(Option<u8>, Option<u8>)> {
        Ok((
            ctx.storage().get("before").await?,
            ctx.storage().get("after").await?,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_objects_turn_runs_in_its_callers_task() {
    let rt = Runtime::builder().memory().build().await.unwrap();
    let stub = rt
        .namespace::<Tally>(Gate::default())
        .unwrap()
        .get_by_name("t");
    let caller = tokio::spawn(async move {
        // The first message starts the object's task, which activates it and runs the turn.
        stub.ask(WhichTask).await.unwrap();
        // Wait until the object is idle again (its task asleep), then call it.
        let me = tokio::task::id().to_string();
        let mut ran_here = 0;
        for _ in 0..100 {
            if stub.ask(WhichTask).await.unwrap() == Some(me.clone()) {
                ran_here += 1;
            }
            tokio::task::yield_now().await;
        }
        ran_here
    });
    let ran_here = caller.await.unwrap();
    // Nearly every call finds the object idle; a call that finds its task still awake
    // (going back to sleep) is queued for it instead.
    assert!(
        ran_here >= 50,
        "{ran_here} of 100 turns ran in the caller's task"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_caller_that_goes_away_mid_turn_does_not_cut_the_turn_short() {
    let rt = Runtime::builder().memory().build().await.unwrap();
    let ns = rt.namespace::<Tally>(Gate::default()).unwrap();
    let stub = ns.get_by_name("g");
    // Activated, and idle: the next call runs in this task.
    assert_eq!(stub.call(Add).await.unwrap(), 1);
    tokio::task::yield_now().await;
    let mut call = Box::pin(stub.call(Gated));
    // One poll: the turn starts here and waits at the gate...
    let first_poll =
        std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    assert!(first_poll.is_pending());
    // ... and its caller goes away.
    drop(call);
    // Calls queue behind the unfinished turn, which the object's task finishes.
    let later = tokio::spawn({
        let stub = ns.get_by_name("g");
        async move { stub.call(Add).await }
    });
    tokio::task::yield_now().await;
    assert!(
        !later.is_finished(),
        "a turn ran while another was unfinished"
    );
    ns.env().0.notify_one();
    assert_eq!(later.await.unwrap().unwrap(), 2);
    // Both of the turn's writes were kept: it ran to its end.
    assert_eq!(stub.call(ReadGated).await.unwrap(), (Some(1), Some(2)));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_racing_on_one_object_get_every_turn_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    let ns = rt.namespace::<Tally>(Gate::default()).unwrap();
    let (tasks, per_task) = (4, 500);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let stub = ns.get_by_name("hot");
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    seen.push(stub.call(Add).await.unwrap());
                    if seen.len() % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        let seen = h.await.unwrap();
        // One caller's turns run in the order it called.
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        all.extend(seen);
    }
    all.sort_unstable();
    let want: Vec<u64> = (1..=(tasks * per_task) as u64).collect();
    assert_eq!(all, want, "every turn ran once");
    rt.shutdown().await.unwrap();
    // And every one of them is durable.
    let rt = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    let ns = rt.namespace::<Tally>(Gate::default()).unwrap();
    assert_eq!(
        ns.get_by_name("hot").call(Add).await.unwrap(),
        (tasks * per_task) as u64 + 1
    );
    rt.shutdown().await.unwrap();
}

/// Reads the count.
#[derive(Serialize, Deserialize)]
struct Count;

impl Handler<Count> for Tally {
    type Reply = u64;
    async fn handle(&mut self, _: Count, _: &mut Context) -> u64 {
        self.n
    }
}

#[test]
fn asking_many_objects_at_once_completes_when_some_answer_in_the_callers_task() {
    // Idle objects answer within the first poll of their ask while new ones answer from
    // their own tasks: a joined ask must not wait for a wake-up that already came.
    for round in 0..300u64 {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let rt = Runtime::builder().memory().build().await.unwrap();
            let ns = rt.namespace::<Tally>(Gate::default()).unwrap();
            let stubs: Vec<_> = (0..8)
                .map(|i| ns.get_by_name(&format!("r{round}-{i}")))
                .collect();
            stubs[1].call(Add).await.unwrap();
            stubs[3].call(Add).await.unwrap();
            let counts = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                ns.ask_all(stubs.iter(), || Count),
            )
            .await
            .expect("a lost wake-up hangs here")
            .unwrap();
            assert_eq!(counts, [0, 1, 0, 1, 0, 0, 0, 0]);
            rt.shutdown().await.unwrap();
        });
    }
}
