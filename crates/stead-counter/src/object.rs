//! The durable objects behind a counter: one meta object per counter (its shard count) and
//! S shard objects (a partial sum each, plus the idempotency keys that landed there).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stead_core::{
    Context, Durability, DurableObject, Handler, InvalidInput, ListOptions, Remembered,
    RememberedLayout, Result, ScheduledJob,
};

use crate::error::CounterError;

/// Where a shard keeps its partial sum.
const VALUE: &str = "value";
/// The idempotency keys a shard remembers, by the rule of `stead_core::Remembered`:
/// `seen/<key>` -> when it was applied (epoch ms), `exp/<applied at, 20 digits>/<key>` -> key
/// (walked in time order to forget), `keys` -> how many.
const KEYS: RememberedLayout = RememberedLayout {
    ids: "seen/",
    index: "exp/",
    count: "keys",
};
/// The name of the purge job.
const PURGE: &str = "purge";
/// At most this many keys are purged per run; the rest wait for the next run.
const PURGE_BATCH: usize = 1000;

/// Settings shared by every counter of a runtime (the `[counters]` table of the server's
/// configuration: `default_shards`, `dedup_window_ms`, `max_keys`, `durability`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CounterConfig {
    /// Shards of a new counter (default 16, at most [`MAX_SHARDS`]).
    pub default_shards: u32,
    /// How long an idempotency key is remembered (default 24 h).
    #[serde(rename = "dedup_window_ms", deserialize_with = "duration_ms")]
    pub dedup_window: Duration,
    /// The most idempotency keys one shard remembers (default 1,000,000). None is
    /// forgotten before the dedup window has passed: at the bound, an increment with a new
    /// key is refused (503 `remembering`, with when to retry) rather than a young key
    /// forgotten, which would let its retry count twice.
    pub max_keys: u64,
    /// How durable counter state is; `None` takes the runtime's default.
    pub durability: Option<Durability>,
}

fn duration_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

impl Default for CounterConfig {
    fn default() -> Self {
        CounterConfig {
            default_shards: 16,
            dedup_window: Duration::from_secs(24 * 3600),
            max_keys: 1_000_000,
            durability: None,
        }
    }
}

impl CounterConfig {
    /// The same configuration with this durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    /// Checks the settings: a shard count from 1 to [`MAX_SHARDS`], a window of at least a
    /// millisecond.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.default_shards == 0 || self.default_shards > MAX_SHARDS {
            return Err(InvalidInput::new(format!(
                "default_shards must be between 1 and {MAX_SHARDS}, not {}",
                self.default_shards
            )));
        }
        if self.dedup_window.is_zero() {
            return Err(InvalidInput::new("dedup_window must be at least 1 ms"));
        }
        if self.max_keys == 0 {
            return Err(InvalidInput::new("max_keys must be at least 1"));
        }
        Ok(())
    }

    /// The same configuration with this dedup window.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// The same configuration with this bound on the keys one shard remembers.
    pub fn max_keys(mut self, max: u64) -> Self {
        self.max_keys = max;
        self
    }

    /// The same configuration with this default shard count.
    pub fn default_shards(mut self, shards: u32) -> Self {
        self.default_shards = shards;
        self
    }
}

/// The most shards a counter may have.
pub const MAX_SHARDS: u32 = 1024;

/// One counter's metadata: its shard count, fixed at first use.
#[derive(Debug)]
pub struct CounterMeta {
    shards: Option<u32>,
}

impl DurableObject for CounterMeta {
    const CLASS: &'static str = "counter";
    type Env = CounterConfig;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote.message::<Open>().message::<Shards>();
    }

    async fn activate(ctx: &mut Context, _env: Arc<CounterConfig>) -> Result<Self> {
        Ok(CounterMeta {
            shards: ctx.storage().get("shards").await?,
        })
    }
}

/// Returns the counter's shard count, fixing it to `shards` (or the default) on first use.
/// Asking for another count than the one fixed is a conflict.
#[derive(Debug, Serialize, Deserialize)]
pub struct Open {
    /// The shard count wanted, if the caller cares.
    pub shards: Option<u32>,
    /// The default for a new counter.
    pub default_shards: u32,
}

impl Handler<Open> for CounterMeta {
    type Reply = Result<u32, CounterError>;
    async fn handle(&mut self, msg: Open, ctx: &mut Context) -> Result<u32, CounterError> {
        match (self.shards, msg.shards) {
            (Some(have), Some(want)) if have != want => Err(CounterError::ShardsFixed {
                name: ctx.name().unwrap_or("?").to_owned(),
                shards: have,
                wanted: want,
            }),
            (Some(have), _) => Ok(have),
            (None, want) => {
                let n = want.unwrap_or(msg.default_shards);
                if n == 0 || n > MAX_SHARDS {
                    return Err(InvalidInput::new(format!(
                        "shards must be between 1 and {MAX_SHARDS}, not {n}"
                    ))
                    .into());
                }
                ctx.storage().put("shards", &n)?;
                self.shards = Some(n);
                Ok(n)
            }
        }
    }
}

/// The shard count, if the counter exists.
#[derive(Debug, Serialize, Deserialize)]
pub struct Shards;

impl Handler<Shards> for CounterMeta {
    type Reply = Option<u32>;
    async fn handle(&mut self, _: Shards, _ctx: &mut Context) -> Option<u32> {
        self.shards
    }
}

/// What the shards of a runtime share: the configuration, and the committed values they
/// publish for exact reads without a turn.
#[derive(Debug)]
pub struct ShardEnv {
    pub(crate) config: CounterConfig,
    pub(crate) views: Views,
}

impl ShardEnv {
    pub(crate) fn new(config: CounterConfig) -> Self {
        ShardEnv {
            config,
            views: Views::default(),
        }
    }
}

/// At most this many counters have a view in each of the [`VIEW_SHARDS`] parts; past it
/// that part starts afresh.
const MAX_VIEWS: usize = 1_000;
/// The views are split by counter name, so that readers and publishers of different
/// counters never meet on one lock.
const VIEW_SHARDS: usize = 16;

type ViewMap = HashMap<String, Vec<Option<i64>>>;

/// The committed value of every shard of the counters read lately, each published by its
/// shard once the write is durable (see `Context::after_commit`), so that a read sums them
/// instead of asking every shard. A view is made by the first read of a counter, which asks
/// the shards it does not know yet; from then on the shards keep it current.
///
/// A value a read fills in never overwrites a published one, and a shard publishes in
/// commit order, before any later reply of its leaves: so a view never goes back in time.
#[derive(Debug)]
pub(crate) struct Views(Box<[RwLock<ViewMap>]>);

impl Default for Views {
    fn default() -> Self {
        Views((0..VIEW_SHARDS).map(|_| RwLock::default()).collect())
    }
}

impl Views {
    fn part(&self, counter: &str) -> &RwLock<ViewMap> {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(counter, &mut h);
        &self.0[(std::hash::Hasher::finish(&h) % VIEW_SHARDS as u64) as usize]
    }

    /// A shard's value is durable: its counter's view, if it has one, takes it.
    fn publish(&self, counter: &str, shard: usize, value: i64) {
        let mut part = self
            .part(counter)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = part.get_mut(counter).and_then(|view| view.get_mut(shard)) {
            *slot = Some(value);
        }
    }

    /// The sum of the shards the view knows, and the shards it does not (all of them when
    /// the counter had no view yet; it has one now).
    pub(crate) fn read(&self, counter: &str, shards: usize) -> (i128, Vec<usize>) {
        let part = self.part(counter);
        let sum_of = |view: &[Option<i64>]| {
            let mut sum = 0i128;
            let mut missing = Vec::new();
            for (i, v) in view.iter().enumerate() {
                match v {
                    Some(v) => sum += i128::from(*v),
                    None => missing.push(i),
                }
            }
            (sum, missing)
        };
        if let Some(view) = part.read().unwrap_or_else(|p| p.into_inner()).get(counter) {
            return sum_of(view);
        }
        let mut part = part.write().unwrap_or_else(|p| p.into_inner());
        if !part.contains_key(counter) && part.len() >= MAX_VIEWS {
            part.clear();
        }
        sum_of(
            part.entry(counter.to_owned())
                .or_insert_with(|| vec![None; shards]),
        )
    }

    /// Values just read from shards, for those the view still does not know.
    pub(crate) fn fill(&self, counter: &str, values: &[(usize, i64)]) {
        let mut part = self
            .part(counter)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(view) = part.get_mut(counter) {
            for &(i, v) in values {
                if let Some(slot @ None) = view.get_mut(i) {
                    *slot = Some(v);
                }
            }
        }
    }
}

/// One shard of one counter.
#[derive(Debug)]
pub struct CounterShard {
    env: Arc<ShardEnv>,
    /// The counter's name and this shard's index, from the object's name (`<name>#<i>`).
    place: Option<(Arc<str>, usize)>,
    value: i64,
    window_ms: i64,
    /// Whether the purge job exists; learnt from storage on first need.
    purge_scheduled: Option<bool>,
    /// The idempotency keys applied within the window.
    keys: Remembered,
}

impl DurableObject for CounterShard {
    const CLASS: &'static str = "counter-shard";
    type Env = ShardEnv;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<Apply>()
            .message::<Inspect>()
            .message::<Clear>()
            .message::<RememberedKeys>();
    }

    async fn activate(ctx: &mut Context, env: Arc<ShardEnv>) -> Result<Self> {
        let window_ms = i64::try_from(env.config.dedup_window.as_millis()).unwrap_or(i64::MAX);
        let keys =
            Remembered::load(ctx.storage(), KEYS, window_ms as u64, env.config.max_keys).await?;
        let place = ctx
            .name()
            .and_then(|n| n.rsplit_once('#'))
            .and_then(|(counter, i)| Some((Arc::from(counter), i.parse().ok()?)));
        Ok(CounterShard {
            value: ctx.storage().get(VALUE).await?.unwrap_or(0),
            window_ms,
            env,
            place,
            purge_scheduled: None,
            keys,
        })
    }

    async fn on_schedule(&mut self, ctx: &mut Context, job: ScheduledJob) -> Result<()> {
        if job.name == PURGE {
            self.purge(ctx).await?;
        }
        Ok(())
    }
}

impl CounterShard {
    /// Publishes the shard's value to its counter's view once this turn is durable.
    fn publish_after_commit(&self, ctx: &mut Context) {
        if let Some((counter, shard)) = self.place.clone() {
            let (env, value) = (self.env.clone(), self.value);
            ctx.after_commit(move || env.views.publish(&counter, shard, value));
        }
    }

    /// Forgets idempotency keys older than the window, oldest first (a batch per run);
    /// the purge job ends when none is left.
    async fn purge(&mut self, ctx: &mut Context) -> Result<usize> {
        let now = ctx.now().timestamp_millis();
        let forgot = self
            .keys
            .forget_expired(ctx.storage(), now, PURGE_BATCH)
            .await?;
        if self.keys.is_empty() {
            ctx.schedules().cancel(PURGE).await?;
            self.purge_scheduled = Some(false);
        }
        Ok(forgot)
    }
}

/// Adds `by` to the shard, once per idempotency key within the window.
#[derive(Debug, Serialize, Deserialize)]
pub struct Apply {
    /// The amount (may be negative).
    pub by: i64,
    /// The counter's shard count: each shard stays within `i64 / shards`, so that the sum
    /// of all shards can never overflow.
    pub shards: u32,
    /// Makes retries count once.
    pub idempotency_key: Option<String>,
}

/// Whether an increment was applied (false: a duplicate within the window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Applied {
    /// `false` when the idempotency key was seen within the window.
    pub applied: bool,
}

impl Handler<Apply> for CounterShard {
    type Reply = Result<Applied, CounterError>;
    async fn handle(&mut self, msg: Apply, ctx: &mut Context) -> Result<Applied, CounterError> {
        let now = ctx.now().timestamp_millis();
        if let Some(key) = &msg.idempotency_key {
            if self.keys.seen(ctx.storage(), key, now).await?.is_some() {
                return Ok(Applied { applied: false });
            }
            if let Err(r) = self.keys.make_room(ctx.storage(), now).await? {
                return Err(CounterError::Remembering(r));
            }
        }
        let shards = i64::from(msg.shards.max(1));
        let (lo, hi) = (i64::MIN / shards, i64::MAX / shards);
        let value = self
            .value
            .checked_add(msg.by)
            .filter(|v| (lo..=hi).contains(v))
            .ok_or(CounterError::Overflow {
                by: msg.by,
                shards: msg.shards.max(1),
                min: lo,
                max: hi,
            })?;
        ctx.storage().put(VALUE, &value)?;
        if let Some(key) = &msg.idempotency_key {
            self.keys.remember(ctx.storage(), key, now).await?;
            let scheduled = match self.purge_scheduled {
                Some(s) => s,
                None => ctx
                    .schedules()
                    .list()
                    .await?
                    .iter()
                    .any(|j| j.name == PURGE),
            };
            if !scheduled {
                let every = u64::try_from(self.window_ms / 4).unwrap_or(1).max(1000);
                ctx.schedules().every(PURGE, Duration::from_millis(every))?;
            }
            self.purge_scheduled = Some(true);
        }
        self.value = value;
        self.publish_after_commit(ctx);
        Ok(Applied { applied: true })
    }
}

/// The shard's partial sum.
#[derive(Debug, Serialize, Deserialize)]
pub struct Inspect;

impl Handler<Inspect> for CounterShard {
    type Reply = i64;
    async fn handle(&mut self, _: Inspect, _ctx: &mut Context) -> i64 {
        self.value
    }
}

/// Sets the shard to zero and forgets its idempotency keys.
#[derive(Debug, Serialize, Deserialize)]
pub struct Clear;

impl Handler<Clear> for CounterShard {
    type Reply = ();
    async fn handle(&mut self, _: Clear, ctx: &mut Context) {
        ctx.storage().delete_all();
        self.value = 0;
        self.purge_scheduled = Some(false);
        self.keys.cleared();
        self.publish_after_commit(ctx);
    }
}

/// How many idempotency keys the shard remembers (for tests and operations).
#[derive(Debug, Serialize, Deserialize)]
pub struct RememberedKeys;

impl Handler<RememberedKeys> for CounterShard {
    type Reply = Result<usize>;
    async fn handle(&mut self, _: RememberedKeys, ctx: &mut Context) -> Result<usize> {
        Ok(ctx
            .storage()
            .list::<i64>(ListOptions::prefix(KEYS.ids))
            .await?
            .len())
    }
}
