//! What every part of the runtime shares: the clock, the configuration, the alarm index,
//! the shutdown flag and the count of objects in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::RuntimeConfig;
use crate::scheduler::AlarmIndex;

/// State every part of the runtime shares.
pub(crate) struct Shared {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: RuntimeConfig,
    /// The SQL limits every object's storage points to (one copy, not one per object).
    pub(crate) sql_limits: Arc<crate::sql::SqlLimits>,
    pub(crate) alarms: AlarmIndex,
    pub(crate) closed: Arc<AtomicBool>,
    pub(crate) live_objects: AtomicUsize,
    pub(crate) objects_done: Notify,
    pub(crate) lru_running: AtomicBool,
    pub(crate) lru_wanted: Notify,
    pub(crate) stop: Notify,
    pub(crate) sockets: SocketCount,
    /// The deadlines of calls waiting for their replies (real time).
    pub(crate) deadlines: Arc<crate::executor::Deadlines>,
    /// The other nodes, when the runtime is one node of a cluster.
    pub(crate) cluster: Option<Arc<dyn crate::remote::Cluster>>,
}

/// The WebSockets of the runtime, from accept to the delivery of their close turn, for
/// shutdown to wait on.
#[derive(Default)]
pub(crate) struct SocketCount {
    live: AtomicUsize,
    gone: Notify,
    /// Shutdown has stopped waiting for sockets: their turns are refused from now on.
    done: AtomicBool,
    /// Set as shutdown closes the sockets: relays to other nodes close too.
    closing: tokio::sync::watch::Sender<bool>,
}

impl SocketCount {
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn started(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn stopped(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gone.notify_waiters();
        }
    }

    /// Says that shutdown closes the sockets now.
    pub(crate) fn close_relays(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once shutdown closes the sockets.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn closing(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Waits until no socket is left, or `limit` has passed.
    pub(crate) async fn wait_gone(&self, limit: std::time::Duration) {
        let waited = async {
            loop {
                let gone = self.gone.notified();
                if self.live() == 0 {
                    return;
                }
                // Short waits: a socket that ends between the check and the wait is seen
                // at the next round.
                let _ = tokio::time::timeout(std::time::Duration::from_millis(50), gone).await;
            }
        };
        let _ = tokio::time::timeout(limit, waited).await;
    }

    pub(crate) fn set_done(&self) {
        self.done.store(true, Ordering::Release);
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
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
