//! The runtime: namespaces, classes and shutdown; how it is built ([`builder`]), its alarms
//! ([`alarms`]), eviction ([`eviction`]) and vital signs ([`vitals`]) in rooms of their own.

mod alarms;
mod builder;
mod eviction;
mod vitals;

use alarms::alarm_loop;
use eviction::{idle_loop, lru_loop};

pub use builder::RuntimeBuilder;
pub use vitals::{ClassVitals, Vitals};

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

impl Runtime {
    /// A builder with the system clock and the default configuration; choose a store on it.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::new()
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

    /// Runs a call another node of the cluster forwarded here (see
    /// [`Cluster`](crate::Cluster)): on the object's namespace, if this node owns it and its
    /// class declared the message; otherwise the reply says why.
    pub async fn serve_peer(&self, call: crate::PeerCall) -> crate::PeerReply {
        match self.class(&call.class) {
            Ok(ns) => ns.serve_peer(call).await,
            Err(e) => crate::PeerReply::Failed(e),
        }
    }

    /// The namespace of the class another node names.
    fn class(&self, class: &str) -> Result<Arc<dyn NamespaceDyn>> {
        lock(&self.inner.namespaces)
            .get(class)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("class {class} on this node")))
    }

    /// Accepts a WebSocket another node relays to an object this node owns (see
    /// [`http::peer_routes`](crate::http::peer_routes)).
    #[cfg(feature = "http")]
    pub(crate) fn accept_peer_socket(
        &self,
        open: crate::http::PeerSocketOpen,
        upgrade: axum::extract::ws::WebSocketUpgrade,
    ) -> Result<axum::response::Response> {
        self.class(&open.class)?.accept_peer_socket(open, upgrade)
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
        self.object_sql(class, name, sql, params.into(), false)
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
        self.object_sql(class, name, sql, params.into(), true).await
    }

    /// One statement on an object's database, in a turn of the object; `writes` says whether
    /// it may change anything.
    async fn object_sql(
        &self,
        class: &str,
        name: &str,
        sql: &str,
        params: crate::Params,
        writes: bool,
    ) -> Result<crate::Cursor> {
        crate::validate_object_name(name).map_err(|e| Error::bad_request(e.to_string()))?;
        self.namespace_of(class)?
            .query_named(name.to_owned(), sql.to_owned(), params, writes)
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
        inner.shared.sockets.close_relays();
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

fn downcast<O: DurableObject>(ns: &Arc<dyn NamespaceDyn>) -> Result<Namespace<O>> {
    let any: Arc<dyn std::any::Any + Send + Sync> = ns.clone().into_any();
    any.downcast::<NsInner<O>>()
        .map(Namespace::from_inner)
        .map_err(|_| Error::ClassConflict { class: O::CLASS })
}

/// How long shutdown waits for WebSockets to finish closing.
const SOCKET_SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// How long a handover waits for the close turns of the sockets of objects leaving.
const SOCKET_HANDOVER_LIMIT: Duration = Duration::from_secs(2);

impl RuntimeInner {
    /// Closes with 1012 the WebSockets of the objects about to leave this node, and waits
    /// (at most [`SOCKET_HANDOVER_LIMIT`]) for their close turns, so they commit here
    /// while this node still owns the objects.
    pub(crate) async fn hand_over_sockets(&self, leaving: crate::Leaving) {
        let namespaces: Vec<_> = lock(&self.namespaces).values().cloned().collect();
        let all = futures_util::future::join_all(
            namespaces
                .into_iter()
                .map(|ns| ns.hand_over_sockets(leaving.clone())),
        );
        if tokio::time::timeout(SOCKET_HANDOVER_LIMIT, all)
            .await
            .is_err()
        {
            tracing::warn!(
                "WebSockets of objects leaving this node were still closing when it let them go"
            );
        }
    }

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
}
