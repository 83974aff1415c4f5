//! PostgreSQL itself stopped (as by a crash) and started again under load. The shared
//! server of the other tests must not go down, so this test starts a private one of its
//! own (`initdb` and `pg_ctl`, on an ephemeral port of 127.0.0.1, in a temporary
//! directory), and stops it with `pg_ctl stop -m immediate`: no shutdown checkpoint, crash
//! recovery at the next start.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stead_core::testing::probe::{GetJson, Incr};
use stead_postgres::{PostgresBackend, PostgresOptions};

/// A PostgreSQL server of this test's own; stopped when dropped.
struct PrivateServer {
    bin: PathBuf,
    data: PathBuf,
    /// Runs the server's programs as the `postgres` user when the test runs as root
    /// (PostgreSQL refuses to run as root).
    as_postgres: bool,
    port: u16,
    dir: tempfile::TempDir,
}

/// Where `pg_ctl` and `initdb` are: on the PATH, or in Debian's versioned directory.
fn server_binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|d| d.join("pg_ctl").is_file() && d.join("initdb").is_file())
    });
    on_path.or_else(|| {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|d| d.join("pg_ctl").is_file())
            .collect();
        dirs.sort();
        dirs.pop()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PrivateServer {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // Somewhere the `postgres` user may enter.
        c.current_dir(self.dir.path());
        c
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fresh cluster in a temporary directory, started; `None` (said in one line) where
    /// this machine has no PostgreSQL server programs.
    fn start() -> Option<PrivateServer> {
        let Some(bin) = server_binaries() else {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: no PostgreSQL server programs (pg_ctl, initdb) on this machine"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let owned = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(owned.success(), "chown of the server's directory");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = PrivateServer {
            bin,
            data: dir.path().join("data"),
            as_postgres,
            port,
            dir,
        };
        let data = server.data.to_string_lossy().into_owned();
        server.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        server.start_again();
        Some(server)
    }

    fn start_again(&self) {
        let data = self.data.to_string_lossy().into_owned();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-o",
                &options,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// Stops it as a crash would: no checkpoint, recovery from the WAL at the next start.
    fn crash(&self) {
        let data = self.data.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let data = self.data.to_string_lossy().into_owned();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

fn data_dir_exists(p: &Path) -> bool {
    p.join("PG_VERSION").is_file()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_nothing_acknowledged_and_the_node_heals() {
    let Some(pg) = PrivateServer::start() else {
        return;
    };
    assert!(data_dir_exists(&pg.data));
    let lease = Duration::from_secs(2);
    let backend = PostgresBackend::connect(
        PostgresOptions::new(pg.url())
            .lease_duration(lease)
            .node_id("restart-test"),
    )
    .await
    .unwrap();
    let (rt, ns) = support::probe_runtime(&backend).await;

    // Four clients, each incrementing an object of its own, remember the highest value
    // acknowledged; they count what failed, and what succeeded while the server was down.
    const CLIENTS: usize = 4;
    let down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let succeeded_while_down = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let x = ns.get_by_name(&format!("x{i}"));
            let (down, stop, failed, while_down) = (
                down.clone(),
                stop.clone(),
                failed.clone(),
                succeeded_while_down.clone(),
            );
            tokio::spawn(async move {
                let mut acked = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let was_down = down.load(Ordering::SeqCst);
                    match x.ask(Incr("c".into())).await.and_then(|r| r) {
                        Ok(v) => {
                            assert!(
                                v > acked,
                                "an acknowledged increment was lost: {v} after {acked}"
                            );
                            acked = v;
                            if was_down && down.load(Ordering::SeqCst) {
                                while_down.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                acked
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    // Down for longer than the lease: the node also loses it, and must take it back.
    let pg = tokio::task::spawn_blocking(move || {
        pg.crash();
        pg
    })
    .await
    .unwrap();
    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    down.store(false, Ordering::SeqCst);
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    let restarted = Instant::now();
    let failed_before = failed.load(Ordering::Relaxed);
    assert!(
        failed_before > 0,
        "turns must fail while the server is down"
    );

    // The node serves again by itself: fresh increments succeed on every object.
    let probe = ns.get_by_name("after");
    let mut healed = false;
    while restarted.elapsed() < Duration::from_secs(20) {
        if probe.ask(Incr("c".into())).await.and_then(|r| r).is_ok() {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        healed,
        "the node did not serve again within 20 s:\n{}",
        pg.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for c in clients {
        acked.push(c.await.unwrap());
    }
    assert_eq!(
        succeeded_while_down.load(Ordering::Relaxed),
        0,
        "a turn was acknowledged while the server was down"
    );
    // Everything acknowledged is stored: each object holds its last acknowledged value,
    // or one more where its last attempt failed after PostgreSQL had committed it (its
    // client is the only writer).
    for (i, &value) in acked.iter().enumerate() {
        let x = ns.get_by_name(&format!("x{i}"));
        let stored = x.ask(GetJson("c".into())).await.unwrap().unwrap();
        let stored = stored.and_then(|v| v.as_i64()).unwrap_or_default();
        assert!(
            stored == value || stored == value + 1,
            "object x{i}: {stored} stored, {value} acknowledged"
        );
    }
    rt.shutdown().await.unwrap();
    drop(pg);
}
