//! The protocol's requests one by one (version 3's conditions included), the transaction
//! rules, and the HTTP answers a client reads as errors.

use serde_json::{Value, json};
use stead_databases::protocol::{StreamRequest, StreamResult};
use stead_databases::{DatabaseClient, DatabaseError};
use stead_fixtures::{TestClient, TestRuntime};

fn reqs(v: Value) -> Vec<StreamRequest> {
    serde_json::from_value(v).unwrap()
}

fn json_of(results: &[StreamResult]) -> Value {
    serde_json::to_value(results).unwrap()
}

fn stmt(sql: &str) -> Value {
    json!({"sql": sql})
}

#[tokio::test]
async fn every_request_of_a_pipeline() {
    let rt = TestRuntime::memory().await;
    let dbs = DatabaseClient::new(&rt).unwrap();
    let out = dbs
        .pipeline(
            "shop",
            reqs(json!([
                {"type": "sequence", "sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT UNIQUE); INSERT INTO t (s) VALUES ('a');"},
                {"type": "store_sql", "sql_id": 7, "sql": "INSERT INTO t (s) VALUES (?)"},
                {"type": "execute", "stmt": {"sql_id": 7, "args": [{"type": "text", "value": "b"}], "want_rows": false}},
                {"type": "describe", "sql": "SELECT id, s FROM t WHERE s = :s"},
                {"type": "get_autocommit"},
                // v3 style: BEGIN, steps while not autocommit, COMMIT, ROLLBACK if it failed.
                {"type": "batch", "batch": {"steps": [
                    {"stmt": stmt("BEGIN IMMEDIATE")},
                    {"condition": {"type": "and", "conds": [{"type": "ok", "step": 0}, {"type": "not", "cond": {"type": "is_autocommit"}}]},
                     "stmt": stmt("INSERT INTO t (s) VALUES ('c')")},
                    {"condition": {"type": "ok", "step": 1}, "stmt": stmt("INSERT INTO t (s) VALUES ('a')")},
                    {"condition": {"type": "ok", "step": 2}, "stmt": stmt("COMMIT")},
                    {"condition": {"type": "not", "cond": {"type": "ok", "step": 3}}, "stmt": stmt("ROLLBACK")},
                    {"condition": {"type": "error", "step": 2}, "stmt": stmt("SELECT count(*) FROM t")}
                ]}},
                {"type": "close_sql", "sql_id": 7},
                {"type": "execute", "stmt": {"sql_id": 7}},
                {"type": "sequence", "sql": "INSERT INTO t (s) VALUES ('d'); INSERT INTO t (s) VALUES ('d'); INSERT INTO t (s) VALUES ('e');"},
                {"type": "execute", "stmt": {"sql": "SELECT group_concat(s) FROM t"}},
                {"type": "close"},
                {"type": "get_autocommit"}
            ])),
        )
        .await
        .unwrap();
    let out = json_of(&out);
    assert_eq!(
        out[0],
        json!({"type": "ok", "response": {"type": "sequence"}})
    );
    assert_eq!(out[2]["response"]["result"]["affected_row_count"], 1);
    assert_eq!(out[2]["response"]["result"]["rows"], json!([]));
    assert_eq!(
        out[3]["response"]["result"],
        json!({"params": [{"name": ":s"}], "cols": [
            {"name": "id", "decltype": "INTEGER"}, {"name": "s", "decltype": "TEXT"}],
            "is_explain": false, "is_readonly": true})
    );
    assert_eq!(out[4]["response"]["is_autocommit"], true);
    let batch = &out[5]["response"]["result"];
    assert!(batch["step_errors"][0].is_null() && !batch["step_results"][0].is_null());
    assert!(!batch["step_results"][1].is_null());
    assert!(
        batch["step_errors"][2]["message"]
            .as_str()
            .unwrap()
            .contains("UNIQUE"),
        "{batch}"
    );
    assert_eq!(batch["step_errors"][2]["code"], "SQLITE_CONSTRAINT");
    assert!(batch["step_results"][3].is_null(), "COMMIT skipped");
    assert!(!batch["step_results"][4].is_null(), "ROLLBACK ran");
    // After the rollback: 'a' and 'b' only ('c' was undone).
    assert_eq!(
        batch["step_results"][5]["rows"][0][0],
        json!({"type": "integer", "value": "2"})
    );
    assert_eq!(out[7]["error"]["code"], "SQL_NOT_FOUND");
    // A sequence stops at its first error; what ran before it stays.
    assert!(
        out[8]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UNIQUE")
    );
    assert_eq!(
        out[9]["response"]["result"]["rows"][0][0],
        json!({"type": "text", "value": "a,b,d"})
    );
    assert_eq!(out[10]["response"]["type"], "close");
    assert_eq!(out[11]["error"]["code"], "STREAM_CLOSED");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn transactions_end_in_their_pipeline() {
    let rt = TestRuntime::memory().await;
    let dbs = DatabaseClient::new(&rt).unwrap();
    dbs.execute("tx", "CREATE TABLE t (x)", &[])
        .await
        .unwrap()
        .unwrap();
    // Left open without a close: refused whole, nothing kept (not even what ran before).
    let err = dbs
        .pipeline(
            "tx",
            reqs(json!([
                {"type": "execute", "stmt": stmt("INSERT INTO t VALUES (1)")},
                {"type": "execute", "stmt": stmt("BEGIN")},
                {"type": "execute", "stmt": stmt("INSERT INTO t VALUES (2)")}
            ])),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DatabaseError::TransactionLeftOpen), "{err}");
    // Closed while open: the transaction is rolled back, what ran before it stays.
    let out = dbs
        .pipeline(
            "tx",
            reqs(json!([
                {"type": "execute", "stmt": stmt("INSERT INTO t VALUES (3)")},
                {"type": "execute", "stmt": stmt("BEGIN")},
                {"type": "execute", "stmt": stmt("INSERT INTO t VALUES (4)")},
                {"type": "get_autocommit"},
                {"type": "execute", "stmt": stmt("BEGIN")},
                {"type": "close"}
            ])),
        )
        .await
        .unwrap();
    let out = json_of(&out);
    assert_eq!(out[3]["response"]["is_autocommit"], false);
    assert!(
        out[4]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("within a transaction")
    );
    let r = dbs
        .execute("tx", "SELECT group_concat(x) FROM t", &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::to_value(&r.rows).unwrap(),
        json!([[{"type": "text", "value": "3"}]])
    );
    // COMMIT and ROLLBACK without a transaction are SQLite's errors.
    let out = dbs
        .pipeline(
            "tx",
            reqs(json!([
                {"type": "execute", "stmt": stmt("COMMIT")},
                {"type": "execute", "stmt": stmt("ROLLBACK")},
                {"type": "execute", "stmt": stmt("ATTACH 'x.db' AS x")}
            ])),
        )
        .await
        .unwrap();
    let out = json_of(&out);
    assert!(
        out[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no transaction")
    );
    assert!(
        out[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no transaction")
    );
    assert_eq!(out[2]["error"]["code"], "SQLITE_AUTH");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn over_http_errors_are_the_protocols() {
    let rt = TestRuntime::memory().await;
    let app = axum::Router::new().nest(
        "/databases",
        stead_databases::router(&rt).unwrap().unauthenticated(),
    );
    let http = TestClient::new(app);
    // The version probe of a client, and a pipeline.
    assert_eq!(http.get("/databases/a/v3").send().await.status, 200);
    let r = http
        .post("/databases/a/v3/pipeline")
        .json(&json!({"baton": null, "requests": [
            {"type": "execute", "stmt": {"sql": "SELECT ?1 + 1", "args": [{"type": "integer", "value": "41"}]}}
        ]}))
        .send()
        .await;
    assert_eq!(r.status, 200);
    let body = r.value();
    assert_eq!(body["baton"], Value::Null);
    assert_eq!(
        body["results"][0]["response"]["result"]["rows"][0][0],
        json!({"type": "integer", "value": "42"})
    );
    // Refusals a client reads as errors: JSON with `message` and `code`.
    for (path, body, code) in [
        (
            "/databases/a/v2/pipeline",
            json!({"baton": "b", "requests": []}),
            "BATON_INVALID",
        ),
        (
            "/databases/a/v2/pipeline",
            json!({"requests": [{"type": "nope"}]}),
            "PROTO_ERROR",
        ),
        (
            "/databases/a/v2/pipeline",
            json!({"requests": [{"type": "execute", "stmt": {"sql": "BEGIN"}}]}),
            "TRANSACTION_NOT_SUPPORTED",
        ),
        (
            "/databases/v2/pipeline",
            json!({"requests": []}),
            "DATABASE_URL",
        ),
    ] {
        let r = http.post(path).json(&body).send().await;
        assert!(r.status.is_client_error(), "{path}: {}", r.status);
        assert_eq!(r.content_type(), "application/json", "{path}");
        assert_eq!(r.value()["code"], code, "{path}: {}", r.text());
        assert!(r.value()["message"].is_string());
    }
    // An argument that is not what its type says is the statement's error.
    let r = http
        .post("/databases/a/v2/pipeline")
        .json(&json!({"requests": [
            {"type": "execute", "stmt": {"sql": "SELECT ?", "args": [{"type": "integer", "value": "1.5"}]}}
        ]}))
        .send()
        .await;
    assert_eq!(r.value()["results"][0]["error"]["code"], "ARGS_INVALID");
    // Listing (a database is stored once it has something) and deleting.
    let r = http
        .post("/databases/a/v2/pipeline")
        .json(&json!({"requests": [{"type": "execute", "stmt": {"sql": "CREATE TABLE t (x)"}}]}))
        .send()
        .await;
    assert!(
        r.value()["results"][0]["response"].is_object(),
        "{}",
        r.text()
    );
    let r = http.get("/databases?prefix=a").send().await;
    assert_eq!(r.value()["databases"], json!(["a"]));
    assert_eq!(http.delete("/databases/a").send().await.status, 204);
    let r = http.get("/databases?prefix=a").send().await;
    assert_eq!(r.value()["databases"], json!([]));
    rt.shutdown().await.unwrap();
}
