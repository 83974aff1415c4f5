//! The controller's own steps: deciding on a batch, expiring leases, driving a processor, saving.

use super::*;

/// A decision-log entry in the making.
pub(super) struct Entry {
    pub(super) cause: Cause,
    pub(super) reason: Option<Reason>,
    pub(super) breaker: Option<Transition>,
    pub(super) before: Setting,
    pub(super) after: Setting,
    pub(super) success_rate: Option<f64>,
    pub(super) latency_ms: Option<f64>,
    pub(super) batch: Option<BatchSummary>,
}

impl Entry {
    pub(super) fn new(cause: Cause, before: Setting, after: Setting) -> Self {
        Entry {
            cause,
            reason: None,
            breaker: None,
            before,
            after,
            success_rate: None,
            latency_ms: None,
            batch: None,
        }
    }
}

impl State {
    pub(super) fn status(&self) -> Status {
        if self.paused {
            return Status::Paused;
        }
        match self.breaker {
            Breaker::Open { .. } => Status::Open,
            Breaker::HalfOpen { .. } => Status::HalfOpen,
            Breaker::Closed { .. } if self.backing_off => Status::Backoff,
            Breaker::Closed { .. } => Status::Running,
        }
    }

    pub(super) fn setting(&self) -> Setting {
        Setting {
            status: self.status(),
            batch_size: self.shape.batch_size,
            interval_ms: self.shape.interval_ms,
        }
    }

    pub(super) fn lease_id(&self, l: &LeaseRec) -> String {
        format!("{:x}-{}", self.epoch, l.seq)
    }

    /// The number of a lease id of this controller (none for another's, or a malformed one).
    pub(super) fn lease_seq(&self, id: &str) -> Option<u64> {
        let (epoch, seq) = id.split_once('-')?;
        (i64::from_str_radix(epoch, 16).ok()? == self.epoch)
            .then(|| seq.parse().ok())
            .flatten()
    }

    /// When the next batch may start, given the interval (and the circuit's cool-down).
    pub(super) fn next_batch_ms(&self) -> i64 {
        let due = self.last_start_ms.map_or(i64::MIN, |t| {
            t.saturating_add(i64::try_from(self.shape.interval_ms).unwrap_or(i64::MAX))
        });
        match self.breaker.open_until_ms() {
            Some(until) => due.max(i64::try_from(until).unwrap_or(i64::MAX)),
            None => due,
        }
    }

    /// Writes an entry to the log (operator actions always; otherwise only when something
    /// changed), dropping the oldest beyond the log's bound.
    pub(super) async fn log(
        &mut self,
        ctx: &mut Context,
        env: &ControllerEnv,
        e: Entry,
    ) -> Result<()> {
        let operator = matches!(
            e.cause,
            Cause::Configured | Cause::Started | Cause::Paused | Cause::Reset
        );
        if !operator && e.before == e.after && e.breaker.is_none() {
            return Ok(());
        }
        let seq = self.next_log;
        self.next_log += 1;
        let now = ctx.now();
        LOG.append(
            ctx.storage(),
            seq,
            &DecisionEntry {
                seq,
                at: now,
                cause: e.cause,
                reason: e.reason,
                breaker: e.breaker,
                before: e.before,
                after: e.after,
                success_rate: e.success_rate,
                latency_ms: e.latency_ms,
                batch: e.batch,
            },
            env.config.decision_log.max(1) as u64,
        )?;
        Ok(())
    }

    /// Decides on a batch: the window, the policy, the breaker, the totals and the log.
    pub(super) async fn decide(
        &mut self,
        ctx: &mut Context,
        env: &ControllerEnv,
        lease: &LeaseRec,
        results: &[Sample],
        cause: Cause,
    ) -> Result<Reported> {
        let now = to_ms(ctx.now());
        let before = self.setting();
        self.window.extend(results);
        self.window_dirty = true;
        let d = self.spec.policy.decide(
            &self.spec.bounds,
            Observation {
                shape: self.shape,
                backing_off: self.backing_off,
                window: &self.window,
                batch: results,
            },
            &mut self.gradient,
        );
        self.shape = d.shape;
        self.backing_off = d.backing_off;
        let failed = results.iter().all(|r| !r.ok);
        // While half-open only the probe decides; a late report of a batch leased before
        // the circuit opened does not.
        let transition = match self.breaker {
            Breaker::HalfOpen { .. } if !lease.probe => None,
            _ => self
                .breaker
                .record(&self.spec.breaker, failed, now.max(0) as u64),
        };
        let succeeded = results.iter().filter(|r| r.ok).count() as u32;
        let failures = results.len() as u32 - succeeded;
        self.totals.batches += 1;
        self.totals.succeeded += u64::from(succeeded);
        self.totals.failed += u64::from(failures);
        let after = self.setting();
        let entry = Entry {
            cause,
            reason: Some(d.reason),
            breaker: transition,
            before,
            after,
            success_rate: Some(d.success_rate),
            latency_ms: Some(d.latency_ms),
            batch: Some(BatchSummary {
                lease_id: self.lease_id(lease),
                leased: lease.batch_size,
                succeeded,
                failed: failures,
            }),
        };
        self.log(ctx, env, entry).await?;
        Ok(Reported {
            setting: after,
            reason: Some(d.reason),
            breaker: transition,
        })
    }
}

pub(super) fn existing(state: &mut Option<State>) -> Result<&mut State, ControllerError> {
    state.as_mut().ok_or(ControllerError::NotFound)
}

impl Controller {
    /// Decides on every lease past its deadline as a failed batch; whether there was one.
    pub(super) async fn expire(&mut self, ctx: &mut Context) -> Result<bool> {
        let now = to_ms(ctx.now());
        let Some(s) = self.state.as_mut() else {
            return Ok(false);
        };
        let mut any = false;
        while let Some(i) = s.leases.iter().position(|l| l.deadline_ms <= now) {
            let lease = s.leases.remove(i);
            s.totals.expired += 1;
            let took = u64::try_from(lease.deadline_ms - lease.granted_ms).unwrap_or(0);
            let results = vec![
                Sample {
                    ok: false,
                    latency_ms: took,
                };
                lease.batch_size as usize
            ];
            s.decide(ctx, &self.env, &lease, &results, Cause::LeaseExpired)
                .await?;
            any = true;
        }
        Ok(any)
    }

    /// Decides on a reported batch; a refusal changes nothing.
    pub(super) async fn report(
        &mut self,
        ctx: &mut Context,
        msg: Report,
    ) -> Result<Reported, ControllerError> {
        let s = existing(&mut self.state)?;
        let seq = s.lease_seq(&msg.lease_id);
        let Some(i) = s.leases.iter().position(|l| Some(l.seq) == seq) else {
            return Err(ControllerError::UnknownLease {
                lease_id: msg.lease_id,
            });
        };
        let leased = s.leases[i].batch_size;
        if msg.results.len() > leased as usize {
            return Err(InvalidInput::new(format!(
                "the report has {} results; the lease was for at most {leased}",
                msg.results.len()
            ))
            .into());
        }
        let lease = s.leases.remove(i);
        if msg.results.is_empty() {
            s.totals.empty += 1;
            if lease.probe {
                s.breaker.release_probe();
            }
            return Ok(Reported {
                setting: s.setting(),
                reason: None,
                breaker: None,
            });
        }
        Ok(s.decide(ctx, &self.env, &lease, &msg.results, Cause::Batch)
            .await?)
    }

    /// Grants a lease if one may start now.
    pub(super) async fn grant(
        &mut self,
        ctx: &mut Context,
        worker: Option<String>,
    ) -> Result<Granted, ControllerError> {
        let now = to_ms(ctx.now());
        let s = existing(&mut self.state)?;
        if s.paused {
            return Err(ControllerError::Paused);
        }
        let wait = |until: i64| std::time::Duration::from_millis((until - now).max(1) as u64);
        match s.breaker {
            Breaker::Open { until_ms, .. } if (until_ms as i64) > now => {
                return Err(ControllerError::CircuitOpen {
                    retry_after: wait(until_ms as i64),
                });
            }
            Breaker::HalfOpen { probing: true, .. } => {
                let probe_deadline = s
                    .leases
                    .iter()
                    .filter(|l| l.probe)
                    .map(|l| l.deadline_ms)
                    .min()
                    .unwrap_or(now + 1);
                return Err(ControllerError::CircuitOpen {
                    retry_after: wait(probe_deadline),
                });
            }
            _ => {}
        }
        let due = s.next_batch_ms();
        if due > now {
            return Err(ControllerError::NotDue {
                retry_after: wait(due),
            });
        }
        if s.leases.len() >= s.spec.concurrency as usize {
            let earliest = s.leases.iter().map(|l| l.deadline_ms).min().unwrap_or(now);
            // Leases usually come back well before their deadline: ask again within a second.
            return Err(ControllerError::Busy {
                retry_after: wait(earliest.min(now + 1000)),
            });
        }
        let before = s.setting();
        let (admitted, transition) = s.breaker.admit(now.max(0) as u64);
        if !admitted {
            // Not reached: the checks above refuse whatever the breaker would.
            return Err(ControllerError::CircuitOpen {
                retry_after: wait(now + 1),
            });
        }
        if transition.is_some() {
            let after = s.setting();
            let mut e = Entry::new(Cause::CoolDown, before, after);
            e.breaker = transition;
            s.log(ctx, &self.env, e).await?;
        }
        let probe = matches!(s.breaker, Breaker::HalfOpen { .. });
        let batch_size = if probe {
            s.spec.bounds.min_batch
        } else {
            s.shape.batch_size
        };
        let lease = LeaseRec {
            seq: s.next_lease,
            batch_size,
            granted_ms: now,
            deadline_ms: now.saturating_add(s.spec.lease_ms as i64),
            probe,
            worker,
        };
        s.next_lease += 1;
        s.last_start_ms = Some(now);
        s.totals.leases += 1;
        let granted = Granted {
            lease_id: s.lease_id(&lease),
            batch_size,
            deadline: from_ms(lease.deadline_ms),
            probe,
        };
        s.leases.push(lease);
        Ok(granted)
    }

    /// With a processor attached in this process: starts every batch that may start now,
    /// each on a task of its own once this turn is durable.
    pub(super) async fn drive(&mut self, ctx: &mut Context) {
        let Some(name) = ctx.name().map(str::to_owned) else {
            return;
        };
        let Some(runner) = self.env.runner(&name) else {
            return;
        };
        while let Ok(granted) = self
            .grant(ctx, Some(crate::client::IN_PROCESS.to_owned()))
            .await
        {
            let (runner, name) = (runner.clone(), name.clone());
            ctx.after_commit(move || runner.run(name, granted));
        }
    }

    /// Stores the state and sets the alarm for the next deadline (or due batch, when
    /// driven in this process).
    pub(super) fn save(&mut self, ctx: &mut Context) -> Result<()> {
        let Some(s) = &mut self.state else {
            return Ok(());
        };
        s.updated_ms = to_ms(ctx.now());
        ctx.storage().put(STATE, s)?;
        if s.window_dirty {
            ctx.storage().put(WINDOW, &s.window)?;
            s.window_dirty = false;
        }
        let mut wake = s.leases.iter().map(|l| l.deadline_ms).min();
        let driven = ctx.name().is_some_and(|n| self.env.runner(n).is_some());
        if driven && !s.paused && s.leases.len() < s.spec.concurrency as usize {
            let next = s.next_batch_ms().max(to_ms(ctx.now()));
            wake = Some(wake.map_or(next, |w| w.min(next)));
        }
        if wake != self.alarm_ms {
            ctx.storage().replace_alarm(wake.map(from_ms))?;
            self.alarm_ms = wake;
        }
        Ok(())
    }

    pub(super) fn view(&mut self, ctx: &mut Context) -> Result<ControllerState, ControllerError> {
        let now = to_ms(ctx.now());
        let s = existing(&mut self.state)?;
        let status = s.status();
        let next_batch_at = match status {
            Status::Paused => None,
            _ => Some(from_ms(s.next_batch_ms().max(now))),
        };
        let breaker = match s.breaker {
            Breaker::Closed { failures } => BreakerView {
                consecutive_failures: failures,
                open_until: None,
                cooldown_ms: None,
            },
            Breaker::Open {
                until_ms,
                cooldown_ms,
            } => BreakerView {
                consecutive_failures: 0,
                open_until: Some(from_ms(until_ms as i64)),
                cooldown_ms: Some(cooldown_ms),
            },
            Breaker::HalfOpen { cooldown_ms, .. } => BreakerView {
                consecutive_failures: 0,
                open_until: None,
                cooldown_ms: Some(cooldown_ms),
            },
        };
        Ok(ControllerState {
            status,
            policy: s.spec.policy.name().to_owned(),
            batch_size: s.shape.batch_size,
            interval_ms: s.shape.interval_ms,
            next_batch_at,
            leases: s
                .leases
                .iter()
                .map(|l| LeaseOut {
                    lease_id: s.lease_id(l),
                    batch_size: l.batch_size,
                    granted_at: from_ms(l.granted_ms),
                    deadline: from_ms(l.deadline_ms),
                    probe: l.probe,
                    worker: l.worker.clone(),
                })
                .collect(),
            window: WindowStats {
                samples: s.window.len() as u32,
                capacity: s.window.capacity() as u32,
                success_rate: s.window.success_rate(),
                mean_latency_ms: s.window.mean_latency_ms(),
            },
            breaker,
            totals: s.totals,
            config: s.spec.to_spec(),
            decisions: s.next_log - 1,
            updated_at: from_ms(s.updated_ms),
        })
    }
}
