//! SQL in an object: the typed API, the rules a turn's statements follow, the limits, and
//! the database across a restart and through export and import. (That SQL commits with its
//! turn, on every backend and against plain SQLite, is in the conformance suite.)

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stead_core::{
    Context, DurableObject, Error, Handler, Params, Result, Runtime, SqlConfig, SqlErrorKind,
    SqlValue, sql_params,
};

struct Db;

impl DurableObject for Db {
    const CLASS: &'static str = "db";
    type Env = ();
    async fn activate(ctx: &mut Context, _env: Arc<()>) -> Result<Self> {
        // Schema set-up in the activation, committed like a turn.
        ctx.sql()
            .exec(
                "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
                (),
            )
            .await?;
        Ok(Db)
    }
}

#[derive(Serialize, Deserialize)]
struct Exec(String, Vec<SqlValue>);

impl Handler<Exec> for Db {
    type Reply = Result<(Vec<String>, Vec<Vec<SqlValue>>, u64, u64)>;
    async fn handle(
        &mut self,
        msg: Exec,
        ctx: &mut Context,
    ) -> Result<(Vec<String>, Vec<Vec<SqlValue>>, u64, u64)> {
        let c = ctx.sql().exec(&msg.0, msg.1).await?;
        Ok((
            c.columns().to_vec(),
            c.rows().to_vec(),
            c.rows_read(),
            c.rows_written(),
        ))
    }
}

/// One statement with parameters by name.
#[derive(Serialize, Deserialize)]
struct Named(String, Vec<(String, SqlValue)>);

impl Handler<Named> for Db {
    type Reply = Result<Vec<Vec<SqlValue>>>;
    async fn handle(&mut self, msg: Named, ctx: &mut Context) -> Result<Vec<Vec<SqlValue>>> {
        Ok(ctx
            .sql()
            .exec(&msg.0, Params::named(msg.1))
            .await?
            .into_rows())
    }
}

/// Several statements in one turn; each one's error is kept and the turn goes on.
#[derive(Serialize, Deserialize)]
struct Many(Vec<String>);

impl Handler<Many> for Db {
    type Reply = Result<Vec<std::result::Result<usize, (SqlErrorKind, String)>>>;
    async fn handle(
        &mut self,
        msg: Many,
        ctx: &mut Context,
    ) -> Result<Vec<std::result::Result<usize, (SqlErrorKind, String)>>> {
        let mut out = Vec::new();
        for s in msg.0 {
            out.push(match ctx.sql().exec(&s, ()).await {
                Ok(c) => Ok(c.rows().len()),
                Err(Error::Sql(e)) => Err((e.kind, e.to_string())),
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    }
}

#[derive(Debug, PartialEq, Deserialize)]
struct Entry {
    k: String,
    v: i64,
}

#[derive(Serialize, Deserialize)]
struct Typed;

impl Handler<Typed> for Db {
    type Reply = Result<()>;
    async fn handle(&mut self, _: Typed, ctx: &mut Context) -> Result<()> {
        let mut sql = ctx.sql();
        sql.exec(
            "INSERT INTO kv (k, v) VALUES (?1, ?2), (?3, ?4)",
            sql_params!["a", 1, "b", 2],
        )
        .await?;
        sql.exec(
            "INSERT INTO kv (k, v) VALUES (:k, :v)",
            Params::named([(":k", SqlValue::from("c")), (":v", SqlValue::from(3))]),
        )
        .await?;
        let all: Vec<Entry> = sql.query_as("SELECT k, v FROM kv ORDER BY k", ()).await?;
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[2],
            Entry {
                k: "c".into(),
                v: 3
            }
        );
        let one: Entry = sql.one("SELECT k, v FROM kv WHERE k = ?", ["b"]).await?;
        assert_eq!(one.v, 2);
        let sum: i64 = sql.one("SELECT sum(v) FROM kv", ()).await?;
        assert_eq!(sum, 6);
        let pair: (String, i64) = sql.one("SELECT k, v FROM kv WHERE v = 1", ()).await?;
        assert_eq!(pair, ("a".to_owned(), 1));
        let none: Option<Entry> = sql
            .optional("SELECT k, v FROM kv WHERE k = 'zz'", ())
            .await?;
        assert!(none.is_none());
        let err = sql
            .one::<Entry>("SELECT k, v FROM kv", ())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exactly one row"), "{err}");
        let err = sql
            .optional::<Entry>("SELECT k, v FROM kv", ())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at most one row"), "{err}");
        // Several statements without parameters: the last one's cursor.
        let c = sql
            .exec(
                "CREATE TABLE t (x); INSERT INTO t VALUES (1), (2); SELECT count(*) FROM t",
                (),
            )
            .await?;
        assert_eq!(c.rows(), &[vec![SqlValue::Integer(2)]]);
        // With parameters, one statement only.
        let err = sql.exec("SELECT ?; SELECT 2", [1]).await.unwrap_err();
        assert!(err.to_string().contains("one statement"), "{err}");
        // A wrong number of parameters is refused, naming the statement.
        let err = sql.exec("SELECT ?1, ?2", [1]).await.unwrap_err();
        assert!(
            matches!(&err, Error::Sql(e) if e.kind == SqlErrorKind::Invalid && e.statement == "SELECT ?1, ?2"),
            "{err:?}"
        );
        let size = sql.size().await?;
        assert!(size >= 4096 && size % 4096 == 0, "{size}");
        Ok(())
    }
}

async fn exec(
    o: &stead_core::Stub<Db>,
    sql: &str,
    params: Vec<SqlValue>,
) -> Result<(Vec<String>, Vec<Vec<SqlValue>>, u64, u64)> {
    o.call(Exec(sql.into(), params)).await
}

#[tokio::test]
async fn the_typed_api() {
    let rt = Runtime::builder().memory().build().await.unwrap();
    let o = rt.namespace::<Db>(()).unwrap().get_by_name("typed");
    o.call(Typed).await.unwrap();
    // Rows read and written, per statement.
    let (_, _, _, written) = exec(&o, "UPDATE kv SET v = v + 1", vec![]).await.unwrap();
    assert_eq!(written, 3);
    let (cols, rows, read, written) = exec(&o, "SELECT k FROM kv WHERE v > 2", vec![])
        .await
        .unwrap();
    assert_eq!(cols, vec!["k"]);
    assert_eq!(rows.len(), 2);
    assert_eq!(written, 0);
    assert!(read >= 3, "a full scan of three rows reads three: {read}");
    // Values of every type round-trip, integers at their limits included.
    let (_, rows, _, _) = exec(
        &o,
        "SELECT ?1, ?2, ?3, ?4, ?5",
        vec![
            SqlValue::Integer(i64::MIN),
            SqlValue::Integer(i64::MAX),
            SqlValue::Real(0.5),
            SqlValue::Blob(vec![0, 255, 7]),
            SqlValue::Null,
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        rows[0],
        vec![
            SqlValue::Integer(i64::MIN),
            SqlValue::Integer(i64::MAX),
            SqlValue::Real(0.5),
            SqlValue::Blob(vec![0, 255, 7]),
            SqlValue::Null
        ]
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_turn_is_the_transaction_and_an_object_sees_only_its_own_database() {
    let rt = Runtime::builder().memory().build().await.unwrap();
    let ns = rt.namespace::<Db>(()).unwrap();
    // The activation committed its schema: the runtime's own BEGIN and COMMIT have run.
    let o = ns.get_by_name("rules");
    let out = o
        .call(Many(vec![
            "BEGIN".into(),
            "COMMIT".into(),
            "ROLLBACK".into(),
            "ATTACH DATABASE '/tmp/elsewhere.db' AS other".into(),
            "PRAGMA journal_mode = DELETE".into(),
            "PRAGMA max_page_count = 100000000".into(),
            "PRAGMA writable_schema = ON".into(),
            "VACUUM".into(),
            "PRAGMA table_info(kv)".into(),
            "PRAGMA page_size".into(),
            // Savepoints are nested transactions inside the turn.
            "INSERT INTO kv VALUES ('kept', 1)".into(),
            "SAVEPOINT s".into(),
            "INSERT INTO kv VALUES ('undone', 2)".into(),
            "ROLLBACK TO s".into(),
            "RELEASE s".into(),
            "SELECT * FROM kv".into(),
        ]))
        .await
        .unwrap();
    for (i, r) in out[..4].iter().enumerate() {
        let (kind, msg) = r.as_ref().unwrap_err();
        assert_eq!(*kind, SqlErrorKind::Refused, "{i}: {msg}");
    }
    assert!(
        out[0]
            .as_ref()
            .unwrap_err()
            .1
            .contains("a turn is the transaction")
    );
    assert!(out[3].as_ref().unwrap_err().1.contains("its own database"));
    for r in &out[4..7] {
        let (kind, msg) = r.as_ref().unwrap_err();
        assert_eq!(*kind, SqlErrorKind::Refused, "{msg}");
        assert!(msg.contains("is the runtime's"), "{msg}");
    }
    assert!(
        out[7].is_err(),
        "VACUUM cannot run inside the turn's transaction"
    );
    assert_eq!(out[8], Ok(2), "table_info is allowed");
    assert_eq!(out[9], Ok(1), "reading page_size is allowed");
    assert_eq!(
        out[15],
        Ok(1),
        "only the row before the savepoint is kept: {out:?}"
    );
    // Another object of the class has its own database.
    let other = ns.get_by_name("rules-other");
    let (_, rows, _, _) = exec(&other, "SELECT count(*) FROM kv", vec![])
        .await
        .unwrap();
    assert_eq!(rows, vec![vec![SqlValue::Integer(0)]]);
    rt.shutdown().await.unwrap();
}

/// An object keeps the statements it ran prepared (by their text): what a kept statement
/// answers must follow schema changes, its parameters must not leak into its next run, and
/// more statements than are kept must still run.
#[tokio::test]
async fn statements_kept_prepared_follow_the_schema_and_keep_no_values() {
    let rt = Runtime::builder().memory().build().await.unwrap();
    let o = rt.namespace::<Db>(()).unwrap().get_by_name("kept");
    exec(&o, "INSERT INTO kv VALUES ('a', 1)", vec![])
        .await
        .unwrap();
    let star = "SELECT * FROM kv ORDER BY k";
    let (cols, _, _, _) = exec(&o, star, vec![]).await.unwrap();
    assert_eq!(cols, ["k", "v"]);
    // The same text after the table gained and renamed a column: new names, new values.
    exec(
        &o,
        "ALTER TABLE kv ADD COLUMN note TEXT DEFAULT 'n'",
        vec![],
    )
    .await
    .unwrap();
    exec(&o, "ALTER TABLE kv RENAME COLUMN v TO value", vec![])
        .await
        .unwrap();
    let (cols, rows, _, _) = exec(&o, star, vec![]).await.unwrap();
    assert_eq!(cols, ["k", "value", "note"]);
    assert_eq!(
        rows,
        vec![vec![
            SqlValue::from("a"),
            SqlValue::Integer(1),
            SqlValue::from("n")
        ]]
    );
    // Named parameters left out are NULL, not the value an earlier run bound.
    let named = "SELECT :a, :b";
    let c = o
        .call(Named(
            named.into(),
            vec![(":a".into(), 1.into()), (":b".into(), 2.into())],
        ))
        .await
        .unwrap();
    assert_eq!(c, vec![vec![SqlValue::Integer(1), SqlValue::Integer(2)]]);
    let c = o
        .call(Named(named.into(), vec![(":a".into(), 3.into())]))
        .await
        .unwrap();
    assert_eq!(c, vec![vec![SqlValue::Integer(3), SqlValue::Null]]);
    // Far more distinct statements than are kept, each run twice, answer what they say.
    for round in 0..2 {
        for i in 0..200 {
            let (_, rows, _, _) = exec(&o, &format!("SELECT {i} + ?1"), vec![round.into()])
                .await
                .unwrap();
            assert_eq!(rows, vec![vec![SqlValue::Integer(i + round)]]);
        }
    }
    // A statement that fails to run leaves the kept one usable.
    let err = exec(
        &o,
        "INSERT INTO kv (k, value) VALUES (?1, ?2)",
        vec!["a".into(), 1.into()],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Sql(e) if e.kind == SqlErrorKind::Constraint),
        "{err:?}"
    );
    exec(
        &o,
        "INSERT INTO kv (k, value) VALUES (?1, ?2)",
        vec!["b".into(), 2.into()],
    )
    .await
    .unwrap();
    let (_, rows, _, _) = exec(&o, "SELECT count(*) FROM kv", vec![]).await.unwrap();
    assert_eq!(rows, vec![vec![SqlValue::Integer(2)]]);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn size_and_time_are_bounded() {
    let mut config = SqlConfig::default();
    config.max_bytes = 256 * 1024;
    config.statement_timeout = Duration::from_millis(100);
    let rt = Runtime::builder()
        .memory()
        .sql(config)
        .build()
        .await
        .unwrap();
    let o = rt.namespace::<Db>(()).unwrap().get_by_name("bounded");
    exec(&o, "CREATE TABLE big (b BLOB)", vec![]).await.unwrap();
    exec(&o, "INSERT INTO big VALUES (zeroblob(100000))", vec![])
        .await
        .unwrap();
    // The statement that would pass the limit fails whole and changes nothing.
    let err = exec(&o, "INSERT INTO big VALUES (zeroblob(200000))", vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Sql(e) if e.kind == SqlErrorKind::TooLarge && e.message.contains("262144")),
        "{err:?}"
    );
    let (_, rows, _, _) = exec(&o, "SELECT count(*) FROM big", vec![]).await.unwrap();
    assert_eq!(rows, vec![vec![SqlValue::Integer(1)]]);
    // Inside one turn: whatever SQLite does with the transaction on such an error, the turn
    // never commits half of itself. Either the earlier insert stays and later statements
    // run, or the turn is told it cannot go on and keeps nothing.
    let out = o
        .call(Many(vec![
            "INSERT INTO big VALUES (zeroblob(10))".into(),
            "INSERT INTO big VALUES (zeroblob(200000))".into(),
            "SELECT count(*) FROM big".into(),
        ]))
        .await;
    let (_, rows, _, _) = exec(&o, "SELECT count(*) FROM big", vec![]).await.unwrap();
    match out {
        Ok(out) => {
            assert_eq!(out[1].as_ref().unwrap_err().0, SqlErrorKind::TooLarge);
            match &out[2] {
                Ok(1) => assert_eq!(rows, vec![vec![SqlValue::Integer(2)]]),
                Err((SqlErrorKind::Failed, msg)) => {
                    assert!(msg.contains("cannot go on"), "{msg}");
                    assert_eq!(rows, vec![vec![SqlValue::Integer(1)]]);
                }
                other => panic!("{other:?}"),
            }
        }
        Err(e) => {
            // SQLite rolled the transaction back: the turn failed whole.
            assert!(
                matches!(&e, Error::Sql(e) if e.kind == SqlErrorKind::Failed && e.message.contains("cannot go on")),
                "{e:?}"
            );
            assert_eq!(rows, vec![vec![SqlValue::Integer(1)]]);
        }
    }
    // A value, and a statement's text, are bounded whatever the database's limit.
    let err = exec(&o, "SELECT length(zeroblob(20000000))", vec![])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too big"), "{err}");
    let long = format!("SELECT {}1", "1 + ".repeat(300_000));
    let err = exec(&o, &long, vec![]).await.unwrap_err();
    assert!(
        err.to_string().contains("too big") || err.to_string().contains("too long"),
        "{err}"
    );
    // A statement that runs too long is interrupted; the object serves the next one.
    let started = std::time::Instant::now();
    let err = exec(
        &o,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        vec![],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Sql(e) if e.kind == SqlErrorKind::Interrupted),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let (_, rows, _, _) = exec(&o, "SELECT count(*) FROM big", vec![]).await.unwrap();
    assert_eq!(rows, vec![vec![SqlValue::Integer(1)]]);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_database_survives_a_restart_and_travels_in_an_export() {
    let dir = tempfile::tempdir().unwrap();
    {
        let rt = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
        let o = rt.namespace::<Db>(()).unwrap().get_by_name("kept");
        for i in 0..200 {
            exec(
                &o,
                "INSERT INTO kv VALUES (?1, ?2)",
                vec![
                    SqlValue::Text(format!("key-{i:03}-{}", "x".repeat(200))),
                    SqlValue::Integer(i),
                ],
            )
            .await
            .unwrap();
        }
        rt.shutdown().await.unwrap();
    }
    let rt = Runtime::builder().sqlite(dir.path()).build().await.unwrap();
    let ns = rt.namespace::<Db>(()).unwrap();
    let o = ns.get_by_name("kept");
    let (_, rows, _, _) = exec(&o, "SELECT count(*), sum(v) FROM kv", vec![])
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![SqlValue::Integer(200), SqlValue::Integer(19900)]]
    );
    // Exported with its database, imported as a fork.
    let doc = o.export().await.unwrap();
    assert!(doc.sql.as_deref().is_some_and(|s| s.len() > 40_000));
    let fork = ns.get_by_name("fork");
    fork.import(&doc).await.unwrap();
    exec(&fork, "DELETE FROM kv WHERE v >= 100", vec![])
        .await
        .unwrap();
    let count = |rows: Vec<Vec<SqlValue>>| rows[0][0].clone();
    let (_, rows, _, _) = exec(&fork, "SELECT count(*) FROM kv", vec![])
        .await
        .unwrap();
    assert_eq!(count(rows), SqlValue::Integer(100));
    let (_, rows, _, _) = exec(&o, "SELECT count(*) FROM kv", vec![]).await.unwrap();
    assert_eq!(
        count(rows),
        SqlValue::Integer(200),
        "the original is untouched"
    );
    // An operator reads the tables from outside, through a turn; writes are refused.
    let c = rt
        .query_object(
            "db",
            "kept",
            "SELECT count(*) AS n FROM kv WHERE v < ?",
            [10],
        )
        .await
        .unwrap();
    assert_eq!(c.columns(), ["n"]);
    assert_eq!(c.rows(), &[vec![SqlValue::Integer(10)]]);
    let c = o
        .query("SELECT k, v FROM kv ORDER BY v LIMIT 1", ())
        .await
        .unwrap();
    assert_eq!(
        c.decltypes(),
        [Some("TEXT".to_owned()), Some("INTEGER".to_owned())]
    );
    for write in [
        "DELETE FROM kv",
        "INSERT INTO kv VALUES ('x', 1)",
        "CREATE TABLE y (z)",
        "SAVEPOINT s",
        "PRAGMA user_version = 3",
    ] {
        let err = rt.query_object("db", "kept", write, ()).await.unwrap_err();
        assert!(matches!(err, Error::BadRequest { .. }), "{write}: {err}");
    }
    let (_, rows, _, _) = exec(&o, "SELECT count(*) FROM kv", vec![]).await.unwrap();
    assert_eq!(rows[0][0], SqlValue::Integer(200));
    // An operator's write, committed in a turn of the object; a failing one changes nothing.
    let c = rt
        .execute_object("db", "kept", "UPDATE kv SET v = v + 1000 WHERE v < ?", [5])
        .await
        .unwrap();
    assert_eq!(c.rows_written(), 5);
    let err = rt
        .execute_object(
            "db",
            "kept",
            "INSERT INTO kv VALUES ('key-000-x', NULL)",
            (),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Sql(e) if e.kind == SqlErrorKind::Constraint),
        "{err:?}"
    );
    let (_, rows, _, _) = exec(&o, "SELECT count(*) FROM kv WHERE v >= 1000", vec![])
        .await
        .unwrap();
    assert_eq!(rows[0][0], SqlValue::Integer(5));
    assert!(matches!(
        rt.query_object("nope", "kept", "SELECT 1", ()).await,
        Err(Error::NotFound { .. } | Error::BadRequest { .. })
    ));
    // A document whose database is not one is refused.
    let mut bad = doc.clone();
    bad.sql = Some("bm90IGEgZGF0YWJhc2U=".into());
    let err = fork.import(&bad).await.unwrap_err();
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
    rt.shutdown().await.unwrap();
}
