//! The schema: versioned by a table of applied migrations, all of it inside one
//! configurable PostgreSQL schema, and the SQL the backend runs against it.

use deadpool_postgres::Object;
use stead_core::{Error, Result};

use crate::pg_err;

/// The migrations this build knows, in order. A database with a version beyond the last is
/// refused: it was written by a newer stead.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "objects' keys and values, alarms, the registry, and the lease",
        r#"
CREATE TABLE {s}.kv (
    class text COLLATE "C" NOT NULL,
    id bytea NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (class, id, key));
CREATE TABLE {s}.alarms (
    class text COLLATE "C" NOT NULL,
    id bytea NOT NULL,
    at_ms bigint NOT NULL,
    PRIMARY KEY (class, id));
CREATE INDEX alarms_by_time ON {s}.alarms (class, at_ms, id);
CREATE TABLE {s}.objects (
    class text COLLATE "C" NOT NULL,
    id bytea NOT NULL,
    name bytea,
    PRIMARY KEY (class, id));
CREATE INDEX objects_by_name ON {s}.objects (class, name) WHERE name IS NOT NULL;
CREATE TABLE {s}.lease (
    partition_id integer PRIMARY KEY,
    holder text NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL);
"#,
    ),
    (
        2,
        "the deployment's partition count, the members of a cluster, and alarms by partition",
        r#"
CREATE TABLE {s}.deployment (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    mode text NOT NULL CHECK (mode IN ('single', 'cluster')),
    partitions integer NOT NULL CHECK (partitions > 0),
    created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO {s}.deployment (mode, partitions) SELECT 'single', 1 WHERE EXISTS (SELECT 1 FROM {s}.lease);
CREATE TABLE {s}.members (
    holder text PRIMARY KEY,
    node text NOT NULL,
    address text NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    joined_at timestamptz NOT NULL);
ALTER TABLE {s}.alarms ADD COLUMN partition_id integer NOT NULL DEFAULT 0;
"#,
    ),
];

/// The newest schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Checks a schema name: a plain lower-case identifier (so it needs no quoting rules
/// beyond double quotes, and reads the same in every tool).
pub(crate) fn check_schema_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_config(format!(
            "PostgreSQL schema name {name:?}: 1 to 63 characters of a-z, 0-9 and _, not \
             starting with a digit or pg_"
        )))
    }
}

/// Creates the schema and applies the migrations it lacks, in one transaction that holds
/// the migrations table, so that nodes starting together apply each migration once.
pub(crate) async fn migrate(client: &mut Object, schema: &str) -> Result<()> {
    let s = format!("\"{schema}\"");
    // Two nodes creating the same schema at once: one of them fails with a unique
    // violation on the catalog, and the second try sees the schema.
    let create = format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.stead_migrations (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    );
    if client.batch_execute(&create).await.is_err() {
        client.batch_execute(&create).await.map_err(|e| {
            Error::invalid_config(format!(
                "cannot create PostgreSQL schema {schema:?} and its migrations table: {}",
                describe(&e)
            ))
        })?;
    }
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.batch_execute(&format!(
        "LOCK TABLE {s}.stead_migrations IN SHARE ROW EXCLUSIVE MODE"
    ))
    .await
    .map_err(pg_err)?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {s}.stead_migrations"),
            &[],
        )
        .await
        .map_err(pg_err)?;
    let current: i32 = row.get(0);
    if current > SCHEMA_VERSION {
        return Err(Error::invalid_config(format!(
            "PostgreSQL schema {schema:?} is at version {current}, written by a newer stead; \
             this build knows versions up to {SCHEMA_VERSION}: upgrade stead, or use another schema"
        )));
    }
    for (version, description, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(&sql.replace("{s}", &s))
            .await
            .map_err(|e| {
                Error::invalid_config(format!(
                    "PostgreSQL schema {schema:?}, migration {version}: {}",
                    describe(&e)
                ))
            })?;
        tx.execute(
            &format!("INSERT INTO {s}.stead_migrations (version, description) VALUES ($1, $2)"),
            &[version, description],
        )
        .await
        .map_err(pg_err)?;
        tracing::info!(schema, version, description, "applied a schema migration");
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(())
}

/// A PostgreSQL error with the server's own message when it has one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Every statement the backend runs, written once for its schema.
#[derive(Debug)]
pub(crate) struct Sql {
    /// The first key of this schema's advisory locks (the second is a partition): a hash
    /// of the schema's name, so that deployments on one database rarely share a lock (and
    /// when they do, they only wait for each other).
    pub(crate) lock_space: i32,
    /// A commit's shared locks on the partitions it writes, taken in order, held to its
    /// end: a takeover's exclusive ones wait for it.
    pub(crate) lease_hold: String,
    /// A takeover's exclusive locks on the partitions it takes, taken in order: it waits
    /// for every commit holding them, and commits that begin later wait for it, then find
    /// the new epoch.
    pub(crate) lease_fence: String,
    pub(crate) get: String,
    pub(crate) list: [String; 4],
    pub(crate) load: String,
    pub(crate) get_alarm: String,
    pub(crate) due_alarms: String,
    pub(crate) due_alarms_after: String,
    pub(crate) alarm_classes: String,
    pub(crate) objects: String,
    pub(crate) objects_by_name: String,
    pub(crate) object_name: String,
    pub(crate) lease_check: String,
    pub(crate) due_alarms_in: String,
    pub(crate) due_alarms_after_in: String,
    pub(crate) deployment_create: String,
    pub(crate) deployment_read: String,
    pub(crate) member_heartbeat: String,
    pub(crate) member_leave: String,
    pub(crate) members_live: String,
    pub(crate) partitions_read: String,
    pub(crate) partitions_renew: String,
    pub(crate) partitions_release: String,
    pub(crate) partitions_lock: String,
    pub(crate) partitions_acquire: String,
    pub(crate) lease_lock: String,
    pub(crate) lease_acquire: String,
    pub(crate) lease_renew: String,
    pub(crate) lease_release: String,
    pub(crate) clear_kv: String,
    pub(crate) clear_alarms: String,
    pub(crate) clear_objects: String,
    pub(crate) upsert: String,
    pub(crate) delete: String,
    pub(crate) set_alarms: String,
    pub(crate) register: String,
    /// With the fence audit (tests): the table, and the rows each commit and each takeover
    /// of a partition adds.
    pub(crate) audit: Option<Audit>,
}

/// The fence audit's statements: every commit records the partitions and epochs it wrote
/// under and its holder, every takeover the partition, epoch and holder it took, each at
/// PostgreSQL's clock, so that a test can check one holder per epoch and no commit of an
/// epoch after the next one began.
#[derive(Debug)]
pub(crate) struct Audit {
    pub(crate) create: String,
    pub(crate) commit: String,
    pub(crate) acquire: String,
}

impl Sql {
    pub(crate) fn new(schema: &str, audit: bool) -> Sql {
        let s = format!("\"{schema}\"");
        let audit = audit.then(|| Audit {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {s}.fence_audit (
                     seq bigserial PRIMARY KEY,
                     kind text NOT NULL,
                     partition_id integer NOT NULL,
                     epoch bigint NOT NULL,
                     holder text NOT NULL,
                     at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ),
            commit: format!(
                "INSERT INTO {s}.fence_audit (kind, partition_id, epoch, holder)
                 SELECT 'commit', p, e, $3 FROM unnest($1::int[], $2::bigint[]) AS h(p, e)"
            ),
            acquire: format!(
                "INSERT INTO {s}.fence_audit (kind, partition_id, epoch, holder)
                 SELECT 'acquire', p, e, $3 FROM unnest($1::int[], $2::bigint[]) AS h(p, e)"
            ),
        });
        let list = |upper: bool, desc: bool| {
            format!(
                "SELECT key, value FROM {s}.kv WHERE class = $1 AND id = $2 AND key >= $3 {} \
                 ORDER BY key {} LIMIT $4",
                if upper { "AND key < $5" } else { "" },
                if desc { "DESC" } else { "ASC" },
            )
        };
        // Objects of a list of (class, id) pairs, for the statements that take one array
        // per column.
        let pairs = "SELECT * FROM unnest($1::text[], $2::bytea[]) AS p(class, id)";
        Sql {
            get: format!("SELECT value FROM {s}.kv WHERE class = $1 AND id = $2 AND key = $3"),
            list: [
                list(false, false),
                list(false, true),
                list(true, false),
                list(true, true),
            ],
            load: format!("SELECT key, value FROM {s}.kv WHERE class = $1 AND id = $2 LIMIT $3"),
            get_alarm: format!("SELECT at_ms FROM {s}.alarms WHERE class = $1 AND id = $2"),
            due_alarms: format!(
                "SELECT at_ms, id FROM {s}.alarms WHERE class = $1 AND at_ms <= $2 \
                 ORDER BY at_ms, id LIMIT $3"
            ),
            due_alarms_after: format!(
                "SELECT at_ms, id FROM {s}.alarms WHERE class = $1 AND at_ms <= $2 \
                 AND (at_ms, id) > ($4, $5) ORDER BY at_ms, id LIMIT $3"
            ),
            alarm_classes: format!("SELECT class FROM {s}.alarms GROUP BY class"),
            objects: format!(
                "SELECT id, name FROM {s}.objects WHERE class = $1 AND id > $2 ORDER BY id LIMIT $3"
            ),
            objects_by_name: format!(
                "SELECT id, name FROM {s}.objects WHERE class = $1 AND name >= $2 \
                 AND ($3::bytea IS NULL OR name < $3) AND ($4::bytea IS NULL OR name > $4) \
                 ORDER BY name LIMIT $5"
            ),
            object_name: format!("SELECT name FROM {s}.objects WHERE class = $1 AND id = $2"),
            lock_space: lock_space(schema),
            lease_hold: "SELECT pg_advisory_xact_lock_shared($2::int, p) \
                 FROM (SELECT p FROM unnest($1::int[]) AS p ORDER BY p) AS sorted"
                .to_owned(),
            lease_fence: "SELECT pg_advisory_xact_lock($2::int, p) \
                 FROM (SELECT p FROM unnest($1::int[]) AS p ORDER BY p) AS sorted"
                .to_owned(),
            // The leases a group's commit writes under, read once its locks are held (a
            // statement of its own: it sees every takeover that committed before).
            lease_check: format!(
                "SELECT partition_id, epoch FROM {s}.lease WHERE partition_id = ANY($2) \
                 AND holder = $1 AND expires_at > clock_timestamp()"
            ),
            due_alarms_in: format!(
                "SELECT at_ms, id FROM {s}.alarms WHERE class = $1 AND at_ms <= $2 \
                 AND partition_id = ANY($4) ORDER BY at_ms, id LIMIT $3"
            ),
            due_alarms_after_in: format!(
                "SELECT at_ms, id FROM {s}.alarms WHERE class = $1 AND at_ms <= $2 \
                 AND (at_ms, id) > ($4, $5) AND partition_id = ANY($6) ORDER BY at_ms, id LIMIT $3"
            ),
            deployment_create: format!(
                "INSERT INTO {s}.deployment (mode, partitions) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ),
            deployment_read: format!("SELECT mode, partitions FROM {s}.deployment"),
            member_heartbeat: format!(
                "INSERT INTO {s}.members (holder, node, address, heartbeat_at, joined_at)
                 VALUES ($1, $2, $3, clock_timestamp(), clock_timestamp())
                 ON CONFLICT (holder) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                     address = excluded.address"
            ),
            member_leave: format!("DELETE FROM {s}.members WHERE holder = $1"),
            // Live members, with the milliseconds their heartbeat has left; members silent
            // for ten leases are forgotten on the way.
            members_live: format!(
                "WITH gone AS (DELETE FROM {s}.members
                     WHERE heartbeat_at < clock_timestamp() - 10 * $1::bigint * interval '1 millisecond')
                 SELECT holder, node, address,
                     (extract(epoch FROM heartbeat_at + $1::bigint * interval '1 millisecond'
                         - clock_timestamp()) * 1000)::bigint
                 FROM {s}.members
                 WHERE heartbeat_at > clock_timestamp() - $1::bigint * interval '1 millisecond'
                 ORDER BY holder"
            ),
            partitions_read: format!(
                "SELECT partition_id, holder,
                     (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint
                 FROM {s}.lease WHERE partition_id < $1"
            ),
            partitions_renew: format!(
                "UPDATE {s}.lease AS l
                 SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
                 FROM unnest($1::int[], $2::bigint[]) AS h(p, e)
                 WHERE l.partition_id = h.p AND l.epoch = h.e AND l.holder = $4
                     AND l.expires_at > clock_timestamp()
                 RETURNING l.partition_id"
            ),
            partitions_release: format!(
                "UPDATE {s}.lease AS l SET expires_at = clock_timestamp()
                 FROM unnest($1::int[], $2::bigint[]) AS h(p, e)
                 WHERE l.partition_id = h.p AND l.epoch = h.e AND l.holder = $3"
            ),
            partitions_lock: format!(
                "SELECT partition_id FROM {s}.lease WHERE partition_id = ANY($1)
                 ORDER BY partition_id FOR UPDATE"
            ),
            partitions_acquire: format!(
                "INSERT INTO {s}.lease AS l (partition_id, holder, epoch, expires_at, acquired_at)
                 SELECT p, $2, 1, clock_timestamp() + $3::bigint * interval '1 millisecond',
                     clock_timestamp()
                 FROM unnest($1::int[]) AS p ORDER BY p
                 ON CONFLICT (partition_id) DO UPDATE SET holder = excluded.holder,
                     epoch = l.epoch + 1, expires_at = excluded.expires_at,
                     acquired_at = excluded.acquired_at
                 WHERE l.expires_at <= clock_timestamp()
                 RETURNING partition_id, epoch"
            ),
            // Takeovers of the one lease are serialized by its row; commits are fenced by
            // the advisory locks (`lease_fence`).
            lease_lock: format!("SELECT 1 FROM {s}.lease WHERE partition_id = 0 FOR UPDATE"),
            lease_acquire: format!(
                "INSERT INTO {s}.lease AS l (partition_id, holder, epoch, expires_at, acquired_at)
                 VALUES (0, $1, 1, clock_timestamp() + $2::bigint * interval '1 millisecond', clock_timestamp())
                 ON CONFLICT (partition_id) DO UPDATE SET holder = excluded.holder,
                     epoch = l.epoch + 1, expires_at = excluded.expires_at,
                     acquired_at = excluded.acquired_at
                 WHERE l.expires_at <= clock_timestamp()
                 RETURNING epoch"
            ),
            lease_renew: format!(
                "UPDATE {s}.lease SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
                 WHERE partition_id = 0 AND holder = $1 AND epoch = $2
                 AND expires_at > clock_timestamp() RETURNING epoch"
            ),
            lease_release: format!(
                "UPDATE {s}.lease SET expires_at = clock_timestamp()
                 WHERE partition_id = 0 AND holder = $1 AND epoch = $2"
            ),
            clear_kv: format!("DELETE FROM {s}.kv WHERE (class, id) IN ({pairs})"),
            clear_alarms: format!("DELETE FROM {s}.alarms WHERE (class, id) IN ({pairs})"),
            clear_objects: format!("DELETE FROM {s}.objects WHERE (class, id) IN ({pairs})"),
            upsert: format!(
                "INSERT INTO {s}.kv (class, id, key, value)
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bytea[])
                 ON CONFLICT (class, id, key) DO UPDATE SET value = excluded.value"
            ),
            delete: format!(
                "DELETE FROM {s}.kv WHERE (class, id, key) IN
                 (SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]))"
            ),
            set_alarms: format!(
                "INSERT INTO {s}.alarms (class, id, at_ms, partition_id)
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::int[])
                 ON CONFLICT (class, id) DO UPDATE SET at_ms = excluded.at_ms,
                     partition_id = excluded.partition_id"
            ),
            audit,
            register: format!(
                "INSERT INTO {s}.objects AS o (class, id, name)
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])
                 ON CONFLICT (class, id) DO UPDATE SET name = coalesce(o.name, excluded.name)"
            ),
        }
    }
}

/// The first key of a schema's advisory locks: FNV-1a of its name.
fn lock_space(schema: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in schema.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["stead", "_x", "a1_b2"] {
            check_schema_name(ok).unwrap();
        }
        for bad in ["", "1a", "A", "a-b", "a\"b", "pg_x", &"a".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad:?}");
        }
    }
}
