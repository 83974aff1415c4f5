//! The runtime: configuration, namespaces, the alarm scheduler, eviction and shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tokio::sync::Notify;

use crate::backend::{Backend, Durability, DynBackend, MemoryBackend};
use crate::clock::{Clock, Sleep, SystemClock, TimeDriven, from_ms, lock, to_ms};
use crate::error::{Error, Result};
use crate::executor::{AlarmOutcome, Namespace, NamespaceDyn, NsInner};
use crate::id::ObjectId;
use crate::object::DurableObject;

use crate::config::{NamespaceOptions, RuntimeConfig};
use crate::scheduler::{ALARM_PAGE, AlarmIndex, LOOKAHEAD_MS};
use crate::shared::Shared;

struct RuntimeInner {
    shared: Arc<Shared>,
    backend: Arc<dyn DynBackend>,
    memory: Arc<dyn DynBackend>,
    namespaces: Mutex<HashMap<&'static str, Arc<dyn NamespaceDyn>>>,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Where the runtime's own tasks run (a namespace may be registered outside a task).
    handle: tokio::runtime::Handle,
    /// One alarm load at a time: a class's first, or the horizon's move.
    loader: tokio::sync::Mutex<()>,
    /// Alarm loads of classes just registered, not yet awaited.
    loads: Mutex<Vec<tokio::task::JoinHandle<()>>>,
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
    Sqlite(PathBuf),
    Custom(Arc<dyn DynBackend>),
}

/// Registers a class on a runtime that was just built.
type Registration = Box<dyn FnOnce(&Runtime) -> Result<()> + Send>;

/// Builds a [`Runtime`]. Choose a store: [`sqlite`](Self::sqlite) (the embedded default of
/// the server and of real deployments), [`memory`](Self::memory) (tests, ephemeral state)
/// or [`backend`](Self::backend).
pub struct RuntimeBuilder {
    backend: Option<BackendChoice>,
    #[cfg(feature = "sqlite")]
    shards: Option<usize>,
    durability: Option<Durability>,
    clock: Arc<dyn Clock>,
    config: RuntimeConfig,
    registrations: Vec<(&'static str, Registration)>,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl RuntimeBuilder {
    /// Stores data in SQLite files under `dir` (the embedded default). One runtime per
    /// directory: a second one fails to build while the first holds it.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, dir: impl Into<PathBuf>) -> Self {
        self.backend = Some(BackendChoice::Sqlite(dir.into()));
        self
    }

    /// With [`sqlite`](Self::sqlite), in either order: how many shard files (and writer
    /// threads); fixed when the directory is created (default: the directory's count, or one
    /// per two cores, at most 8, for a new one).
    #[cfg(feature = "sqlite")]
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Keeps everything in process memory (tests, ephemeral state): namespaces get
    /// [`Durability::Memory`], and choosing another durability is an error.
    pub fn memory(mut self) -> Self {
        self.backend = Some(BackendChoice::Memory);
        self
    }

    /// Uses this backend (pass an `Arc` to keep a handle on it).
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.backend = Some(BackendChoice::Custom(Arc::new(backend)));
        self
    }

    /// Registers class `O` with `env` as the runtime is built, before anything else can
    /// run: its alarms pending from an earlier run fire from the start. (A class registered
    /// later with [`Runtime::namespace`] has its pending alarms fire from then on.)
    pub fn register<O: DurableObject>(self, env: O::Env) -> Self
    where
        O::Env: Send,
    {
        self.register_with::<O>(env, NamespaceOptions::default())
    }

    /// Like [`register`](Self::register), with namespace options.
    pub fn register_with<O: DurableObject>(mut self, env: O::Env, opts: NamespaceOptions) -> Self
    where
        O::Env: Send,
    {
        self.registrations.push((
            O::CLASS,
            Box::new(move |rt: &Runtime| rt.namespace_with::<O>(env, opts).map(|_| ())),
        ));
        self
    }

    /// Uses this clock (a [`crate::ManualClock`] in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The default durability of namespaces (default [`Durability::Fsync`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
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

    /// Limits of every object's SQL database (size, statement deadline, page cache).
    pub fn sql(mut self, config: crate::SqlConfig) -> Self {
        self.config.sql = config;
        self
    }

    /// The memory cap of each object's cache.
    pub fn cache_bytes_per_object(mut self, n: usize) -> Self {
        self.config.cache_bytes_per_object = n;
        self
    }

    /// How long a call waits for its reply before [`Error::Timeout`] (default 30 s).
    pub fn ask_timeout(mut self, d: Duration) -> Self {
        self.config.ask_timeout = d;
        self
    }

    /// Whether a call to an idle object runs its turn in the caller's task (default `true`;
    /// see [`crate::RuntimeConfig::inline_turns`]).
    pub fn inline_turns(mut self, on: bool) -> Self {
        self.config.inline_turns = on;
        self
    }

    /// Limits and timers of WebSockets (see [`crate::WebSocketConfig`]).
    pub fn websocket(mut self, config: crate::WebSocketConfig) -> Self {
        self.config.websocket = config;
        self
    }

    /// Alarm retries: the first wait (doubling each time) and how many retries.
    pub fn alarm_retries(mut self, first: Duration, max_retries: u32) -> Self {
        self.config.alarm_first_retry = first;
        self.config.alarm_max_retries = max_retries;
        self
    }

    /// Replaces the whole configuration (its `durability` too, unless
    /// [`durability`](Self::durability) is called after this).
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.durability = Some(config.durability);
        self.config = config;
        self
    }

    /// Opens the backend, starts the runtime and registers the classes given to
    /// [`register`](Self::register). Must be called inside a tokio runtime.
    ///
    /// Fails with [`Error::InvalidConfig`] when no store was chosen, when `.memory()` is
    /// combined with a durability other than `Memory`, or when `.shards(..)` is given
    /// without `.sqlite(..)`; with the SQLite store, also when the directory is in use by
    /// another runtime.
    pub async fn build(self) -> Result<Runtime> {
        // Before any backend starts SQLite in the process (see the function).
        crate::sql::vfs::configure_sqlite();
        let memory: Arc<dyn DynBackend> = Arc::new(MemoryBackend::new());
        let mut config = self.config;
        let Some(choice) = self.backend else {
            return Err(Error::invalid_config(
                "no store chosen: build the runtime with .sqlite(dir) (durable, the embedded default) or .memory() (tests, ephemeral state)",
            ));
        };
        #[cfg(feature = "sqlite")]
        if self.shards.is_some() && !matches!(choice, BackendChoice::Sqlite(_)) {
            return Err(Error::invalid_config(
                ".shards(n) applies to the SQLite store only: add .sqlite(dir)",
            ));
        }
        let backend = match choice {
            BackendChoice::Memory => {
                match self.durability {
                    None | Some(Durability::Memory) => {}
                    Some(other) => {
                        return Err(Error::invalid_config(format!(
                            "a .memory() runtime keeps nothing on disk, so durability {other:?} cannot hold: use .sqlite(dir), or Durability::Memory"
                        )));
                    }
                }
                config.durability = Durability::Memory;
                memory.clone()
            }
            #[cfg(feature = "sqlite")]
            BackendChoice::Sqlite(dir) => {
                config.durability = self.durability.unwrap_or(config.durability);
                let opts = crate::backend::sqlite::SqliteOptions {
                    shards: self.shards,
                };
                let b = tokio::task::spawn_blocking(move || {
                    crate::backend::sqlite::SqliteBackend::open(dir, opts)
                })
                .await
                .map_err(Error::storage)??;
                Arc::new(b) as Arc<dyn DynBackend>
            }
            BackendChoice::Custom(b) => {
                config.durability = self.durability.unwrap_or(config.durability);
                b
            }
        };
        let shared = Arc::new(Shared {
            clock: self.clock,
            sql_limits: Arc::new(config.sql.limits()),
            config,
            alarms: AlarmIndex::default(),
            closed: Arc::new(AtomicBool::new(false)),
            live_objects: AtomicUsize::new(0),
            objects_done: Notify::new(),
            lru_running: AtomicBool::new(false),
            lru_wanted: Notify::new(),
            stop: Notify::new(),
            sockets: crate::shared::SocketCount::default(),
        });
        shared
            .alarms
            .advance_horizon(to_ms(shared.clock.now()).saturating_add(LOOKAHEAD_MS));
        let inner = Arc::new(RuntimeInner {
            shared,
            backend,
            memory,
            namespaces: Mutex::new(HashMap::new()),
            background: Mutex::new(Vec::new()),
            handle: tokio::runtime::Handle::current(),
            loader: tokio::sync::Mutex::new(()),
            loads: Mutex::new(Vec::new()),
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
        let rt = Runtime { inner };
        for (_, register) in self.registrations {
            register(&rt)?;
        }
        rt.warn_unregistered_alarms().await;
        Ok(rt)
    }
}

impl Runtime {
    /// A builder with the system clock and the default configuration; choose a store on it.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            backend: None,
            #[cfg(feature = "sqlite")]
            shards: None,
            durability: None,
            clock: Arc::new(SystemClock),
            config: RuntimeConfig::default(),
            registrations: Vec::new(),
        }
    }

    /// Registers class `O` with its environment and returns its namespace. A class is
    /// registered once per runtime: a second call fails with [`Error::AlreadyRegistered`]
    /// (find the registered one with [`get_namespace`](Self::get_namespace)), so that two
    /// parts of a program cannot silently share a namespace built with another `env`.
    ///
    /// Alarms of `O` still pending from an earlier run fire from the moment it is
    /// registered; [`RuntimeBuilder::register`] registers it before the runtime starts.
    pub fn namespace<O: DurableObject>(&self, env: O::Env) -> Result<Namespace<O>> {
        self.namespace_with(env, NamespaceOptions::default())
    }

    /// The namespace of class `O`, if it is registered.
    pub fn get_namespace<O: DurableObject>(&self) -> Result<Option<Namespace<O>>> {
        let map = lock(&self.inner.namespaces);
        map.get(O::CLASS).map(|ns| downcast::<O>(ns)).transpose()
    }

    /// Like [`namespace`](Self::namespace), with options.
    pub fn namespace_with<O: DurableObject>(
        &self,
        env: O::Env,
        opts: NamespaceOptions,
    ) -> Result<Namespace<O>> {
        let (ns, registered) = self.get_or_register(opts, || env)?;
        if registered {
            Ok(ns)
        } else {
            Err(Error::AlreadyRegistered { class: O::CLASS })
        }
    }

    /// The namespace of `O` registered with `env` and `opts`: registers it, or, when it is
    /// registered already, checks that it was with an equal environment (an
    /// [`Error::InvalidConfig`] otherwise). For a library client's `with_config(&rt, config)`:
    /// the configuration lives in the environment, so two parts of a program cannot set the
    /// same pattern up two ways without hearing of it.
    pub fn configured_namespace<O: DurableObject>(
        &self,
        env: O::Env,
        opts: NamespaceOptions,
    ) -> Result<Namespace<O>>
    where
        O::Env: PartialEq,
    {
        let mut wanted = Some(env);
        let (ns, registered) = self.get_or_register(opts, || {
            // The closure runs at most once, and only when nothing else took the value.
            wanted
                .take()
                .unwrap_or_else(|| unreachable!("make_env runs once"))
        })?;
        match wanted {
            Some(env) if !registered && env != **ns.env() => Err(Error::invalid_config(format!(
                "class {} is already set up with another configuration in this runtime; configure it once, before its first use",
                O::CLASS
            ))),
            _ => Ok(ns),
        }
    }

    /// The registered namespace of `O`, or a new registration with `make_env()` and
    /// `opts` when there is none, in one step (two callers racing get the same one). The
    /// flag says whether this call registered it. For a library that shares one namespace
    /// among its clients: it compares the registered environment with the one it wants.
    pub fn get_or_register<O: DurableObject>(
        &self,
        opts: NamespaceOptions,
        make_env: impl FnOnce() -> O::Env,
    ) -> Result<(Namespace<O>, bool)> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let mut map = lock(&self.inner.namespaces);
        if let Some(existing) = map.get(O::CLASS) {
            return Ok((downcast::<O>(existing)?, false));
        }
        let durability = opts.durability.unwrap_or(shared.config.durability);
        let backend = if durability == Durability::Memory {
            self.inner.memory.clone()
        } else {
            self.inner.backend.clone()
        };
        let ns = Arc::new(NsInner::<O>::new(
            shared.clone(),
            Arc::new(make_env()),
            backend.clone(),
            durability,
        ));
        map.insert(O::CLASS, ns.clone());
        drop(map);
        // Its alarms due before the horizon, read in the background; the scheduler waits
        // for the read before it next fires anything.
        let inner = self.inner.clone();
        let load = self
            .inner
            .handle
            .spawn(async move { inner.load_class(O::CLASS, backend).await });
        lock(&self.inner.loads).push(load);
        Ok((Namespace::from_inner(ns), true))
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

    /// How many alarms the runtime holds in memory: those due within the next minute (the
    /// scheduler's lookahead), and those set by this process whose commit is not yet durable.
    /// Alarms due later wait in the store.
    pub async fn pending_alarms(&self) -> usize {
        self.inner.settle_loads().await;
        self.inner.shared.alarms.len()
    }

    /// The runtime's vital signs now: turns run so far (per class and in all), objects in
    /// memory, alarms held. Two readings a second apart give turns per second.
    pub async fn vitals(&self) -> Vitals {
        let namespaces: Vec<_> = lock(&self.inner.namespaces).values().cloned().collect();
        let mut classes: Vec<ClassVitals> = namespaces
            .iter()
            .map(|ns| {
                let (commits_timed, commit_nanos) = ns.commit_latency();
                ClassVitals {
                    class: ns.class().to_owned(),
                    active_objects: ns.active(),
                    turns: ns.turns(),
                    open_websockets: ns.open_websockets(),
                    commits_timed,
                    commit_seconds: commit_nanos as f64 / 1e9,
                }
            })
            .collect();
        classes.sort_by(|a, b| a.class.cmp(&b.class));
        Vitals {
            at: self.inner.shared.clock.now(),
            turns: classes.iter().map(|c| c.turns).sum(),
            open_websockets: classes.iter().map(|c| c.open_websockets).sum(),
            commits_timed: classes.iter().map(|c| c.commits_timed).sum(),
            commit_seconds: classes.iter().map(|c| c.commit_seconds).sum(),
            active_objects: self.active_objects(),
            pending_alarms: self.pending_alarms().await,
            classes,
        }
    }

    /// The classes registered on this runtime, in order.
    pub fn classes(&self) -> Vec<&'static str> {
        let mut classes: Vec<_> = lock(&self.inner.namespaces).keys().copied().collect();
        classes.sort_unstable();
        classes
    }

    fn namespace_of(&self, class: &str) -> Result<Arc<dyn NamespaceDyn>> {
        lock(&self.inner.namespaces)
            .get(class)
            .cloned()
            .ok_or_else(|| Error::bad_request(format!("no class {class:?} is registered")))
    }

    /// The names of the objects of `class` that start with `prefix` (and have stored
    /// something), in order, at most `limit`: a search for an operator, without knowing
    /// the class's Rust type.
    pub async fn find_objects(
        &self,
        class: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.namespace_of(class)?
            .find(prefix.to_owned(), limit)
            .await
    }

    /// The object `name` of `class` as a document (see [`crate::Stub::export`]), without
    /// knowing the class's Rust type.
    pub async fn export_object(&self, class: &str, name: &str) -> Result<crate::ObjectDocument> {
        crate::validate_object_name(name).map_err(|e| Error::bad_request(e.to_string()))?;
        self.namespace_of(class)?
            .export_named(name.to_owned())
            .await
    }

    /// A statement that only reads on the SQL database of the object `name` of `class` (see
    /// [`crate::Stub::query`]), without knowing the class's Rust type: the inspector's and
    /// an operator's way into an object's tables.
    pub async fn query_object(
        &self,
        class: &str,
        name: &str,
        sql: &str,
        params: impl Into<crate::Params>,
    ) -> Result<crate::Cursor> {
        crate::validate_object_name(name).map_err(|e| Error::bad_request(e.to_string()))?;
        self.namespace_of(class)?
            .query_named(name.to_owned(), sql.to_owned(), params.into(), false)
            .await
    }

    /// Any statement on the SQL database of the object `name` of `class`, in a turn of the
    /// object, committed like its own writes: an operator's write from a console. It goes
    /// around the object's code and rules, so use it as you would a write into another
    /// program's database; the object in memory is dropped after it and activates again from
    /// what it holds. A statement that fails changes nothing.
    pub async fn execute_object(
        &self,
        class: &str,
        name: &str,
        sql: &str,
        params: impl Into<crate::Params>,
    ) -> Result<crate::Cursor> {
        crate::validate_object_name(name).map_err(|e| Error::bad_request(e.to_string()))?;
        self.namespace_of(class)?
            .query_named(name.to_owned(), sql.to_owned(), params.into(), true)
            .await
    }

    /// How many objects of `class` hold something (alarms and schedules included), counted
    /// up to `up_to`: `up_to + 1` means more than that. One read of the registry, for an
    /// operator's overview.
    pub async fn count_objects(&self, class: &str, up_to: usize) -> Result<usize> {
        self.namespace_of(class)?.count(up_to).await
    }

    /// Replaces what the object `name` of `class` holds with `doc` (see
    /// [`crate::Stub::import`]: a restore under the name it was exported from, a fork under
    /// another), without knowing the class's Rust type.
    pub async fn import_object(
        &self,
        class: &str,
        name: &str,
        doc: crate::ObjectDocument,
    ) -> Result<()> {
        crate::validate_object_name(name).map_err(|e| Error::bad_request(e.to_string()))?;
        self.namespace_of(class)?
            .import_named(name.to_owned(), doc)
            .await
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shared.closed.load(Ordering::Acquire)
    }

    /// Logs, once, the classes that have alarms pending in the store but are not registered
    /// (their alarms wait until they are).
    async fn warn_unregistered_alarms(&self) {
        let classes = match self.inner.backend.alarm_classes().await {
            Ok(classes) => classes,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the classes with pending alarms");
                return;
            }
        };
        let registered = lock(&self.inner.namespaces);
        let waiting: Vec<_> = classes
            .into_iter()
            .filter(|c| !registered.contains_key(c.as_str()))
            .collect();
        if !waiting.is_empty() {
            tracing::warn!(
                classes = ?waiting,
                "alarms are pending for classes this runtime has not registered yet; they fire once each class is registered (register classes with Runtime::builder().register::<C>(env) to fire them from the start)"
            );
        }
    }

    /// Stops taking messages, lets every object finish the messages it has, flushes every
    /// commit, releases the store (another runtime may then open it), then returns. Calls
    /// waiting on replies that an object still holds parked fail with
    /// [`Error::ShuttingDown`].
    pub async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        inner.shared.closed.store(true, Ordering::Release);
        inner.shared.stop.notify_waiters();
        let namespaces: Vec<_> = lock(&inner.namespaces).values().cloned().collect();
        inner.wait_for_objects(&namespaces).await;
        // Turns in flight are done and what they sent is queued: now the sockets close with
        // 1001, and their close turns run (activating objects again where needed).
        if inner.shared.sockets.live() > 0 {
            for ns in &namespaces {
                ns.stop_sockets();
            }
            inner.shared.sockets.wait_gone(SOCKET_SHUTDOWN_LIMIT).await;
        }
        inner.shared.sockets.set_done();
        inner.wait_for_objects(&namespaces).await;
        for t in lock(&inner.background).drain(..) {
            t.abort();
        }
        for t in lock(&inner.loads).drain(..) {
            t.abort();
        }
        inner.memory.close().await?;
        inner.backend.close().await
    }
}

/// The runtime's vital signs at one instant (see [`Runtime::vitals`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Vitals {
    /// When they were read (the runtime's clock).
    pub at: chrono::DateTime<chrono::Utc>,
    /// Turns run since the runtime started, over every class.
    pub turns: u64,
    /// Objects in memory.
    pub active_objects: usize,
    /// Alarms the runtime holds in memory (due soon, or not yet durable).
    pub pending_alarms: usize,
    /// WebSockets the runtime holds open for objects.
    pub open_websockets: usize,
    /// Commits timed since the runtime started (a sample: at most one in flight per object
    /// is timed, from its submission to its acknowledgement)...
    pub commits_timed: u64,
    /// ...and their latencies summed, in seconds: the difference of two readings divided by
    /// the difference of their `commits_timed` is the mean commit latency between them.
    pub commit_seconds: f64,
    /// Per class.
    pub classes: Vec<ClassVitals>,
}

/// One class's vital signs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ClassVitals {
    /// The class.
    pub class: String,
    /// Its objects in memory.
    pub active_objects: usize,
    /// Turns its objects ran since the runtime started.
    pub turns: u64,
    /// WebSockets its objects hold open.
    pub open_websockets: usize,
    /// Commits of its objects timed (see [`Vitals::commits_timed`]).
    pub commits_timed: u64,
    /// Their latencies summed, in seconds.
    pub commit_seconds: f64,
}

fn downcast<O: DurableObject>(ns: &Arc<dyn NamespaceDyn>) -> Result<Namespace<O>> {
    let any: Arc<dyn std::any::Any + Send + Sync> = ns.clone().into_any();
    any.downcast::<NsInner<O>>()
        .map(Namespace::from_inner)
        .map_err(|_| Error::ClassConflict { class: O::CLASS })
}

/// How long shutdown waits for WebSockets to finish closing.
const SOCKET_SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

impl RuntimeInner {
    /// Waits until every object has finished its turns, flushed its commits and left.
    async fn wait_for_objects(&self, namespaces: &[Arc<dyn NamespaceDyn>]) {
        loop {
            let done = self.shared.objects_done.notified();
            if self.shared.live_objects.load(Ordering::Acquire) == 0 {
                break;
            }
            for ns in namespaces {
                ns.stop_all();
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), done).await;
        }
    }

    /// Reads the alarms of a class just registered that are due before the horizon, and
    /// the earliest one after it. Tried a few times: a class whose alarms cannot be read
    /// has them wait for a restart, which the log says.
    async fn load_class(self: Arc<Self>, class: &'static str, backend: Arc<dyn DynBackend>) {
        let _one_at_a_time = self.loader.lock().await;
        let horizon = self.shared.alarms.horizon();
        let mut tries = 0;
        loop {
            let loaded = async {
                self.load_range(class, &backend, None, horizon).await?;
                let beyond = backend
                    .due_alarms(class, Some((horizon, ObjectId::MAX)), i64::MAX, 1)
                    .await?;
                self.shared
                    .alarms
                    .lower_beyond(beyond.first().map(|(at, _)| *at));
                Ok::<(), Error>(())
            };
            match loaded.await {
                Ok(()) => return,
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::warn!(class, error = %e, "reading the class's alarms failed; trying again");
                    tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                }
                Err(e) => {
                    tracing::error!(class, error = %e, "could not read the class's alarms; they fire after a restart");
                    return;
                }
            }
        }
    }

    /// Reads a class's alarms due in `(after, until]` into the index, page by page.
    async fn load_range(
        &self,
        class: &'static str,
        backend: &Arc<dyn DynBackend>,
        after: Option<i64>,
        until: i64,
    ) -> Result<()> {
        let mut cursor = after.map(|at| (at, ObjectId::MAX));
        loop {
            let page = backend.due_alarms(class, cursor, until, ALARM_PAGE).await?;
            self.shared.alarms.loaded(class, &page);
            if page.len() < ALARM_PAGE {
                return Ok(());
            }
            cursor = page.last().copied();
        }
    }

    /// Waits for the alarm loads of classes registered so far.
    async fn settle_loads(&self) {
        let loads: Vec<_> = lock(&self.loads).drain(..).collect();
        for load in loads {
            let _ = load.await;
        }
    }

    /// Moves the horizon to a lookahead past `now` when it has come within half of one,
    /// reading the alarms it passes; on a failure it stays where it was, to be tried again.
    /// Returns whether the horizon is where it should be.
    async fn extend_horizon(&self, now: i64) -> bool {
        if self.shared.alarms.horizon() > now.saturating_add(LOOKAHEAD_MS / 2) {
            return true;
        }
        let _one_at_a_time = self.loader.lock().await;
        let to = now.saturating_add(LOOKAHEAD_MS);
        let old = self.shared.alarms.advance_horizon(to);
        if old >= to {
            return true;
        }
        let classes: Vec<_> = lock(&self.namespaces)
            .iter()
            .map(|(class, ns)| (*class, ns.backend()))
            .collect();
        let loaded = async {
            let mut beyond: Option<i64> = None;
            for (class, backend) in &classes {
                self.load_range(class, backend, Some(old), to).await?;
                let next = backend
                    .due_alarms(class, Some((to, ObjectId::MAX)), i64::MAX, 1)
                    .await?;
                if let Some((at, _)) = next.first() {
                    beyond = Some(beyond.map_or(*at, |b| b.min(*at)));
                }
            }
            Ok::<_, Error>(beyond)
        };
        match loaded.await {
            Ok(beyond) => {
                self.shared.alarms.set_beyond(beyond);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the alarms due next failed; trying again");
                self.shared.alarms.retreat_horizon(old);
                false
            }
        }
    }

    /// Delivers every due alarm and waits for the deliveries. With `wait` false (the system
    /// clock), deliveries run in the background.
    async fn fire_due(self: &Arc<Self>, now: DateTime<Utc>, wait: bool) {
        let due = self.shared.alarms.take_due(to_ms(now));
        if due.is_empty() {
            return;
        }
        let namespaces = lock(&self.namespaces).clone();
        let mut deliveries = Vec::new();
        for ((class, id), failures) in due {
            let Some(ns) = namespaces.get(class).cloned() else {
                continue;
            };
            let shared = self.shared.clone();
            let delivery = async move {
                match ns.deliver_alarm(id).await {
                    // Not delivered (the object could not activate or read its alarm): try
                    // again with backoff. Failures of the alarm handler itself are retried
                    // by the object, with counts kept in its storage.
                    AlarmOutcome::Failed if !shared.closed.load(Ordering::Acquire) => {
                        let backoff = shared.config.retry_backoff(failures);
                        let at = to_ms(shared.clock.now())
                            .saturating_add(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX));
                        shared.alarms.retry((class, id), at, failures + 1);
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
    fn next_due(&self) -> Option<DateTime<Utc>> {
        self.shared.alarms.next_due().map(from_ms)
    }

    fn on_time(self: Arc<Self>, now: DateTime<Utc>) -> Sleep {
        Box::pin(async move {
            self.settle_loads().await;
            let _ = self.extend_horizon(to_ms(now)).await;
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
        inner.settle_loads().await;
        let now = shared.clock.now();
        let extended = inner.extend_horizon(to_ms(now)).await;
        let next = shared.alarms.next();
        if next.is_some_and(|t| t <= to_ms(now)) {
            inner.fire_due(now, false).await;
            continue;
        }
        drop(inner);
        let changed = shared.alarms.changed.notified();
        let stop = shared.stop.notified();
        // Wake for the next alarm, or to move the horizon on (after a failed read, a second
        // later).
        let extend_at = if extended {
            shared.alarms.horizon().saturating_sub(LOOKAHEAD_MS / 2)
        } else {
            to_ms(now).saturating_add(1000)
        };
        let wake = next.map_or(extend_at, |t| t.min(extend_at));
        let sleep: Sleep = shared.clock.sleep_until(from_ms(wake));
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
