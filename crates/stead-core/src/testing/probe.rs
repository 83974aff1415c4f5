//! The probe: one object class that exercises every part of the runtime, with a message
//! for each thing the suite checks.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::sync::Arc;

use crate::{
    AlarmInfo, Context, Deferred, DeferredHandler, DurableObject, Handler, ListOptions, Result,
    ScheduledJob,
};

/// What every probe of a namespace shares: counters and switches the tests read and set.
#[derive(Debug)]
pub struct ProbeEnv {
    /// Activations so far.
    pub activations: AtomicUsize,
    /// Alarms delivered: the object's name and the delivery.
    pub alarms: Mutex<Vec<(String, AlarmInfo)>>,
    /// Scheduled jobs run: the object's name and the job.
    pub jobs: Mutex<Vec<(String, ScheduledJob)>>,
    /// How many alarm deliveries should fail before one succeeds.
    pub failing_alarms: AtomicU32,
    /// `Block` waits for a permit here.
    pub gate: tokio::sync::Semaphore,
    /// Set once a `Block` turn has started.
    pub blocked: std::sync::atomic::AtomicBool,
    /// Instances alive right now.
    pub live: AtomicUsize,
    /// Whether two instances of one object were ever alive at once.
    pub overlapped: std::sync::atomic::AtomicBool,
}

impl Default for ProbeEnv {
    fn default() -> Self {
        ProbeEnv {
            activations: AtomicUsize::new(0),
            alarms: Mutex::new(Vec::new()),
            jobs: Mutex::new(Vec::new()),
            failing_alarms: AtomicU32::new(0),
            gate: tokio::sync::Semaphore::new(0),
            blocked: std::sync::atomic::AtomicBool::new(false),
            live: AtomicUsize::new(0),
            overlapped: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The probe object.
#[derive(Debug)]
pub struct Probe {
    env: Arc<ProbeEnv>,
    parked: Vec<Deferred<String>>,
    /// In-memory only: lost on reset, so tests can see re-activation.
    pub turns: u64,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.env.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DurableObject for Probe {
    const CLASS: &'static str = "probe";
    type Env = ProbeEnv;

    fn remote(remote: &mut crate::Remote<Self>) {
        remote
            .message::<Incr>()
            .message::<GetJson>()
            .message::<SetAlarm>()
            .message::<Script>();
    }

    async fn activate(ctx: &mut Context, env: Arc<ProbeEnv>) -> Result<Self> {
        env.activations.fetch_add(1, Ordering::SeqCst);
        if env.live.fetch_add(1, Ordering::SeqCst) > 0 {
            env.overlapped.store(true, Ordering::SeqCst);
        }
        // Activation may read storage.
        let _: Option<i64> = ctx.storage().get("activated").await?;
        Ok(Probe {
            env,
            parked: Vec::new(),
            turns: 0,
        })
    }

    async fn alarm(&mut self, ctx: &mut Context, info: AlarmInfo) -> Result<()> {
        let failing = self.env.failing_alarms.load(Ordering::SeqCst);
        if failing > 0 {
            self.env.failing_alarms.store(failing - 1, Ordering::SeqCst);
            ctx.storage().put("alarm-side-effect", &true)?;
            return Err(crate::Error::bad_request("injected alarm failure"));
        }
        let name = ctx.name().unwrap_or("?").to_owned();
        self.env.alarms.lock().unwrap().push((name, info));
        let n: i64 = ctx.storage().get("alarms-fired").await?.unwrap_or(0);
        ctx.storage().put("alarms-fired", &(n + 1))?;
        Ok(())
    }

    async fn on_schedule(&mut self, ctx: &mut Context, job: ScheduledJob) -> Result<()> {
        let name = ctx.name().unwrap_or("?").to_owned();
        self.env.jobs.lock().unwrap().push((name, job));
        Ok(())
    }
}

/// One operation of a storage script.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// Stores a number.
    Put(String, i64),
    /// Deletes a key.
    Delete(String),
    /// Deletes everything.
    DeleteAll,
    /// Reads a key.
    Get(String),
    /// Lists a range.
    List {
        /// Keys with this prefix.
        prefix: Option<String>,
        /// Keys from this one.
        start: Option<String>,
        /// Keys before this one.
        end: Option<String>,
        /// At most this many.
        limit: Option<usize>,
        /// Last first.
        reverse: bool,
    },
}

/// What a script op observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Seen {
    /// A write: nothing to see.
    Nothing,
    /// What a read found.
    Value(Option<i64>),
    /// Whether a deleted key existed.
    Existed(bool),
    /// What a list found.
    Entries(Vec<(String, i64)>),
}

/// Runs storage operations in one turn and reports what each saw.
#[derive(Debug, Serialize, Deserialize)]
pub struct Script(pub Vec<Op>);

impl Handler<Script> for Probe {
    type Reply = Result<Vec<Seen>>;
    async fn handle(&mut self, msg: Script, ctx: &mut Context) -> Result<Vec<Seen>> {
        let s = ctx.storage();
        let mut out = Vec::new();
        for op in msg.0 {
            out.push(match op {
                Op::Put(k, v) => {
                    s.put(&k, &v)?;
                    Seen::Nothing
                }
                Op::Delete(k) => {
                    let existed = s.get::<serde_json::Value>(&k).await?.is_some();
                    s.delete(&k)?;
                    Seen::Existed(existed)
                }
                Op::DeleteAll => {
                    s.delete_all();
                    Seen::Nothing
                }
                Op::Get(k) => Seen::Value(s.get(&k).await?),
                Op::List {
                    prefix,
                    start,
                    end,
                    limit,
                    reverse,
                } => Seen::Entries(
                    s.list(ListOptions {
                        prefix,
                        start,
                        end,
                        limit,
                        reverse,
                    })
                    .await?,
                ),
            });
        }
        Ok(out)
    }
}

/// Runs storage operations, sets the alarm and a schedule if asked, then answers with an
/// error: the whole turn must be discarded.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScriptThenFail {
    /// The operations, run in order.
    pub ops: Vec<Op>,
    /// An alarm to set before failing.
    pub alarm: Option<DateTime<Utc>>,
    /// A one-shot job (by name) to schedule in an hour before failing.
    pub job: Option<String>,
}

impl Handler<ScriptThenFail> for Probe {
    type Reply = Result<Vec<Seen>>;
    async fn handle(&mut self, msg: ScriptThenFail, ctx: &mut Context) -> Result<Vec<Seen>> {
        self.turns += 1;
        let seen = Handler::<Script>::handle(self, Script(msg.ops), ctx).await?;
        if let Some(at) = msg.alarm {
            ctx.storage().set_alarm(at)?;
        }
        if let Some(job) = msg.job {
            let at = ctx.now() + chrono::Duration::hours(1);
            ctx.schedules().once(&job, at)?;
        }
        Err(crate::Error::other(format!(
            "deliberate failure after {} operations",
            seen.len()
        )))
    }
}

/// Deletes keys without reading them.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteKeys(pub Vec<String>);

impl Handler<DeleteKeys> for Probe {
    type Reply = Result<()>;
    async fn handle(&mut self, msg: DeleteKeys, ctx: &mut Context) -> Result<()> {
        for k in msg.0 {
            ctx.storage().delete(&k)?;
        }
        Ok(())
    }
}

/// Applies a script to a model.
pub fn model_apply(model: &mut BTreeMap<String, i64>, ops: &[Op]) -> Vec<Seen> {
    ops.iter()
        .map(|op| match op {
            Op::Put(k, v) => {
                model.insert(k.clone(), *v);
                Seen::Nothing
            }
            Op::Delete(k) => Seen::Existed(model.remove(k).is_some()),
            Op::DeleteAll => {
                model.clear();
                Seen::Nothing
            }
            Op::Get(k) => Seen::Value(model.get(k).copied()),
            Op::List {
                prefix,
                start,
                end,
                limit,
                reverse,
            } => {
                let it = model.iter().filter(|(k, _)| {
                    prefix.as_ref().is_none_or(|p| k.starts_with(p.as_str()))
                        && start.as_ref().is_none_or(|s| *k >= s)
                        && end.as_ref().is_none_or(|e| *k < e)
                });
                let lim = limit.unwrap_or(usize::MAX);
                let v: Vec<(String, i64)> = if *reverse {
                    it.rev().take(lim).map(|(k, v)| (k.clone(), *v)).collect()
                } else {
                    it.take(lim).map(|(k, v)| (k.clone(), *v)).collect()
                };
                Seen::Entries(v)
            }
        })
        .collect()
}

/// Increments `key`, yielding between the read and the write: interleaved turns would
/// lose updates.
#[derive(Debug, Serialize, Deserialize)]
pub struct Incr(pub String);

impl Handler<Incr> for Probe {
    type Reply = Result<i64>;
    async fn handle(&mut self, msg: Incr, ctx: &mut Context) -> Result<i64> {
        self.turns += 1;
        let v: i64 = ctx.storage().get(&msg.0).await?.unwrap_or(0);
        tokio::task::yield_now().await;
        ctx.storage().put(&msg.0, &(v + 1))?;
        Ok(v + 1)
    }
}

/// Increments `key` and, in the same turn, inserts a row with the new value into the
/// object's SQL table `log`: after any crash the two must agree.
#[derive(Debug, Serialize, Deserialize)]
pub struct IncrWithSql(pub String);

impl Handler<IncrWithSql> for Probe {
    type Reply = Result<i64>;
    async fn handle(&mut self, msg: IncrWithSql, ctx: &mut Context) -> Result<i64> {
        let v: i64 = ctx.storage().get(&msg.0).await?.unwrap_or(0);
        ctx.storage().put(&msg.0, &(v + 1))?;
        let mut sql = ctx.sql();
        sql.exec(
            "CREATE TABLE IF NOT EXISTS log (n INTEGER PRIMARY KEY, pad BLOB)",
            (),
        )
        .await?;
        // Rows of a few hundred bytes, so the database spans many chunks.
        sql.exec(
            "INSERT INTO log (n, pad) VALUES (?1, zeroblob(300))",
            [v + 1],
        )
        .await?;
        Ok(v + 1)
    }
}

/// What [`IncrWithSql`] left: the key's value, and the `log` table's row count and largest
/// value.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadIncrWithSql(pub String);

impl Handler<ReadIncrWithSql> for Probe {
    type Reply = Result<(i64, i64, i64)>;
    async fn handle(&mut self, msg: ReadIncrWithSql, ctx: &mut Context) -> Result<(i64, i64, i64)> {
        let v: i64 = ctx.storage().get(&msg.0).await?.unwrap_or(0);
        let mut sql = ctx.sql();
        sql.exec(
            "CREATE TABLE IF NOT EXISTS log (n INTEGER PRIMARY KEY, pad BLOB)",
            (),
        )
        .await?;
        let (count, max): (i64, i64) = sql
            .one::<(i64, Option<i64>)>("SELECT count(*), max(n) FROM log", ())
            .await
            .map(|(c, m)| (c, m.unwrap_or(0)))?;
        Ok((v, count, max))
    }
}

/// Puts every key, then panics.
#[derive(Debug, Serialize, Deserialize)]
pub struct PutThenPanic(pub Vec<String>);

impl Handler<PutThenPanic> for Probe {
    type Reply = ();
    async fn handle(&mut self, msg: PutThenPanic, ctx: &mut Context) {
        for k in msg.0 {
            ctx.storage().put(&k, &1).unwrap();
        }
        panic!("deliberate panic after writes");
    }
}

/// Puts, rolls back, puts again: only the second put survives.
#[derive(Debug, Serialize, Deserialize)]
pub struct PutRollbackPut;

impl Handler<PutRollbackPut> for Probe {
    type Reply = Result<()>;
    async fn handle(&mut self, _: PutRollbackPut, ctx: &mut Context) -> Result<()> {
        ctx.storage().put("discarded", &1)?;
        ctx.storage().rollback();
        ctx.storage().put("kept", &2)?;
        Ok(())
    }
}

/// Sets the alarm.
#[derive(Debug, Serialize, Deserialize)]
pub struct SetAlarm(pub DateTime<Utc>);

impl Handler<SetAlarm> for Probe {
    type Reply = Result<()>;
    async fn handle(&mut self, msg: SetAlarm, ctx: &mut Context) -> Result<()> {
        ctx.storage().set_alarm(msg.0)
    }
}

/// Reads the alarm.
#[derive(Debug, Serialize, Deserialize)]
pub struct GetAlarm;

impl Handler<GetAlarm> for Probe {
    type Reply = Result<Option<DateTime<Utc>>>;
    async fn handle(&mut self, _: GetAlarm, ctx: &mut Context) -> Result<Option<DateTime<Utc>>> {
        ctx.storage().alarm().await
    }
}

/// Removes the alarm.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteAlarm;

impl Handler<DeleteAlarm> for Probe {
    type Reply = ();
    async fn handle(&mut self, _: DeleteAlarm, ctx: &mut Context) {
        ctx.storage().delete_alarm();
    }
}

/// Changes the schedules.
#[derive(Debug, Serialize, Deserialize)]
pub enum Sched {
    /// A one-shot job.
    Once(String, DateTime<Utc>),
    /// An interval job.
    Every(String, Duration),
    /// A cron job.
    Cron(String, String),
    /// Cancels a job.
    Cancel(String),
}

impl Handler<Sched> for Probe {
    type Reply = Result<bool>;
    async fn handle(&mut self, msg: Sched, ctx: &mut Context) -> Result<bool> {
        let mut s = ctx.schedules();
        match msg {
            Sched::Once(n, at) => s.once(&n, at).map(|()| true),
            Sched::Every(n, d) => s.every(&n, d).map(|()| true),
            Sched::Cron(n, e) => s.cron(&n, &e).map(|()| true),
            Sched::Cancel(n) => s.cancel(&n).await,
        }
    }
}

/// The object's name, id and in-memory turn count.
#[derive(Debug, Serialize, Deserialize)]
pub struct WhoAmI;

impl Handler<WhoAmI> for Probe {
    type Reply = (Option<String>, String, u64);
    async fn handle(&mut self, _: WhoAmI, ctx: &mut Context) -> (Option<String>, String, u64) {
        self.turns += 1;
        (
            ctx.name().map(str::to_owned),
            ctx.id().to_string(),
            self.turns,
        )
    }
}

/// Parks the reply until a `Wake`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Park;

impl DeferredHandler<Park> for Probe {
    type Reply = String;
    async fn handle(&mut self, _: Park, _ctx: &mut Context, reply: Deferred<String>) {
        self.parked.push(reply);
    }
}

/// Completes every parked reply with `value`, writing it too.
#[derive(Debug, Serialize, Deserialize)]
pub struct Wake(pub String);

impl Handler<Wake> for Probe {
    type Reply = Result<usize>;
    async fn handle(&mut self, msg: Wake, ctx: &mut Context) -> Result<usize> {
        ctx.storage().put("woken", &msg.0)?;
        let n = self.parked.len();
        for d in self.parked.drain(..) {
            d.complete(ctx, msg.0.clone());
        }
        Ok(n)
    }
}

/// Writes a value of `n` bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct PutBytes(pub String, pub usize);

impl Handler<PutBytes> for Probe {
    type Reply = Result<()>;
    async fn handle(&mut self, msg: PutBytes, ctx: &mut Context) -> Result<()> {
        ctx.storage().put(&msg.0, &"x".repeat(msg.1))
    }
}

/// Reads a value as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct GetJson(pub String);

impl Handler<GetJson> for Probe {
    type Reply = Result<Option<Json>>;
    async fn handle(&mut self, msg: GetJson, ctx: &mut Context) -> Result<Option<Json>> {
        ctx.storage().get(&msg.0).await
    }
}

/// Waits for a permit of the env's gate: keeps the object busy.
#[derive(Debug, Serialize, Deserialize)]
pub struct Block;

impl Handler<Block> for Probe {
    type Reply = ();
    async fn handle(&mut self, _: Block, _ctx: &mut Context) {
        self.env.blocked.store(true, Ordering::SeqCst);
        let _ = self.env.gate.acquire().await.map(|p| p.forget());
    }
}

/// One statement's outcome in a [`SqlScript`]: its columns and rows, or SQLite's message.
pub type SqlOutcome = std::result::Result<(Vec<String>, Vec<Vec<crate::SqlValue>>), String>;

/// Runs SQL statements in one turn, each with its positional parameters; a statement that
/// fails is reported and the script goes on (as with a plain SQLite connection).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SqlScript(pub Vec<(String, Vec<crate::SqlValue>)>);

async fn run_sql(
    ctx: &mut Context,
    script: Vec<(String, Vec<crate::SqlValue>)>,
) -> Vec<SqlOutcome> {
    let mut out = Vec::with_capacity(script.len());
    for (sql, params) in script {
        out.push(match ctx.sql().exec(&sql, params).await {
            Ok(c) => Ok((c.columns().to_vec(), c.into_rows())),
            Err(e) => Err(e.to_string()),
        });
    }
    out
}

impl Handler<SqlScript> for Probe {
    type Reply = Result<Vec<SqlOutcome>>;
    async fn handle(&mut self, msg: SqlScript, ctx: &mut Context) -> Result<Vec<SqlOutcome>> {
        Ok(run_sql(ctx, msg.0).await)
    }
}

/// Runs SQL statements, then answers an error: the turn keeps nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SqlScriptThenFail(pub Vec<(String, Vec<crate::SqlValue>)>);

impl Handler<SqlScriptThenFail> for Probe {
    type Reply = Result<Vec<SqlOutcome>>;
    async fn handle(
        &mut self,
        msg: SqlScriptThenFail,
        ctx: &mut Context,
    ) -> Result<Vec<SqlOutcome>> {
        run_sql(ctx, msg.0).await;
        Err(crate::Error::conflict(
            "deliberate failure after SQL writes",
        ))
    }
}

/// Runs SQL statements, then panics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SqlScriptThenPanic(pub Vec<(String, Vec<crate::SqlValue>)>);

impl Handler<SqlScriptThenPanic> for Probe {
    type Reply = ();
    async fn handle(&mut self, msg: SqlScriptThenPanic, ctx: &mut Context) {
        run_sql(ctx, msg.0).await;
        panic!("deliberate panic after SQL writes");
    }
}
