//! Runtimes for tests: a manual clock, a store, and a directory that lives as long as they do.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use stead_core::{ManualClock, Runtime, RuntimeBuilder};

type Tune = dyn Fn(RuntimeBuilder) -> RuntimeBuilder + Send + Sync;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Memory,
    Sqlite,
}

/// A runtime on a manual clock, for tests. It dereferences to its [`Runtime`], so
/// `CounterClient::new(&t)` works as with a runtime.
///
/// Time moves only when the test says so ([`advance`](Self::advance)); SQLite files live in a
/// temporary directory removed when the value is dropped.
pub struct TestRuntime {
    /// The runtime.
    pub rt: Runtime,
    /// Its clock, which moves only when told to.
    pub clock: ManualClock,
    dir: tempfile::TempDir,
    store: Store,
    tune: Arc<Tune>,
}

impl std::fmt::Debug for TestRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRuntime")
            .field("store", &self.store)
            .field("dir", &self.dir.path())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for TestRuntime {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.rt
    }
}

impl TestRuntime {
    /// A runtime on the memory store, its clock at [`start_time`](crate::start_time).
    pub async fn memory() -> TestRuntime {
        Self::builder().start().await
    }

    /// A runtime on SQLite (two shards) in a fresh temporary directory, its clock at
    /// [`start_time`](crate::start_time).
    pub async fn sqlite() -> TestRuntime {
        Self::builder().sqlite().start().await
    }

    /// Chooses the store, the clock's start and the runtime's settings.
    pub fn builder() -> TestRuntimeBuilder {
        TestRuntimeBuilder {
            store: Store::Memory,
            start: crate::start_time(),
            tune: Arc::new(|b| b),
        }
    }

    /// The directory the SQLite files are in (empty on the memory store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Moves the clock forward by `by`, firing everything that falls due on the way and
    /// waiting for its turns (see [`ManualClock::advance`]).
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by).await;
    }

    /// Shuts the runtime down cleanly and opens a new one on the same files and the same
    /// clock, as a process restart would.
    ///
    /// # Panics
    /// On the memory store, which keeps nothing to restart from.
    pub async fn restart(self) -> TestRuntime {
        assert!(
            self.store == Store::Sqlite,
            "a memory runtime keeps nothing across a restart; use TestRuntime::sqlite()"
        );
        self.rt.shutdown().await.expect("the runtime shuts down");
        self.reopen().await
    }

    async fn reopen(self) -> TestRuntime {
        let TestRuntime {
            clock,
            dir,
            store,
            tune,
            ..
        } = self;
        let rt = build(store, tune.as_ref(), &clock, dir.path()).await;
        TestRuntime {
            rt,
            clock,
            dir,
            store,
            tune,
        }
    }

    /// Shuts the runtime down (as [`Runtime::shutdown`]).
    pub async fn shutdown(self) -> stead_core::Result<()> {
        self.rt.shutdown().await
    }
}

/// Settings of a [`TestRuntime`] before it starts.
pub struct TestRuntimeBuilder {
    store: Store,
    start: DateTime<Utc>,
    tune: Arc<Tune>,
}

impl std::fmt::Debug for TestRuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRuntimeBuilder")
            .field("store", &self.store)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl TestRuntimeBuilder {
    /// SQLite (two shards) in a fresh temporary directory instead of the memory store.
    pub fn sqlite(mut self) -> Self {
        self.store = Store::Sqlite;
        self
    }

    /// Where the clock starts (RFC 3339, for example `"2026-03-01T00:00:00.25Z"`).
    ///
    /// # Panics
    /// When `at` is not an RFC 3339 instant.
    pub fn starting_at(mut self, at: &str) -> Self {
        self.start = at
            .parse()
            .unwrap_or_else(|e| panic!("{at:?} is not an RFC 3339 instant: {e}"));
        self
    }

    /// Further settings of the runtime (limits, timeouts, durability), applied after the
    /// store and the clock, and again on every restart.
    pub fn tune(
        mut self,
        tune: impl Fn(RuntimeBuilder) -> RuntimeBuilder + Send + Sync + 'static,
    ) -> Self {
        self.tune = Arc::new(tune);
        self
    }

    /// Starts the runtime.
    pub async fn start(self) -> TestRuntime {
        let clock = ManualClock::new(self.start);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let rt = build(self.store, self.tune.as_ref(), &clock, dir.path()).await;
        TestRuntime {
            rt,
            clock,
            dir,
            store: self.store,
            tune: self.tune,
        }
    }
}

async fn build(store: Store, tune: &Tune, clock: &ManualClock, dir: &Path) -> Runtime {
    let b = Runtime::builder().clock(Arc::new(clock.clone()));
    let b = match store {
        Store::Memory => b.memory(),
        Store::Sqlite => b.sqlite(dir).shards(2),
    };
    tune(b).build().await.expect("the test runtime starts")
}
