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
    pub(crate) alarms: AlarmIndex,
    pub(crate) closed: Arc<AtomicBool>,
    pub(crate) live_objects: AtomicUsize,
    pub(crate) objects_done: Notify,
    pub(crate) lru_running: AtomicBool,
    pub(crate) lru_wanted: Notify,
    pub(crate) stop: Notify,
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
