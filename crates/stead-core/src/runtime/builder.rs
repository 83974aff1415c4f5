//! Building a runtime: the store, the clock, the configuration and the classes to register.

use super::*;

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
    cluster: Option<Arc<dyn crate::remote::Cluster>>,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl RuntimeBuilder {
    /// The system clock, the default configuration, no store chosen yet.
    pub(super) fn new() -> Self {
        RuntimeBuilder {
            backend: None,
            #[cfg(feature = "sqlite")]
            shards: None,
            durability: None,
            clock: Arc::new(SystemClock),
            config: RuntimeConfig::default(),
            registrations: Vec::new(),
            cluster: None,
        }
    }

    /// Makes the runtime one node of a cluster: calls to objects `cluster` places on other
    /// nodes are forwarded there (see [`Cluster`](crate::Cluster)), and calls forwarded
    /// here are served by [`Runtime::serve_peer`](crate::Runtime::serve_peer).
    pub fn cluster(mut self, cluster: Arc<dyn crate::remote::Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

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
            deadlines: Arc::default(),
            cluster: self.cluster,
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
        if let Some(cluster) = &inner.shared.cluster {
            let weak = weak.clone();
            cluster.on_handover(Arc::new(move |leaving| {
                let inner = weak.upgrade();
                Box::pin(async move {
                    if let Some(inner) = inner {
                        inner.hand_over_sockets(leaving).await;
                    }
                })
            }));
        }
        let mut tasks = vec![tokio::spawn(lru_loop(weak.clone()))];
        if let Some(manual) = inner.shared.clock.as_manual() {
            let driven: Weak<dyn TimeDriven> = weak;
            manual.drive(driven);
        } else {
            tasks.push(tokio::spawn(crate::executor::sweep_loop(Arc::downgrade(
                &inner.shared.deadlines,
            ))));
            tasks.push(tokio::spawn(alarm_loop(weak.clone())));
            if let Some(mut takeovers) = inner.shared.cluster.as_ref().and_then(|c| c.takeovers()) {
                // Objects taken over from another node bring their pending alarms.
                let weak = weak.clone();
                tasks.push(tokio::spawn(async move {
                    while takeovers.changed().await.is_ok() {
                        let Some(inner) = weak.upgrade() else { return };
                        inner.reload_alarms().await;
                    }
                }));
            }
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
