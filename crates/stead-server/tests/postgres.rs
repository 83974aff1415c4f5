//! Two `stead` nodes on one PostgreSQL schema: the standby takes over from a killed
//! active node within the lease and a second, with every acknowledged write; a paused
//! node that lost its lease never answers a success again.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::{Duration, Instant};
use stead_fixtures::history::{Event, UNKNOWN, register_anomalies};

use common::{Server, drop_schema, fresh_schema, spawn_server};

const LEASE_MS: u64 = 2000;

fn url() -> String {
    common::postgres_url()
}

fn node(dir: &std::path::Path, schema: &str, name: &str, extra: &[&str]) -> (Server, String) {
    node_with_lease(dir, schema, name, LEASE_MS, extra)
}

fn node_with_lease(
    dir: &std::path::Path,
    schema: &str,
    name: &str,
    lease_ms: u64,
    extra: &[&str],
) -> (Server, String) {
    let lease = lease_ms.to_string();
    let url = url();
    let mut args = vec![
        "--backend",
        "postgres",
        "--postgres-url",
        &url,
        "--postgres-schema",
        schema,
        "--lease-duration-ms",
        &lease,
        "--node-id",
        name,
    ];
    args.extend_from_slice(extra);
    let (server, base, _log) = spawn_server(dir, &args);
    (server, base)
}

async fn status(http: &reqwest::Client, url: String) -> u16 {
    match http.get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if status(http, format!("{base}/readyz")).await == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{base} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn increment(http: &reqwest::Client, base: &str) -> Result<(), u16> {
    let v = post(
        http,
        format!("{base}/counters/c/increment"),
        serde_json::json!({"by": 1}),
    )
    .await?;
    assert_eq!(v["applied"], true);
    Ok(())
}

async fn counter(http: &reqwest::Client, base: &str) -> u64 {
    let v: serde_json::Value = http
        .get(format!("{base}/counters/c"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["value"].as_u64().unwrap()
}

/// A POST whose 2xx answer is returned, any other outcome as its status (0: no answer).
async fn post(
    http: &reqwest::Client,
    url: String,
    body: serde_json::Value,
) -> Result<serde_json::Value, u16> {
    let r = http
        .post(url)
        .json(&body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|_| 0u16)?;
    if !r.status().is_success() {
        return Err(r.status().as_u16());
    }
    r.json().await.map_err(|_| 0u16)
}

/// Takes lock `name` for `holder` (a lease of one second), releases it, and answers the
/// fencing token it was granted.
async fn lock_once(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    holder: &str,
) -> Result<u64, u16> {
    let granted = post(
        http,
        format!("{base}/locks/{name}/acquire"),
        serde_json::json!({"holder": holder, "ttl_ms": 1000}),
    )
    .await?;
    let token = granted["token"]
        .as_u64()
        .unwrap_or_else(|| panic!("{granted}"));
    post(
        http,
        format!("{base}/locks/{name}/release"),
        serde_json::json!({"holder": holder, "token": token}),
    )
    .await?;
    Ok(token)
}

/// Wins the election of group `name` as `candidate` (a lease of one second), resigns, and
/// answers the term it led.
async fn lead_once(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    candidate: &str,
) -> Result<u64, u16> {
    let won = post(
        http,
        format!("{base}/leaders/{name}/campaign"),
        serde_json::json!({"candidate": candidate, "ttl_ms": 1000}),
    )
    .await?;
    if won["elected"] != true {
        return Err(409);
    }
    let term = won["term"].as_u64().unwrap_or_else(|| panic!("{won}"));
    post(
        http,
        format!("{base}/leaders/{name}/resign"),
        serde_json::json!({"candidate": candidate, "term": term}),
    )
    .await?;
    Ok(term)
}

/// What the clients of a [`Load`] had acknowledged when it stopped.
#[derive(Default)]
struct Acked {
    /// Plain increments of counter `c`.
    increments: u64,
    /// Increments of counter `k`, one per idempotency key (retried with the same key
    /// until acknowledged).
    keyed: u64,
    /// Budget reservations committed (one unit each).
    spent: u64,
}

/// What one client saw last: fencing token, term, keyed increment, sidecar write.
struct Last {
    token: u64,
    term: u64,
    /// The last idempotency key acknowledged, if any.
    key: Option<String>,
    /// The last sidecar value written with a compare-and-swap, and its version; and one
    /// whose answer was lost (it may or may not have been written).
    swapped: (u64, u64),
    doubtful: Option<u64>,
}

/// A PUT of `value` at `url` if the key is at `version` (0: absent); answers the new
/// version, or the status.
async fn swap(http: &reqwest::Client, url: &str, version: u64, value: u64) -> Result<u64, u16> {
    let condition = if version == 0 {
        ("If-None-Match", "*".to_owned())
    } else {
        ("If-Match", format!("\"{version}\""))
    };
    let r = http
        .put(url)
        .header(condition.0, condition.1)
        .json(&value)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|_| 0u16)?;
    if !r.status().is_success() {
        return Err(r.status().as_u16());
    }
    let v: serde_json::Value = r.json().await.map_err(|_| 0u16)?;
    Ok(v["version"].as_u64().unwrap_or_else(|| panic!("{v}")))
}

/// The value and version of a sidecar key.
async fn read_swapped(http: &reqwest::Client, url: &str) -> Result<(u64, u64), u16> {
    let r = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|_| 0u16)?;
    if r.status() == 404 {
        return Ok((0, 0));
    }
    if r.status() != 200 {
        return Err(r.status().as_u16());
    }
    let tag = r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    let v: u64 = r.json().await.map_err(|_| 0u16)?;
    Ok((v, tag))
}

/// Client `i` until `stop`, on the nodes of `bases` in turn: increments the shared counter;
/// increments counter `k` once per idempotency key (retrying a key until it is
/// acknowledged); takes and releases a lock of its own and wins and resigns an election of
/// its own (checking that tokens and terms only grow); writes its own sidecar value with
/// compare-and-swap; reserves and commits one unit of the shared budget.
async fn client(
    i: usize,
    http: reqwest::Client,
    bases: Arc<std::sync::Mutex<Vec<String>>>,
    acked: Arc<std::sync::Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) -> Last {
    let (lock, me) = (format!("l{i}"), format!("w{i}"));
    let mut last = Last {
        token: 0,
        term: 0,
        key: None,
        swapped: (0, 0),
        doubtful: None,
    };
    let mut n = i;
    let mut pending_key: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let base = {
            let b = bases.lock().unwrap();
            b[n % b.len()].clone()
        };
        if increment(&http, &base).await.is_ok() {
            acked.lock().unwrap().increments += 1;
        }
        let key = pending_key.take().unwrap_or_else(|| format!("k{i}-{n}"));
        let keyed = post(
            &http,
            format!("{base}/counters/k/increment"),
            serde_json::json!({"by": 1, "idempotency_key": key}),
        )
        .await;
        match keyed {
            Ok(v) => {
                // A retry of a key that was applied says so, and counts once.
                if v["applied"] == true {
                    acked.lock().unwrap().keyed += 1;
                }
                last.key = Some(key);
            }
            Err(_) => pending_key = Some(key),
        }
        if let Ok(t) = lock_once(&http, &base, &lock, &me).await {
            assert!(t > last.token, "fencing token {t} after {}", last.token);
            last.token = t;
        }
        if let Ok(t) = lead_once(&http, &base, &lock, &me).await {
            assert!(t > last.term, "term {t} after {}", last.term);
            last.term = t;
        }
        let url = format!("{base}/sidecars/s{i}/keys/v");
        let (value, version) = last.swapped;
        match swap(&http, &url, version, value + 1).await {
            Ok(v) => {
                assert!(v > version, "version {v} after {version}");
                last.swapped = (value + 1, v);
                last.doubtful = None;
            }
            Err(412) => {
                // Only a write whose answer was lost can have moved it.
                let (v, tag) = read_swapped(&http, &url).await.unwrap_or((value, version));
                assert!(
                    (v, tag) == (value, version) || Some(v) == last.doubtful,
                    "s{i}: {v} at {tag}, after {value} at {version} (doubtful {:?})",
                    last.doubtful
                );
                if tag > version {
                    last.swapped = (v, tag);
                    last.doubtful = None;
                }
            }
            Err(_) => last.doubtful = Some(value + 1),
        }
        let id = format!("r{i}-{n}");
        let reserved = post(
            &http,
            format!("{base}/budgets/b/reservations"),
            serde_json::json!({"id": id, "processor": "p", "amount": 1, "ttl_ms": 60000}),
        )
        .await;
        if reserved.is_ok()
            && post(
                &http,
                format!("{base}/budgets/b/reservations/{id}/commit"),
                serde_json::json!({"actual": 1}),
            )
            .await
            .is_ok()
        {
            acked.lock().unwrap().spent += 1;
        }
    }
    last
}

/// The shared budget: 150 units, all for processor `p`, so that it runs out under load.
const BUDGET: u64 = 150;

/// Configures the shared budget through `base`.
async fn configure_budget(http: &reqwest::Client, base: &str) {
    let spec = serde_json::json!({
        "total": BUDGET,
        "processors": [{"id": "p", "weight": 1, "phase": 1, "tier": "t"}],
        "tiers": {"t": {"model": "m", "cost_per_call": 1, "max_concurrency": 100}}
    });
    let r = http
        .put(format!("{base}/budgets/b"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Checks, through `base`, what the clients of a finished [`Load`] acknowledged: every
/// increment is there, no keyed increment applied twice, a key sent again is not applied,
/// tokens and terms grew past the last ones, every sidecar value is the last written (or
/// the one in doubt), and the budget never spent more than it had.
async fn check_after(http: &reqwest::Client, base: &str, acked: &Acked, last: &[Last]) {
    let clients = last.len() as u64;
    let swaps: u64 = last.iter().map(|l| l.swapped.0).sum();
    eprintln!(
        "acknowledged: {} increments, {} keyed increments, {swaps} compare-and-swaps, {} budget units",
        acked.increments, acked.keyed, acked.spent
    );
    assert!(
        acked.keyed > 0 && acked.spent > 0 && swaps > 0,
        "every kind of write made progress"
    );
    let value = within_seconds(|| async { Ok(counter(http, base).await) }).await;
    assert!(
        value >= acked.increments && value <= acked.increments + clients,
        "{value} stored, {} acknowledged",
        acked.increments
    );
    let keyed = |http: reqwest::Client, base: String| async move {
        let v: serde_json::Value = http
            .get(format!("{base}/counters/k"))
            .send()
            .await
            .map_err(|_| 0u16)?
            .json()
            .await
            .map_err(|_| 0u16)?;
        Ok::<u64, u16>(v["value"].as_u64().unwrap_or(0))
    };
    let k = within_seconds(|| keyed(http.clone(), base.to_owned())).await;
    assert!(
        k >= acked.keyed && k <= acked.keyed + clients,
        "counter k: {k} stored, {} keys acknowledged",
        acked.keyed
    );
    for (i, l) in last.iter().enumerate() {
        if let Some(key) = &l.key {
            let v = within_seconds(|| async {
                let v = post(
                    http,
                    format!("{base}/counters/k/increment"),
                    serde_json::json!({"by": 1, "idempotency_key": key}),
                )
                .await?;
                Ok(u64::from(v["applied"] == true))
            })
            .await;
            assert_eq!(v, 0, "key {key} applied twice");
        }
        let lock = format!("l{i}");
        let t = within_seconds(|| lock_once(http, base, &lock, "after")).await;
        assert!(t > l.token, "{lock}: token {t} after {}", l.token);
        let t = within_seconds(|| lead_once(http, base, &lock, "after")).await;
        assert!(t > l.term, "{lock}: term {t} after {}", l.term);
        let url = format!("{base}/sidecars/s{i}/keys/v");
        let (v, tag) = within_seconds(|| async {
            let (v, tag) = read_swapped(http, &url).await?;
            Ok(v * 1_000_000 + tag)
        })
        .await
        .pipe(|x| (x / 1_000_000, x % 1_000_000));
        assert!(
            (v, tag) == l.swapped || (Some(v) == l.doubtful && tag > l.swapped.1),
            "s{i}: {v} at {tag}; last written {:?}, in doubt {:?}",
            l.swapped,
            l.doubtful
        );
    }
    assert_eq!(
        keyed(http.clone(), base.to_owned()).await.unwrap(),
        k,
        "keys sent again changed counter k"
    );
    let budget: serde_json::Value = http
        .get(format!("{base}/budgets/b"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let account = &budget["cycle"]["accounts"][0];
    let (allocated, reserved, spent) = (
        account["allocated"].as_u64().unwrap(),
        account["reserved"].as_u64().unwrap(),
        account["spent"].as_u64().unwrap(),
    );
    assert_eq!(allocated, BUDGET, "{budget}");
    assert!(spent + reserved <= allocated, "{budget}");
    assert!(
        spent >= acked.spent,
        "{spent} spent, {} acknowledged",
        acked.spent
    );
}

/// `x.pipe(f)` is `f(x)`.
trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}

impl<T> Pipe for T {}

/// The registers of the history check: sidecar values `/sidecars/reg{k}/keys/v`.
const REGISTERS: usize = 3;

/// Writes (unique values) and reads the registers through random nodes of `bases` until
/// `stop`, and records every acknowledged operation with when it was invoked and answered.
async fn register_client(
    http: reqwest::Client,
    bases: Arc<std::sync::Mutex<Vec<String>>>,
    histories: Arc<std::sync::Mutex<Vec<Vec<Event>>>>,
    next_value: Arc<std::sync::atomic::AtomicI64>,
    clock: Instant,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let k = rand::random::<u32>() as usize;
        let base = {
            let b = bases.lock().unwrap();
            b[k % b.len()].clone()
        };
        let url = format!("{base}/sidecars/reg{}/keys/v", k % REGISTERS);
        let write = k.is_multiple_of(2);
        let value = next_value.fetch_add(1, Ordering::Relaxed);
        let invoked = clock.elapsed().as_nanos();
        let read = if write {
            let r = http
                .put(&url)
                .json(&value)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if !r.is_ok_and(|r| r.status().is_success()) {
                // Its outcome is unknown (the node may have died after committing it).
                histories.lock().unwrap()[k % REGISTERS].push(Event {
                    invoked,
                    completed: UNKNOWN,
                    wrote: Some(value),
                    read: 0,
                });
                continue;
            }
            0
        } else {
            match read_swapped(&http, &url).await {
                Ok((v, _)) => v as i64,
                Err(_) => continue,
            }
        };
        let completed = clock.elapsed().as_nanos();
        histories.lock().unwrap()[k % REGISTERS].push(Event {
            invoked,
            completed,
            wrote: write.then_some(value),
            read,
        });
    }
}

/// Clients on the nodes of `bases` (see [`client`] and [`register_client`]) until
/// [`Load::finish`].
struct Load {
    reachable: Arc<std::sync::Mutex<Vec<String>>>,
    acked: Arc<std::sync::Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Last>>,
    registers: Vec<tokio::task::JoinHandle<()>>,
    histories: Arc<std::sync::Mutex<Vec<Vec<Event>>>>,
}

impl Load {
    fn start(http: &reqwest::Client, bases: &[String], clients: usize) -> Load {
        let reachable = Arc::new(std::sync::Mutex::new(bases.to_vec()));
        let acked = Arc::new(std::sync::Mutex::new(Acked::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|i| {
                tokio::spawn(client(
                    i,
                    http.clone(),
                    reachable.clone(),
                    acked.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let histories = Arc::new(std::sync::Mutex::new(vec![Vec::new(); REGISTERS]));
        let next_value = Arc::new(std::sync::atomic::AtomicI64::new(1));
        let clock = Instant::now();
        let registers = (0..2)
            .map(|_| {
                tokio::spawn(register_client(
                    http.clone(),
                    reachable.clone(),
                    histories.clone(),
                    next_value.clone(),
                    clock,
                    stop.clone(),
                ))
            })
            .collect();
        Load {
            reachable,
            acked,
            stop,
            clients,
            registers,
            histories,
        }
    }

    /// Stops the clients; answers what they had acknowledged and what each saw last.
    async fn finish(self) -> (Acked, Vec<Last>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut last = Vec::new();
        for c in self.clients {
            last.push(c.await.unwrap());
        }
        for r in self.registers {
            r.await.unwrap();
        }
        // The registers' histories show no stale or backward read.
        let mut ops = 0;
        for (k, h) in self.histories.lock().unwrap().iter().enumerate() {
            let anomalies = register_anomalies(h);
            assert!(anomalies.is_empty(), "reg{k}: {anomalies:#?}");
            ops += h.len();
        }
        eprintln!("{ops} acknowledged register operations, no anomaly");
        assert!(ops > 20, "{ops} register operations");
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        (acked, last)
    }
}

/// Retries `f` for a few seconds (a lease left by a killed node's client runs out in one).
async fn within_seconds<F, Fut>(mut f: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, u16>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(status) => assert!(
                start.elapsed() < Duration::from_secs(5),
                "still failing ({status}) after 5 s"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_a_killed_node_with_every_acknowledged_write() {
    let Some(schema) = fresh_schema() else { return };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (mut a, base_a) = node(dir.path(), &schema, "a", &[]);
    wait_ready(&http, &base_a, Duration::from_secs(10)).await;
    let (_b, base_b) = node(dir.path(), &schema, "b", &["--standby"]);
    // The standby is alive, not ready, and serves nothing.
    assert_eq!(status(&http, format!("{base_b}/healthz")).await, 200);
    assert_eq!(status(&http, format!("{base_b}/readyz")).await, 503);
    assert_eq!(increment(&http, &base_b).await, Err(503));

    // Eight clients write to the active node until it is killed (see [`client`]).
    const CLIENTS: usize = 8;
    configure_budget(&http, &base_a).await;
    let load = Load::start(&http, std::slice::from_ref(&base_a), CLIENTS);
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.kill().unwrap();
    let killed = Instant::now();
    let _ = a.wait();
    let (acked, last) = load.finish().await;
    assert!(acked.increments > 0);
    assert!(last.iter().all(|l| l.token > 0 && l.term > 0));

    wait_ready(&http, &base_b, Duration::from_millis(LEASE_MS + 1000)).await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_millis(LEASE_MS + 1000),
        "the standby served {took:?} after the kill"
    );
    // Everything acknowledged is there (one write in flight per client at the kill may be
    // too); tokens and terms keep increasing across the failover.
    check_after(&http, &base_b, &acked, &last).await;
    let value = counter(&http, &base_b).await;
    assert_eq!(increment(&http, &base_b).await, Ok(()));
    assert_eq!(counter(&http, &base_b).await, value + 1);
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_with_standby_leaves_a_fresh_deployment_to_the_other() {
    let Some(schema) = fresh_schema() else { return };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // The standby starts first, yet the node started after it (well within the standby's
    // first lease duration) becomes the active one, and stays so.
    const LEASE: u64 = 5000;
    let (_b, base_b) = node_with_lease(dir.path(), &schema, "b", LEASE, &["--standby"]);
    let (_a, base_a) = node_with_lease(dir.path(), &schema, "a", LEASE, &[]);
    wait_ready(&http, &base_a, Duration::from_secs(10)).await;
    assert_eq!(increment(&http, &base_a).await, Ok(()));
    tokio::time::sleep(Duration::from_millis(LEASE + 500)).await;
    assert_eq!(status(&http, format!("{base_b}/healthz")).await, 200);
    assert_eq!(status(&http, format!("{base_b}/readyz")).await, 503);
    assert_eq!(status(&http, format!("{base_a}/readyz")).await, 200);
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_that_lost_its_lease_never_answers_a_success() {
    let Some(schema) = fresh_schema() else { return };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (a, base_a) = node(dir.path(), &schema, "a", &[]);
    wait_ready(&http, &base_a, Duration::from_secs(10)).await;
    let (_b, base_b) = node(dir.path(), &schema, "b", &[]);
    assert_eq!(increment(&http, &base_a).await, Ok(()));

    let pid = a.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_ready(&http, &base_b, Duration::from_millis(LEASE_MS + 2000)).await;
    assert_eq!(increment(&http, &base_b).await, Ok(()));
    assert_eq!(counter(&http, &base_b).await, 2);
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );

    // At once and for a while after, the old node answers nothing but errors.
    let start = Instant::now();
    let mut tries = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        let r = increment(&http, &base_a).await;
        assert!(r.is_err(), "the paused node acknowledged a write: {r:?}");
        assert_ne!(status(&http, format!("{base_a}/readyz")).await, 200);
        let read = status(&http, format!("{base_a}/counters/c")).await;
        assert_ne!(read, 200, "the paused node answered a read");
        tries += 1;
    }
    assert!(tries > 3);
    // None of its attempts reached the data.
    assert_eq!(counter(&http, &base_b).await, 2);
    assert_eq!(status(&http, format!("{base_a}/healthz")).await, 200);
    drop(a);
    drop_schema(&schema);
}

/// An HTTP client that gives a call 10 s (a paused node holds its connections).
fn patient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A cluster node on `schema`: the cluster's secret, 32 partitions, a lease of one second.
fn cluster_node(dir: &std::path::Path, schema: &str, name: &str) -> (Server, String) {
    node_with_lease(
        dir,
        schema,
        name,
        1000,
        &[
            "--cluster",
            "--cluster-secret",
            "the-cluster-secret-of-this-test",
            "--cluster-partitions",
            "32",
        ],
    )
}

fn signal(server: &Server, sig: &str) {
    let pid = server.id().to_string();
    assert!(
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Three nodes serve one deployment, every route on every node; clients call random nodes
/// while one node is killed, one pauses past its leases, one joins and one stops
/// gracefully. Afterwards every acknowledged increment is there, and fencing tokens and
/// terms only grew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_every_route_on_every_node_through_deaths_pauses_joins_and_stops() {
    let Some(schema) = fresh_schema() else { return };
    let dir = tempfile::tempdir().unwrap();
    let http = patient_client();
    let mut servers = Vec::new();
    let mut bases = Vec::new();
    for name in ["a", "b", "c"] {
        let (s, base) = cluster_node(dir.path(), &schema, name);
        wait_ready(&http, &base, Duration::from_secs(10)).await;
        servers.push(Some(s));
        bases.push(base);
    }
    // Every node sees the three members, and together they hold every partition.
    let view = |base: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base}/cluster"))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let start = Instant::now();
    loop {
        let v = view(bases[0].clone()).await;
        let held: u64 = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["partitions"].as_u64().unwrap())
            .sum();
        if v["members"].as_array().unwrap().len() == 3 && held == 32 && v["moving"] == 0 {
            assert_eq!(v["partitions"], 32);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    const CLIENTS: usize = 6;
    configure_budget(&http, &bases[0]).await;
    let load = Load::start(&http, &bases, CLIENTS);
    let reachable = load.reachable.clone();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // `b` is killed; clients stop calling it.
    reachable.lock().unwrap().retain(|b| *b != bases[1]);
    let mut b = servers[1].take().unwrap();
    b.kill().unwrap();
    let _ = b.wait();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // `d` joins.
    let (d, base_d) = cluster_node(dir.path(), &schema, "d");
    wait_ready(&http, &base_d, Duration::from_secs(10)).await;
    reachable.lock().unwrap().push(base_d.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    // `c` pauses past its leases, then goes on.
    signal(servers[2].as_ref().unwrap(), "-STOP");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    signal(servers[2].as_ref().unwrap(), "-CONT");
    tokio::time::sleep(Duration::from_millis(800)).await;
    // `a` stops gracefully (it hands its partitions over first).
    reachable.lock().unwrap().retain(|b| *b != bases[0]);
    signal(servers[0].as_ref().unwrap(), "-TERM");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (acked, last) = load.finish().await;
    assert!(
        acked.increments > 20,
        "{} increments acknowledged",
        acked.increments
    );
    check_after(&http, &base_d, &acked, &last).await;
    // The peer endpoint is closed without the secret.
    let refused = http
        .post(format!("{base_d}/_stead/peer/calls"))
        .json(&serde_json::json!([]))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(refused, 401);
    let refused = http
        .get(format!(
            "{base_d}/_stead/peer/socket?class=counter&id={}&socket=e30",
            "0".repeat(64)
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        refused, 401,
        "the relay endpoint is closed without the secret too"
    );
    drop(d);
    drop(servers);
    drop_schema(&schema);
}

/// Every node of a cluster is restarted in turn (a graceful stop, then a new process under
/// the same name) while clients call the others: nothing acknowledged is lost, fencing
/// tokens and terms only grow, and the load goes on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_a_cluster_under_load_loses_nothing() {
    let Some(schema) = fresh_schema() else { return };
    let dir = tempfile::tempdir().unwrap();
    let http = patient_client();
    let names = ["a", "b", "c"];
    let mut servers = Vec::new();
    let mut bases = Vec::new();
    for name in names {
        let (s, base) = cluster_node(dir.path(), &schema, name);
        wait_ready(&http, &base, Duration::from_secs(10)).await;
        servers.push(s);
        bases.push(base);
    }
    const CLIENTS: usize = 6;
    configure_budget(&http, &bases[0]).await;
    let load = Load::start(&http, &bases, CLIENTS);
    let (reachable, acked) = (load.reachable.clone(), load.acked.clone());
    let increments = || acked.lock().unwrap().increments;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, name) in names.iter().enumerate() {
        let before = increments();
        // Out of the load balancer, stopped gracefully, started again under its name.
        reachable.lock().unwrap().retain(|b| *b != bases[i]);
        signal(&servers[i], "-TERM");
        let _ = servers[i].wait();
        let (s, base) = cluster_node(dir.path(), &schema, name);
        wait_ready(&http, &base, Duration::from_secs(10)).await;
        servers[i] = s;
        bases[i] = base.clone();
        reachable.lock().unwrap().push(base);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            increments() > before,
            "the load went on while {name} restarted"
        );
    }
    let (acked, last) = load.finish().await;
    check_after(&http, &bases[1], &acked, &last).await;
    drop(servers);
    drop_schema(&schema);
}
