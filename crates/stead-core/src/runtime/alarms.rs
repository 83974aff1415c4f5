//! Alarms: loading each class's pending alarms from the store up to the horizon, moving the
//! horizon on, firing what falls due, and the task (or the manual clock) that drives it.

use super::*;

impl RuntimeInner {
    /// Reads the alarms of a class just registered that are due before the horizon, and
    /// the earliest one after it. Tried a few times: a class whose alarms cannot be read
    /// has them wait for a restart, which the log says.
    pub(super) async fn load_class(
        self: Arc<Self>,
        class: &'static str,
        backend: Arc<dyn DynBackend>,
    ) {
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
    pub(super) async fn load_range(
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
    pub(super) async fn settle_loads(&self) {
        let loads: Vec<_> = lock(&self.loads).drain(..).collect();
        for load in loads {
            let _ = load.await;
        }
    }

    /// Moves the horizon to a lookahead past `now` when it has come within half of one,
    /// reading the alarms it passes; on a failure it stays where it was, to be tried again.
    /// Returns whether the horizon is where it should be.
    pub(super) async fn extend_horizon(&self, now: i64) -> bool {
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

    /// Reads again every class's alarms due up to the horizon: after this node took objects
    /// over from another (a cluster's partition), their alarms are in the store only. Those
    /// the index holds already are kept as they are.
    pub(super) async fn reload_alarms(&self) {
        let _one_at_a_time = self.loader.lock().await;
        let horizon = self.shared.alarms.horizon();
        let classes: Vec<_> = lock(&self.namespaces)
            .iter()
            .map(|(class, ns)| (*class, ns.backend()))
            .collect();
        for (class, backend) in &classes {
            if let Err(e) = self.load_range(class, backend, None, horizon).await {
                tracing::warn!(class, error = %e, "reading the alarms of objects taken over failed");
            }
        }
    }

    /// Delivers every due alarm and waits for the deliveries. With `wait` false (the system
    /// clock), deliveries run in the background.
    pub(super) async fn fire_due(self: &Arc<Self>, now: DateTime<Utc>, wait: bool) {
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

pub(super) async fn alarm_loop(rt: Weak<RuntimeInner>) {
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
