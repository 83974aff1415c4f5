//! The runtime: configuration, namespaces, the alarm scheduler, eviction and shutdown.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tokio::sync::Notify;

use crate::backend::{Backend, Durability, MemoryBackend};
use crate::clock::{Clock, Sleep, SystemClock, TimeDriven, from_ms, lock, to_ms};
use crate::error::{Error, Result};
use crate::executor::{AlarmOutcome, Namespace, NamespaceDyn, NsInner};
use crate::id::ObjectId;
use crate::object::DurableObject;

/// Tunables of a runtime. Build one with [`Runtime::builder`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Objects idle this long leave memory (default 60 s).
    pub idle_timeout: Duration,
    /// At most this many objects in memory; the least recently used leave first
    /// (default 100,000).
    pub max_active_objects: usize,
    /// Messages waiting per object before `ask` fails with `Overloaded` (default 4,096).
    pub mailbox_capacity: usize,
    /// The largest value, encoded, in bytes (default 128 KiB).
    pub max_value_bytes: usize,
    /// Memory for each object's cache of committed values (default 1 MiB).
    pub cache_bytes_per_object: usize,
    /// Wait before the first retry of a failed alarm; doubles each retry (default 1 s).
    pub alarm_first_retry: Duration,
    /// Retries of a failing alarm before it is dropped (default 6).
    pub alarm_max_retries: u32,
    /// The durability of namespaces that do not choose their own (default `Fsync`).
    pub durability: Durability,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            idle_timeout: Duration::from_secs(60),
            max_active_objects: 100_000,
            mailbox_capacity: 4096,
            max_value_bytes: 128 * 1024,
            cache_bytes_per_object: 1024 * 1024,
            alarm_first_retry: Duration::from_secs(1),
            alarm_max_retries: 6,
            durability: Durability::Fsync,
        }
    }
}

/// Per-namespace options for [`Runtime::namespace_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct NamespaceOptions {
    /// Overrides the runtime's durability for this namespace (for example `Memory` or
    /// `ProcessCrashSafe` for a rate limiter while the rest fsyncs).
    pub durability: Option<Durability>,
}

impl NamespaceOptions {
    /// Options with this durability.
    pub fn durability(durability: Durability) -> Self {
        NamespaceOptions {
            durability: Some(durability),
        }
    }
}

/// State every part of the runtime shares.
pub(crate) struct Shared {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: RuntimeConfig,
    pub(crate) alarms: AlarmIndex,
    pub(crate) closed: AtomicBool,
    live_objects: AtomicUsize,
    objects_done: Notify,
    lru_running: AtomicBool,
    lru_wanted: Notify,
    stop: Notify,
}

impl Shared {
    pub(crate) fn object_started(&self) {
        let n = self.live_objects.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::gauge!("stead_active_objects").set(n as f64);
        if n > self.config.max_active_objects {
            self.lru_wanted.notify_one();
        }
    }

    pub(crate) fn object_stopped(&self) {
        let n = self.live_objects.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("stead_active_objects").set(n as f64);
        if n == 0 {
            self.objects_done.notify_waiters();
        }
    }
}

type AlarmKey = (&'static str, ObjectId);

/// Every pending alarm of the runtime, by time. A hint: the object is the judge of whether
/// its alarm is due when a delivery arrives.
#[derive(Default)]
pub(crate) struct AlarmIndex {
    inner: Mutex<AlarmState>,
    changed: Notify,
}

#[derive(Default)]
struct AlarmState {
    by_time: BTreeSet<(i64, AlarmKey)>,
    by_object: HashMap<AlarmKey, (i64, u32)>,
}

impl AlarmIndex {
    pub(crate) fn set(&self, class: &'static str, id: ObjectId, at: Option<i64>) {
        self.put((class, id), at.map(|a| (a, 0)));
    }

    fn put(&self, key: AlarmKey, entry: Option<(i64, u32)>) {
        let mut st = lock(&self.inner);
        if let Some((old, _)) = st.by_object.remove(&key) {
            st.by_time.remove(&(old, key));
        }
        let earlier = match entry {
            Some((at, retry)) => {
                let first = st.by_time.first().map(|(t, _)| *t);
                st.by_time.insert((at, key));
                st.by_object.insert(key, (at, retry));
                first.is_none_or(|f| at < f)
            }
            None => false,
        };
        drop(st);
        if earlier {
            self.changed.notify_one();
        }
    }

    fn take_due(&self, now: i64) -> Vec<(AlarmKey, u32)> {
        let mut st = lock(&self.inner);
        let mut out = Vec::new();
        while let Some((at, key)) = st.by_time.first().copied() {
            if at > now {
                break;
            }
            st.by_time.pop_first();
            let retry = st.by_object.remove(&key).map_or(0, |(_, r)| r);
            out.push((key, retry));
        }
        out
    }

    fn next(&self) -> Option<i64> {
        lock(&self.inner).by_time.first().map(|(t, _)| *t)
    }

    /// How many alarms are pending.
    fn len(&self) -> usize {
        lock(&self.inner).by_object.len()
    }
}

struct RuntimeInner {
    shared: Arc<Shared>,
    backend: Arc<dyn Backend>,
    memory: Arc<dyn Backend>,
    namespaces: Mutex<HashMap<&'static str, Arc<dyn NamespaceDyn>>>,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The stead runtime: owns the backend, the active objects and their alarms.
/// Cheap to clone.
///
/// ```
/// use std::sync::Arc;
/// use stead_core::{Context, DurableObject, Handler, Result, Runtime};
///
/// struct Greeter;
/// impl DurableObject for Greeter {
///     const CLASS: &'static str = "greeter";
///     type Env = ();
///     async fn activate(_ctx: &mut Context, _env: Arc<()>) -> Result<Self> { Ok(Greeter) }
/// }
/// impl Handler<String> for Greeter {
///     type Reply = String;
///     async fn handle(&mut self, who: String, ctx: &mut Context) -> String {
///         format!("hello {who}, from {}", ctx.name().unwrap_or("?"))
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let rt = Runtime::builder().memory().build().await?;
/// let greeters = rt.namespace::<Greeter>(())?;
/// let reply = greeters.get_by_name("alice").ask("bob".to_string()).await?;
/// assert_eq!(reply, "hello bob, from alice");
/// rt.shutdown().await?;
/// # Ok::<(), stead_core::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.shared.config)
            .finish()
    }
}

enum BackendChoice {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite(PathBuf, crate::backend::sqlite::SqliteOptions),
    Custom(Arc<dyn Backend>),
}

/// Builds a [`Runtime`].
pub struct RuntimeBuilder {
    backend: BackendChoice,
    clock: Arc<dyn Clock>,
    config: RuntimeConfig,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl RuntimeBuilder {
    /// Stores data in SQLite files under `dir` (the embedded default).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, dir: impl Into<PathBuf>) -> Self {
        self.backend = BackendChoice::Sqlite(dir.into(), Default::default());
        self
    }

    /// With [`sqlite`](Self::sqlite): how many shard files (and writer threads); fixed when the
    /// directory is created (default: the directory's count, or one per two cores for a new
    /// one).
    #[cfg(feature = "sqlite")]
    pub fn shards(mut self, shards: usize) -> Self {
        if let BackendChoice::Sqlite(_, opts) = &mut self.backend {
            opts.shards = Some(shards);
        }
        self
    }

    /// Keeps everything in memory (tests, ephemeral state).
    pub fn memory(mut self) -> Self {
        self.backend = BackendChoice::Memory;
        self
    }

    /// Uses this backend.
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = BackendChoice::Custom(backend);
        self
    }

    /// Uses this clock (a [`crate::ManualClock`] in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The default durability of namespaces.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// How long an idle object stays in memory.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }

    /// The most objects kept in memory.
    pub fn max_active_objects(mut self, n: usize) -> Self {
        self.config.max_active_objects = n.max(1);
        self
    }

    /// The mailbox size of each object.
    pub fn mailbox_capacity(mut self, n: usize) -> Self {
        self.config.mailbox_capacity = n.max(1);
        self
    }

    /// The largest value, encoded, in bytes.
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.config.max_value_bytes = n;
        self
    }

    /// The memory cap of each object's cache.
    pub fn cache_bytes_per_object(mut self, n: usize) -> Self {
        self.config.cache_bytes_per_object = n;
        self
    }

    /// Alarm retries: the first wait (doubling each time) and how many retries.
    pub fn alarm_retries(mut self, first: Duration, max_retries: u32) -> Self {
        self.config.alarm_first_retry = first;
        self.config.alarm_max_retries = max_retries;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Opens the backend and starts the runtime. Must be called inside a tokio runtime.
    pub async fn build(self) -> Result<Runtime> {
        let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let mut config = self.config;
        let backend = match self.backend {
            BackendChoice::Memory => {
                config.durability = Durability::Memory;
                memory.clone()
            }
            #[cfg(feature = "sqlite")]
            BackendChoice::Sqlite(dir, opts) => {
                let b = tokio::task::spawn_blocking(move || {
                    crate::backend::sqlite::SqliteBackend::open(dir, opts)
                })
                .await
                .map_err(Error::storage)??;
                Arc::new(b) as Arc<dyn Backend>
            }
            BackendChoice::Custom(b) => b,
        };
        let shared = Arc::new(Shared {
            clock: self.clock,
            config,
            alarms: AlarmIndex::default(),
            closed: AtomicBool::new(false),
            live_objects: AtomicUsize::new(0),
            objects_done: Notify::new(),
            lru_running: AtomicBool::new(false),
            lru_wanted: Notify::new(),
            stop: Notify::new(),
        });
        let inner = Arc::new(RuntimeInner {
            shared,
            backend,
            memory,
            namespaces: Mutex::new(HashMap::new()),
            background: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&inner);
        let mut tasks = vec![tokio::spawn(lru_loop(weak.clone()))];
        if let Some(manual) = inner.shared.clock.as_manual() {
            let driven: Weak<dyn TimeDriven> = weak;
            manual.drive(driven);
        } else {
            tasks.push(tokio::spawn(alarm_loop(weak.clone())));
            tasks.push(tokio::spawn(idle_loop(weak)));
        }
        *lock(&inner.background) = tasks;
        Ok(Runtime { inner })
    }
}

impl Runtime {
    /// A builder with the defaults: memory backend, system clock.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            backend: BackendChoice::Memory,
            clock: Arc::new(SystemClock),
            config: RuntimeConfig::default(),
        }
    }

    /// The namespace of class `O`, registering it with `env` on first use. Later calls return
    /// the registered namespace (and ignore their `env`).
    pub fn namespace<O: DurableObject>(&self, env: O::Env) -> Result<Namespace<O>> {
        self.namespace_with(env, NamespaceOptions::default())
    }

    /// Like [`namespace`](Self::namespace), with options for a new registration.
    pub fn namespace_with<O: DurableObject>(
        &self,
        env: O::Env,
        opts: NamespaceOptions,
    ) -> Result<Namespace<O>> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let mut map = lock(&self.inner.namespaces);
        if let Some(existing) = map.get(O::CLASS) {
            let any: Arc<dyn std::any::Any + Send + Sync> = existing.clone().into_any();
            return any
                .downcast::<NsInner<O>>()
                .map(Namespace::from_inner)
                .map_err(|_| Error::ClassConflict { class: O::CLASS });
        }
        let durability = opts.durability.unwrap_or(shared.config.durability);
        let backend = if durability == Durability::Memory {
            self.inner.memory.clone()
        } else {
            self.inner.backend.clone()
        };
        for (id, at) in backend.alarms(O::CLASS)? {
            shared.alarms.set(O::CLASS, id, Some(at));
        }
        let ns = Arc::new(NsInner::<O>::new(
            shared.clone(),
            Arc::new(env),
            backend,
            durability,
        ));
        map.insert(O::CLASS, ns.clone());
        Ok(Namespace::from_inner(ns))
    }

    /// The runtime's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.shared.clock
    }

    /// The configuration in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.shared.config
    }

    /// How many objects are in memory, over all namespaces.
    pub fn active_objects(&self) -> usize {
        self.inner.shared.live_objects.load(Ordering::Acquire)
    }

    /// How many alarms are waiting to fire.
    pub fn pending_alarms(&self) -> usize {
        self.inner.shared.alarms.len()
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shared.closed.load(Ordering::Acquire)
    }

    /// Stops taking messages, lets every object finish the messages it has, flushes every
    /// commit, then returns. Deferred replies still parked fail with [`Error::Reset`].
    pub async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        inner.shared.closed.store(true, Ordering::Release);
        inner.shared.stop.notify_waiters();
        let namespaces: Vec<_> = lock(&inner.namespaces).values().cloned().collect();
        loop {
            let done = inner.shared.objects_done.notified();
            if inner.shared.live_objects.load(Ordering::Acquire) == 0 {
                break;
            }
            for ns in &namespaces {
                ns.stop_all();
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), done).await;
        }
        for t in lock(&inner.background).drain(..) {
            t.abort();
        }
        let backends = [inner.backend.clone(), inner.memory.clone()];
        tokio::task::spawn_blocking(move || {
            for b in backends {
                b.flush()?;
            }
            Ok::<(), Error>(())
        })
        .await
        .map_err(Error::storage)?
    }
}

impl RuntimeInner {
    /// Delivers every due alarm and waits for the deliveries. With `wait` false (the system
    /// clock), deliveries run in the background.
    async fn fire_due(self: &Arc<Self>, now: DateTime<Utc>, wait: bool) {
        let due = self.shared.alarms.take_due(to_ms(now));
        if due.is_empty() {
            return;
        }
        let namespaces = lock(&self.namespaces).clone();
        let mut deliveries = Vec::new();
        for ((class, id), retry) in due {
            let Some(ns) = namespaces.get(class).cloned() else {
                continue;
            };
            let shared = self.shared.clone();
            let delivery = async move {
                match ns.deliver_alarm(id, retry).await {
                    AlarmOutcome::Failed if !shared.closed.load(Ordering::Acquire) => {
                        let backoff = shared
                            .config
                            .alarm_first_retry
                            .saturating_mul(2u32.saturating_pow(retry.min(30)));
                        let at = shared.clock.now()
                            + chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::MAX);
                        shared.alarms.put((class, id), Some((to_ms(at), retry + 1)));
                    }
                    _ => {}
                }
            };
            if wait {
                deliveries.push(delivery);
            } else {
                tokio::spawn(delivery);
            }
        }
        join_all(deliveries).await;
    }

    /// Asks objects idle since before `now - idle_timeout` to leave, and waits for answers.
    async fn evict_idle(&self, now: DateTime<Utc>) {
        let idle = chrono::Duration::from_std(self.shared.config.idle_timeout)
            .unwrap_or(chrono::Duration::MAX);
        let cutoff = to_ms(
            now.checked_sub_signed(idle)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        );
        let namespaces: Vec<_> = lock(&self.namespaces).values().cloned().collect();
        let mut waits = Vec::new();
        for ns in namespaces {
            waits.extend(ns.evict_idle(cutoff));
        }
        join_all(waits).await;
    }

    /// Evicts the least recently used objects until the cap leaves room for a tenth more.
    async fn evict_lru(&self) {
        let max = self.shared.config.max_active_objects;
        let live = self.shared.live_objects.load(Ordering::Acquire);
        if live <= max {
            return;
        }
        let target = live - max + max / 10;
        let namespaces: Vec<_> = lock(&self.namespaces).values().cloned().collect();
        let mut all = Vec::new();
        for (i, ns) in namespaces.iter().enumerate() {
            let mut ids = Vec::new();
            ns.last_used(&mut ids);
            all.extend(ids.into_iter().map(|(t, id)| (t, i, id)));
        }
        all.sort_unstable_by_key(|(t, _, _)| *t);
        let waits: Vec<_> = all
            .into_iter()
            .take(target)
            .filter_map(|(_, i, id)| namespaces[i].evict(id))
            .collect();
        metrics::counter!("stead_lru_evictions_total").increment(waits.len() as u64);
        join_all(waits).await;
    }
}

impl TimeDriven for RuntimeInner {
    fn on_time(self: Arc<Self>, now: DateTime<Utc>) -> Sleep {
        Box::pin(async move {
            // Alarms that set themselves due again run in the same advance, up to a bound.
            for _ in 0..1000 {
                if self.shared.alarms.next().is_none_or(|t| t > to_ms(now)) {
                    break;
                }
                self.fire_due(now, true).await;
            }
            self.evict_idle(now).await;
        })
    }
}

async fn alarm_loop(rt: Weak<RuntimeInner>) {
    loop {
        let Some(inner) = rt.upgrade() else { return };
        let shared = inner.shared.clone();
        let now = shared.clock.now();
        let next = shared.alarms.next();
        if next.is_some_and(|t| t <= to_ms(now)) {
            inner.fire_due(now, false).await;
            continue;
        }
        drop(inner);
        let changed = shared.alarms.changed.notified();
        let stop = shared.stop.notified();
        let sleep: Sleep = match next {
            Some(t) => shared.clock.sleep_until(from_ms(t)),
            None => Box::pin(std::future::pending()),
        };
        tokio::select! {
            _ = sleep => {}
            _ = changed => {}
            _ = stop => return,
        }
    }
}

async fn idle_loop(rt: Weak<RuntimeInner>) {
    loop {
        let Some(inner) = rt.upgrade() else { return };
        let shared = inner.shared.clone();
        inner.evict_idle(shared.clock.now()).await;
        drop(inner);
        let period = (shared.config.idle_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(15));
        let at = shared.clock.now()
            + chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX);
        let stop = shared.stop.notified();
        tokio::select! {
            _ = shared.clock.sleep_until(at) => {}
            _ = stop => return,
        }
    }
}

async fn lru_loop(rt: Weak<RuntimeInner>) {
    loop {
        let Some(inner) = rt.upgrade() else { return };
        let shared = inner.shared.clone();
        if !shared.lru_running.swap(true, Ordering::AcqRel) {
            inner.evict_lru().await;
            shared.lru_running.store(false, Ordering::Release);
        }
        drop(inner);
        let wanted = shared.lru_wanted.notified();
        let stop = shared.stop.notified();
        tokio::select! {
            _ = wanted => {}
            _ = stop => return,
        }
    }
}
