//! The open window's own writes, kept beside the writer's transaction so that reads never
//! wait for it.
//!
//! The writer keeps a transaction open for up to a window; the groups in it are durable in
//! the commit log and acknowledged, but reader connections see only the committed
//! database. Each object's changes in the window are folded here once applied: a read of
//! such an object reads the committed database through a reader connection and lays the
//! window's changes over it. Nothing here waits for the writer's connection, which is held
//! through the window's commit and its fsync.
//!
//! Why this is exact: a read takes what it needs of the window first, then reads the
//! database. The window is forgotten only after its transaction committed, so a read that
//! found it forgotten reads a database that holds it; one that found it, reads a database
//! with or without it, and the window's changes are the newest either way.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use super::super::{AlarmChange, ListOptions, Value};
use super::apply::{Applied, ObjectOps};
use crate::id::{IdHashState, ObjectId};

/// One object's changes in the open window.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    class: Box<str>,
    /// A clear in the window: the committed state before it is hidden.
    cleared: bool,
    /// Keys written (`Some`) or deleted (`None`) in the window, after any clear.
    writes: BTreeMap<String, Option<Value>>,
    /// The alarm as the window left it (`Keep`: unchanged).
    alarm: AlarmChange,
    /// A registration in the window, with its name if it has one.
    name: Option<Option<Arc<str>>>,
}

/// Every object's changes in the open window.
pub(super) type Window = HashMap<ObjectId, Overlay, IdHashState>;

/// Folds one object's applied changes (of one group) into `window`.
pub(super) fn fold(window: &mut Window, class: &str, id: ObjectId, ops: ObjectOps) {
    let o = window.entry(id).or_default();
    if o.class.is_empty() {
        o.class = class.into();
    }
    if ops.clear {
        o.cleared = true;
        o.writes.clear();
        o.name = None;
    }
    // Writes in order: the last of a key wins.
    for (k, v) in ops.writes {
        o.writes.insert(k, v);
    }
    if ops.alarm != AlarmChange::Keep {
        o.alarm = ops.alarm;
    }
    if let Some(name) = ops.register {
        o.name = Some(name);
    }
}

/// Folds a group's applied changes into `window`.
pub(super) fn fold_all(window: &mut Window, applied: Applied<'_>) {
    for ((class, id), ops) in applied {
        fold(window, class, id, ops);
    }
}

/// What the window says of a read, before the database is asked.
pub(super) enum Seen<T> {
    /// The window decides it alone.
    Decided(T),
    /// The database decides, with the window's changes laid over it.
    Over(T),
    /// The object has nothing in the window.
    Absent,
}

impl Overlay {
    fn is(&self, class: &str) -> bool {
        &*self.class == class
    }
}

/// Whether the object has changes in the window.
pub(super) fn contains(window: &Window, class: &str, id: &ObjectId) -> bool {
    window.get(id).is_some_and(|o| o.is(class))
}

/// The window's answer for `key` of the object: decided when the window wrote or deleted
/// the key, or cleared the object.
pub(super) fn get(window: &Window, class: &str, id: &ObjectId, key: &str) -> Option<Option<Value>> {
    let o = window.get(id).filter(|o| o.is(class))?;
    match o.writes.get(key) {
        Some(v) => Some(v.clone()),
        None if o.cleared => Some(None),
        None => None,
    }
}

/// The window's entries of the object within `opts`' range (deletes as `None`); decided
/// when the object was cleared in the window.
pub(super) fn range(
    window: &Window,
    class: &str,
    id: &ObjectId,
    opts: &ListOptions,
) -> Seen<Vec<(String, Option<Value>)>> {
    let Some(o) = window.get(id).filter(|o| o.is(class)) else {
        return Seen::Absent;
    };
    let (lower, upper) = opts.bounds();
    let bounds = (
        Bound::Included(lower),
        upper.map_or(Bound::Unbounded, Bound::Excluded),
    );
    let entries: Vec<(String, Option<Value>)> = o
        .writes
        .range::<String, _>(bounds)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if o.cleared {
        Seen::Decided(entries)
    } else {
        Seen::Over(entries)
    }
}

/// The window's answer for the object's alarm.
pub(super) fn alarm(window: &Window, class: &str, id: &ObjectId) -> Option<Option<i64>> {
    let o = window.get(id).filter(|o| o.is(class))?;
    match o.alarm {
        AlarmChange::Set(at) => Some(Some(at)),
        AlarmChange::Clear => Some(None),
        AlarmChange::Keep if o.cleared => Some(None),
        AlarmChange::Keep => None,
    }
}

/// The window's answer for the object's registered name: a name registered in the window,
/// or none after a clear (a name registered before, in the database, is kept otherwise).
pub(super) fn name(window: &Window, class: &str, id: &ObjectId) -> Option<Option<String>> {
    let o = window.get(id).filter(|o| o.is(class))?;
    match &o.name {
        Some(Some(n)) => Some(Some(n.to_string())),
        _ if o.cleared => Some(o.name.clone().flatten().map(|n| n.to_string())),
        _ => None,
    }
}

/// Lays the window's entries over the database's and keeps what `opts` asks for.
pub(super) fn merge(
    committed: Vec<(String, Value)>,
    window: Vec<(String, Option<Value>)>,
    opts: &ListOptions,
) -> Vec<(String, Value)> {
    let mut merged: BTreeMap<String, Option<Value>> =
        committed.into_iter().map(|(k, v)| (k, Some(v))).collect();
    merged.extend(window);
    let live = merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)));
    let limit = opts.limit.unwrap_or(usize::MAX);
    if opts.reverse {
        live.rev().take(limit).collect()
    } else {
        live.take(limit).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Option<Value> {
        Some(Value::from(s.as_bytes()))
    }

    fn ops(clear: bool, writes: &[(&str, Option<&str>)], alarm: AlarmChange) -> ObjectOps {
        ObjectOps {
            clear,
            writes: writes
                .iter()
                .map(|(k, x)| (k.to_string(), x.and_then(v)))
                .collect(),
            batches: 1,
            alarm,
            register: None,
        }
    }

    #[test]
    fn later_groups_win_and_a_clear_hides_what_came_before() {
        let id = ObjectId::from_bytes([1; 32]);
        let mut window = Window::default();
        fold(
            &mut window,
            "c",
            id,
            ops(
                false,
                &[("a", Some("1")), ("b", Some("2"))],
                AlarmChange::Set(5),
            ),
        );
        fold(
            &mut window,
            "c",
            id,
            ops(false, &[("a", Some("3")), ("b", None)], AlarmChange::Keep),
        );
        assert_eq!(get(&window, "c", &id, "a"), Some(v("3")));
        assert_eq!(
            get(&window, "c", &id, "b"),
            Some(None),
            "deleted in the window"
        );
        assert_eq!(get(&window, "c", &id, "z"), None, "the database decides");
        assert_eq!(get(&window, "other", &id, "a"), None, "another class");
        assert_eq!(alarm(&window, "c", &id), Some(Some(5)));
        // A clear: the database's entries are hidden, the window's later writes stay.
        fold(
            &mut window,
            "c",
            id,
            ops(true, &[("n", Some("9"))], AlarmChange::Clear),
        );
        assert_eq!(get(&window, "c", &id, "a"), Some(None));
        assert_eq!(get(&window, "c", &id, "z"), Some(None));
        assert_eq!(alarm(&window, "c", &id), Some(None));
        let Seen::Decided(entries) = range(&window, "c", &id, &ListOptions::all()) else {
            panic!("a cleared object's range is the window's alone");
        };
        assert_eq!(entries, vec![("n".to_string(), v("9"))]);
    }

    #[test]
    fn a_merge_lays_the_window_over_the_database_in_order_and_within_the_limit() {
        let committed = vec![
            ("a".to_string(), Value::from(&b"1"[..])),
            ("b".to_string(), Value::from(&b"2"[..])),
            ("c".to_string(), Value::from(&b"3"[..])),
        ];
        let window = vec![("b".to_string(), None), ("d".to_string(), v("4"))];
        let keys = |r: Vec<(String, Value)>| r.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let opts = ListOptions::all().limit(2);
        assert_eq!(
            keys(merge(committed.clone(), window.clone(), &opts)),
            ["a", "c"]
        );
        assert_eq!(keys(merge(committed, window, &opts.reverse())), ["d", "c"]);
    }
}
