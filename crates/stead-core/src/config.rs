//! The runtime's tunables and per-namespace options.

use std::time::Duration;

use crate::backend::Durability;
use crate::sql::SqlConfig;
use crate::websocket::WebSocketConfig;

/// Tunables of a runtime. Build one with [`crate::Runtime::builder`].
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
    /// How long [`crate::Stub::ask`] waits for a reply before it fails with
    /// [`crate::Error::Timeout`] (default 30 s), on the runtime's clock (a
    /// [`crate::ManualClock`] in tests, real time otherwise). A call cycle (A asks B,
    /// which asks A) ends this way instead of hanging. Per call: [`crate::Stub::with_timeout`].
    pub ask_timeout: Duration,
    /// Whether a call to an idle object runs its turn in the caller's own task (default
    /// `true`): no task is woken for it, and the turn is the same in every respect (one at a
    /// time, in order, behind the output gate; a turn that has to wait for something is
    /// finished by the object's own task, so a caller that goes away never cuts it short).
    /// `false` runs every turn on the object's task; it exists to measure the difference.
    pub inline_turns: bool,
    /// Limits and timers of the WebSockets objects hold.
    pub websocket: WebSocketConfig,
    /// Limits of every object's SQL database.
    pub sql: SqlConfig,
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
            ask_timeout: Duration::from_secs(30),
            inline_turns: true,
            websocket: WebSocketConfig::default(),
            sql: SqlConfig::default(),
        }
    }
}

impl RuntimeConfig {
    /// How long to wait before retry number `retries` (0 for the first) of something that
    /// failed to run: an alarm, a job, a socket event. `alarm_first_retry`, doubling.
    pub(crate) fn retry_backoff(&self, retries: u32) -> Duration {
        self.alarm_first_retry
            .saturating_mul(2u32.saturating_pow(retries.min(30)))
    }
}

/// Per-namespace options for [`crate::Runtime::namespace_with`].
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
