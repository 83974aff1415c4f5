//! Time: every timestamp and every timer of the runtime goes through a [`Clock`].
//!
//! This is the only module allowed to read the system time; `clippy.toml` forbids it
//! elsewhere.
#![allow(clippy::disallowed_methods)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

/// A boxed future returned by [`Clock::sleep_until`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of time for the runtime: [`SystemClock`] in production, [`ManualClock`] in tests.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// A future that completes once `now() >= at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep;
    /// The manual clock behind this one, if any. A manual clock drives the runtime's timers
    /// (alarms, idle eviction) itself, in [`ManualClock::advance`].
    fn as_manual(&self) -> Option<&ManualClock> {
        None
    }
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// Something whose timers a [`ManualClock`] fires when time advances (a runtime).
pub(crate) trait TimeDriven: Send + Sync + 'static {
    /// Runs everything due at `now` and waits until it is done.
    fn on_time(self: Arc<Self>, now: DateTime<Utc>) -> Sleep;
    /// The earliest instant something is due, if anything is.
    fn next_due(&self) -> Option<DateTime<Utc>>;
}

/// At most this many instants are stepped through in one [`ManualClock::set`]; past that,
/// time jumps to the target (a guard against a timer that keeps setting itself due).
const MAX_STEPS: usize = 100_000;

/// A clock that only moves when told to: tests advance it and every alarm, schedule and
/// idle eviction that falls due runs to completion before [`advance`](Self::advance) returns.
///
/// Time moves through every instant at which something is due, in order: advancing by an
/// hour runs a job scheduled every ten minutes six times, each at its own instant, as the
/// system clock would.
///
/// ```
/// use std::time::Duration;
/// use stead_core::{Clock, ManualClock};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
/// clock.advance(Duration::from_secs(90)).await;
/// assert_eq!(clock.now().to_rfc3339(), "2026-01-01T00:01:30+00:00");
/// # });
/// ```
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    now: Mutex<DateTime<Utc>>,
    sleepers: Mutex<Vec<(DateTime<Utc>, oneshot::Sender<()>)>>,
    driven: Mutex<Vec<Weak<dyn TimeDriven>>>,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl ManualClock {
    /// A manual clock that starts at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            inner: Arc::new(ManualInner {
                now: Mutex::new(start),
                sleepers: Mutex::new(Vec::new()),
                driven: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Moves time forward by `by`, stopping at every instant something falls due on the way
    /// (alarms, schedules, timers, idle evictions), firing what is due there and waiting for
    /// its turns to finish.
    pub async fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let target = self
            .now()
            .checked_add_signed(by)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.set(target).await;
    }

    /// Moves time forward by `by` in one jump, as a process that was paused (a long GC, a
    /// stopped VM) sees it: what fell due on the way fires once, at the new time, without
    /// stopping at the instants in between.
    pub async fn jump(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let target = self
            .now()
            .checked_add_signed(by)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.step(target).await;
    }

    /// Sets the time (never backwards; an earlier time is ignored), stepping through every
    /// instant something falls due on the way, as [`advance`](Self::advance) does.
    pub async fn set(&self, at: DateTime<Utc>) {
        for _ in 0..MAX_STEPS {
            let now = self.now();
            let next = self.next_due().filter(|t| *t > now && *t < at);
            match next {
                Some(t) => self.step(t).await,
                None => break,
            }
        }
        self.step(at).await;
    }

    /// How many tasks are asleep on this clock right now (timers of guards, elections,
    /// waits): a test can wait for a background task to reach its sleep before it moves time.
    pub fn sleepers(&self) -> usize {
        lock(&self.inner.sleepers)
            .iter()
            .filter(|(_, tx)| !tx.is_closed())
            .count()
    }

    /// The earliest instant a sleeper or a driven runtime waits for.
    fn next_due(&self) -> Option<DateTime<Utc>> {
        let sleeper = lock(&self.inner.sleepers)
            .iter()
            .filter(|(_, tx)| !tx.is_closed())
            .map(|(t, _)| *t)
            .min();
        let driven = self.driven().iter().filter_map(|d| d.next_due()).min();
        earliest(sleeper, driven)
    }

    fn driven(&self) -> Vec<Arc<dyn TimeDriven>> {
        let mut list = lock(&self.inner.driven);
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    /// Moves to `at` (if later) and fires what is due there.
    async fn step(&self, at: DateTime<Utc>) {
        let now = {
            let mut now = lock(&self.inner.now);
            if at > *now {
                *now = at;
            }
            *now
        };
        let due: Vec<oneshot::Sender<()>> = {
            let mut sleepers = lock(&self.inner.sleepers);
            let (due, keep): (Vec<_>, Vec<_>) = sleepers.drain(..).partition(|(t, _)| *t <= now);
            *sleepers = keep;
            due.into_iter().map(|(_, tx)| tx).collect()
        };
        for tx in due {
            let _ = tx.send(());
        }
        // Let woken sleepers run before the runtime's timers fire.
        tokio::task::yield_now().await;
        for d in self.driven() {
            d.on_time(now).await;
        }
    }

    pub(crate) fn drive(&self, target: Weak<dyn TimeDriven>) {
        lock(&self.inner.driven).push(target);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *lock(&self.inner.now)
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let (tx, rx) = oneshot::channel();
        {
            let now = lock(&self.inner.now);
            if at <= *now {
                return Box::pin(async {});
            }
            let mut sleepers = lock(&self.inner.sleepers);
            // Sleepers given up on (a call answered before its deadline) are dropped now and
            // then, so that a test making many calls without moving time stays small.
            if sleepers.len() >= 64 && sleepers.len().is_power_of_two() {
                sleepers.retain(|(_, tx)| !tx.is_closed());
            }
            sleepers.push((at, tx));
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }

    fn as_manual(&self) -> Option<&ManualClock> {
        Some(self)
    }
}

/// Locks a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent before anything that could panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The earlier of two optional instants (`None`: never).
pub(crate) fn earliest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Milliseconds since the Unix epoch: how objects store instants.
///
/// ```
/// let t = "1970-01-01T00:00:01.5Z".parse().unwrap();
/// assert_eq!(stead_core::to_ms(t), 1500);
/// assert_eq!(stead_core::from_ms(1500), t);
/// ```
pub fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant `ms` milliseconds after the Unix epoch (clamped to chrono's range).
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
