//! A partitioned cluster on PostgreSQL, nodes in one process on loopback, in one run:
//! - calls through a node that forwards them to the owner, against calls made on the owner;
//! - one node in cluster mode against one active node (the same durable turns);
//! - the time a new node takes to get its share of 256 partitions, and the time from a
//!   node's death to every partition served again.
//!
//! `cargo bench -p stead-postgres --bench cluster` (`-- --seconds S`;
//! `STEAD_BENCH_ONLY=forwarded` runs the forwarded calls alone, for a profile), against
//! `STEAD_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`), in schemas
//! of its own that it drops after. On one 2-core machine every node shares the same cores:
//! the figures show what forwarding costs, not what more machines would add.

use std::time::{Duration, Instant};

use stead_core::testing::probe::{Probe, ProbeEnv};
use stead_core::{Durability, Namespace, ObjectRef, Runtime, Stub};
use stead_postgres::{ClusterOptions, PostgresBackend, PostgresCluster, PostgresOptions};

/// The same allocator as the `stead` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CALLERS: usize = 256;
const SECRET: &str = "the-secret-of-the-cluster-bench";
const LEASE: Duration = Duration::from_secs(2);

fn url() -> String {
    stead_fixtures::bench::postgres_url()
}

fn seconds() -> f64 {
    stead_fixtures::bench::seconds(3.0)
}

/// A node: its backend, its runtime, and its peer endpoint on a loopback port.
struct Node {
    backend: PostgresBackend,
    rt: Runtime,
    ns: Namespace<Probe>,
}

async fn node(schema: &str, name: &str, partitions: Option<u32>) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut opts = PostgresOptions::new(url())
        .schema(schema)
        .node_id(name)
        .lease_duration(LEASE);
    if let Some(n) = partitions {
        let advertise = listener.local_addr().unwrap().to_string();
        opts = opts.cluster(ClusterOptions::new(advertise).partitions(n));
    }
    let backend = PostgresBackend::connect(opts).await.unwrap();
    backend.wait_active().await.unwrap();
    let mut builder = Runtime::builder()
        .backend(backend.clone())
        .durability(Durability::Fsync);
    if partitions.is_some() {
        builder = builder.cluster(PostgresCluster::new(&backend, SECRET).unwrap());
    }
    let rt = builder.build().await.unwrap();
    let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
    let app = stead_core::http::peer_routes(&rt, SECRET).unwrap();
    tokio::spawn(async move {
        axum::serve(
            axum::serve::ListenerExt::tap_io(listener, |tcp| {
                // Replies stream back: without it, each waits for the previous one's ACK.
                let _ = tcp.set_nodelay(true);
            }),
            app,
        )
        .await
    });
    Node { backend, rt, ns }
}

/// Whether every partition is held by exactly one of `nodes`, each holding some, and
/// nothing is moving.
fn settled(nodes: &[&Node], partitions: usize) -> bool {
    let mut held = 0;
    for n in nodes {
        let v = n.backend.cluster_view().unwrap();
        if v.held.is_empty() || v.moving > 0 {
            return false;
        }
        held += v.held.len();
    }
    held == partitions
}

async fn until(mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "not settled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Durable turns per second from `CALLERS` callers over `stubs`.
async fn turns(stubs: Vec<Stub<Probe>>, secs: f64) -> f64 {
    stead_fixtures::bench::probe_increments(stubs, CALLERS, secs).await
}

async fn drop_schemas(schemas: &[&str]) {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for s in schemas {
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
            .await
            .unwrap();
    }
}

fn main() {
    let secs = seconds();
    let tokio = stead_fixtures::bench::tokio();
    let tag = rand::random::<u32>();
    let (cluster, single, alone) = (
        format!("stead_bench_{tag:08x}_c"),
        format!("stead_bench_{tag:08x}_s"),
        format!("stead_bench_{tag:08x}_a"),
    );
    tokio.block_on(async {
        // Two nodes; 1,000 objects all owned by `b`, called on `b` and through `a`.
        let a = node(&cluster, "a", Some(256)).await;
        let b = node(&cluster, "b", Some(256)).await;
        until(|| settled(&[&a, &b], 256)).await;
        let names: Vec<String> = (0..)
            .map(|i| format!("o{i}"))
            .filter(|n| {
                let obj = ObjectRef {
                    class: "probe",
                    id: b.ns.id_from_name(n),
                };
                b.backend
                    .cluster_view()
                    .unwrap()
                    .held
                    .contains_key(&b.backend.partition(&obj))
            })
            .take(1000)
            .collect();
        let on = |n: &Node| names.iter().map(|s| n.ns.get_by_name(s)).collect::<Vec<_>>();
        if std::env::var("STEAD_BENCH_ONLY").is_ok_and(|v| v == "forwarded") {
            // For a profile of the forwarding path alone.
            let forwarded = turns(on(&a), secs).await;
            println!("forwarded calls: {forwarded:.0}/s");
            a.rt.shutdown().await.unwrap();
            b.rt.shutdown().await.unwrap();
            return;
        }
        // Alternated, the best of two each: the machine's drift hits both alike.
        let (mut owner, mut forwarded) = (0f64, 0f64);
        for _ in 0..2 {
            owner = owner.max(turns(on(&b), secs).await);
            forwarded = forwarded.max(turns(on(&a), secs).await);
        }

        // A third node joins: the time until the placement has settled again.
        let c = node(&cluster, "c", Some(256)).await;
        let rebalance = until(|| settled(&[&a, &b, &c], 256)).await;
        // `c` dies: the time until the others serve every partition.
        c.backend.halt_for_tests();
        let killed = Instant::now();
        until(|| settled(&[&a, &b], 256)).await;
        let failover = killed.elapsed();
        drop(c);
        a.rt.shutdown().await.unwrap();
        b.rt.shutdown().await.unwrap();

        // One node in cluster mode against one active node: the same turns.
        let one = node(&alone, "one", Some(256)).await;
        let active = node(&single, "active", None).await;
        let spread = |n: &Node| (0..1000).map(|i| n.ns.get_by_name(&format!("s{i}"))).collect::<Vec<_>>();
        let (mut in_cluster, mut in_single) = (0f64, 0f64);
        for _ in 0..2 {
            in_cluster = in_cluster.max(turns(spread(&one), secs).await);
            in_single = in_single.max(turns(spread(&active), secs).await);
        }
        one.rt.shutdown().await.unwrap();
        active.rt.shutdown().await.unwrap();

        println!("\nCluster on PostgreSQL, nodes in one process, {CALLERS} callers, {secs} s per row, lease {LEASE:?}");
        println!("{:<64} {:>12}", "what", "figure");
        println!("{:<64} {:>10.0}/s", "durable turns on the owner (1,000 objects)", owner);
        println!("{:<64} {:>10.0}/s   {:.0}% of the owner (goal 60%)", "the same through a node that forwards them", forwarded, 100.0 * forwarded / owner);
        println!("{:<64} {:>10.0}/s", "one active node (no cluster), 1,000 objects", in_single);
        println!("{:<64} {:>10.0}/s   {:.0}% of the active node (goal 90%)", "one node in cluster mode, 256 partitions", in_cluster, 100.0 * in_cluster / in_single);
        println!("{:<64} {:>10.2} s", "a third node joins: until 256 partitions are placed again", rebalance.as_secs_f64());
        println!("{:<64} {:>10.2} s   (goal: lease + 1 s = {:.1} s)", "a node dies: until every partition is served again", failover.as_secs_f64(), LEASE.as_secs_f64() + 1.0);
    });
    tokio.block_on(drop_schemas(&[&cluster, &single, &alone]));
}
