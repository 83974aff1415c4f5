//! Test support for backends and for code built on stead (the `test-util` feature).
//!
//! - [`conformance!`](crate::conformance) runs every storage, alarm and turn promise of the
//!   runtime against a backend, as one test each. Every backend of this crate runs it, and
//!   a backend in another crate runs the very same suite:
//!
//! ```
//! mod memory {
//!     // The closure chooses the store of a runtime builder (it gets a fresh directory).
//!     stead_core::conformance!(|b, _dir| b.memory());
//! }
//! ```
//!
//! - [`crash_test!`](crate::crash_test) kills a process writing through the backend with
//!   SIGKILL at random moments, reopens the store and checks that nothing acknowledged was
//!   lost.
//! - [`FaultyBackend`] wraps a backend and fails, stalls or fences chosen commits.
//! - [`Harness`] is a runtime on a manual clock, and [`probe`] the object the suite drives.

mod crash;
pub mod probe;
#[doc(hidden)]
pub mod suite;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

pub use crate::backend::fault::FaultyBackend;
#[doc(hidden)]
pub use crash::{crash_child, crash_rounds};

use crate::{ManualClock, Runtime, RuntimeBuilder};

/// How a test chooses the store of its runtime: given a builder (with a manual clock set)
/// and a fresh directory that lives as long as the runtime, it returns the builder with a
/// store chosen.
pub type Setup = dyn Fn(RuntimeBuilder, &Path) -> RuntimeBuilder + Send + Sync;

/// A runtime on a manual clock, with the directory its store may use.
#[derive(Debug)]
pub struct Harness {
    /// The runtime.
    pub rt: Runtime,
    /// Its clock, which only moves when told to.
    pub clock: ManualClock,
    /// The directory given to the setup; removed when the harness is dropped.
    pub dir: tempfile::TempDir,
    /// Runs what the setup asked for with [`on_teardown`], after the fields above (it is
    /// only ever dropped).
    _teardown: Teardown,
}

type Cleanup = Box<dyn FnOnce() + Send>;

/// What setups asked to be done at the end of the test that gave them a directory.
fn cleanups() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Vec<Cleanup>>> {
    static CLEANUPS: LazyLock<Mutex<HashMap<PathBuf, Vec<Cleanup>>>> =
        LazyLock::new(Mutex::default);
    CLEANUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks that `f` run once the test that gave a setup `dir` is over (its runtime dropped):
/// how a backend that keeps its data outside the directory (a database schema) cleans
/// up after each test.
///
/// ```
/// # use stead_core::RuntimeBuilder;
/// # fn drop_schema(_: &str) {}
/// let setup = |b: RuntimeBuilder, dir: &std::path::Path| {
///     stead_core::testing::on_teardown(dir, || drop_schema("test_schema"));
///     b.memory()
/// };
/// # let _ = setup;
/// ```
pub fn on_teardown(dir: &Path, f: impl FnOnce() + Send + 'static) {
    cleanups()
        .entry(dir.to_path_buf())
        .or_default()
        .push(Box::new(f));
}

/// Runs (once) what was asked for `dir`.
pub(crate) fn tear_down(dir: &Path) {
    let due = cleanups().remove(dir).unwrap_or_default();
    for f in due {
        f();
    }
}

/// Tears down its directory's cleanups when dropped.
#[derive(Debug)]
struct Teardown(PathBuf);

impl Drop for Teardown {
    fn drop(&mut self) {
        tear_down(&self.0);
    }
}

/// When every harness's clock starts: 2026-01-01T00:00:00Z.
pub fn start_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

impl Harness {
    /// A runtime built by `setup`.
    pub async fn start(setup: &Setup) -> Harness {
        Self::start_with(setup, |b| b).await
    }

    /// A runtime built by `setup`, then `tune` (limits, timeouts).
    pub async fn start_with(
        setup: &Setup,
        tune: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    ) -> Harness {
        let clock = ManualClock::new(start_time());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let builder = Runtime::builder().clock(Arc::new(clock.clone()));
        let teardown = Teardown(dir.path().to_path_buf());
        let rt = tune(setup(builder, dir.path()))
            .build()
            .await
            .expect("the runtime starts");
        Harness {
            rt,
            clock,
            dir,
            _teardown: teardown,
        }
    }
}

/// Runs a test's future on a new tokio runtime: one thread, or two workers.
#[doc(hidden)]
pub fn block_on<F: Future<Output = ()>>(multi_thread: bool, f: F) {
    let rt = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    rt.expect("a tokio runtime").block_on(f);
}

/// Runs the conformance suite against a backend: one `#[test]` per case, in the module
/// where it is invoked. The argument is a [`Setup`] closure that chooses the store.
///
/// ```
/// mod sqlite {
///     stead_core::conformance!(|b, dir| b.sqlite(dir).shards(2));
/// }
/// mod faulty {
///     use stead_core::{MemoryBackend, testing::FaultyBackend};
///     stead_core::conformance!(|b, _| b.backend(FaultyBackend::new(MemoryBackend::new())));
/// }
/// ```
#[macro_export]
macro_rules! conformance {
    ($setup:expr) => {
        $crate::conformance!(@cases $setup;
            read_your_writes false,
            panic_discards_the_whole_turn false,
            rollback_discards_earlier_writes_of_the_turn false,
            turns_are_serial_under_concurrent_callers true,
            keys_and_values_are_validated false,
            delete_all_removes_keys_alarm_and_registry_entry false,
            registry_lists_objects_with_names false,
            identity_is_known_inside_the_object false,
            alarms_fire_once_after_their_time false,
            alarms_wake_evicted_objects false,
            schedules_run_once_interval_and_cron false,
            deferred_replies_wait_for_a_later_turn false,
            sql_commits_with_the_turn false,
            sql_is_deleted_with_the_object false,
            sql_agrees_with_plain_sqlite true,
        );
        #[test]
        fn list_agrees_with_a_model() {
            let setup: &$crate::testing::Setup = &$setup;
            $crate::testing::block_on(true, $crate::testing::suite::list_agrees_with_a_model(setup));
        }
    };
    (@cases $setup:expr; $($case:ident $multi:literal,)*) => {
        $(
            #[test]
            fn $case() {
                let setup: &$crate::testing::Setup = &$setup;
                $crate::testing::block_on($multi, async {
                    $crate::testing::suite::$case($crate::testing::Harness::start(setup).await).await
                });
            }
        )*
    };
}

/// Checks crash consistency with real SIGKILLs: a child process (this test binary, started
/// again) increments counters through the backend as fast as it can (each turn also adds a
/// row to the object's SQL table) and prints each
/// acknowledged value; the parent kills it at a random moment, reopens the store and checks
/// that every stored value is at least the last acknowledged one. Three rounds, in `Fsync`
/// and in `ProcessCrashSafe` durability. The setup must open the same store each time for
/// the same directory.
///
/// ```no_run
/// stead_core::crash_test!(|b, dir| b.sqlite(dir));
/// ```
#[macro_export]
macro_rules! crash_test {
    ($setup:expr) => {
        #[test]
        fn acknowledged_writes_survive_sigkill() {
            let setup: &$crate::testing::Setup = &$setup;
            $crate::testing::crash_rounds(
                setup,
                $crate::Durability::Fsync,
                concat!(module_path!(), "::crash_child_process"),
            );
        }
        #[test]
        fn acknowledged_writes_survive_sigkill_in_process_crash_safe_mode() {
            let setup: &$crate::testing::Setup = &$setup;
            $crate::testing::crash_rounds(
                setup,
                $crate::Durability::ProcessCrashSafe,
                concat!(module_path!(), "::crash_child_process"),
            );
        }
        #[test]
        #[ignore = "started by the crash tests"]
        fn crash_child_process() {
            let setup: &$crate::testing::Setup = &$setup;
            $crate::testing::crash_child(setup);
        }
    };
}
