//! Eviction: objects idle too long, and the least recently used past the cap, leave memory;
//! the tasks that ask them to.

use super::*;

impl RuntimeInner {
    /// Asks objects idle since before `now - idle_timeout` to leave, and waits for answers.
    pub(super) async fn evict_idle(&self, now: DateTime<Utc>) {
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
    pub(super) async fn evict_lru(&self) {
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

pub(super) async fn idle_loop(rt: Weak<RuntimeInner>) {
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

pub(super) async fn lru_loop(rt: Weak<RuntimeInner>) {
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
