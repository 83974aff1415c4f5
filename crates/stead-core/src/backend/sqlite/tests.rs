//! The SQLite store's own tests: group commit, windows, failed commits, the log.
use std::collections::HashSet;

use super::*;
use crate::backend::{AlarmChange, Durability};

/// A batch of object `[id; 32]` of class `test`.
pub(super) fn batch(id: u8, clear: bool, writes: &[(&str, Option<&str>)]) -> CommitBatch {
    CommitBatch {
        object: ObjectRef {
            class: "test",
            id: ObjectId::from_bytes([id; 32]),
        },
        clear,
        writes: writes
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(|v| Value::from(v.as_bytes()))))
            .collect(),
        alarm: AlarmChange::Keep,
        register: None,
        durability: Durability::ProcessCrashSafe,
        fence: Arc::default(),
        ack: None,
    }
}

fn contents(conn: &Connection, id: u8) -> Vec<(String, String)> {
    let mut stmt = conn
        .prepare("SELECT key, value FROM kv WHERE class = 'test' AND id = ?1 ORDER BY key")
        .unwrap();
    stmt.query_map(params![&[id; 32][..]], |r| {
        let v: Vec<u8> = r.get(1)?;
        Ok((r.get(0)?, String::from_utf8(v).unwrap()))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn a_group_applies_its_batches_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let conn = open_conn(&dir.path().join("shard-00.db")).unwrap();
    init_schema(&conn, 1).unwrap();
    apply(
        &conn,
        vec![Change::take(&mut batch(3, false, &[("gone", Some("x"))]))],
    )
    .unwrap();
    let mut group = [
        batch(1, false, &[("a", Some("1")), ("b", Some("2"))]),
        batch(2, false, &[("a", Some("only"))]),
        batch(1, false, &[("a", Some("3")), ("b", None)]),
        batch(3, true, &[("new", Some("y"))]),
        batch(1, false, &[("c", Some("4")), ("a", Some("5"))]),
        batch(3, false, &[("new", Some("z"))]),
    ];
    apply(&conn, group.iter_mut().map(Change::take)).unwrap();
    let s = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    // The last write of a key wins, a delete included.
    assert_eq!(contents(&conn, 1), vec![s("a", "5"), s("c", "4")]);
    assert_eq!(contents(&conn, 2), vec![s("a", "only")]);
    // A clear drops what was stored before it, not what came after it.
    assert_eq!(contents(&conn, 3), vec![s("new", "z")]);
}

/// A shard's writer on `dir`, as a backend opens it (replaying the log).
fn writer(dir: &Path) -> Writer {
    let conn = open_conn(&dir.join("shard-00.db")).unwrap();
    init_schema(&conn, 1).unwrap();
    let log = CommitLog::open(&dir.join("shard-00.log")).unwrap();
    Writer::start(conn, log, dir.join("shard-00.db")).unwrap()
}

/// What the database file holds, read by a connection of its own (so without the
/// writer's open transaction).
fn committed(dir: &Path, id: u8) -> Vec<(String, String)> {
    contents(&open_conn(&dir.join("shard-00.db")).unwrap(), id)
}

fn write(w: &mut Writer, group: &mut [CommitBatch]) -> bool {
    for b in group.iter_mut() {
        b.durability = Durability::Fsync;
    }
    w.write_group(group)
}

/// Makes every write of the key `boom` fail inside SQLite (until the trigger is dropped),
/// so that a group's apply fails on demand.
fn fail_writes_of_boom(w: &Writer) {
    lock(&w.shared.conn)
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON kv WHEN NEW.key = 'boom'
             BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        )
        .unwrap();
}

fn s(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

#[test]
fn acknowledged_groups_of_an_open_window_are_replayed_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path());
    assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("1"))])]));
    assert!(write(
        &mut w,
        &mut [
            batch(1, false, &[("a", Some("2")), ("b", Some("3"))]),
            batch(2, false, &[("x", Some("y"))])
        ]
    ));
    // Reads go through the writer's connection and see the open window.
    assert_eq!(
        contents(&lock(&w.shared.conn), 1),
        vec![s("a", "2"), s("b", "3")]
    );
    // The database file does not hold them yet: only the log does.
    assert_eq!(committed(dir.path(), 1), vec![]);
    // A crash: the writer goes without committing (its transaction is rolled back).
    drop(w);
    assert_eq!(committed(dir.path(), 1), vec![]);
    let w = writer(dir.path());
    // Opening replayed the log and committed it.
    assert!(w.open.is_none());
    assert_eq!(w.committed, 2);
    assert_eq!(committed(dir.path(), 1), vec![s("a", "2"), s("b", "3")]);
    assert_eq!(committed(dir.path(), 2), vec![s("x", "y")]);
}

#[test]
fn a_committed_window_is_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path());
    assert!(write(
        &mut w,
        &mut [batch(1, false, &[("a", Some("1")), ("b", Some("1"))])]
    ));
    w.commit().unwrap();
    assert_eq!(committed(dir.path(), 1), vec![s("a", "1"), s("b", "1")]);
    // The next window overwrites the log from its start; the old record behind it must
    // not be applied again over the newer writes.
    assert!(write(&mut w, &mut [batch(1, false, &[("b", None)])]));
    w.commit().unwrap();
    assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("2"))])]));
    drop(w);
    let w = writer(dir.path());
    assert_eq!(w.committed, 3);
    assert_eq!(committed(dir.path(), 1), vec![s("a", "2")]);
}

#[test]
fn a_failed_group_is_taken_back_and_the_window_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path());
    fail_writes_of_boom(&w);
    assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("1"))])]));
    // The group fails as a whole, the other object's batch included.
    assert!(!write(
        &mut w,
        &mut [
            batch(2, false, &[("c", Some("3"))]),
            batch(1, false, &[("boom", Some("x"))])
        ]
    ));
    // The window's earlier group is still there; the failed one left nothing.
    assert_eq!(contents(&lock(&w.shared.conn), 1), vec![s("a", "1")]);
    assert_eq!(contents(&lock(&w.shared.conn), 2), vec![]);
    assert!(!w.shared.broken.load(Ordering::Acquire));
    drop(w);
    // Its log record (synced before the failure) is never replayed either.
    open_conn(&dir.path().join("shard-00.db"))
        .unwrap()
        .execute_batch("DROP TRIGGER boom")
        .unwrap();
    let mut w = writer(dir.path());
    assert_eq!(committed(dir.path(), 1), vec![s("a", "1")]);
    assert_eq!(committed(dir.path(), 2), vec![]);
    // And the writer goes on where it was.
    assert!(write(&mut w, &mut [batch(2, false, &[("c", Some("4"))])]));
    drop(w);
    writer(dir.path());
    assert_eq!(committed(dir.path(), 2), vec![s("c", "4")]);
}

#[test]
fn a_version_1_directory_is_upgraded_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard-00.db");
    let conn = open_conn(&path).unwrap();
    init_schema(&conn, 1).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    drop(conn);
    let mut w = writer(dir.path());
    assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("1"))])]));
    drop(w);
    let conn = open_conn(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let err = init_schema(&conn, 1).unwrap_err();
    let text = format!("{:?}", std::error::Error::source(&err));
    assert!(text.contains("newer stead"), "{text}");
}

#[test]
fn a_log_record_that_does_not_parse_stops_the_shard_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    SqliteBackend::open(dir.path(), SqliteOptions { shards: Some(1) }).unwrap();
    // A record that passes its checksum (so is no torn write) but whose body is not a
    // group: a bug or a foreign file, which must not be skipped silently.
    let (body, seq) = (b"xx", 1u64);
    let mut record = Vec::new();
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let mut summed = seq.to_le_bytes().to_vec();
    summed.extend_from_slice(body);
    record.extend_from_slice(&crc32fast::hash(&summed).to_le_bytes());
    record.extend_from_slice(&summed);
    std::fs::write(dir.path().join("shard-00.log"), &record).unwrap();
    let err = SqliteBackend::open(dir.path(), SqliteOptions::default()).unwrap_err();
    let text = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(
        text.contains("shard-00.log") && text.contains("malformed"),
        "{text}"
    );
}

#[test]
fn a_failed_commit_keeps_the_window_and_commits_it_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path());
    // A deferred foreign key makes COMMIT itself fail while a violating row is in the
    // transaction: the one way to fail a commit on demand.
    lock(&w.shared.conn)
        .execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
    assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("1"))])]));
    lock(&w.shared.conn)
        .execute_batch("INSERT INTO child (p) VALUES (7)")
        .unwrap();
    assert!(w.commit().is_err());
    // The acknowledged group is applied again from the log (the stray row, which the
    // log never held, is gone) and the shard goes on.
    assert!(!w.shared.broken.load(Ordering::Acquire));
    assert_eq!(contents(&lock(&w.shared.conn), 1), vec![s("a", "1")]);
    assert_eq!(committed(dir.path(), 1), vec![]);
    // The next try waits for a window, however large the log.
    assert!(!w.window_over());
    assert!(write(&mut w, &mut [batch(1, false, &[("b", Some("2"))])]));
    w.commit().unwrap();
    assert_eq!(committed(dir.path(), 1), vec![s("a", "1"), s("b", "2")]);
    assert_eq!(w.committed, 2);
}

/// A group of batches: (object, clear, writes of key numbers); a write of `None` deletes.
type GroupSpec = Vec<(u8, bool, Vec<(u8, Option<u8>)>)>;

/// One step of [`the_writer_agrees_with_a_model_across_crashes`].
#[derive(Debug, Clone)]
enum Step {
    Group(GroupSpec),
    /// A group with a batch whose apply fails: the whole group must leave nothing.
    FailingGroup(GroupSpec),
    Commit,
    Crash,
}

#[test]
fn the_writer_agrees_with_a_model_across_crashes() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use std::collections::BTreeMap;

    let write = (0u8..4, prop::option::of(0u8..10));
    let batch_ = (
        0u8..3,
        prop::bool::weighted(0.1),
        prop::collection::vec(write, 0..4),
    );
    let group = prop::collection::vec(batch_, 1..4);
    let step = prop_oneof![
        6 => group.clone().prop_map(Step::Group),
        1 => group.prop_map(Step::FailingGroup),
        2 => Just(Step::Commit),
        2 => Just(Step::Crash),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(step, 1..24), |steps| {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        fail_writes_of_boom(&w);
        let mut model: BTreeMap<(u8, String), String> = BTreeMap::new();
        let to_batches = |g: &GroupSpec| -> Vec<CommitBatch> {
            g.iter()
                .map(|(id, clear, writes)| {
                    // At most one write per key in a batch, as the runtime sends them.
                    let mut seen = HashSet::new();
                    let writes: Vec<(String, Option<String>)> = writes
                        .iter()
                        .filter(|(k, _)| seen.insert(*k))
                        .map(|(k, v)| (format!("k{k}"), v.map(|v| format!("v{v}"))))
                        .collect();
                    let borrowed: Vec<(&str, Option<&str>)> = writes
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_deref()))
                        .collect();
                    let mut b = batch(*id, *clear, &borrowed);
                    b.durability = Durability::ProcessCrashSafe;
                    b
                })
                .collect()
        };
        for step in steps {
            // After a commit, or a crash and the replay that follows it, the database
            // file itself holds the model too.
            let settled = matches!(step, Step::Commit | Step::Crash);
            match step {
                Step::Group(g) => {
                    let mut batches = to_batches(&g);
                    prop_assert!(w.write_group(&mut batches));
                    // Batches apply in order: a clear drops what came before it.
                    for b in &to_batches(&g) {
                        let id = b.object.id.as_bytes()[0];
                        if b.clear {
                            model.retain(|(o, _), _| *o != id);
                        }
                        for (k, v) in &b.writes {
                            match v {
                                Some(v) => {
                                    model.insert(
                                        (id, k.clone()),
                                        String::from_utf8(v.to_vec()).unwrap(),
                                    );
                                }
                                None => {
                                    model.remove(&(id, k.clone()));
                                }
                            }
                        }
                    }
                }
                Step::FailingGroup(g) => {
                    let mut batches = to_batches(&g);
                    batches.push(batch(0, false, &[("boom", Some("x"))]));
                    prop_assert!(!w.write_group(&mut batches));
                }
                Step::Commit => w.commit().unwrap(),
                Step::Crash => {
                    drop(w);
                    w = writer(dir.path());
                }
            }
            prop_assert!(!w.shared.broken.load(Ordering::Acquire));
            let conn = lock(&w.shared.conn);
            for id in 0..3u8 {
                let want: Vec<(String, String)> = model
                    .iter()
                    .filter(|((o, _), _)| *o == id)
                    .map(|((_, k), v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(contents(&conn, id), want.clone());
                if settled {
                    prop_assert_eq!(committed(dir.path(), id), want);
                }
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn a_group_whose_log_write_fails_leaves_the_numbering_intact() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("shard-00.log");
    let mut w = writer(dir.path());
    assert!(write(&mut w, &mut [batch(1, false, &[("a", Some("1"))])]));
    w.log.fail_writes(&log, true);
    assert!(!write(&mut w, &mut [batch(1, false, &[("b", Some("2"))])]));
    w.log.fail_writes(&log, false);
    assert!(write(&mut w, &mut [batch(1, false, &[("c", Some("3"))])]));
    drop(w);
    // Both acknowledged groups are replayed: the one after the failure did not reuse
    // the number of the one before it.
    writer(dir.path());
    assert_eq!(committed(dir.path(), 1), vec![s("a", "1"), s("c", "3")]);
}
