//! One object exported as a document and imported: under another name (a fork) it has the
//! same storage, alarm and schedules and goes its own way afterwards; under its own name it
//! is restored, replacing what it held; documents that no object could have written are
//! refused whole.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stead_core::chrono::{DateTime, Utc};
use stead_core::{
    AlarmInfo, Context, DurableObject, Error, Handler, ListOptions, ManualClock, ObjectDocument,
    Result, Runtime, ScheduledJob,
};

struct Note;

impl DurableObject for Note {
    const CLASS: &'static str = "note";
    type Env = ();
    async fn activate(_: &mut Context, _: Arc<()>) -> Result<Self> {
        Ok(Note)
    }

    async fn alarm(&mut self, ctx: &mut Context, _: AlarmInfo) -> Result<()> {
        let n: u64 = ctx.storage().get("alarms").await?.unwrap_or(0);
        ctx.storage().put("alarms", &(n + 1))
    }

    async fn on_schedule(&mut self, ctx: &mut Context, _: ScheduledJob) -> Result<()> {
        let n: u64 = ctx.storage().get("ticks").await?.unwrap_or(0);
        ctx.storage().put("ticks", &(n + 1))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Put(String, serde_json::Value);

impl Handler<Put> for Note {
    type Reply = Result<()>;
    async fn handle(&mut self, Put(k, v): Put, ctx: &mut Context) -> Result<()> {
        ctx.storage().put(&k, &v)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Plan(DateTime<Utc>);

impl Handler<Plan> for Note {
    type Reply = Result<()>;
    async fn handle(&mut self, Plan(at): Plan, ctx: &mut Context) -> Result<()> {
        ctx.storage().set_alarm(at)?;
        ctx.schedules().every("tick", Duration::from_secs(60))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct All;

impl Handler<All> for Note {
    type Reply = Result<BTreeMap<String, serde_json::Value>>;
    async fn handle(&mut self, _: All, ctx: &mut Context) -> Self::Reply {
        Ok(ctx
            .storage()
            .list(ListOptions::all())
            .await?
            .into_iter()
            .collect())
    }
}

async fn runtime(clock: &ManualClock) -> Runtime {
    Runtime::builder()
        .memory()
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fork_starts_equal_and_goes_its_own_way() {
    let clock = ManualClock::new(common::start_time());
    let rt = runtime(&clock).await;
    let notes = rt.namespace::<Note>(()).unwrap();
    let original = notes.get_by_name("original");
    original
        .call(Put("title".into(), "draft".into()))
        .await
        .unwrap();
    original
        .call(Put("body".into(), serde_json::json!({"lines": [1, 2, 3]})))
        .await
        .unwrap();
    let at = common::start_time() + stead_core::chrono::Duration::seconds(30);
    original.call(Plan(at)).await.unwrap();

    let doc = original.export().await.unwrap();
    assert_eq!(
        (doc.class.as_str(), doc.name.as_deref()),
        ("note", Some("original"))
    );
    assert_eq!(doc.entries["title"], "draft");
    assert_eq!(doc.alarm, Some(at));
    assert!(doc.schedules.contains_key("tick"), "{doc:?}");
    // A document is JSON: it can be kept anywhere and read back.
    let text = serde_json::to_string(&doc).unwrap();
    let doc: ObjectDocument = serde_json::from_str(&text).unwrap();

    let fork = notes.get_by_name("fork");
    fork.import(&doc).await.unwrap();
    assert_eq!(
        fork.call(All).await.unwrap(),
        original.call(All).await.unwrap(),
        "equal storage"
    );
    // Independent afterwards.
    fork.call(Put("title".into(), "forked".into()))
        .await
        .unwrap();
    assert_eq!(original.call(All).await.unwrap()["title"], "draft");
    // The fork has the alarm and the schedule: both fire for it too.
    clock.advance(Duration::from_secs(61)).await;
    for _ in 0..200 {
        let f = fork.call(All).await.unwrap();
        let o = original.call(All).await.unwrap();
        if f.contains_key("alarms")
            && f.contains_key("ticks")
            && o.contains_key("alarms")
            && o.contains_key("ticks")
        {
            rt.shutdown().await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the fork's alarm or schedule never fired");
}

#[tokio::test]
async fn an_import_under_its_own_name_restores_and_a_bad_document_changes_nothing() {
    let clock = ManualClock::new(common::start_time());
    let rt = runtime(&clock).await;
    let notes = rt.namespace::<Note>(()).unwrap();
    let n = notes.get_by_name("n");
    n.call(Put("a".into(), 1.into())).await.unwrap();
    let saved = n.export().await.unwrap();
    n.call(Put("a".into(), 2.into())).await.unwrap();
    n.call(Put("b".into(), 3.into())).await.unwrap();
    n.import(&saved).await.unwrap();
    let all = n.call(All).await.unwrap();
    assert_eq!(
        all.len(),
        1,
        "what the document does not hold is gone: {all:?}"
    );
    assert_eq!(all["a"], 1);

    // Another class, a reserved key, a schedule the runtime cannot read: refused whole.
    let mut other = saved.clone();
    other.class = "counter".into();
    let mut reserved = saved.clone();
    reserved.entries.insert("\0alarm".into(), 5.into());
    let mut job = saved.clone();
    job.schedules
        .insert("x".into(), serde_json::json!({"nonsense": true}));
    for bad in [other, reserved, job] {
        assert!(
            matches!(n.import(&bad).await, Err(Error::BadRequest { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(n.call(All).await.unwrap(), all, "nothing changed");
    rt.shutdown().await.unwrap();
}
