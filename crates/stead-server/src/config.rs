//! Configuration: command-line flags, `STEAD_*` environment variables and an optional TOML
//! file, in that order of precedence, over the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

/// How durable an acknowledged write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityMode {
    /// Every commit is fsynced: acknowledged means on disk (the default).
    Fsync,
    /// Acknowledged writes survive a crash of the process, not of the machine.
    ProcessCrashSafe,
    /// Nothing is written to disk.
    Memory,
}

impl From<DurabilityMode> for stead::Durability {
    fn from(mode: DurabilityMode) -> Self {
        match mode {
            DurabilityMode::Fsync => stead::Durability::Fsync,
            DurabilityMode::ProcessCrashSafe => stead::Durability::ProcessCrashSafe,
            DurabilityMode::Memory => stead::Durability::Memory,
        }
    }
}

/// Where objects are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// The embedded SQLite store in the data directory (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL server (`postgres_url`), one active node per deployment: a second node
    /// is a standby that takes over when the first dies.
    Postgres,
}

/// What `stead` can do besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Copy a SQLite data directory, even while a server serves it: every write acknowledged
    /// before the copy began is in it, and a server starts on the copy as on any data
    /// directory.
    Backup {
        /// Where to put the copy: a directory that does not exist yet, or an empty one.
        #[arg(value_name = "DEST")]
        dest: PathBuf,
    },
}

/// `stead`: durable objects and coordination patterns over HTTP.
#[derive(Debug, Parser)]
#[command(name = "stead", version, about, long_about = None)]
pub struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// A TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "STEAD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "STEAD_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Directory of the embedded SQLite store [default: ./data].
    #[arg(long, env = "STEAD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Durability of acknowledged writes [default: fsync].
    #[arg(long, env = "STEAD_DURABILITY", value_enum)]
    pub durability: Option<DurabilityMode>,
    /// Where objects are stored [default: sqlite].
    #[arg(long, env = "STEAD_BACKEND", value_enum)]
    pub backend: Option<BackendKind>,
    /// The PostgreSQL server of `--backend postgres`, as a URL
    /// (`postgres://user:password@host:5432/database`).
    #[arg(long, env = "STEAD_POSTGRES_URL", value_name = "URL")]
    pub postgres_url: Option<String>,
    /// The PostgreSQL schema that holds the deployment's tables [default: stead].
    #[arg(long, env = "STEAD_POSTGRES_SCHEMA", value_name = "NAME")]
    pub postgres_schema: Option<String>,
    /// The most PostgreSQL connections the node opens [default: 16].
    #[arg(long, env = "STEAD_POSTGRES_POOL_SIZE", value_name = "N")]
    pub postgres_pool_size: Option<usize>,
    /// How long the active node's lease lasts without renewal, in milliseconds: a standby
    /// takes over at most this long after the active node dies [default: 10000].
    #[arg(long, env = "STEAD_LEASE_DURATION_MS", value_name = "MS")]
    pub lease_duration_ms: Option<u64>,
    /// This node's name in the lease [default: the process id]. The lease is held by the
    /// process (its name with a nonce of its own): a node restarted under the same name
    /// takes the lease at once only if its predecessor gave it back on shutdown.
    #[arg(long, env = "STEAD_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// Start as a standby of `--backend postgres`: take no lease during the first lease
    /// duration, so that an active node started beside it wins; afterwards (or when the
    /// lease is held by another) it takes over as any node does once the lease expires.
    #[arg(long, env = "STEAD_STANDBY")]
    pub standby: bool,
    /// Run as one node of a partitioned cluster on `--backend postgres`: every node serves,
    /// each object is owned by one node and calls to it are forwarded there.
    #[arg(long, env = "STEAD_CLUSTER")]
    pub cluster: bool,
    /// The secret every node of the cluster holds, to call each other (at least 16
    /// characters).
    #[arg(long, env = "STEAD_CLUSTER_SECRET", value_name = "SECRET")]
    pub cluster_secret: Option<String>,
    /// The address other nodes reach this one at (`host:port`) [default: the bind address].
    #[arg(long, env = "STEAD_ADVERTISE", value_name = "ADDR")]
    pub advertise: Option<String>,
    /// How many partitions a new cluster deployment has; fixed once created [default: 256].
    #[arg(long, env = "STEAD_CLUSTER_PARTITIONS", value_name = "N")]
    pub cluster_partitions: Option<u32>,
    /// A bearer token that grants access; repeat for several. Required when listening on a
    /// non-loopback address. The environment variable takes a comma-separated list.
    #[arg(
        long = "token",
        env = "STEAD_TOKENS",
        value_delimiter = ',',
        value_name = "TOKEN"
    )]
    pub tokens: Vec<String>,
    /// A host name the server answers to (the Host header, port aside); repeat for several,
    /// `*` for any. The environment variable takes a comma-separated list [default: the
    /// loopback names (localhost, 127.0.0.1, ::1) when bound to loopback, any otherwise].
    /// Others get 421: a web page cannot reach a loopback server through DNS rebinding.
    #[arg(
        long = "allowed-host",
        env = "STEAD_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub allowed_hosts: Vec<String>,
    /// An origin (`https://app.example`) whose web pages may write and open WebSockets;
    /// repeat for several. The environment variable takes a comma-separated list [default:
    /// none: a write or a WebSocket upgrade that carries another site's Origin gets 403].
    #[arg(
        long = "allowed-origin",
        env = "STEAD_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub allowed_origins: Vec<String>,
    /// The most connections open at once; more are answered 503 and closed [default: 512].
    #[arg(long, env = "STEAD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// How long a connection has to send a request's headers, from when it opens or its
    /// last response went out (so it also closes idle connections), in milliseconds
    /// [default: 15000].
    #[arg(long, env = "STEAD_HEADER_READ_TIMEOUT_MS", value_name = "MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// How long a request's body has to arrive whole, from the request's start, in
    /// milliseconds; a body still trickling in then is answered 408 [default: 30000].
    #[arg(long, env = "STEAD_BODY_READ_TIMEOUT_MS", value_name = "MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// How long a shutdown waits for requests in flight before closing their connections,
    /// in milliseconds; a second SIGINT or SIGTERM exits at once [default: 10000].
    #[arg(long, env = "STEAD_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// SQLite shard files (and writer threads); fixed when the data directory is created
    /// [default: the directory's count, or one per two cores for a new directory].
    #[arg(long, env = "STEAD_SHARDS")]
    pub shards: Option<usize>,
    /// Let the inspector's SQL console run statements that write (it runs only statements
    /// that read otherwise). A write from the console goes around the object's own code.
    #[arg(long, env = "STEAD_INSPECTOR_SQL_WRITES")]
    pub inspector_sql_writes: bool,
    /// The largest request body accepted, in bytes [default: 1048576].
    #[arg(long, env = "STEAD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// The largest stored value, in bytes [default: 131072].
    #[arg(long, env = "STEAD_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Log filter, as for RUST_LOG (which wins when set) [default: info].
    #[arg(long, env = "STEAD_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// A pattern setting, as `<table>.<key>=<value>` (for example
    /// `ratelimit.durability=process-crash-safe`); it wins over the file's. The value is
    /// read as TOML, or as a string when it is not TOML. Repeat for several; the
    /// environment variable takes a comma-separated list.
    #[arg(
        long = "set",
        env = "STEAD_SET",
        value_delimiter = ',',
        value_name = "TABLE.KEY=VALUE"
    )]
    pub settings: Vec<String>,
}

/// The settings a TOML file may hold: the server's own keys, and a table per pattern
/// (`[ratelimit]`, `[counters]`, `[locks]`, `[leaders]`), which the pattern crate defines.
/// Anything else is an error.
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    bind: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    durability: Option<DurabilityMode>,
    backend: Option<BackendKind>,
    postgres_url: Option<String>,
    postgres_schema: Option<String>,
    postgres_pool_size: Option<usize>,
    lease_duration_ms: Option<u64>,
    node_id: Option<String>,
    standby: Option<bool>,
    cluster: Option<bool>,
    cluster_secret: Option<String>,
    advertise: Option<String>,
    cluster_partitions: Option<u32>,
    tokens: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    max_connections: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    inspector_sql_writes: Option<bool>,
    shards: Option<usize>,
    max_body_bytes: Option<usize>,
    max_value_bytes: Option<usize>,
    log: Option<String>,
    /// Everything else: the patterns' tables, checked by `stead::check_settings`.
    #[serde(flatten)]
    patterns: serde_json::Map<String, serde_json::Value>,
}

/// A list setting: the flags' (or environment's) when they give one, else the file's.
fn listed(flags: Vec<String>, file: Option<Vec<String>>) -> Vec<String> {
    if flags.is_empty() {
        file.unwrap_or_default()
    } else {
        flags
    }
}

/// The settings in force.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Directory of the SQLite store.
    pub data_dir: PathBuf,
    /// Durability of acknowledged writes.
    pub durability: DurabilityMode,
    /// Where objects are stored.
    pub backend: BackendKind,
    /// The PostgreSQL settings (used with [`BackendKind::Postgres`]).
    pub postgres: PostgresConfig,
    /// Accepted bearer tokens; empty means no authentication.
    pub tokens: Vec<String>,
    /// Host names the server answers to (`*`: any); empty means the loopback names when
    /// bound to loopback, any otherwise.
    pub allowed_hosts: Vec<String>,
    /// Origins whose web pages may write and open WebSockets (besides the server's own).
    pub allowed_origins: Vec<String>,
    /// The most connections open at once (more are answered 503 and closed).
    pub max_connections: usize,
    /// How long a connection has to send a request's headers (also its idle limit).
    pub header_read_timeout_ms: u64,
    /// How long a request's body has to arrive whole.
    pub body_read_timeout_ms: u64,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_grace_ms: u64,
    /// The inspector's SQL console may run statements that write (off by default).
    pub inspector_sql_writes: bool,
    /// SQLite shard count (`None`: the directory's, or one per two cores for a new one).
    pub shards: Option<usize>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest stored value.
    pub max_value_bytes: usize,
    /// Log filter.
    pub log: String,
    /// The patterns' settings, a table per pattern (`[ratelimit]`, `[counters]`, ...), as
    /// each pattern crate defines them; `--set` entries are merged in.
    pub patterns: serde_json::Map<String, serde_json::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            durability: DurabilityMode::Fsync,
            backend: BackendKind::Sqlite,
            postgres: PostgresConfig::default(),
            tokens: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_connections: 512,
            header_read_timeout_ms: 15_000,
            body_read_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            inspector_sql_writes: false,
            shards: None,
            max_body_bytes: 1024 * 1024,
            max_value_bytes: 128 * 1024,
            log: "info".to_owned(),
            patterns: serde_json::Map::new(),
        }
    }
}

impl Config {
    /// How connections are bounded.
    pub(crate) fn serve_limits(&self) -> crate::serve::ServeLimits {
        crate::serve::ServeLimits {
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: std::time::Duration::from_millis(self.body_read_timeout_ms),
            shutdown_grace: std::time::Duration::from_millis(self.shutdown_grace_ms),
        }
    }

    /// Resolves the configuration from parsed flags (and the file they name).
    pub fn from_cli(cli: Cli) -> anyhow::Result<Config> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read config file {}: {e}", path.display())
                })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let tokens = listed(cli.tokens, file.tokens);
        let config = Config {
            bind: cli.bind.or(file.bind).unwrap_or(d.bind),
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            durability: cli.durability.or(file.durability).unwrap_or(d.durability),
            backend: cli.backend.or(file.backend).unwrap_or(d.backend),
            postgres: PostgresConfig {
                url: cli.postgres_url.or(file.postgres_url),
                schema: cli
                    .postgres_schema
                    .or(file.postgres_schema)
                    .unwrap_or(d.postgres.schema),
                pool_size: cli
                    .postgres_pool_size
                    .or(file.postgres_pool_size)
                    .unwrap_or(d.postgres.pool_size),
                lease_duration_ms: cli
                    .lease_duration_ms
                    .or(file.lease_duration_ms)
                    .unwrap_or(d.postgres.lease_duration_ms),
                node_id: cli.node_id.or(file.node_id),
                standby: cli.standby || file.standby.unwrap_or(d.postgres.standby),
                cluster: cli.cluster || file.cluster.unwrap_or(d.postgres.cluster),
                cluster_secret: cli.cluster_secret.or(file.cluster_secret),
                advertise: cli.advertise.or(file.advertise),
                cluster_partitions: cli
                    .cluster_partitions
                    .or(file.cluster_partitions)
                    .unwrap_or(d.postgres.cluster_partitions),
            },
            // Trimmed as presented tokens are; an empty entry (a trailing comma) is no token,
            // one of whitespace alone is refused by `validate`.
            tokens: tokens
                .into_iter()
                .filter(|t| !t.is_empty())
                .map(|t| t.trim().to_owned())
                .collect(),
            allowed_hosts: listed(cli.allowed_hosts, file.allowed_hosts),
            allowed_origins: listed(cli.allowed_origins, file.allowed_origins),
            max_connections: cli
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            header_read_timeout_ms: cli
                .header_read_timeout_ms
                .or(file.header_read_timeout_ms)
                .unwrap_or(d.header_read_timeout_ms),
            body_read_timeout_ms: cli
                .body_read_timeout_ms
                .or(file.body_read_timeout_ms)
                .unwrap_or(d.body_read_timeout_ms),
            shutdown_grace_ms: cli
                .shutdown_grace_ms
                .or(file.shutdown_grace_ms)
                .unwrap_or(d.shutdown_grace_ms),
            inspector_sql_writes: cli.inspector_sql_writes
                || file.inspector_sql_writes.unwrap_or(d.inspector_sql_writes),
            shards: cli.shards.or(file.shards).or(d.shards),
            max_body_bytes: cli
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(d.max_body_bytes),
            max_value_bytes: cli
                .max_value_bytes
                .or(file.max_value_bytes)
                .unwrap_or(d.max_value_bytes),
            log: cli.log.or(file.log).unwrap_or(d.log),
            patterns: merge_settings(file.patterns, &cli.settings)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.bind.ip().is_loopback() && self.tokens.is_empty() {
            anyhow::bail!(
                "refusing to listen on {} without authentication: it is not a loopback address. \
                 Give at least one bearer token (--token or STEAD_TOKENS), or bind to 127.0.0.1",
                self.bind
            );
        }
        if self.postgres.standby && self.backend != BackendKind::Postgres {
            anyhow::bail!(
                "--standby applies to --backend postgres: a SQLite data directory has one process"
            );
        }
        if self.postgres.cluster {
            if self.backend != BackendKind::Postgres {
                anyhow::bail!("--cluster runs on --backend postgres: the nodes share its tables");
            }
            if self.postgres.standby {
                anyhow::bail!(
                    "--cluster and --standby exclude each other: every node of a cluster serves"
                );
            }
            let secret = self.postgres.cluster_secret.as_deref().unwrap_or_default();
            if secret.is_empty() {
                anyhow::bail!(
                    "--cluster needs the secret every node holds: --cluster-secret (STEAD_CLUSTER_SECRET)"
                );
            }
            stead::http::check_token(secret)
                .map_err(|e| anyhow::anyhow!("invalid --cluster-secret: {e}"))?;
            if !(1..=stead::postgres::MAX_PARTITIONS).contains(&self.postgres.cluster_partitions) {
                anyhow::bail!(
                    "invalid cluster_partitions {}: must be between 1 and {}",
                    self.postgres.cluster_partitions,
                    stead::postgres::MAX_PARTITIONS
                );
            }
            if self.bind.ip().is_unspecified() && self.postgres.advertise.is_none() {
                anyhow::bail!(
                    "listening on {} the node cannot tell its peers where it is: give --advertise host:port",
                    self.bind
                );
            }
        }
        if self.backend == BackendKind::Postgres {
            if self.postgres.url.as_deref().is_none_or(str::is_empty) {
                anyhow::bail!(
                    "--backend postgres needs the server's URL: --postgres-url (STEAD_POSTGRES_URL)"
                );
            }
            if self.durability == DurabilityMode::Memory {
                anyhow::bail!(
                    "durability memory keeps nothing in PostgreSQL: choose fsync or process-crash-safe"
                );
            }
            if self.postgres.lease_duration_ms < 500 {
                anyhow::bail!(
                    "invalid lease_duration_ms {}: must be at least 500",
                    self.postgres.lease_duration_ms
                );
            }
        }
        if let Some(n) = self.shards
            && !(1..=256).contains(&n)
        {
            anyhow::bail!("invalid shards {n}: must be between 1 and 256");
        }
        stead::check_settings(&self.patterns).map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.max_body_bytes < 1024 {
            anyhow::bail!(
                "invalid max_body_bytes {}: must be at least 1024",
                self.max_body_bytes
            );
        }
        if self.max_value_bytes < 64 {
            anyhow::bail!(
                "invalid max_value_bytes {}: must be at least 64",
                self.max_value_bytes
            );
        }
        if self.max_connections == 0 {
            anyhow::bail!("invalid max_connections 0: at least one connection");
        }
        if self.header_read_timeout_ms == 0 {
            anyhow::bail!("invalid header_read_timeout_ms 0: at least 1");
        }
        if self.body_read_timeout_ms == 0 {
            anyhow::bail!("invalid body_read_timeout_ms 0: at least 1");
        }
        for t in &self.tokens {
            stead::http::check_token(t)?;
        }
        Ok(())
    }
}

/// The PostgreSQL backend's settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The server's URL.
    pub url: Option<String>,
    /// The schema of the deployment's tables.
    pub schema: String,
    /// The most connections.
    pub pool_size: usize,
    /// The lease's duration, in milliseconds.
    pub lease_duration_ms: u64,
    /// The node's name in the lease.
    pub node_id: Option<String>,
    /// Whether the node starts as a standby.
    pub standby: bool,
    /// Whether the node is one of a partitioned cluster.
    pub cluster: bool,
    /// The secret the nodes of a cluster call each other with.
    pub cluster_secret: Option<String>,
    /// The address peers reach the node at (default: the bind address).
    pub advertise: Option<String>,
    /// The partitions of a new cluster deployment.
    pub cluster_partitions: u32,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("lease_duration_ms", &self.lease_duration_ms)
            .field("node_id", &self.node_id)
            .field("standby", &self.standby)
            .field("cluster", &self.cluster)
            .field(
                "cluster_secret",
                &self.cluster_secret.as_ref().map(|_| "<set>"),
            )
            .field("advertise", &self.advertise)
            .field("cluster_partitions", &self.cluster_partitions)
            .finish()
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            schema: "stead".to_owned(),
            pool_size: 16,
            lease_duration_ms: 10_000,
            node_id: None,
            standby: false,
            cluster: false,
            cluster_secret: None,
            advertise: None,
            cluster_partitions: 256,
        }
    }
}

/// Merges `--set <table>.<key>=<value>` entries into the patterns' tables.
fn merge_settings(
    mut tables: serde_json::Map<String, serde_json::Value>,
    settings: &[String],
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    for setting in settings.iter().filter(|s| !s.is_empty()) {
        let Some((path, raw)) = setting.split_once('=') else {
            anyhow::bail!("invalid --set {setting:?}: expected <table>.<key>=<value>");
        };
        let keys: Vec<&str> = path.trim().split('.').collect();
        if keys.len() < 2 || keys.iter().any(|k| k.is_empty()) {
            anyhow::bail!("invalid --set {setting:?}: expected <table>.<key>=<value>");
        }
        // A TOML value (`5`, `true`, `"text"`), or else the text itself.
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .map(serde_json::to_value)
            .transpose()?
            .unwrap_or_else(|| serde_json::Value::String(raw.to_owned()));
        let (last, parents) = keys.split_last().unwrap_or((&"", &[]));
        let mut table = &mut tables;
        for key in parents {
            let entry = table
                .entry((*key).to_owned())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            table = match entry {
                serde_json::Value::Object(map) => map,
                _ => anyhow::bail!("invalid --set {setting:?}: {key} is not a table"),
            };
        }
        table.insert((*last).to_owned(), value);
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_merges_values_into_the_pattern_tables() {
        let file: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"ratelimit": {"durability": "memory", "policies": {"api": {"limit": 5, "period_ms": 1000}}}}"#,
        )
        .unwrap();
        let merged = merge_settings(
            file,
            &[
                "ratelimit.durability=process-crash-safe".into(),
                "ratelimit.policies.api.limit=7".into(),
                "counters.default_shards=4".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            serde_json::Value::Object(merged),
            serde_json::json!({
                "ratelimit": {"durability": "process-crash-safe", "policies": {"api": {"limit": 7, "period_ms": 1000}}},
                "counters": {"default_shards": 4},
            })
        );
        for bad in ["ratelimit", "=1", "ratelimit.=1", ".x=1"] {
            assert!(
                merge_settings(Default::default(), &[bad.into()]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn configured_tokens_are_trimmed_as_presented_ones_are() {
        let parse = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("stead").chain(args.iter().copied())).unwrap();
            Config::from_cli(cli).and_then(|c| c.validate().map(|()| c))
        };
        // "tokA, tokB" keeps both tokens (the second without its space).
        let c = parse(&["--token", "token-a-0123456789, token-b-0123456789,"]).unwrap();
        assert_eq!(c.tokens, ["token-a-0123456789", "token-b-0123456789"]);
        let e = parse(&["--token", "   "]).unwrap_err().to_string();
        assert!(e.contains("whitespace"), "{e}");
    }

    #[test]
    fn standby_is_refused_without_the_postgres_backend() {
        let parse = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("stead").chain(args.iter().copied())).unwrap();
            Config::from_cli(cli).and_then(|c| c.validate().map(|()| c))
        };
        let e = parse(&["--standby"]).unwrap_err().to_string();
        assert!(e.contains("--standby applies to --backend postgres"), "{e}");
        let c = parse(&[
            "--standby",
            "--backend",
            "postgres",
            "--postgres-url",
            "postgres://postgres@127.0.0.1/test",
        ])
        .unwrap();
        assert!(c.postgres.standby);
    }
}
