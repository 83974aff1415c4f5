//! Databases over HTTP, spoken to by the stock libSQL client (`@libsql/client`, from the npm
//! registry, run by `node`) against the real server on 127.0.0.1, with a bearer token.

mod common;

use serde_json::{Value, json};
use stead_server::Config;

const TOKEN: &str = "databases-token-0123456789";

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.data_dir = dir.to_path_buf();
    c.tokens = vec![TOKEN.into()];
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_libsql_client_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let server = stead_server::start(config(dir.path())).await.unwrap();
    let url = format!("http://{}/databases/orders/", server.addr());
    let out: Value = tokio::task::spawn_blocking(move || {
        common::run_node(
            "libsql",
            "@libsql/client",
            "libsql-client.mjs",
            &[&url, TOKEN],
        )
    })
    .await
    .unwrap();

    // Values of every type, integers past 2^53 included, as the protocol carries them.
    assert_eq!(
        out["insert"],
        json!({"rowsAffected": 1, "lastInsertRowid": "1"})
    );
    assert_eq!(out["row"]["big"], "9007199254740993");
    assert_eq!(out["row"]["bigType"], "bigint");
    assert_eq!(out["row"]["f"], 1.5);
    assert_eq!(out["row"]["s"], "héllo");
    assert_eq!(out["row"]["b"], json!([0, 1, 255]));
    assert_eq!(out["row"]["n"], Value::Null);
    assert_eq!(out["row"]["columns"], json!(["big", "f", "s", "b", "n"]));
    assert_eq!(
        out["row"]["columnTypes"],
        json!(["INTEGER", "REAL", "TEXT", "BLOB", ""])
    );
    // A batch is atomic: a failing statement keeps nothing of it, and is an error.
    assert_eq!(out["batch"], json!([1, 1]));
    assert_eq!(out["failedBatch"]["error"], true, "{out}");
    assert!(
        out["failedBatch"]["message"]
            .as_str()
            .unwrap()
            .contains("UNIQUE"),
        "{out}"
    );
    assert_eq!(out["afterFailedBatch"], "0");
    // Errors are errors, with SQLite's message.
    assert_eq!(out["syntax"]["error"], true);
    assert!(
        out["syntax"]["message"]
            .as_str()
            .unwrap()
            .contains("syntax error"),
        "{out}"
    );
    assert!(
        out["noTable"]["message"]
            .as_str()
            .unwrap()
            .contains("no such table"),
        "{out}"
    );
    // A script with its own BEGIN and COMMIT (and a `;` inside a string).
    assert_eq!(out["multiple"], json!(["m1", "m;2"]));
    // Read transactions read, and refuse writes.
    assert_eq!(out["read"], "6");
    assert_eq!(out["writeInRead"]["error"], true, "{out}");
    // An interactive transaction is refused with a protocol error, and leaves nothing.
    assert_eq!(out["interactive"]["error"], true, "{out}");
    assert!(
        out["interactive"]["message"]
            .as_str()
            .unwrap()
            .contains("interactive transactions are not supported"),
        "{out}"
    );
    assert_eq!(
        out["final"],
        json!(["héllo", "named", "b1", "b2", "m1", "m;2"]),
        "{out}"
    );
    // Without the token, nothing.
    assert_eq!(out["wrongToken"]["error"], true);
    assert!(
        out["wrongToken"]["message"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{out}"
    );

    // The databases are listed for the operator, and a restart keeps them.
    let http = reqwest::Client::new();
    let list: Value = http
        .get(format!("http://{}/databases", server.addr()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["databases"], json!(["orders"]));
    server.shutdown().await.unwrap();
    let server = stead_server::start(config(dir.path())).await.unwrap();
    let pipeline = json!({"baton": null, "requests": [
        {"type": "execute", "stmt": {"sql": "SELECT count(*) FROM t"}},
        {"type": "close"}
    ]});
    let r: Value = http
        .post(format!(
            "http://{}/databases/orders/v2/pipeline",
            server.addr()
        ))
        .bearer_auth(TOKEN)
        .json(&pipeline)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["results"][0]["response"]["result"]["rows"][0][0],
        json!({"type": "integer", "value": "6"}),
        "{r}"
    );
    server.shutdown().await.unwrap();
}
