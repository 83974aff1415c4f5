//! Starting the real `stead` binary for tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// A `stead` process started by a test. Dropping it kills the process, so that a test that
/// fails halfway leaves no server running.
pub struct Server(Child);

impl Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `cmd` to its exit and returns what it printed. A process still running after 30 s
/// (say, a server that started on a configuration it should have refused) is killed and
/// the test fails, rather than waiting forever.
pub fn run_to_exit(cmd: &mut Command) -> Output {
    let mut child = Server(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{cmd:?} still runs after 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Starts `stead` on 127.0.0.1 with an ephemeral port and `dir` as its data directory.
/// Returns the process, its base URL, and the log lines it prints after the address.
/// A process that never logs its address is killed after a minute.
pub fn spawn_server(dir: &std::path::Path, extra: &[&str]) -> (Server, String, Receiver<String>) {
    let child = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
            "--log",
            "info",
        ])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Server(child);
    let pid = child.id();
    let (found_tx, found_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if found_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let _ = found_tx.send(());
    // Keep draining its output so that it never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, format!("http://{addr}"), rx)
}

/// Runs `script` with `node` in the fixture directory `fixture` (under `fixtures/`), its
/// packages installed from the lock file first if they are not there (`marker` is a package
/// directory under `node_modules`), and answers the last line it printed, as JSON.
pub fn run_node(fixture: &str, marker: &str, script: &str, args: &[&str]) -> serde_json::Value {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(fixture);
    if !dir.join("node_modules").join(marker).exists() {
        let status = Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm (Node.js) is needed for this test");
        assert!(status.success(), "npm ci failed in {}", dir.display());
    }
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// The PostgreSQL server the tests use: `STEAD_TEST_POSTGRES_URL`, or the project
/// machines' own.
pub fn postgres_url() -> String {
    std::env::var("STEAD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema name, or `None` (with one line said) when no server answers (CI checks
/// beforehand that one does).
pub fn fresh_schema() -> Option<String> {
    let reachable = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_ok();
    if !reachable && std::env::var("STEAD_TEST_POSTGRES_URL").is_err() {
        eprintln!("skipped: no PostgreSQL at 127.0.0.1:5432");
        return None;
    }
    Some(format!("stead_test_{:016x}", rand::random::<u64>()))
}

/// Drops a test's schema.
pub fn drop_schema(schema: &str) {
    let _ = Command::new("psql")
        .args([
            &postgres_url(),
            "-qc",
            &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        ])
        .output();
}
