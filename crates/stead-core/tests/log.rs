//! The bounded log every pattern keeps its history in: appended in turns, kept to its last
//! entries, trimmed by number, read in pages both ways with a cursor, and committed (or not)
//! with its turn.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stead_core::{Context, DurableObject, Error, Handler, Log, LogPage, LogQuery, Result, Runtime};

const LOG: Log = Log::new("log/");

struct Journal;

impl DurableObject for Journal {
    const CLASS: &'static str = "journal";
    type Env = ();
    async fn activate(_: &mut Context, _: Arc<()>) -> Result<Self> {
        Ok(Journal)
    }
}

#[derive(Serialize, Deserialize)]
enum Op {
    /// Appends entries `from..=to`, keeping the last `keep`; fails after writing if `fail`.
    Append {
        from: u64,
        to: u64,
        keep: u64,
        fail: bool,
    },
    ForgetBelow(u64),
    Page(LogQuery),
    All,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Out {
    Done(u64),
    Page(LogPage<String>),
    All(Vec<(u64, String)>),
}

impl Handler<Op> for Journal {
    type Reply = Result<Out>;
    async fn handle(&mut self, op: Op, ctx: &mut Context) -> Result<Out> {
        Ok(match op {
            Op::Append {
                from,
                to,
                keep,
                fail,
            } => {
                for seq in from..=to {
                    LOG.append(ctx.storage(), seq, &format!("e{seq}"), keep)?;
                }
                if fail {
                    return Err(Error::bad_request("refused after writing"));
                }
                Out::Done(to)
            }
            Op::ForgetBelow(seq) => Out::Done(LOG.forget_below(ctx.storage(), seq).await?),
            Op::Page(q) => Out::Page(LOG.page(ctx.storage(), &q).await?),
            Op::All => Out::All(LOG.all(ctx.storage()).await?),
        })
    }
}

async fn page(o: &stead_core::Stub<Journal>, q: LogQuery) -> (Vec<String>, Option<u64>) {
    match o.call(Op::Page(q)).await.unwrap() {
        Out::Page(p) => (p.entries, p.next),
        other => panic!("{other:?}"),
    }
}

fn names(seqs: &[u64]) -> Vec<String> {
    seqs.iter().map(|s| format!("e{s}")).collect()
}

#[tokio::test]
async fn a_log_keeps_its_last_entries_and_pages_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    let ns = rt.namespace::<Journal>(()).unwrap();
    let o = ns.get_by_name("j");
    let append = |from, to, keep, fail| Op::Append {
        from,
        to,
        keep,
        fail,
    };
    o.call(append(1, 10, 4, false)).await.unwrap();
    // Newest first, a page at a time; each page's `next` starts the following one.
    assert_eq!(
        page(&o, LogQuery::newest(3)).await,
        (names(&[10, 9, 8]), Some(8))
    );
    assert_eq!(
        page(&o, LogQuery::newest(3).from(Some(8))).await,
        (names(&[7]), None)
    );
    // Oldest first, the same.
    assert_eq!(
        page(&o, LogQuery::oldest(3)).await,
        (names(&[7, 8, 9]), Some(9))
    );
    assert_eq!(
        page(&o, LogQuery::oldest(3).from(Some(9))).await,
        (names(&[10]), None)
    );
    // A page that ends exactly at the log's end says so.
    assert_eq!(page(&o, LogQuery::newest(4)).await.1, None);
    // A failed turn's entries, and the trim it did, are not kept.
    assert!(o.call(append(11, 12, 4, true)).await.is_err());
    assert_eq!(
        page(&o, LogQuery::newest(10)).await.0,
        names(&[10, 9, 8, 7])
    );
    // Trimmed by number (by age, where the object knows the first young entry).
    assert_eq!(o.call(Op::ForgetBelow(9)).await.unwrap(), Out::Done(2));
    // Kept across a restart.
    rt.shutdown().await.unwrap();
    let rt = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    let o = rt.namespace::<Journal>(()).unwrap().get_by_name("j");
    assert_eq!(
        o.call(Op::All).await.unwrap(),
        Out::All(vec![(9, "e9".into()), (10, "e10".into())])
    );
    // Limits are those of every listing.
    for bad in [0, 1001] {
        let e = o.call(Op::Page(LogQuery::newest(bad))).await.unwrap_err();
        assert!(
            e.to_string().contains("limit must be between 1 and 1000"),
            "{e}"
        );
    }
    rt.shutdown().await.unwrap();
}
