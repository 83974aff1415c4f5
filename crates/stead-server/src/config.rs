//! Configuration: command-line flags, `STEAD_*` environment variables and an optional TOML
//! file, in that order of precedence, over the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Deserialize;
use stead::ratelimit::Policies;

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

/// `stead`: durable objects and coordination patterns over HTTP.
#[derive(Debug, Parser)]
#[command(name = "stead", version, about, long_about = None)]
pub struct Cli {
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
    /// A bearer token that grants access; repeat for several. Required when listening on a
    /// non-loopback address. The environment variable takes a comma-separated list.
    #[arg(
        long = "token",
        env = "STEAD_TOKENS",
        value_delimiter = ',',
        value_name = "TOKEN"
    )]
    pub tokens: Vec<String>,
    /// SQLite shard files (and writer threads); fixed when the data directory is created
    /// [default: the directory's count, or one per two cores for a new directory].
    #[arg(long, env = "STEAD_SHARDS")]
    pub shards: Option<usize>,
    /// The largest request body accepted, in bytes [default: 1048576].
    #[arg(long, env = "STEAD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// The largest stored value, in bytes [default: 131072].
    #[arg(long, env = "STEAD_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Log filter, as for RUST_LOG (which wins when set) [default: info].
    #[arg(long, env = "STEAD_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Durability of rate-limiter state: `memory` forgives the limits in force on a
    /// restart; `process-crash-safe` or `fsync` keep them exact across it [default: memory].
    #[arg(long, env = "STEAD_RATELIMIT_DURABILITY", value_enum)]
    pub ratelimit_durability: Option<DurabilityMode>,
}

/// The settings a TOML file may hold; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    durability: Option<DurabilityMode>,
    tokens: Option<Vec<String>>,
    shards: Option<usize>,
    max_body_bytes: Option<usize>,
    max_value_bytes: Option<usize>,
    log: Option<String>,
    ratelimit: Option<RateLimitFile>,
}

/// The `[ratelimit]` table: named policies, `[ratelimit.policies.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    #[serde(default)]
    policies: Policies,
    durability: Option<DurabilityMode>,
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
    /// Accepted bearer tokens; empty means no authentication.
    pub tokens: Vec<String>,
    /// SQLite shard count (`None`: the directory's, or one per two cores for a new one).
    pub shards: Option<usize>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest stored value.
    pub max_value_bytes: usize,
    /// Log filter.
    pub log: String,
    /// Rate-limit policies callers may name (`[ratelimit.policies.<name>]` in the file).
    pub ratelimit_policies: Policies,
    /// Durability of rate-limiter state (`durability` under `[ratelimit]` in the file).
    pub ratelimit_durability: DurabilityMode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            durability: DurabilityMode::Fsync,
            tokens: Vec::new(),
            shards: None,
            max_body_bytes: 1024 * 1024,
            max_value_bytes: 128 * 1024,
            log: "info".to_owned(),
            ratelimit_policies: Policies::new(),
            ratelimit_durability: DurabilityMode::Memory,
        }
    }
}

impl Config {
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
        let tokens = if cli.tokens.is_empty() {
            file.tokens.unwrap_or_default()
        } else {
            cli.tokens
        };
        let config = Config {
            bind: cli.bind.or(file.bind).unwrap_or(d.bind),
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            durability: cli.durability.or(file.durability).unwrap_or(d.durability),
            tokens: tokens.into_iter().filter(|t| !t.is_empty()).collect(),
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
            ratelimit_durability: cli
                .ratelimit_durability
                .or(file.ratelimit.as_ref().and_then(|r| r.durability))
                .unwrap_or(d.ratelimit_durability),
            ratelimit_policies: file.ratelimit.map(|r| r.policies).unwrap_or_default(),
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
        if let Some(n) = self.shards
            && !(1..=256).contains(&n)
        {
            anyhow::bail!("invalid shards {n}: must be between 1 and 256");
        }
        if self.durability == DurabilityMode::Memory
            && self.ratelimit_durability != DurabilityMode::Memory
        {
            anyhow::bail!(
                "invalid ratelimit durability {:?}: the server keeps nothing on disk (durability memory)",
                self.ratelimit_durability
            );
        }
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
        if let Some(t) = self.tokens.iter().find(|t| t.len() < 16) {
            anyhow::bail!(
                "a bearer token of {} characters is too short to be safe: use at least 16",
                t.len()
            );
        }
        Ok(())
    }
}
