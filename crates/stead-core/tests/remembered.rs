//! Ids remembered for idempotency: young ids are never forgotten, at the bound a new id is
//! refused with when to retry, old ids go in batches, and all of it holds across restarts
//! and past the ids kept in memory.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stead_core::{
    Context, DurableObject, Handler, Remembered, RememberedLayout, Remembering, Result, Runtime,
};

const IDS: RememberedLayout = RememberedLayout {
    ids: "id/",
    index: "at/",
    count: "n",
};
const KEEP_MS: u64 = 1_000;

struct Ledger {
    ids: Remembered,
}

/// The bound on remembered ids.
struct Max(u64);

impl DurableObject for Ledger {
    const CLASS: &'static str = "ledger";
    type Env = Max;
    async fn activate(ctx: &mut Context, max: Arc<Max>) -> Result<Self> {
        Ok(Ledger {
            ids: Remembered::load(ctx.storage(), IDS, KEEP_MS, max.0).await?,
        })
    }
}

#[derive(Serialize, Deserialize)]
enum Op {
    /// Remembers ids `from..to` at `now`, stopping at the first refusal.
    Take {
        from: u32,
        to: u32,
        now: i64,
    },
    Seen {
        id: u32,
        now: i64,
    },
    Forget {
        now: i64,
    },
    Count,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Out {
    Taken(u32, Option<Remembering>),
    Seen(Option<i64>),
    N(u64),
}

impl Handler<Op> for Ledger {
    type Reply = Result<Out>;
    async fn handle(&mut self, op: Op, ctx: &mut Context) -> Result<Out> {
        Ok(match op {
            Op::Take { from, to, now } => {
                for id in from..to {
                    if let Err(r) = self.ids.make_room(ctx.storage(), now).await? {
                        return Ok(Out::Taken(id - from, Some(r)));
                    }
                    self.ids
                        .remember(ctx.storage(), &id.to_string(), now)
                        .await?;
                }
                Out::Taken(to - from, None)
            }
            Op::Seen { id, now } => {
                Out::Seen(self.ids.seen(ctx.storage(), &id.to_string(), now).await?)
            }
            Op::Forget { now } => {
                Out::N(self.ids.forget_expired(ctx.storage(), now, 5_000).await? as u64)
            }
            Op::Count => Out::N(self.ids.len()),
        })
    }
}

#[tokio::test]
async fn young_ids_are_kept_and_a_new_one_waits_at_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    let o = rt.namespace::<Ledger>(Max(5)).unwrap().get_by_name("l");
    let take = |from, to, now| Op::Take { from, to, now };
    assert_eq!(o.call(take(0, 3, 0)).await.unwrap(), Out::Taken(3, None));
    assert_eq!(o.call(take(3, 5, 400)).await.unwrap(), Out::Taken(2, None));
    // Five remembered, the oldest from 0 ms: at 600 ms a sixth waits 400 ms.
    let refused = Remembering {
        remembered: 5,
        retry_after_ms: 400,
    };
    assert_eq!(
        o.call(take(5, 6, 600)).await.unwrap(),
        Out::Taken(0, Some(refused))
    );
    assert_eq!(
        o.call(Op::Seen { id: 0, now: 600 }).await.unwrap(),
        Out::Seen(Some(0))
    );
    // At 1,000 ms the first three are a second old: they go, three more fit, then none.
    assert_eq!(
        o.call(take(5, 10, 1_000)).await.unwrap(),
        Out::Taken(
            3,
            Some(Remembering {
                remembered: 5,
                retry_after_ms: 400,
            })
        )
    );
    assert_eq!(
        o.call(Op::Seen { id: 0, now: 1_000 }).await.unwrap(),
        Out::Seen(None)
    );
    // Kept across a restart: the count and every id.
    rt.shutdown().await.unwrap();
    let rt = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    let o = rt.namespace::<Ledger>(Max(5)).unwrap().get_by_name("l");
    assert_eq!(o.call(Op::Count).await.unwrap(), Out::N(5));
    for id in [3, 4, 5, 6, 7] {
        assert!(matches!(
            o.call(Op::Seen { id, now: 1_100 }).await.unwrap(),
            Out::Seen(Some(_))
        ));
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn past_the_ids_kept_in_memory_storage_answers() {
    let many = Remembered::MIRROR_MAX as u32 + 50;
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    let o = rt
        .namespace::<Ledger>(Max(1_000_000))
        .unwrap()
        .get_by_name("big");
    for from in (0..many).step_by(2_000) {
        let to = (from + 2_000).min(many);
        let out = o.call(Op::Take { from, to, now: 0 }).await.unwrap();
        assert_eq!(out, Out::Taken(to - from, None));
    }
    for (id, now) in [(0, 10), (many - 1, 10)] {
        assert_eq!(
            o.call(Op::Seen { id, now }).await.unwrap(),
            Out::Seen(Some(0))
        );
    }
    assert_eq!(
        o.call(Op::Seen { id: many, now: 10 }).await.unwrap(),
        Out::Seen(None)
    );
    // After a restart (too many to load into memory): the same answers from storage.
    rt.shutdown().await.unwrap();
    let rt = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    let o = rt
        .namespace::<Ledger>(Max(1_000_000))
        .unwrap()
        .get_by_name("big");
    assert_eq!(o.call(Op::Count).await.unwrap(), Out::N(u64::from(many)));
    assert_eq!(
        o.call(Op::Seen { id: 7, now: 10 }).await.unwrap(),
        Out::Seen(Some(0))
    );
    // Forgotten in batches once old; then none is left.
    let mut forgot = 0;
    while forgot < u64::from(many) {
        match o.call(Op::Forget { now: 1_000 }).await.unwrap() {
            Out::N(0) => panic!("stuck at {forgot}"),
            Out::N(n) => forgot += n,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(o.call(Op::Count).await.unwrap(), Out::N(0));
    assert_eq!(
        o.call(Op::Seen { id: 7, now: 1_000 }).await.unwrap(),
        Out::Seen(None)
    );
    rt.shutdown().await.unwrap();
}
