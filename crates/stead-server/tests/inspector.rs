//! The inspector in a real headless Chromium (Debian's `chromium`, driven from its command
//! line: it loads each page, runs its script against the real server on 127.0.0.1, and
//! prints the resulting document): the overview lists the namespaces, `?q=` finds a counter,
//! an object's page shows its storage, a name that looks like markup stays text, a server
//! with tokens asks for one, and no page logs a script error.

mod common;

use std::path::PathBuf;
use std::process::Command;

use stead_server::Config;

/// Chromium, if the machine has it. CI installs it, so there a missing browser fails the
/// test rather than skipping it.
fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = PathBuf::from(dir).join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium is not installed: CI installs it (apt-get install chromium)"
    );
    eprintln!("skipped: no chromium on this machine (apt-get install chromium)");
    None
}

/// What the page at `url` becomes once its script has run, and what the browser logged.
async fn render(browser: &std::path::Path, url: &str) -> (String, String) {
    let (browser, page) = (browser.to_owned(), url.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        common::run_to_exit(Command::new(browser).args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            &page,
        ]))
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(dom.contains("<main"), "no page rendered for {url}: {log}");
    (dom, log)
}

/// The page rendered without a script error: none caught by the page, none logged.
fn no_errors(dom: &str, log: &str) {
    assert!(
        dom.contains(r#"<ul id="errors"></ul>"#),
        "the page caught an error: {dom}"
    );
    for line in log.lines() {
        let console = line.contains("CONSOLE");
        assert!(
            !(console && (line.contains("Uncaught") || line.contains("rror"))),
            "{line}"
        );
        assert!(
            !line.contains("Refused to"),
            "a resource was refused: {line}"
        );
    }
}

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.data_dir = dir.to_path_buf();
    c
}

/// The overview's two figures for a class: objects stored, objects in memory.
fn stored_and_in_memory(dom: &str, class: &str) -> (u64, u64) {
    let start = format!(r#"<td class="num" data-count="{class}">"#);
    let rest = &dom[dom.find(&start).unwrap_or_else(|| panic!("{class}: {dom}")) + start.len()..];
    let (stored, rest) = rest.split_once("</td><td class=\"num\">").expect(dom);
    let memory = rest.split_once("</td>").expect(dom).0;
    (stored.parse().expect(dom), memory.parse().expect(dom))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_in_a_real_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = stead_server::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let r = http
            .post(format!("{base}/counters/hits/increment"))
            .json(&serde_json::json!({"by": 1}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let sneaky = "<img src=x onerror=alert(1)>";
    let r = http
        .put(format!("{base}/sidecars/{}/keys/note", urlencode(sneaky)))
        .header("content-type", "application/json")
        .body(r#""<script>alert(2)</script>""#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // The overview: the vital signs and every namespace (and no cluster: a single node).
    let (dom, log) = render(&browser, &format!("{base}/ui/")).await;
    no_errors(&dom, &log);
    assert!(!dom.contains(r#"<section id="cluster">"#), "{dom}");
    assert!(
        dom.contains("turns per second")
            && dom.contains("objects in memory")
            && dom.contains("commit latency, ms")
            && dom.contains("open WebSockets"),
        "{dom}"
    );
    assert!(dom.contains(r#"data-class="counter-shard""#), "{dom}");
    // Each class with the objects it holds: one counter, and as many stored shards as the
    // three increments touched (each goes to a shard drawn at random), all of them in memory.
    assert!(
        dom.contains(r#"<td class="num" data-count="counter">1</td>"#),
        "{dom}"
    );
    let shards = stored_and_in_memory(&dom, "counter-shard");
    assert!(
        shards.0 == shards.1 && (1..=3).contains(&shards.0),
        "{shards:?} {dom}"
    );
    // A search shared as a link: `?q=` opens with it done.
    let (dom, log) = render(&browser, &format!("{base}/ui/?q=hits")).await;
    no_errors(&dom, &log);
    assert!(
        dom.contains(r##"<a href="#/object/counter/hits">hits</a>"##),
        "{dom}"
    );
    // The counter's page: the pattern's own view (its value), and its storage.
    let (dom, log) = render(&browser, &format!("{base}/ui/#/object/counter/hits")).await;
    no_errors(&dom, &log);
    assert!(
        dom.contains(r#"<section id="pattern-view"><h2>Counter</h2>"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<div class="n">3</div><div class="label">value</div>"#),
        "{dom}"
    );
    assert!(dom.contains(r#"<table id="storage">"#), "{dom}");
    // Export, fork and restore from the page.
    assert!(
        dom.contains(r#"<div class="actions" id="object-actions">"#)
            && dom.contains(r#"id="fork-name""#)
            && dom.contains(r#"id="restore-file""#),
        "{dom}"
    );
    // Names and values that look like markup are shown as text, never run.
    let (dom, log) = render(
        &browser,
        &format!("{base}/ui/#/object/sidecar/{}", urlencode(sneaky)),
    )
    .await;
    no_errors(&dom, &log);
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
        "{dom}"
    );
    assert!(!dom.contains("<img src"), "{dom}");
    // A pattern's logs on its page: a flag set's audit, a page at a time, newest first.
    for (enabled, actor) in [(true, "ada"), (false, "<b>bo</b>")] {
        let r = http
            .put(format!("{base}/flags/prod/flags/beta"))
            .header("stead-actor", actor)
            .json(&serde_json::json!({"enabled": enabled, "rollout_percent": 100}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let (dom, log) = render(&browser, &format!("{base}/ui/#/object/flagset/prod")).await;
    no_errors(&dom, &log);
    assert!(dom.contains("<h2>Flag set</h2>"), "{dom}");
    assert!(
        dom.contains(r#"<h3>Audit</h3><table id="log-audit">"#),
        "{dom}"
    );
    let (newest, oldest) = (
        dom.find("<td>&lt;b&gt;bo&lt;/b&gt;</td>"),
        dom.find("<td>ada</td>"),
    );
    assert!(newest.is_some() && newest < oldest, "{dom}");
    // An object with SQL: its tables, and the console opened on the first one's rows.
    let r = http
        .post(format!("{base}/databases/shop/v2/pipeline"))
        .json(&serde_json::json!({"requests": [{"type": "sequence", "sql":
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT); INSERT INTO orders (item) VALUES ('tea'), ('<b>cake</b>');"}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (dom, log) = render(&browser, &format!("{base}/ui/#/object/database/shop")).await;
    no_errors(&dom, &log);
    assert!(dom.contains(r#"<table id="sql-schema">"#), "{dom}");
    assert!(
        dom.contains("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)"),
        "{dom}"
    );
    assert!(dom.contains("<th>item TEXT</th>"), "{dom}");
    assert!(
        dom.contains("<td>tea</td>") && dom.contains("<td>&lt;b&gt;cake&lt;/b&gt;</td>"),
        "{dom}"
    );
    assert!(dom.contains("2 rows"), "{dom}");
    // The console reads only, unless the operator says otherwise.
    let r = http
        .get(format!(
            "{base}/ui/api/sql?class=database&name=shop&sql={}",
            urlencode("DELETE FROM orders")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let write = serde_json::json!({"class": "database", "name": "shop",
        "sql": "UPDATE orders SET item = 'green tea' WHERE item = 'tea'"});
    let r = http
        .post(format!("{base}/ui/api/sql"))
        .json(&write)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    server.shutdown().await.unwrap();

    // With tokens: the page itself loads, its data needs a token, and it asks for one.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.tokens = vec!["inspector-token-0123456789".into()];
    let server = stead_server::start(c).await.unwrap();
    let base = format!("http://{}", server.addr());
    let api = format!("{base}/ui/api/vitals");
    assert_eq!(http.get(&api).send().await.unwrap().status(), 401);
    let with = http
        .get(&api)
        .bearer_auth("inspector-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    let (dom, log) = render(&browser, &format!("{base}/ui/")).await;
    no_errors(&dom, &log);
    assert!(
        dom.contains(r#"<form id="auth">"#),
        "the page asks for a token: {dom}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_inspector_api_refuses_what_it_cannot_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = stead_server::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    for path in [
        "/ui/api/object?class=nope&name=x",
        "/ui/api/object?class=counter",
        "/ui/api/objects?colour=red",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let page = http.get(format!("{base}/ui/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    server.shutdown().await.unwrap();
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn an_object_is_exported_and_forked_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = stead_server::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/locks/db/acquire"))
        .json(&serde_json::json!({"holder": "w1", "ttl_ms": 60000}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let doc: serde_json::Value = http
        .get(format!("{base}/ui/api/object?class=lock&name=db"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["alarm"].is_string(), "{doc}");
    // The same document under another name: a fork, with the lease and its alarm.
    let put = http
        .put(format!("{base}/ui/api/object?class=lock&name=db-fork"))
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let fork: serde_json::Value = http
        .get(format!("{base}/locks/db-fork"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fork["holders"][0]["holder"], "w1", "{fork}");
    // Into another class: refused, nothing written.
    let wrong = http
        .put(format!("{base}/ui/api/object?class=counter&name=x"))
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_queries_forks_and_exports_in_the_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = stead_server::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", server.addr());
    let r = reqwest::Client::new()
        .post(format!("{base}/databases/shop/v2/pipeline"))
        .json(&serde_json::json!({"requests": [{"type": "sequence", "sql":
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER);
             INSERT INTO orders (item, qty) VALUES ('tea', 2), ('cake', 1), ('scone', 4);"}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let out: serde_json::Value = tokio::task::spawn_blocking(move || {
        let browser = browser.to_string_lossy().into_owned();
        common::run_node(
            "browser",
            "playwright-core",
            "drive.mjs",
            &[&base, &browser],
        )
    })
    .await
    .unwrap();
    assert!(
        out["firstRows"].as_str().unwrap().contains("3 rows"),
        "{out}"
    );
    assert_eq!(
        out["query"],
        serde_json::json!([["item TEXT", "twice"], ["scone", "8"], ["tea", "4"]]),
        "{out}"
    );
    assert!(
        out["refused"]
            .as_str()
            .unwrap()
            .contains("only statements that read"),
        "{out}"
    );
    assert!(
        out["forkRows"].as_str().unwrap().contains("3 rows"),
        "{out}"
    );
    assert_eq!(out["exported"], "database-shop-copy.json");
    assert_eq!(out["errors"], serde_json::json!([]), "{out}");
    // The fork is a database of its own.
    let list: serde_json::Value = reqwest::get(format!("http://{}/databases", server.addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["databases"], serde_json::json!(["shop", "shop-copy"]));
    server.shutdown().await.unwrap();

    // With --inspector-sql-writes, the console writes, in a turn of the object.
    let mut c = config(dir.path());
    c.inspector_sql_writes = true;
    let server = stead_server::start(c).await.unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let r: serde_json::Value = http
        .post(format!("{base}/ui/api/sql"))
        .json(&serde_json::json!({"class": "database", "name": "shop",
            "sql": "UPDATE orders SET qty = qty + 10 WHERE item = 'tea'"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["rows_written"], 1, "{r}");
    assert_eq!(r["writes"], true);
    let r: serde_json::Value = http
        .get(format!(
            "{base}/ui/api/sql?class=database&name=shop&sql={}",
            urlencode("SELECT qty FROM orders WHERE item = 'tea'")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["rows"], serde_json::json!([[12]]), "{r}");
    server.shutdown().await.unwrap();
}

/// On a node of a cluster, the overview shows the members, their addresses and the
/// partitions each holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_shows_the_members_of_a_cluster() {
    let Some(browser) = chromium() else {
        return;
    };
    let Some(schema) = common::fresh_schema() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = common::postgres_url();
    let node = |name: &str| {
        let args = [
            "--backend",
            "postgres",
            "--postgres-url",
            &url,
            "--postgres-schema",
            &schema,
            "--node-id",
            name,
            "--cluster",
            "--cluster-secret",
            "the-cluster-secret-of-this-test",
            "--cluster-partitions",
            "8",
        ];
        let (server, base, _log) = common::spawn_server(dir.path(), &args);
        (server, base)
    };
    let (_a, base_a) = node("node-a");
    let (_b, base_b) = node("node-b");
    let http = reqwest::Client::new();
    let start = std::time::Instant::now();
    loop {
        let v: serde_json::Value = match http.get(format!("{base_a}/cluster")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if v["members"].as_array().is_some_and(|m| m.len() == 2) && v["moving"] == 0 {
            break;
        }
        assert!(start.elapsed().as_secs() < 15, "not settled: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (dom, log) = render(&browser, &format!("{base_a}/ui/")).await;
    no_errors(&dom, &log);
    assert!(
        dom.contains(r#"<section id="cluster"><h2>Cluster</h2>"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<div class="n">8</div><div class="label">partitions</div>"#),
        "{dom}"
    );
    let address_b = base_b.trim_start_matches("http://");
    assert!(
        dom.contains("<td>node-a</td>")
            && dom.contains(&format!("<td>{address_b}</td>"))
            && dom.contains("<td>node-b</td>")
            && dom.contains(r#"<td class="muted">this node</td>"#),
        "{dom}"
    );
    common::drop_schema(&schema);
}
