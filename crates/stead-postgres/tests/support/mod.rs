//! What the PostgreSQL tests share: the server's URL, a fresh schema per test, and a skip
//! (one line) when no server is reachable. CI checks that one is, so it never skips.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use stead_core::testing::probe::{Probe, ProbeEnv};
use stead_core::{Namespace, Runtime, RuntimeBuilder};
use stead_postgres::{PostgresBackend, PostgresOptions};

/// The server the tests use: `STEAD_TEST_POSTGRES_URL`, or the project machines' own.
pub(crate) fn url() -> String {
    std::env::var("STEAD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Whether a server answers at [`url`]'s address; when none does, says so in one line and
/// ends the test binary with success (CI checks beforehand that one does).
pub(crate) fn require_server() {
    let config: tokio_postgres::Config = url().parse().expect("STEAD_TEST_POSTGRES_URL parses");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if !reachable {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: no PostgreSQL at {host}:{port} (set STEAD_TEST_POSTGRES_URL)"
        );
        std::process::exit(0);
    }
}

/// A schema of the test's own, named after its directory (the same directory gives the
/// same schema, as the crash test's restarts need).
pub(crate) fn schema_for(dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    format!("stead_test_{:016x}", h.finish())
}

/// Options for a test's schema: a short lease, and a node name fixed per schema so that a
/// restarted test process takes its lease back at once.
pub(crate) fn options(schema: &str) -> PostgresOptions {
    PostgresOptions::new(url())
        .schema(schema)
        .lease_duration(Duration::from_secs(2))
        .node_id(format!("{schema}-node"))
}

/// A runtime on `backend` and the namespace of the core's probe object.
pub(crate) async fn probe_runtime(backend: &PostgresBackend) -> (Runtime, Namespace<Probe>) {
    let rt = Runtime::builder()
        .backend(backend.clone())
        .build()
        .await
        .expect("the runtime starts");
    let ns = rt
        .namespace::<Probe>(ProbeEnv::default())
        .expect("the probe's namespace");
    (rt, ns)
}

/// The conformance suite's setup: the backend on the directory's schema, dropped when the
/// test is over.
pub(crate) fn setup(b: RuntimeBuilder, dir: &Path) -> RuntimeBuilder {
    require_server();
    let schema = schema_for(dir);
    sweep_stale_schemas();
    let dropped = schema.clone();
    stead_core::testing::on_teardown(dir, move || drop_schema(&dropped));
    b.backend(PostgresBackend::new(options(&schema)).expect("the backend starts"))
}

/// Schemas a test run left behind (one that failed, or was killed): once per test process,
/// those of earlier runs (older than 30 minutes) go.
pub(crate) fn sweep_stale_schemas() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        on_own_runtime(|client| async move {
            let Ok(rows) = client
                .query(
                    "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'stead\\_test\\_%'",
                    &[],
                )
                .await
            else {
                return;
            };
            for row in rows {
                let schema: String = row.get(0);
                let old = client
                    .query_one(
                        &format!(
                            "SELECT coalesce(max(applied_at) < now() - interval '30 minutes', true) \
                             FROM \"{schema}\".stead_migrations"
                        ),
                        &[],
                    )
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .unwrap_or(false);
                if old {
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await;
                }
            }
        });
    });
}

/// Drops a schema (callable from anywhere, async or not).
pub(crate) fn drop_schema(schema: &str) {
    let schema = schema.to_owned();
    on_own_runtime(|client| async move {
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    });
}

/// Runs `f` with a connection of its own, on a thread and runtime of its own.
pub(crate) fn on_own_runtime<F, Fut>(f: F)
where
    F: FnOnce(tokio_postgres::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let url = url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            else {
                return;
            };
            tokio::spawn(conn);
            f(client).await;
        });
    })
    .join()
    .expect("the helper thread");
}
