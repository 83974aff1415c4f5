//! Crash consistency with real SIGKILLs (see [`crash_test!`](crate::crash_test)).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::Setup;
use super::probe::{IncrWithSql, Probe, ProbeEnv, ReadIncrWithSql};
use crate::{Durability, Runtime};

const OBJECTS: usize = 8;
const CALLERS_PER_OBJECT: usize = 64;

/// The parent side: three rounds of start, kill, check. `child_test` is the child test's
/// path as `module_path!()` gives it (the crate's name first).
pub fn crash_rounds(setup: &Setup, durability: Durability, child_test: &str) {
    let child_test = child_test
        .split_once("::")
        .map_or(child_test, |(_, rest)| rest);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut total_acked = 0u64;
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                child_test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STEAD_CRASH_DIR", dir.path())
            .env("STEAD_CRASH_DURABILITY", format!("{durability:?}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = vec![0i64; OBJECTS];
            let mut acks = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                if parts.next() != Some("ACK") {
                    continue;
                }
                let (Some(obj), Some(v)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let (obj, v): (usize, i64) = (obj.parse().unwrap(), v.parse().unwrap());
                last[obj] = last[obj].max(v);
                acks += 1;
            }
            (last, acks)
        });
        // Let it get going, then kill it mid-write at a random moment.
        let wait = 300 + rand::random::<u64>() % 500;
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();
        let (last, acks) = reader.join().unwrap();
        assert!(
            acks > 0,
            "round {round}: the child acknowledged nothing before the kill"
        );
        total_acked += acks;

        let stored = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let rt = setup(Runtime::builder(), dir.path()).build().await.unwrap();
            let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
            let mut stored = Vec::new();
            for i in 0..OBJECTS {
                // A store may take a moment to serve a new process after a crash (a lease
                // the killed process held must expire first): bounded retries.
                let stub = ns.get_by_name(&format!("c{i}"));
                let mut tries = 0;
                let (v, rows, max) = loop {
                    match stub.ask(ReadIncrWithSql("n".into())).await {
                        Ok(Ok(seen)) => break seen,
                        Ok(Err(e)) | Err(e) if tries < 400 => {
                            tries += 1;
                            if tries == 1 {
                                eprintln!("round {round}: waiting for the store: {e}");
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => panic!("round {round}: the store does not serve: {other:?}"),
                    }
                };
                // No partial turn: the key and the SQL table were written by the same turns.
                assert_eq!(
                    (rows, max),
                    (v, v),
                    "round {round}, object {i}: the SQL log disagrees with the key"
                );
                stored.push(v);
            }
            rt.shutdown().await.unwrap();
            stored
        });
        for i in 0..OBJECTS {
            assert!(
                stored[i] >= last[i],
                "round {round}, object {i}: stored {} < acknowledged {}",
                stored[i],
                last[i]
            );
        }
    }
    eprintln!(
        "crash test ({durability:?}): {total_acked} acknowledged increments over 3 kills, none lost"
    );
    super::tear_down(dir.path());
}

/// The child side: runs only when the parent starts it (with the directory to use).
pub fn crash_child(setup: &Setup) {
    let Ok(dir) = std::env::var("STEAD_CRASH_DIR") else {
        return;
    };
    let durability = match std::env::var("STEAD_CRASH_DURABILITY").as_deref() {
        Ok("ProcessCrashSafe") => Durability::ProcessCrashSafe,
        _ => Durability::Fsync,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let rt = setup(Runtime::builder(), std::path::Path::new(&dir))
            .durability(durability)
            .build()
            .await
            .unwrap();
        let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, i64)>();
        for obj in 0..OBJECTS {
            for _ in 0..CALLERS_PER_OBJECT {
                let stub = ns.get_by_name(&format!("c{obj}"));
                let tx = tx.clone();
                tokio::spawn(async move {
                    loop {
                        match stub.ask(IncrWithSql("n".into())).await {
                            Ok(Ok(v)) => {
                                let _ = tx.send((obj, v));
                            }
                            _ => tokio::task::yield_now().await,
                        }
                    }
                });
            }
        }
        let printer = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        while let Some((obj, v)) = rx.recv().await {
            let mut out = printer.lock().unwrap();
            let _ = writeln!(out, "ACK {obj} {v}");
            let _ = out.flush();
        }
    });
}
