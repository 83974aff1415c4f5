//! Durable turns per second on PostgreSQL beside the ceiling: the same rows upserted
//! through the same driver in 1,000-row transactions, four connections at once (as many
//! as the backend's writers). One hot object, then 10,000 objects, 1,024 callers each.
//!
//! `cargo bench -p stead-postgres --bench postgres` (`-- --seconds S`), against
//! `STEAD_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`), in a
//! schema of its own that it drops after. Prints a table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stead_core::testing::probe::{Probe, ProbeEnv};
use stead_core::{Durability, Namespace, Runtime};
use stead_postgres::{PostgresBackend, PostgresOptions};

const CALLERS: usize = 1024;

fn url() -> String {
    stead_fixtures::bench::postgres_url()
}

fn seconds() -> f64 {
    stead_fixtures::bench::seconds(3.0)
}

/// Rows per second: four connections, each upserting 1,000 distinct rows per transaction.
async fn ceiling(schema: &str, secs: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for conn_no in 0..4u8 {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let (done, schema) = (done.clone(), schema.to_owned());
        tasks.push(tokio::spawn(async move {
            let sql = format!(
                "INSERT INTO \"{schema}\".kv (class, id, key, value)
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bytea[])
                 ON CONFLICT (class, id, key) DO UPDATE SET value = excluded.value"
            );
            let stmt = client.prepare(&sql).await.unwrap();
            let mut round = 0u64;
            while Instant::now() < stop {
                let ids: Vec<Vec<u8>> = (0..1000u32)
                    .map(|i| {
                        let mut id = vec![conn_no; 32];
                        id[..4].copy_from_slice(&i.to_le_bytes());
                        id
                    })
                    .collect();
                let class: Vec<&str> = vec!["ceiling"; 1000];
                let ids: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
                let keys: Vec<&[u8]> = vec![b"n"; 1000];
                let value = round.to_le_bytes();
                let values: Vec<&[u8]> = vec![&value[..]; 1000];
                client.batch_execute("BEGIN").await.unwrap();
                client
                    .execute(&stmt, &[&class, &ids, &keys, &values])
                    .await
                    .unwrap();
                client.batch_execute("COMMIT").await.unwrap();
                done.fetch_add(1000, Ordering::Relaxed);
                round += 1;
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Turns per second: `CALLERS` tasks incrementing, over `objects` objects.
async fn turns(ns: &Namespace<Probe>, prefix: &str, objects: usize, secs: f64) -> f64 {
    let stubs: Vec<_> = (0..objects)
        .map(|i| ns.get_by_name(&format!("{prefix}{i}")))
        .collect();
    stead_fixtures::bench::probe_increments(stubs, CALLERS, secs).await
}

fn main() {
    let secs = seconds();
    let tokio = stead_fixtures::bench::tokio();
    let schema = format!("stead_bench_{:08x}", rand::random::<u32>());
    tokio.block_on(async {
        let backend = PostgresBackend::connect(PostgresOptions::new(url()).schema(&schema))
            .await
            .unwrap();
        backend.wait_active().await.unwrap();
        let rt = Runtime::builder()
            .backend(backend.clone())
            .durability(Durability::Fsync)
            .build()
            .await
            .unwrap();
        let ceil = ceiling(&schema, secs).await;
        let ns = rt.namespace::<Probe>(ProbeEnv::default()).unwrap();
        let hot = turns(&ns, "hot", 1, secs).await;
        let many = turns(&ns, "o", 10_000, secs).await;
        let ceil2 = ceiling(&schema, secs).await;
        rt.shutdown().await.unwrap();
        let ceil = (ceil + ceil2) / 2.0;
        println!("\nPostgreSQL, {CALLERS} callers, {secs} s per row, synchronous_commit as the server has it");
        println!("{:<52} {:>12} {:>9}", "what", "per second", "vs ceiling");
        println!("{:<52} {:>12.0} {:>8.0}%", "ceiling: upserts in 1,000-row transactions, 4 conns", ceil, 100.0);
        println!("{:<52} {:>12.0} {:>8.0}%", "durable turns, one hot object", hot, 100.0 * hot / ceil);
        println!("{:<52} {:>12.0} {:>8.0}%", "durable turns, 10,000 objects", many, 100.0 * many / ceil);
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
    });
}
