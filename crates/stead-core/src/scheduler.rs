//! The alarm index: which objects' alarms fall due when, for the part of the future the
//! runtime holds in memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::clock::{earliest, lock};
use crate::id::ObjectId;

pub(crate) type AlarmKey = (&'static str, ObjectId);

/// How far ahead of now the scheduler keeps alarms in memory: alarms due later stay in the
/// store until the horizon reaches them.
pub(crate) const LOOKAHEAD_MS: i64 = 60_000;
/// Alarms read from the store per query.
pub(crate) const ALARM_PAGE: usize = 10_000;

/// The alarms due soon, by time, and what the scheduler knows of the rest. A hint: the
/// object is the judge of whether its alarm is due when a delivery arrives.
///
/// Every alarm of a registered class due at or before the *horizon* is held here; an alarm
/// due later stays in the store (which [`Backend::due_alarms`] reads as the horizon moves
/// on), except one set by this process whose commit is not yet known to be durable, which
/// waits in `far` until it is (or until the horizon reaches it). So a store with millions of
/// alarms costs memory only for those due within the lookahead.
#[derive(Default)]
pub(crate) struct AlarmIndex {
    inner: Mutex<AlarmState>,
    pub(crate) changed: Notify,
}

#[derive(Default)]
struct AlarmState {
    by_time: BTreeSet<(i64, AlarmKey)>,
    /// Each held alarm's time, and how often its delivery failed.
    by_object: HashMap<AlarmKey, (i64, u32)>,
    horizon: i64,
    /// Alarms beyond the horizon set by this process, until their commit is durable.
    far: HashMap<AlarmKey, i64>,
    /// The earliest alarm beyond the horizon, where known (`None`: there is none).
    beyond: Option<i64>,
}

impl AlarmState {
    fn remove(&mut self, key: &AlarmKey) {
        if let Some((old, _)) = self.by_object.remove(key) {
            self.by_time.remove(&(old, *key));
        }
        self.far.remove(key);
    }

    /// Holds `key` at `at`; returns whether it is now the earliest alarm.
    fn hold(&mut self, key: AlarmKey, at: i64, failures: u32) -> bool {
        let first = self.by_time.first().map(|(t, _)| *t);
        self.by_time.insert((at, key));
        self.by_object.insert(key, (at, failures));
        first.is_none_or(|f| at < f)
    }
}

impl AlarmIndex {
    /// An object's alarm is now `at` (or none): called when a turn changes it.
    pub(crate) fn set(&self, class: &'static str, id: ObjectId, at: Option<i64>) {
        let key = (class, id);
        let mut st = lock(&self.inner);
        st.remove(&key);
        let earlier = match at {
            Some(at) if at <= st.horizon => st.hold(key, at, 0),
            Some(at) => {
                st.far.insert(key, at);
                st.beyond = earliest(st.beyond, Some(at));
                false
            }
            None => false,
        };
        drop(st);
        if earlier {
            self.changed.notify_one();
        }
    }

    /// The commit that set an object's alarm to `at` is durable: an alarm beyond the horizon
    /// need not be held any more (the store has it).
    pub(crate) fn durable(&self, class: &'static str, id: ObjectId, at: Option<i64>) {
        let key = (class, id);
        let mut st = lock(&self.inner);
        if let Some(at) = at
            && st.far.get(&key) == Some(&at)
            && at > st.horizon
        {
            st.far.remove(&key);
        }
    }

    /// A delivery failed: try again at `at`.
    pub(crate) fn retry(&self, key: AlarmKey, at: i64, failures: u32) {
        let mut st = lock(&self.inner);
        st.remove(&key);
        let earlier = st.hold(key, at, failures);
        drop(st);
        if earlier {
            self.changed.notify_one();
        }
    }

    /// Alarms read from the store; one the index knows better (set since) is kept as is.
    pub(crate) fn loaded(&self, class: &'static str, alarms: &[(i64, ObjectId)]) {
        let mut st = lock(&self.inner);
        let mut earlier = false;
        for &(at, id) in alarms {
            let key = (class, id);
            if !st.by_object.contains_key(&key) && !st.far.contains_key(&key) {
                earlier |= st.hold(key, at, 0);
            }
        }
        drop(st);
        if earlier {
            self.changed.notify_one();
        }
    }

    /// Moves the horizon to `to`, taking the alarms set by this process up to there;
    /// returns the horizon it had.
    pub(crate) fn advance_horizon(&self, to: i64) -> i64 {
        let mut st = lock(&self.inner);
        let old = st.horizon;
        st.horizon = to;
        let reached: Vec<_> = st
            .far
            .iter()
            .filter(|(_, at)| **at <= to)
            .map(|(k, at)| (*k, *at))
            .collect();
        for (key, at) in reached {
            st.far.remove(&key);
            st.hold(key, at, 0);
        }
        drop(st);
        self.changed.notify_one();
        old
    }

    pub(crate) fn horizon(&self) -> i64 {
        lock(&self.inner).horizon
    }

    /// A move of the horizon failed to read the alarms it passed: back to `to`.
    pub(crate) fn retreat_horizon(&self, to: i64) {
        let mut st = lock(&self.inner);
        st.horizon = st.horizon.min(to);
    }

    /// Records the earliest alarm in the store beyond the horizon (`None`: none), with the
    /// ones this process set there.
    pub(crate) fn set_beyond(&self, stored: Option<i64>) {
        let mut st = lock(&self.inner);
        let far = st.far.values().copied().min();
        st.beyond = earliest(stored, far);
    }

    pub(crate) fn lower_beyond(&self, stored: Option<i64>) {
        if let Some(at) = stored {
            let mut st = lock(&self.inner);
            st.beyond = earliest(st.beyond, Some(at));
        }
    }

    pub(crate) fn take_due(&self, now: i64) -> Vec<(AlarmKey, u32)> {
        let mut st = lock(&self.inner);
        let mut out = Vec::new();
        while let Some((at, key)) = st.by_time.first().copied() {
            if at > now {
                break;
            }
            st.by_time.pop_first();
            let failures = st.by_object.remove(&key).map_or(0, |(_, r)| r);
            out.push((key, failures));
        }
        out
    }

    /// The earliest alarm held.
    pub(crate) fn next(&self) -> Option<i64> {
        lock(&self.inner).by_time.first().map(|(t, _)| *t)
    }

    /// The earliest instant anything may fall due: a held alarm, or the earliest beyond
    /// the horizon.
    pub(crate) fn next_due(&self) -> Option<i64> {
        let st = lock(&self.inner);
        let held = st.by_time.first().map(|(t, _)| *t);
        earliest(held, st.beyond)
    }

    /// How many alarms are held in memory.
    pub(crate) fn len(&self) -> usize {
        let st = lock(&self.inner);
        st.by_object.len() + st.far.len()
    }
}
