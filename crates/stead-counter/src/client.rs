//! The typed client: increments, exact reads, resets and listing over a runtime.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stead_core::{Error, InvalidInput, Namespace, NamespaceOptions, Result, Runtime, Stub};

use crate::error::CounterError;

use crate::object::{
    Applied, Apply, Clear, CounterConfig, CounterMeta, CounterShard, Inspect, Open, RememberedKeys,
    ShardEnv, Shards,
};

/// The longest idempotency key, in characters.
pub const MAX_KEY_CHARS: usize = stead_core::MAX_NAME_CHARS;

pub use stead_core::MAX_PAGE;

/// A counter's exact value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct CounterValue {
    /// The sum of every shard.
    pub value: i64,
    /// How many shards the counter has.
    pub shards: u32,
}

/// One page of counter names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct CounterPage {
    /// Counter names, in byte order.
    pub counters: Vec<String>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Exact, durable, idempotent counters spread over shard objects.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_counter::CounterClient;
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let counters = CounterClient::new(&rt)?;
/// counters.increment("page-views", 3, None).await?;
/// // A retried request with the same key counts once.
/// assert!(counters.increment("page-views", 1, Some("req-42")).await?.applied);
/// assert!(!counters.increment("page-views", 1, Some("req-42")).await?.applied);
/// assert_eq!(counters.get("page-views").await?.value, 4);
/// # rt.shutdown().await?;
/// # Ok::<(), stead_counter::CounterError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct CounterClient {
    /// One reference count to bump per clone: the HTTP routes clone a client per request.
    inner: Arc<Inner>,
}

struct Inner {
    meta: Namespace<CounterMeta>,
    shards: Namespace<CounterShard>,
    config: CounterConfig,
    /// The shards of counters seen lately, as ready stubs (shard counts never change once
    /// set, so they can be cached).
    known: RwLock<HashMap<String, ShardStubs>>,
}

impl std::fmt::Debug for CounterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterClient")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl CounterClient {
    /// The counters of `rt`, as they were configured ([`with_config`](Self::with_config)),
    /// or with the defaults if they were not.
    pub fn new(rt: &Runtime) -> Result<Self> {
        let (meta, _) =
            rt.get_or_register::<CounterMeta>(Default::default(), CounterConfig::default)?;
        let config = (**meta.env()).clone();
        let (shards, _) = rt.get_or_register::<CounterShard>(Default::default(), || {
            ShardEnv::new(config.clone())
        })?;
        Ok(Self::from_namespaces(meta, shards))
    }

    /// The counters of `rt`, set up with `config`: an [`Error::InvalidConfig`] if the
    /// settings are out of range, or if the counters were set up otherwise already.
    pub fn with_config(rt: &Runtime, config: CounterConfig) -> Result<Self> {
        config
            .validate()
            .map_err(|e| Error::invalid_config(format!("counters: {e}")))?;
        let opts = config
            .durability
            .map(NamespaceOptions::durability)
            .unwrap_or_default();
        // One counter setup per runtime: clients share it, and another configuration is
        // refused rather than silently ignored.
        let meta = rt.configured_namespace::<CounterMeta>(config.clone(), opts.clone())?;
        let (shards, _) =
            rt.get_or_register::<CounterShard>(opts, || ShardEnv::new(config.clone()))?;
        if shards.env().config != config {
            return Err(Error::invalid_config(
                "the counters of this runtime are already set up with another configuration; configure them before their first use",
            ));
        }
        Ok(Self::from_namespaces(meta, shards))
    }

    fn from_namespaces(meta: Namespace<CounterMeta>, shards: Namespace<CounterShard>) -> Self {
        CounterClient {
            inner: Arc::new(Inner {
                config: (**meta.env()).clone(),
                meta,
                shards,
                known: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Adds `by` (negative to subtract) to counter `name`. With an idempotency key, a
    /// repeat within the dedup window is not applied again and answers `applied: false`.
    pub async fn increment(
        &self,
        name: &str,
        by: i64,
        idempotency_key: Option<&str>,
    ) -> Result<Applied, CounterError> {
        check_name(name)?;
        if let Some(k) = idempotency_key {
            check_key(k)?;
        }
        let stubs = self.open(name, None).await?;
        let shards = stubs.len() as u32;
        let shard = match idempotency_key {
            Some(k) => shard_of_key(k, shards),
            None => rand::random_range(0..shards),
        };
        stubs[shard as usize]
            .call(Apply {
                by,
                shards,
                idempotency_key: idempotency_key.map(str::to_owned),
            })
            .await
    }

    /// The exact value: the sum of every shard. A counter never used reads as zero.
    pub async fn get(&self, name: &str) -> Result<CounterValue, CounterError> {
        check_name(name)?;
        let Some(stubs) = self.existing(name).await? else {
            return Ok(CounterValue {
                value: 0,
                shards: self.inner.config.default_shards,
            });
        };
        let shards = stubs.len() as u32;
        // Shards publish their committed values to the view; only those it does not know
        // yet (all of them, on a counter's first read) are asked.
        let views = &self.inner.shards.env().views;
        let (mut sum, missing) = views.read(name, stubs.len());
        if !missing.is_empty() {
            let asked = self
                .inner
                .shards
                .ask_all(missing.iter().map(|&i| &stubs[i]), || Inspect)
                .await?;
            let filled: Vec<(usize, i64)> = missing.into_iter().zip(asked).collect();
            views.fill(name, &filled);
            sum += filled.iter().map(|(_, v)| i128::from(*v)).sum::<i128>();
        }
        // Each shard holds at most a `shards`-th of the range, so the sum always fits.
        let value = i64::try_from(sum).unwrap_or(if sum < 0 { i64::MIN } else { i64::MAX });
        Ok(CounterValue { value, shards })
    }

    /// Sets the counter to zero and forgets its idempotency keys; its shard count stays.
    pub async fn reset(&self, name: &str) -> Result<CounterValue, CounterError> {
        check_name(name)?;
        let Some(stubs) = self.existing(name).await? else {
            return Ok(CounterValue {
                value: 0,
                shards: self.inner.config.default_shards,
            });
        };
        self.inner.shards.ask_all(stubs.iter(), || Clear).await?;
        Ok(CounterValue {
            value: 0,
            shards: stubs.len() as u32,
        })
    }

    /// Counter names starting with `prefix`, in byte order, `limit` (1 to
    /// [`MAX_PAGE`]) per page.
    pub async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<CounterPage, CounterError> {
        stead_core::validate_page_limit(limit as u64)?;
        let page = self.inner.meta.list_by_name(prefix, cursor, limit).await?;
        Ok(CounterPage {
            counters: page.objects.into_iter().map(|o| o.name).collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// Fixes the shard count of a new counter (an error if it exists with another count).
    pub async fn create(&self, name: &str, shards: u32) -> Result<u32, CounterError> {
        check_name(name)?;
        Ok(self.open(name, Some(shards)).await?.len() as u32)
    }

    /// How many idempotency keys the counter remembers right now.
    pub async fn remembered_keys(&self, name: &str) -> Result<usize, CounterError> {
        let Some(stubs) = self.existing(name).await? else {
            return Ok(0);
        };
        let counts = self
            .inner
            .shards
            .ask_all(stubs.iter(), || RememberedKeys)
            .await?;
        Ok(counts.into_iter().sum::<Result<usize>>()?)
    }

    /// The stub of shard `i` of counter `name`.
    fn shard(&self, name: &str, i: u32) -> stead_core::Stub<CounterShard> {
        self.inner.shards.get_by_name(&format!("{name}#{i}"))
    }

    async fn open(&self, name: &str, want: Option<u32>) -> Result<ShardStubs, CounterError> {
        if want.is_none()
            && let Some(stubs) = self.cached(name)
        {
            return Ok(stubs);
        }
        let n = self
            .inner
            .meta
            .get_by_name(name)
            .call(Open {
                shards: want,
                default_shards: self.inner.config.default_shards,
            })
            .await?;
        Ok(self.remember(name, n))
    }

    async fn existing(&self, name: &str) -> Result<Option<ShardStubs>> {
        if let Some(stubs) = self.cached(name) {
            return Ok(Some(stubs));
        }
        let n = self.inner.meta.get_by_name(name).ask(Shards).await?;
        Ok(n.map(|n| self.remember(name, n)))
    }

    fn cached(&self, name: &str) -> Option<ShardStubs> {
        self.inner
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn remember(&self, name: &str, n: u32) -> ShardStubs {
        let stubs: ShardStubs = (0..n).map(|i| self.shard(name, i)).collect();
        let mut known = self.inner.known.write().unwrap_or_else(|e| e.into_inner());
        if known.len() > 100_000 {
            known.clear();
        }
        known.insert(name.to_owned(), stubs.clone());
        stubs
    }
}

/// The stubs of a counter's shards, in shard order.
type ShardStubs = Arc<[Stub<CounterShard>]>;

/// The shard an idempotency key belongs to: retries of one increment always meet there.
fn shard_of_key(key: &str, shards: u32) -> u32 {
    let h = Sha256::digest(key.as_bytes());
    let n = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    (n % u64::from(shards)) as u32
}

fn check_name(name: &str) -> Result<(), InvalidInput> {
    stead_core::validate_name("counter name", name)
}

fn check_key(key: &str) -> Result<(), InvalidInput> {
    stead_core::validate_name("idempotency_key", key)
}
