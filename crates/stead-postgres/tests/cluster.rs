//! A partitioned cluster on one PostgreSQL schema, nodes on loopback in one process: the
//! partitions spread over the members with one holder each, move when members join and
//! leave, are taken over when a member dies, and a member that lost a partition commits
//! nothing more for it; calls to objects of other nodes are forwarded to their owners.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use stead_core::testing::probe::{GetJson, Incr, Op, Probe, Script, Seen, SetAlarm};

use stead_core::{DurableObject, Namespace, ObjectRef, Runtime, Stub};
use stead_fixtures::history::{Event, UNKNOWN, register_anomalies};
use stead_postgres::{
    ClusterOptions, LeaseState, PostgresBackend, PostgresCluster, PostgresOptions,
};
use support::{drop_schema, on_own_runtime, probe_runtime, require_server, url};

const PARTITIONS: u32 = 32;

fn fresh_schema() -> String {
    require_server();
    format!("stead_test_{:016x}", rand::random::<u64>())
}

fn cluster_options(schema: &str, name: &str, lease: Duration) -> PostgresOptions {
    PostgresOptions::new(url())
        .schema(schema)
        .lease_duration(lease)
        .node_id(name)
        .cluster(ClusterOptions::new(format!("127.0.0.1:1/{name}")).partitions(PARTITIONS))
}

async fn node(schema: &str, name: &str, lease: Duration) -> PostgresBackend {
    join(cluster_options(schema, name, lease)).await
}

async fn join(opts: PostgresOptions) -> PostgresBackend {
    let b = PostgresBackend::connect(opts).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), b.wait_active())
        .await
        .expect("the node joins")
        .unwrap();
    b
}

/// Runs `sql` on a connection of its own.
fn exec(sql: String) {
    on_own_runtime(|client| async move {
        client.batch_execute(&sql).await.unwrap();
    });
}

/// Polls `f` every 20 ms until it holds, for at most `within`; answers how long it took.
async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {within:?}");
}

fn held(b: &PostgresBackend) -> BTreeSet<u32> {
    b.cluster_view().unwrap().held.keys().copied().collect()
}

/// Every partition held by exactly one of `nodes`, each holding some, nothing moving.
fn settled(nodes: &[&PostgresBackend]) -> bool {
    let sets: Vec<_> = nodes.iter().map(|n| held(n)).collect();
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<u32> = sets.iter().flatten().copied().collect();
    total == PARTITIONS as usize
        && union.len() == PARTITIONS as usize
        && sets.iter().all(|s| !s.is_empty())
        && nodes.iter().all(|n| n.cluster_view().unwrap().moving == 0)
}

/// Nodes `a` and `b`, once the partitions have settled between them.
async fn two_settled(schema: &str, lease: Duration) -> (PostgresBackend, PostgresBackend) {
    let a = node(schema, "a", lease).await;
    let b = node(schema, "b", lease).await;
    eventually("the partitions settle", lease * 10, || settled(&[&a, &b])).await;
    (a, b)
}

fn obj(stub: &Stub<Probe>) -> ObjectRef {
    ObjectRef {
        class: Probe::CLASS,
        id: stub.id(),
    }
}

async fn incr(x: &Stub<Probe>) -> stead_core::Result<i64> {
    x.ask(Incr("c".into())).await.and_then(|r| r)
}

/// The index of the node in `nodes` that holds `x`'s partition.
fn owner_of(nodes: &[&PostgresBackend], x: &Stub<Probe>) -> usize {
    let p = nodes[0].partition(&obj(x));
    let owners: Vec<usize> = (0..nodes.len())
        .filter(|&i| held(nodes[i]).contains(&p))
        .collect();
    assert_eq!(owners.len(), 1, "partition {p}: {owners:?}");
    owners[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_over_the_members_and_each_object_is_served_by_its_owner_only() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    let a = node(&schema, "a", lease).await;
    let b = node(&schema, "b", lease).await;
    let c = node(&schema, "c", lease).await;
    let nodes = [&a, &b, &c];
    eventually("the partitions settle", Duration::from_secs(10), || {
        settled(&nodes)
    })
    .await;
    let view = a.cluster_view().unwrap();
    assert_eq!(view.partitions, PARTITIONS);
    assert_eq!(view.members.len(), 3, "{view:?}");
    assert!(matches!(a.state(), LeaseState::Member { partitions } if partitions > 0));

    let mut runtimes = Vec::new();
    let mut namespaces = Vec::new();
    for n in nodes {
        let (rt, ns) = probe_runtime(n).await;
        namespaces.push(ns);
        runtimes.push(rt);
    }
    for i in 0..12 {
        // The object on each node.
        let x: Vec<_> = namespaces
            .iter()
            .map(|ns| ns.get_by_name(&format!("x{i}")))
            .collect();
        let owner = owner_of(&nodes, &x[0]);
        assert_eq!(incr(&x[owner]).await.unwrap(), 1);
        assert_eq!(incr(&x[owner]).await.unwrap(), 2);
        // Every other node refuses the object, and says why.
        for other in (0..3).filter(|&n| n != owner) {
            let refused = incr(&x[other]).await.unwrap_err();
            assert!(
                format!("{refused:?}").contains("does not hold partition"),
                "{refused:?}"
            );
        }
    }
    for rt in runtimes {
        rt.shutdown().await.unwrap();
    }
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_joins_takes_its_share_and_one_that_leaves_hands_it_back() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    let a = node(&schema, "a", lease).await;
    eventually("one node holds everything", Duration::from_secs(5), || {
        held(&a).len() == PARTITIONS as usize
    })
    .await;
    let (rt_a, ns_a) = probe_runtime(&a).await;
    let xs: Vec<_> = (0..16)
        .map(|i| ns_a.get_by_name(&format!("x{i}")))
        .collect();
    for x in &xs {
        assert_eq!(incr(x).await.unwrap(), 1);
    }

    let b = node(&schema, "b", lease).await;
    let moved = eventually(
        "the newcomer takes its share",
        Duration::from_secs(10),
        || settled(&[&a, &b]),
    )
    .await;
    let (rt_b, ns_b) = probe_runtime(&b).await;
    let xb: Vec<_> = (0..16)
        .map(|i| ns_b.get_by_name(&format!("x{i}")))
        .collect();
    // Each object goes on where it was, on whichever node holds it now.
    for i in 0..16 {
        let at = if owner_of(&[&a, &b], &xs[i]) == 0 {
            &xs[i]
        } else {
            &xb[i]
        };
        assert_eq!(incr(at).await.unwrap(), 2, "x{i}");
    }

    // A graceful stop gives every partition back: the other takes them at its next round.
    let stopped = Instant::now();
    rt_b.shutdown().await.unwrap();
    let back = eventually("the partitions come back", Duration::from_secs(5), || {
        held(&a).len() == PARTITIONS as usize
    })
    .await;
    eprintln!(
        "rebalance onto a joining node: {moved:?}; back after a graceful stop: {back:?} (stop took {:?})",
        stopped.elapsed() - back
    );
    for x in &xs {
        assert_eq!(incr(x).await.unwrap(), 3);
    }
    rt_a.shutdown().await.unwrap();
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_dies_is_replaced_after_its_lease() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    let (a, b) = two_settled(&schema, lease).await;
    // `b` stops as a crash would: no lease given back, no goodbye.
    b.halt_for_tests();
    let killed = Instant::now();
    let took = eventually(
        "the survivor takes everything",
        Duration::from_secs(5),
        || held(&a).len() == PARTITIONS as usize,
    )
    .await;
    eprintln!("every partition served again {took:?} after a kill (lease {lease:?})");
    assert!(
        killed.elapsed() >= lease / 2,
        "not before b's leases could expire"
    );
    assert_eq!(a.cluster_view().unwrap().members.len(), 1);
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_a_partition_commits_nothing_more_for_it() {
    let schema = fresh_schema();
    // A long lease: `b` keeps believing it holds its partitions while the test runs.
    let lease = Duration::from_secs(4);
    let (a, b) = two_settled(&schema, lease).await;
    let (rt_a, ns_a) = probe_runtime(&a).await;
    let (rt_b, ns_b) = probe_runtime(&b).await;
    let name = (0..64)
        .map(|i| format!("x{i}"))
        .find(|n| owner_of(&[&a, &b], &ns_b.get_by_name(n)) == 1)
        .expect("b holds some object's partition");
    let (xa, xb) = (ns_a.get_by_name(&name), ns_b.get_by_name(&name));
    assert_eq!(incr(&xb).await.unwrap(), 1);

    // As if `b` had been paused past its leases: they expire long ago, and `a` takes them.
    // `b`'s own clock has not run out, so it still counts them as held.
    b.halt_for_tests();
    let holder = b.cluster_view().unwrap().holder;
    exec(format!(
        "UPDATE \"{schema}\".lease SET expires_at = clock_timestamp() - interval '1 hour' \
         WHERE holder = '{holder}'"
    ));
    let p = a.partition(&obj(&xa));
    eventually("a takes b's partition", Duration::from_secs(10), || {
        held(&a).contains(&p)
    })
    .await;
    assert!(held(&b).contains(&p), "b's own view has not changed");
    assert_eq!(incr(&xa).await.unwrap(), 2);
    // `b`'s commit finds another holder in its transaction: the turn fails, nothing of it
    // is written.
    let late = incr(&xb).await;
    assert!(
        late.is_err(),
        "a write of the old owner must fail: {late:?}"
    );
    assert_eq!(
        xa.ask(GetJson("c".into())).await.unwrap().unwrap(),
        Some(serde_json::json!(2))
    );
    assert_eq!(incr(&xa).await.unwrap(), 3);
    rt_a.shutdown().await.unwrap();
    drop(rt_b);
    drop_schema(&schema);
}

/// The first key of a schema's advisory locks (FNV-1a of its name): computed here apart, so
/// that a change of it, which would leave nodes of two versions unfenced from each other,
/// shows.
fn lock_space(schema: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in schema.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}

/// A side transaction holding every partition's commit lock, shared (as a group commit holds
/// it from its lease check to its end) or exclusive (as a takeover does until it commits).
async fn hold_partition_locks(schema: &str, shared: bool) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute("BEGIN").await.unwrap();
    let lock = if shared {
        "pg_advisory_xact_lock_shared"
    } else {
        "pg_advisory_xact_lock"
    };
    let last = PARTITIONS as i32 - 1;
    client
        .execute(
            &format!("SELECT {lock}($1::int, p) FROM generate_series(0, $2::int) p"),
            &[&lock_space(schema), &last],
        )
        .await
        .unwrap();
    client
}

/// A takeover waits for the commits in flight on the partitions it takes: while a
/// transaction holds the partitions' commit locks (as a group commit does from its lease
/// check to its end), another node takes none of them, however expired their leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_commits_in_flight() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    let a = node(&schema, "a", lease).await;
    eventually("one node holds everything", Duration::from_secs(5), || {
        held(&a).len() == PARTITIONS as usize
    })
    .await;
    // A commit in flight on every partition.
    let client = hold_partition_locks(&schema, true).await;
    // `a` dies; `b` joins, and would take every partition once `a`'s leases expire.
    a.halt_for_tests();
    let b = PostgresBackend::connect(cluster_options(&schema, "b", lease))
        .await
        .unwrap();
    tokio::time::sleep(lease * 3).await;
    assert!(
        held(&b).is_empty(),
        "took {:?} under a commit in flight",
        held(&b)
    );
    // The commit ends: the takeover goes on.
    client.batch_execute("COMMIT").await.unwrap();
    eventually(
        "the takeover once the commit ended",
        Duration::from_secs(5),
        || held(&b).len() == PARTITIONS as usize,
    )
    .await;
    drop(b);
    drop_schema(&schema);
}

/// A commit waits for a takeover in progress on a partition it writes: while a transaction
/// holds the partitions' locks exclusively (as a takeover does until it commits), no commit
/// of them completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waits_for_a_takeover_in_progress() {
    let schema = fresh_schema();
    let a = node(&schema, "a", Duration::from_secs(5)).await;
    eventually("one node holds everything", Duration::from_secs(5), || {
        held(&a).len() == PARTITIONS as usize
    })
    .await;
    let (rt, ns) = probe_runtime(&a).await;
    let x = ns.get_by_name("x");
    assert_eq!(incr(&x).await.unwrap(), 1);
    let client = hold_partition_locks(&schema, false).await;
    let pending = tokio::spawn(async move { incr(&x).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !pending.is_finished(),
        "a commit completed under a takeover in progress"
    );
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(pending.await.unwrap().unwrap(), 2);
    rt.shutdown().await.unwrap();
    drop_schema(&schema);
}

/// A peer that accepts connections and never answers (paused, or cut off after the
/// connect) fails the batches sent to it once they have waited 10 s for the answer to
/// begin, and holds no later batch back for longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_fails_its_batches_and_holds_no_other_back() {
    use stead_core::{Cluster, PeerCall};
    let schema = fresh_schema();
    let a = node(&schema, "a", Duration::from_secs(5)).await;
    let cluster = PostgresCluster::new(&a, SECRET).unwrap();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = silent.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let call = || {
        serde_json::from_value::<PeerCall>(serde_json::json!({
            "class": "probe", "id": "0".repeat(64), "name": null, "message": "m", "body": 1
        }))
        .unwrap()
    };
    let started = Instant::now();
    // Two batches take both places; the third waits for one.
    let mut calls = Vec::new();
    for _ in 0..3 {
        calls.push(tokio::spawn(cluster.call(&peer, call())));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all = async {
        for c in calls {
            let err = c.await.unwrap().unwrap_err();
            assert!(
                format!("{err:?}").contains("did not begin to answer"),
                "{err:?}"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(40), all)
        .await
        .expect("every call to a silent peer ends");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(10), "{took:?}");
    eprintln!("three calls to a silent peer failed within {took:?}");
    drop_schema(&schema);
}

#[tokio::test]
async fn a_deployment_keeps_its_partition_count_and_its_mode() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    let a = node(&schema, "a", lease).await;
    let other = PostgresBackend::connect(
        cluster_options(&schema, "b", lease).cluster(ClusterOptions::new("x:1").partitions(16)),
    )
    .await
    .unwrap_err();
    assert!(
        other.to_string().contains("a cluster of 32 partitions"),
        "{other}"
    );
    let single = PostgresBackend::connect(
        PostgresOptions::new(url())
            .schema(&schema)
            .lease_duration(lease),
    )
    .await
    .unwrap_err();
    assert!(
        single.to_string().contains("one active node with standbys"),
        "{single}"
    );
    let bad = PostgresBackend::new(
        cluster_options(&schema, "c", lease).cluster(ClusterOptions::new("x:1").partitions(0)),
    )
    .unwrap_err();
    assert!(bad.to_string().contains("partitions"), "{bad}");
    let rt = Runtime::builder().backend(a).build().await.unwrap();
    rt.shutdown().await.unwrap();
    drop_schema(&schema);
}

/// Checks what clients were told: no increment acknowledged twice on one base (two owners
/// at once), and every object now at least at its greatest acknowledged value (read
/// through `ns`). Answers how many were acknowledged.
async fn check_acknowledged(acks: Arc<Mutex<Vec<Vec<i64>>>>, ns: &Namespace<Probe>) -> usize {
    let acks = Arc::try_unwrap(acks).unwrap().into_inner().unwrap();
    let mut total = 0;
    for (i, values) in acks.iter().enumerate() {
        let mut sorted = values.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            values.len(),
            "x{i}: an increment was acknowledged twice on one base: {values:?}"
        );
        let now = incr(&ns.get_by_name(&format!("x{i}"))).await.unwrap() - 1;
        let max = values.iter().copied().max().unwrap_or(0);
        assert!(now >= max, "x{i}: {now} < acknowledged {max}");
        total += values.len();
    }
    total
}

/// The fence audit's rows that break a rule: two holders in one partition's epoch; a commit
/// of an epoch made after a later epoch of its partition was taken; a partition's epochs
/// taken out of order.
fn fence_violations(schema: &str) -> Vec<String> {
    let found = Arc::new(Mutex::new(Vec::new()));
    let out = found.clone();
    let s = format!("\"{schema}\"");
    on_own_runtime(move |client| async move {
        let checks = [
            format!(
                "SELECT format('partition %s epoch %s: holders %s', partition_id, epoch, \
                 string_agg(DISTINCT holder, ', ')) FROM {s}.fence_audit \
                 GROUP BY partition_id, epoch HAVING count(DISTINCT holder) > 1"
            ),
            format!(
                "SELECT format('partition %s: a commit of epoch %s at %s, after epoch %s was \
                 taken at %s', c.partition_id, c.epoch, c.at, a.epoch, a.at) \
                 FROM {s}.fence_audit c JOIN {s}.fence_audit a \
                 ON a.kind = 'acquire' AND c.kind = 'commit' \
                 AND a.partition_id = c.partition_id AND a.epoch > c.epoch AND a.at < c.at"
            ),
            format!(
                "SELECT format('partition %s: epoch %s taken after epoch %s', x.partition_id, \
                 x.epoch, y.epoch) FROM {s}.fence_audit x JOIN {s}.fence_audit y \
                 ON x.kind = 'acquire' AND y.kind = 'acquire' \
                 AND x.partition_id = y.partition_id AND x.seq > y.seq AND x.epoch <= y.epoch"
            ),
        ];
        for sql in checks {
            for row in client.query(&sql, &[]).await.unwrap() {
                out.lock().unwrap().push(row.get::<_, String>(0));
            }
        }
    });
    Arc::try_unwrap(found).unwrap().into_inner().unwrap()
}

/// Rows of the fence audit of one kind.
fn audit_count(schema: &str, kind: &'static str) -> i64 {
    let n = Arc::new(Mutex::new(0));
    let out = n.clone();
    let sql = format!("SELECT count(*) FROM \"{schema}\".fence_audit WHERE kind = $1");
    on_own_runtime(move |client| async move {
        *out.lock().unwrap() = client.query_one(&sql, &[&kind]).await.unwrap().get(0);
    });
    *n.lock().unwrap()
}

/// Clients call random nodes while members join, die, stall past their leases and leave;
/// afterwards every acknowledged increment is there, none was applied on a stale base,
/// and the fence audit finds one holder per epoch and no commit of an epoch after the next
/// one began. (Until calls are forwarded, a client that a node refuses tries the others.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_joins_deaths_stalls_and_leaves_nothing_acknowledged_is_lost_and_every_fence_holds() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    let opts = |name: &str| cluster_options(&schema, name, lease).fence_audit(true);
    const OBJECTS: usize = 24;
    let mut backends = Vec::new();
    let mut runtimes = Vec::new();
    // The namespaces clients may call, by node (`None`: unreachable, as a dead process).
    let reachable: Arc<Mutex<Vec<Option<Namespace<Probe>>>>> = Arc::default();
    for name in ["a", "b", "c"] {
        let b = join(opts(name)).await;
        let (rt, ns) = probe_runtime(&b).await;
        reachable.lock().unwrap().push(Some(ns));
        backends.push(b);
        runtimes.push(Some(rt));
    }
    eventually("the partitions settle", Duration::from_secs(10), || {
        settled(&backends.iter().collect::<Vec<_>>())
    })
    .await;

    let acks: Arc<Mutex<Vec<Vec<i64>>>> = Arc::new(Mutex::new(vec![Vec::new(); OBJECTS]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (reachable, acks, stop) = (reachable.clone(), acks.clone(), stop.clone());
            tokio::spawn(async move {
                let mut refused = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = rand::random::<u32>() as usize;
                    let i = k % OBJECTS;
                    let nodes: Vec<_> = reachable.lock().unwrap().clone();
                    let start = k % nodes.len();
                    let mut done = false;
                    for n in (0..nodes.len()).map(|j| (start + j) % nodes.len()) {
                        let Some(ns) = &nodes[n] else { continue };
                        match incr(&ns.get_by_name(&format!("x{i}"))).await {
                            Ok(v) => {
                                acks.lock().unwrap()[i].push(v);
                                done = true;
                                break;
                            }
                            Err(_) => refused += 1,
                        }
                    }
                    if !done {
                        // Nobody serves it this moment (a partition changing hands).
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                refused
            })
        })
        .collect();

    let pause = |d: u64| tokio::time::sleep(Duration::from_millis(d));
    pause(700).await;
    // A fourth node joins.
    let d = join(opts("d")).await;
    let (rt_d, ns_d) = probe_runtime(&d).await;
    reachable.lock().unwrap().push(Some(ns_d.clone()));
    pause(1500).await;
    // `b` dies: no lease given back, and no client reaches it any more.
    backends[1].halt_for_tests();
    reachable.lock().unwrap()[1] = None;
    pause(1500).await;
    // `c` stalls past its leases while clients still reach it: it serves on its own clock
    // until that says its leases may have expired, and the fences refuse what it commits
    // after the others took over.
    backends[2].halt_for_tests();
    // Its pause made its leases run out in PostgreSQL while its own clock says they still
    // count: the others take them at once, and only the fences stop its commits.
    let stalled = backends[2].cluster_view().unwrap().holder;
    exec(format!(
        "UPDATE \"{schema}\".lease SET expires_at = clock_timestamp() - interval '1 hour' \
         WHERE holder = '{stalled}'"
    ));
    pause(1500).await;
    // `a` leaves gracefully.
    reachable.lock().unwrap()[0] = None;
    runtimes[0].take().unwrap().shutdown().await.unwrap();
    pause(1500).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for c in clients {
        refused += c.await.unwrap();
    }

    // `d` is the one member left: it holds everything, and every value is at least the
    // greatest acknowledged.
    eventually(
        "the survivor holds everything",
        Duration::from_secs(5),
        || held(&d).len() == PARTITIONS as usize,
    )
    .await;
    let total = check_acknowledged(acks, &ns_d).await;
    assert!(total > 200, "the load ran: {total} increments");
    let violations = fence_violations(&schema);
    assert!(violations.is_empty(), "{violations:#?}");
    let (commits, takeovers) = (
        audit_count(&schema, "commit"),
        audit_count(&schema, "acquire"),
    );
    eprintln!(
        "{total} increments acknowledged, {refused} refusals retried elsewhere; audit: \
         {commits} commits, {takeovers} partitions taken, no violation"
    );
    rt_d.shutdown().await.unwrap();
    drop(runtimes);
    drop_schema(&schema);
}

const SECRET: &str = "the-cluster-secret-of-the-tests";

/// A node that serves: its backend, its runtime (forwarding to peers with `secret`), and
/// its peer endpoint on a loopback port of its own, which it advertises.
struct Served {
    backend: PostgresBackend,
    rt: Runtime,
    ns: Namespace<Probe>,
    server: tokio::task::JoinHandle<()>,
}

/// Served nodes `a` and `b`, once the partitions have settled between them.
async fn two_served(schema: &str, lease: Duration) -> (Served, Served) {
    let a = served(schema, "a", lease, SECRET).await;
    let b = served(schema, "b", lease, SECRET).await;
    eventually("the partitions settle", Duration::from_secs(10), || {
        settled(&[&a.backend, &b.backend])
    })
    .await;
    (a, b)
}

async fn served(schema: &str, name: &str, lease: Duration, secret: &str) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let backend = join(
        PostgresOptions::new(url())
            .schema(schema)
            .lease_duration(lease)
            .node_id(name)
            .cluster(ClusterOptions::new(address).partitions(PARTITIONS)),
    )
    .await;
    let rt = Runtime::builder()
        .backend(backend.clone())
        .cluster(PostgresCluster::new(&backend, secret).unwrap())
        .build()
        .await
        .unwrap();
    let ns = rt
        .namespace::<Probe>(stead_core::testing::probe::ProbeEnv::default())
        .unwrap();
    let app = stead_core::http::peer_routes(&rt, SECRET).unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            axum::serve::ListenerExt::tap_io(listener, |tcp| {
                // Replies stream back: without it, each waits for the previous one's ACK.
                let _ = tcp.set_nodelay(true);
            }),
            app,
        )
        .await
        .unwrap();
    });
    Served {
        backend,
        rt,
        ns,
        server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_every_object_by_forwarding_calls_to_its_owner() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    let (a, b) = two_served(&schema, lease).await;
    let mut forwarded = 0;
    for i in 0..16 {
        let name = format!("x{i}");
        let (xa, xb) = (a.ns.get_by_name(&name), b.ns.get_by_name(&name));
        if owner_of(&[&a.backend, &b.backend], &xa) == 1 {
            forwarded += 1;
        }
        // Both nodes answer for the object, one of them by forwarding: one sequence.
        assert_eq!(incr(&xa).await.unwrap(), 1, "{name}");
        assert_eq!(incr(&xb).await.unwrap(), 2, "{name}");
        assert_eq!(incr(&xa).await.unwrap(), 3, "{name}");
        assert_eq!(
            xb.ask(GetJson("c".into())).await.unwrap().unwrap(),
            Some(serde_json::json!(3))
        );
    }
    assert!(forwarded > 0 && forwarded < 16, "{forwarded} of 16 on b");

    // A node with another secret is refused by its peers, and says so.
    let schema2 = fresh_schema();
    let c = served(&schema2, "c", lease, SECRET).await;
    let d = served(&schema2, "d", lease, "not-the-cluster-secret-at-all").await;
    eventually("the partitions settle", Duration::from_secs(10), || {
        settled(&[&c.backend, &d.backend])
    })
    .await;
    let name = (0..64)
        .map(|i| format!("y{i}"))
        .find(|n| owner_of(&[&c.backend, &d.backend], &c.ns.get_by_name(n)) == 0)
        .unwrap();
    let refused = incr(&d.ns.get_by_name(&name)).await.unwrap_err();
    assert!(
        format!("{refused:?}").contains("same cluster secret"),
        "{refused:?}"
    );
    for node in [a, b, c, d] {
        node.rt.shutdown().await.unwrap();
        node.server.abort();
    }
    drop_schema(&schema);
    drop_schema(&schema2);
}

/// The churn of members with forwarding on: clients call any live node and the call
/// reaches the owner; while partitions move, calls wait or are refused briefly, and
/// nothing acknowledged is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_calls_survive_members_joining_and_leaving() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    const OBJECTS: usize = 16;
    let (a, b) = two_served(&schema, lease).await;
    let reachable: Arc<Mutex<Vec<Namespace<Probe>>>> =
        Arc::new(Mutex::new(vec![a.ns.clone(), b.ns.clone()]));
    let acks: Arc<Mutex<Vec<Vec<i64>>>> = Arc::new(Mutex::new(vec![Vec::new(); OBJECTS]));
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (reachable, acks, stop, failures) = (
                reachable.clone(),
                acks.clone(),
                stop.clone(),
                failures.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let k = rand::random::<u32>() as usize;
                    let nodes = reachable.lock().unwrap().clone();
                    let ns = &nodes[k % nodes.len()];
                    match incr(&ns.get_by_name(&format!("x{}", k % OBJECTS))).await {
                        Ok(v) => acks.lock().unwrap()[k % OBJECTS].push(v),
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let c = served(&schema, "c", lease, SECRET).await;
    reachable.lock().unwrap().push(c.ns.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // `a` leaves gracefully: clients stop calling it first, as a load balancer would.
    reachable.lock().unwrap().remove(0);
    a.rt.shutdown().await.unwrap();
    a.server.abort();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let total = check_acknowledged(acks, &b.ns).await;
    let failed = failures.load(Ordering::Relaxed);
    eprintln!("{total} increments acknowledged through any node, {failed} failed calls");
    assert!(total > 200, "{total}");
    assert!(
        (failed as usize) * 20 < total,
        "few calls fail while partitions move: {failed} of {}",
        total + failed as usize
    );
    for node in [b, c] {
        node.rt.shutdown().await.unwrap();
        node.server.abort();
    }
    drop_schema(&schema);
}

/// Alarms fire on the node that owns their object's partition, once each, whichever node
/// the call that set them went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_fire_once_each_on_the_owner_of_their_partition() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    let (a, b) = two_served(&schema, lease).await;
    let at = a.rt.clock().now() + stead_core::chrono::Duration::milliseconds(1500);
    let names: Vec<String> = (0..16).map(|i| format!("alarm{i}")).collect();
    for name in &names {
        // All set through `a`; about half are forwarded to `b`.
        a.ns.get_by_name(name).call(SetAlarm(at)).await.unwrap();
    }
    let fired = |n: &Served| {
        n.ns.env()
            .alarms
            .lock()
            .unwrap()
            .iter()
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>()
    };
    eventually("every alarm fires", Duration::from_secs(10), || {
        fired(&a).len() + fired(&b).len() >= names.len()
    })
    .await;
    // A moment more: nothing fires twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (on_a, on_b) = (fired(&a), fired(&b));
    assert_eq!(on_a.len() + on_b.len(), names.len(), "{on_a:?} {on_b:?}");
    for name in &names {
        let owner = owner_of(&[&a.backend, &b.backend], &a.ns.get_by_name(name));
        let (here, there) = if owner == 0 {
            (&on_a, &on_b)
        } else {
            (&on_b, &on_a)
        };
        assert!(
            here.contains(name) && !there.contains(name),
            "{name} on node {owner}"
        );
    }
    assert!(!on_a.is_empty() && !on_b.is_empty(), "{on_a:?} {on_b:?}");
    for node in [a, b] {
        node.rt.shutdown().await.unwrap();
        node.server.abort();
    }
    drop_schema(&schema);
}

/// A member dies with alarms pending on its objects: the member that takes its partitions
/// over fires them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alarms_of_a_dead_member_fire_on_the_member_that_takes_over() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    let (a, b) = two_served(&schema, lease).await;
    // Alarms on objects `b` owns, due after it is gone, well within `a`'s horizon.
    let names: Vec<String> = (0..64)
        .map(|i| format!("later{i}"))
        .filter(|n| owner_of(&[&a.backend, &b.backend], &b.ns.get_by_name(n)) == 1)
        .take(8)
        .collect();
    let at = a.rt.clock().now() + stead_core::chrono::Duration::milliseconds(2500);
    for name in &names {
        b.ns.get_by_name(name).call(SetAlarm(at)).await.unwrap();
    }
    // `b` dies as a crash would: its runtime stops with it.
    b.backend.halt_for_tests();
    b.server.abort();
    drop(b.rt);
    eventually(
        "every alarm fires on the survivor",
        Duration::from_secs(15),
        || {
            let fired = a.ns.env().alarms.lock().unwrap().clone();
            names.iter().all(|n| fired.iter().any(|(f, _)| f == n))
        },
    )
    .await;
    a.rt.shutdown().await.unwrap();
    a.server.abort();
    drop_schema(&schema);
}

/// A register per object, written and read by clients on random nodes while a member
/// joins, one dies and one leaves: the history checker finds no anomaly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_histories_through_joins_deaths_and_leaves_have_no_anomaly() {
    let schema = fresh_schema();
    let lease = Duration::from_secs(1);
    const REGISTERS: usize = 4;
    let (a, b) = two_served(&schema, lease).await;
    let reachable: Arc<Mutex<Vec<Namespace<Probe>>>> =
        Arc::new(Mutex::new(vec![a.ns.clone(), b.ns.clone()]));
    let histories: Arc<Mutex<Vec<Vec<Event>>>> = Arc::new(Mutex::new(vec![Vec::new(); REGISTERS]));
    let clock = Instant::now();
    let next_value = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (reachable, histories, stop, next_value) = (
                reachable.clone(),
                histories.clone(),
                stop.clone(),
                next_value.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let k = rand::random::<u32>() as usize;
                    let nodes = reachable.lock().unwrap().clone();
                    let x = nodes[k % nodes.len()].get_by_name(&format!("r{}", k % REGISTERS));
                    let write = k.is_multiple_of(2);
                    let value = next_value.fetch_add(1, Ordering::Relaxed) as i64;
                    let op = if write {
                        Op::Put("v".into(), value)
                    } else {
                        Op::Get("v".into())
                    };
                    let invoked = clock.elapsed().as_nanos();
                    // A write without an answer may or may not have taken effect.
                    let answer = x.ask(Script(vec![op])).await;
                    if write && !matches!(answer, Ok(Ok(_))) {
                        histories.lock().unwrap()[k % REGISTERS].push(Event {
                            invoked,
                            completed: UNKNOWN,
                            wrote: Some(value),
                            read: 0,
                        });
                    }
                    if let Ok(Ok(seen)) = answer {
                        let completed = clock.elapsed().as_nanos();
                        let read = match seen.first() {
                            Some(Seen::Value(v)) => v.unwrap_or(0),
                            _ => 0,
                        };
                        histories.lock().unwrap()[k % REGISTERS].push(Event {
                            invoked,
                            completed,
                            wrote: write.then_some(value),
                            read,
                        });
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = served(&schema, "c", lease, SECRET).await;
    reachable.lock().unwrap().push(c.ns.clone());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // `b` dies (no goodbye); clients stop reaching it.
    reachable.lock().unwrap().remove(1);
    b.backend.halt_for_tests();
    b.server.abort();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // `a` leaves gracefully.
    reachable.lock().unwrap().remove(0);
    a.rt.shutdown().await.unwrap();
    a.server.abort();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let histories = Arc::try_unwrap(histories).unwrap().into_inner().unwrap();
    let mut ops = 0;
    for (i, h) in histories.iter().enumerate() {
        let anomalies = register_anomalies(h);
        assert!(anomalies.is_empty(), "r{i}: {anomalies:#?}");
        ops += h.len();
    }
    eprintln!("{ops} acknowledged register operations, no anomaly");
    assert!(ops > 200, "{ops}");
    c.rt.shutdown().await.unwrap();
    c.server.abort();
    drop(b.rt);
    drop_schema(&schema);
}
