//! Named jobs on top of an object's one alarm: one-shot, fixed interval, and cron.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::{from_ms, to_ms};
use crate::error::{Error, Result};
use crate::storage::{SCHEDULE_PREFIX, Storage};

/// The longest schedule name, in bytes.
const MAX_NAME_BYTES: usize = 256;

/// When a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum ScheduleKind {
    /// Once, then the job is removed.
    Once,
    /// Every `interval_ms`, from when it was scheduled. Missed runs are not replayed: after
    /// downtime a job runs once, then keeps its cadence.
    Every {
        /// The period in milliseconds.
        interval_ms: u64,
    },
    /// At the times a five-field (or six, with seconds) cron expression names, in UTC.
    Cron {
        /// The expression.
        expr: String,
    },
}

/// A job that has fallen due, as given to [`crate::DurableObject::on_schedule`].
///
/// Each due job runs in a turn of its own: a job that fails (an error or a panic) is retried
/// on its own, with the same backoff as the object's alarm, and neither delays nor repeats
/// the others.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduledJob {
    /// The job's name.
    pub name: String,
    /// How it recurs.
    pub kind: ScheduleKind,
    /// When it was due (on a retry, still the time of the run being retried).
    pub scheduled_at: DateTime<Utc>,
    /// 0 on the first run of this slot, then 1, 2, ... on retries after failures. Kept in
    /// storage, so a restart does not start the backoff again.
    pub retry_count: u32,
}

/// A job as listed by [`Schedules::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The job's name.
    pub name: String,
    /// How it recurs.
    pub kind: ScheduleKind,
    /// When it runs next.
    pub next: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    #[serde(flatten)]
    pub(crate) kind: ScheduleKind,
    /// When the job runs next (on a retry, the retry's time).
    pub(crate) next_ms: i64,
    /// Failed runs of the current slot.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) retry: u32,
    /// On a retry, when the slot being retried was due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) due_ms: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl JobRecord {
    fn new(kind: ScheduleKind, next_ms: i64) -> Self {
        JobRecord {
            kind,
            next_ms,
            retry: 0,
            due_ms: None,
        }
    }

    /// When the slot this record runs (or retries) was due.
    pub(crate) fn slot_ms(&self) -> i64 {
        self.due_ms.unwrap_or(self.next_ms)
    }
}

/// The jobs of one object; get it with [`crate::Context::schedules`]. Changes commit with the turn.
///
/// ```
/// # use std::time::Duration;
/// # async fn demo(ctx: &mut stead_core::Context) -> stead_core::Result<()> {
/// ctx.schedules().every("flush", Duration::from_secs(10))?;
/// ctx.schedules().cron("nightly", "0 3 * * *")?;
/// ctx.schedules().cancel("flush").await?;
/// # Ok(()) }
/// ```
pub struct Schedules<'a> {
    storage: &'a mut Storage,
    /// The time of the turn, for jobs scheduled relative to now.
    now: DateTime<Utc>,
}

impl std::fmt::Debug for Schedules<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedules").field("now", &self.now).finish()
    }
}

impl<'a> Schedules<'a> {
    pub(crate) fn new(storage: &'a mut Storage, now: DateTime<Utc>) -> Self {
        Schedules { storage, now }
    }

    /// The time these schedules count from (the runtime's clock when they were taken).
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Runs job `name` once at `at` (replacing a job of that name).
    pub fn once(&mut self, name: &str, at: DateTime<Utc>) -> Result<()> {
        self.put(name, ScheduleKind::Once, to_ms(at))
    }

    /// Runs job `name` every `interval`, first one `interval` from now.
    pub fn every(&mut self, name: &str, interval: Duration) -> Result<()> {
        let ms = crate::duration_ms(interval);
        if ms == 0 {
            return Err(Error::InvalidSchedule {
                detail: "an interval must be at least one millisecond".into(),
            });
        }
        let first = to_ms(self.now).saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
        self.put(name, ScheduleKind::Every { interval_ms: ms }, first)
    }

    /// Runs job `name` whenever the cron expression `expr` matches (UTC).
    pub fn cron(&mut self, name: &str, expr: &str) -> Result<()> {
        let kind = ScheduleKind::Cron {
            expr: expr.to_owned(),
        };
        let now = to_ms(self.now);
        let next = next_after(&kind, now, now)?.ok_or_else(|| Error::InvalidSchedule {
            detail: format!("cron expression {expr:?} never matches"),
        })?;
        self.put(name, kind, next)
    }

    /// Removes job `name`; returns whether it existed.
    pub async fn cancel(&mut self, name: &str) -> Result<bool> {
        check_name(name)?;
        let existed = self
            .storage
            .get_internal::<JobRecord>(&key(name))
            .await?
            .is_some();
        self.storage.delete_internal(key(name));
        Ok(existed)
    }

    /// Every job of the object, by name.
    pub async fn list(&mut self) -> Result<Vec<ScheduleInfo>> {
        Ok(load(self.storage)
            .await?
            .into_iter()
            .map(|(name, r)| ScheduleInfo {
                name,
                kind: r.kind,
                next: from_ms(r.next_ms),
            })
            .collect())
    }

    fn put(&mut self, name: &str, kind: ScheduleKind, next_ms: i64) -> Result<()> {
        check_name(name)?;
        self.storage
            .put_internal(key(name), &JobRecord::new(kind, next_ms))
    }
}

pub(crate) fn key(name: &str) -> String {
    format!("{SCHEDULE_PREFIX}{name}")
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidSchedule {
            detail: format!("a job name must be 1 to {MAX_NAME_BYTES} bytes"),
        });
    }
    Ok(())
}

/// Every job of an object, by name.
pub(crate) async fn load(storage: &mut Storage) -> Result<Vec<(String, JobRecord)>> {
    if storage.known_without_schedules() {
        return Ok(Vec::new());
    }
    let jobs: Vec<_> = storage
        .list_internal::<JobRecord>(SCHEDULE_PREFIX)
        .await?
        .into_iter()
        .map(|(k, r)| (k[SCHEDULE_PREFIX.len()..].to_owned(), r))
        .collect();
    if jobs.is_empty() {
        storage.set_known_without_schedules();
    }
    Ok(jobs)
}

/// Records that job `name` ran (or was dropped) at `now`: removes a one-shot, moves a
/// recurring job to its next time after its slot, with no retries.
pub(crate) fn advance(storage: &mut Storage, name: &str, rec: &JobRecord, now: i64) -> Result<()> {
    match next_after(&rec.kind, rec.slot_ms(), now)? {
        None => storage.delete_internal(key(name)),
        Some(next_ms) => {
            storage.put_internal(key(name), &JobRecord::new(rec.kind.clone(), next_ms))?
        }
    }
    Ok(())
}

/// Records that the run of job `name` failed at `now` and is retried at `retry_at`.
pub(crate) fn retry_later(
    storage: &mut Storage,
    name: &str,
    rec: &JobRecord,
    retry_at: i64,
) -> Result<()> {
    storage.put_internal(
        key(name),
        &JobRecord {
            kind: rec.kind.clone(),
            next_ms: retry_at,
            retry: rec.retry + 1,
            due_ms: Some(rec.slot_ms()),
        },
    )
}

/// The next run of a job that was due at `due`, strictly after `now`.
fn next_after(kind: &ScheduleKind, due: i64, now: i64) -> Result<Option<i64>> {
    match kind {
        ScheduleKind::Once => Ok(None),
        ScheduleKind::Every { interval_ms } => {
            let step = i64::try_from(*interval_ms).unwrap_or(i64::MAX).max(1);
            let behind = now.saturating_sub(due).max(0);
            let steps = behind / step + 1;
            Ok(Some(due.saturating_add(steps.saturating_mul(step))))
        }
        ScheduleKind::Cron { expr } => {
            let cron = croner::Cron::from_str(expr).map_err(|e| Error::InvalidSchedule {
                detail: format!("invalid cron expression {expr:?}: {e}"),
            })?;
            Ok(cron
                .find_next_occurrence(&from_ms(now), false)
                .ok()
                .map(to_ms))
        }
    }
}

/// Checks a cron expression as [`Schedules::cron`] reads it (UTC; five fields, or six with
/// seconds first): that it parses, that it ever matches, and that it never fires twice
/// within `min_interval`, judged over its first 64 firings after 2000-01-01 (a pattern's
/// definition checks this once, so that a per-second cron cannot make every object of a
/// class run a turn every second). Errors are [`Error::InvalidSchedule`], naming the
/// expression.
///
/// ```
/// use std::time::Duration;
/// use stead_core::check_cron;
/// assert!(check_cron("*/5 * * * *", Duration::from_secs(60)).is_ok());
/// assert!(check_cron("*/5 * * * * *", Duration::from_secs(10)).is_err()); // every 5 s
/// assert!(check_cron("0 0 30 2 *", Duration::ZERO).is_err()); // February the 30th
/// ```
pub fn check_cron(expr: &str, min_interval: Duration) -> Result<()> {
    let invalid = |detail: String| Error::InvalidSchedule { detail };
    let cron = croner::Cron::from_str(expr)
        .map_err(|e| invalid(format!("invalid cron expression {expr:?}: {e}")))?;
    // Any fixed start will do: a calendar repeats within 400 years, and croner looks far
    // enough ahead from it for every expression that matches at all.
    let mut at = from_ms(946_684_800_000);
    let mut previous: Option<DateTime<Utc>> = None;
    for _ in 0..64 {
        let Ok(next) = cron.find_next_occurrence(&at, false) else {
            if previous.is_none() {
                return Err(invalid(format!("cron expression {expr:?} never matches")));
            }
            break;
        };
        if let Some(p) = previous {
            let gap = (next - p).to_std().unwrap_or_default();
            if gap < min_interval {
                return Err(invalid(format!(
                    "cron expression {expr:?} fires {} s apart; at least {} s is allowed here",
                    gap.as_secs_f64(),
                    min_interval.as_secs_f64()
                )));
            }
        }
        previous = Some(next);
        at = next;
    }
    Ok(())
}

/// The earliest time any job is due.
pub(crate) fn earliest(jobs: &[(String, JobRecord)]) -> Option<i64> {
    jobs.iter().map(|(_, r)| r.next_ms).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_skip_missed_runs() {
        let kind = ScheduleKind::Every { interval_ms: 10 };
        assert_eq!(next_after(&kind, 100, 100).unwrap(), Some(110));
        assert_eq!(next_after(&kind, 100, 135).unwrap(), Some(140));
    }

    #[test]
    fn cron_finds_next_minute() {
        let kind = ScheduleKind::Cron {
            expr: "*/5 * * * *".into(),
        };
        let t = to_ms("2026-01-01T00:01:30Z".parse().unwrap());
        let next = next_after(&kind, t, t).unwrap().unwrap();
        assert_eq!(from_ms(next).to_rfc3339(), "2026-01-01T00:05:00+00:00");
        let bad = ScheduleKind::Cron {
            expr: "not cron".into(),
        };
        assert!(matches!(
            next_after(&bad, t, t),
            Err(Error::InvalidSchedule { .. })
        ));
    }
}
