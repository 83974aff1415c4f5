//! Delivering what is due to an object: its alarm and each due job, every one in a turn
//! of its own, retried on its own with counts kept in storage.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::clock::{from_ms, to_ms};
use crate::error::{Error, Result};
use crate::object::{AlarmInfo, DurableObject};
use crate::schedule::{self, ScheduledJob};
use crate::storage::ALARM_RETRY_KEY;

use super::actor::Actor;
use super::{AlarmOutcome, panic_message};

impl<O: DurableObject> Actor<O> {
    /// Delivers what is due: the user's alarm and each due job, every one in a turn of its
    /// own (a failure retries that one alone, with its own backoff, kept in storage).
    pub(super) async fn run_alarm(&mut self, reply: oneshot::Sender<AlarmOutcome>) {
        let now_ms = to_ms(self.ctx.clock.now());
        let due = match self.due_at(now_ms).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(class = O::CLASS, id = %self.id, error = %e, "could not read the alarm");
                let _ = reply.send(AlarmOutcome::Failed);
                return;
            }
        };
        if let Some(first) = due.iter().map(|d| d.at_ms).min() {
            metrics::histogram!("stead_alarm_lag_seconds", "class" => O::CLASS)
                .record((now_ms - first).max(0) as f64 / 1000.0);
        }
        for item in due {
            if self.instance.is_none()
                && let Err(e) = self.activate().await
            {
                tracing::warn!(class = O::CLASS, id = %self.id, error = %e, "could not activate the object for its alarm");
                let _ = reply.send(AlarmOutcome::Failed);
                return;
            }
            if let Err(e) = self.run_due(item.what, now_ms).await {
                tracing::error!(class = O::CLASS, id = %self.id, error = %e, "could not read the alarm");
                let _ = reply.send(AlarmOutcome::Failed);
                return;
            }
        }
        // The next delivery, whatever the turns did to the alarm.
        match self.ctx.storage.effective_alarm().await {
            Ok(next) => self.ns.shared.alarms.set(O::CLASS, self.id, next),
            Err(e) => {
                tracing::error!(class = O::CLASS, id = %self.id, error = %e, "could not read the alarm");
                let _ = reply.send(AlarmOutcome::Failed);
                return;
            }
        }
        // Answered once the turns' writes are durable.
        self.ctx.queue_reply(Box::new(move |_| {
            let _ = reply.send(AlarmOutcome::Done);
        }));
        self.end_turn().await;
    }

    /// What is due at `now_ms`, earliest first: the user's alarm and every due job.
    async fn due_at(&mut self, now_ms: i64) -> Result<Vec<DueItem>> {
        let storage = &mut self.ctx.storage;
        let mut due = Vec::new();
        if let Some(at) = storage.user_alarm_ms().await?.filter(|t| *t <= now_ms) {
            due.push(DueItem {
                at_ms: at,
                what: Due::Alarm,
            });
        }
        for (name, rec) in schedule::load(storage).await? {
            if rec.next_ms <= now_ms {
                due.push(DueItem {
                    at_ms: rec.next_ms,
                    what: Due::Job(name),
                });
            }
        }
        due.sort_by_key(|d| d.at_ms);
        Ok(due)
    }

    /// Runs one due item as a turn. It is read again first: an earlier item's turn may
    /// have changed or removed it. `Err` only when storage could not be read.
    async fn run_due(&mut self, what: Due, now_ms: i64) -> Result<()> {
        let Some(instance) = self.instance.as_mut() else {
            return Err(Error::Reset);
        };
        let ctx = &mut self.ctx;
        let max_retries = self.ns.shared.config.alarm_max_retries;
        // What ran, as it stood before the turn: a failure is recorded against it (the
        // turn's rollback restores exactly this state).
        let (result, ran) = match &what {
            Due::Alarm => {
                let Some(at) = ctx.storage.user_alarm_ms().await?.filter(|t| *t <= now_ms) else {
                    return Ok(());
                };
                let state: AlarmRetry =
                    ctx.storage
                        .get_internal(ALARM_RETRY_KEY)
                        .await?
                        .unwrap_or(AlarmRetry {
                            retry: 0,
                            scheduled_at_ms: at,
                        });
                // Cleared before the call: the handler sets a new one to repeat.
                ctx.storage.delete_alarm();
                let info = AlarmInfo {
                    scheduled_at: from_ms(state.scheduled_at_ms),
                    retry_count: state.retry,
                };
                let span = tracing::debug_span!("alarm", class = O::CLASS, id = %self.id, retry = state.retry);
                let run = AssertUnwindSafe(instance.alarm(ctx, info)).catch_unwind();
                (run.instrument(span).await, Ran::Alarm(state))
            }
            Due::Job(name) => {
                let Some(rec) = ctx
                    .storage
                    .get_internal::<schedule::JobRecord>(&schedule::key(name))
                    .await?
                    .filter(|r| r.next_ms <= now_ms)
                else {
                    return Ok(());
                };
                // Moved on before the call, so the handler may cancel or replace the job.
                schedule::advance(&mut ctx.storage, name, &rec, now_ms)?;
                let job = ScheduledJob {
                    name: name.clone(),
                    kind: rec.kind.clone(),
                    scheduled_at: from_ms(rec.slot_ms()),
                    retry_count: rec.retry,
                };
                let span = tracing::debug_span!("scheduled_job", class = O::CLASS, id = %self.id, job = %name, retry = rec.retry);
                let run = AssertUnwindSafe(instance.on_schedule(ctx, job)).catch_unwind();
                (run.instrument(span).await, Ran::Job(name, rec))
            }
        };
        let error = match result {
            Ok(Ok(())) => {
                self.end_turn().await;
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => {
                self.instance = None;
                panic_message(&panic)
            }
        };
        // The failed turn leaves nothing behind but its retry, recorded in a turn of its own.
        self.discard_turn();
        metrics::counter!("stead_alarm_failures_total", "class" => O::CLASS).increment(1);
        let storage = &mut self.ctx.storage;
        let (retry, label) = match &ran {
            Ran::Alarm(state) => (state.retry, "alarm".to_owned()),
            Ran::Job(name, rec) => (rec.retry, format!("job {name:?}")),
        };
        if retry < max_retries {
            tracing::warn!(class = O::CLASS, id = %self.id, what = %label, retry, %error, "failed; will retry");
            let backoff = self.ns.shared.config.retry_backoff(retry);
            let retry_at =
                now_ms.saturating_add(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX));
            match &ran {
                Ran::Alarm(state) => {
                    storage.set_alarm_ms(retry_at)?;
                    storage.put_internal(
                        ALARM_RETRY_KEY.to_owned(),
                        &AlarmRetry {
                            retry: state.retry + 1,
                            scheduled_at_ms: state.scheduled_at_ms,
                        },
                    )?;
                }
                Ran::Job(name, rec) => schedule::retry_later(storage, name, rec, retry_at)?,
            }
        } else {
            tracing::error!(class = O::CLASS, id = %self.id, what = %label, retries = retry, %error, "failed for the last time; dropped");
            metrics::counter!("stead_alarms_dropped_total", "class" => O::CLASS).increment(1);
            match &ran {
                Ran::Alarm(_) => storage.delete_alarm(),
                Ran::Job(name, rec) => schedule::advance(storage, name, rec, now_ms)?,
            }
        }
        self.end_turn().await;
        Ok(())
    }
}

/// A user alarm that failed: how often, and when it was first due.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct AlarmRetry {
    retry: u32,
    scheduled_at_ms: i64,
}

/// One thing due at an alarm delivery.
struct DueItem {
    at_ms: i64,
    what: Due,
}

enum Due {
    Alarm,
    Job(String),
}

/// An item that ran, with its state from before the turn.
enum Ran<'a> {
    Alarm(AlarmRetry),
    Job(&'a String, schedule::JobRecord),
}
