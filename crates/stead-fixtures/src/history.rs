//! A history checker for registers: operations recorded by clients with their invocation
//! and completion times, checked for what a linearizable register forbids (the faults a
//! stale owner of an object would cause).
//!
//! ```
//! use stead_fixtures::history::{Event, register_anomalies};
//!
//! let write = Event { invoked: 0, completed: 10, wrote: Some(1), read: 0 };
//! let overwrite = Event { invoked: 11, completed: 20, wrote: Some(2), read: 0 };
//! let stale = Event { invoked: 21, completed: 22, wrote: None, read: 1 };
//! assert_eq!(register_anomalies(&[write, overwrite, stale]).len(), 1);
//! ```
//!
//! A write whose answer was lost (a timeout, a node killed during the call) may or may not
//! have taken effect: record it with `completed` [`UNKNOWN`], so that reading its value
//! is no anomaly, and it is never taken to have overwritten anything.

/// The completion of a write whose outcome is unknown: it may take effect at any time after
/// it was invoked.
pub const UNKNOWN: u128 = u128::MAX;

/// One operation on a register, as a client saw it: when it was invoked and when its
/// answer came (nanoseconds on one clock), and what it wrote or read.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// When the operation was invoked.
    pub invoked: u128,
    /// When its answer came ([`UNKNOWN`] for a write whose answer was lost).
    pub completed: u128,
    /// `Some(v)` a write of `v`; `None` a read.
    pub wrote: Option<i64>,
    /// What a read returned (0: nothing written yet).
    pub read: i64,
}

/// Checks a register's history, every written value unique, for what linearizability
/// forbids and a stale owner would cause: a read of a value whose write began after the
/// read ended; a read of a value overwritten by a write that ended before the read began;
/// and two reads in real-time order that go backwards (the later one returns a write that
/// ended before the earlier one's write began). Answers the violations found.
pub fn register_anomalies(history: &[Event]) -> Vec<String> {
    let writes: std::collections::HashMap<i64, Event> = history
        .iter()
        .filter_map(|e| e.wrote.map(|v| (v, *e)))
        .collect();
    let reads: Vec<&Event> = history.iter().filter(|e| e.wrote.is_none()).collect();
    let mut found = Vec::new();
    for r in &reads {
        if r.read == 0 {
            // Nothing read: no write may have ended before the read began.
            if let Some(w) = writes.values().find(|w| w.completed < r.invoked) {
                found.push(format!("{r:?} read nothing after {w:?} ended"));
            }
            continue;
        }
        let Some(w) = writes.get(&r.read) else {
            found.push(format!("{r:?} read a value never written"));
            continue;
        };
        if w.invoked > r.completed {
            found.push(format!("{r:?} read {w:?}, which began after it"));
        }
        if let Some(w2) = writes
            .values()
            .find(|w2| w2.invoked > w.completed && w2.completed < r.invoked)
        {
            found.push(format!(
                "{r:?} read {w:?}, overwritten by {w2:?} before it began"
            ));
        }
    }
    for r1 in &reads {
        for r2 in &reads {
            if r1.completed < r2.invoked
                && r1.read != 0
                && let (Some(w1), Some(w2)) = (writes.get(&r1.read), writes.get(&r2.read))
                && w2.completed < w1.invoked
            {
                found.push(format!("{r2:?} went back before {r1:?}"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_checker_finds_stale_reads() {
        let w = |v, invoked, completed| Event {
            invoked,
            completed,
            wrote: Some(v),
            read: 0,
        };
        let r = |read, invoked, completed| Event {
            invoked,
            completed,
            wrote: None,
            read,
        };
        assert!(
            register_anomalies(&[w(1, 0, 10), r(1, 11, 12), w(2, 13, 20), r(2, 15, 25)]).is_empty()
        );
        // A read of 1 after 2 was written and acknowledged: stale.
        assert_eq!(
            register_anomalies(&[w(1, 0, 10), w(2, 11, 20), r(1, 21, 22)]).len(),
            1
        );
        // Reads going backwards.
        assert!(
            !register_anomalies(&[w(1, 0, 10), w(2, 11, 20), r(2, 21, 22), r(1, 23, 24)])
                .is_empty()
        );
        // A write whose answer was lost may be read, and overwrites nothing for sure.
        let lost = |v, invoked| Event {
            invoked,
            completed: UNKNOWN,
            wrote: Some(v),
            read: 0,
        };
        assert!(
            register_anomalies(&[w(1, 0, 10), lost(2, 11), r(2, 30, 31), r(1, 32, 33)]).len() == 1
        );
        assert!(register_anomalies(&[w(1, 0, 10), lost(2, 11), r(1, 30, 31)]).is_empty());
        assert!(register_anomalies(&[lost(2, 11), r(2, 12, 13)]).is_empty());
        // A read of nothing after a write ended.
        assert_eq!(register_anomalies(&[w(1, 0, 10), r(0, 11, 12)]).len(), 1);
    }
}
