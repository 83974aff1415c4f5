//! The typed client: named policies, and checks, peeks and resets of (policy, key) limiters.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use stead_core::{
    Durability, Error, InvalidInput, Namespace, NamespaceOptions, Result, Runtime, Stub,
};

use crate::error::RateLimitError;
use crate::object::{Check, Peek, RateLimiter, Reset};
use crate::policy::{Decision, MAX_POLICY_NAME_BYTES, Policy};

/// Separates the key from the policy name in a limiter's object name. Keys may not hold
/// control characters, so a key's limiters are exactly the names starting `key` + this.
const SEP: char = '\u{1f}';

/// Policies known by name (the environment of the rate-limiter namespace).
///
/// ```
/// use stead_ratelimit::{Policies, Policy};
/// let mut p = Policies::new();
/// p.insert("api", Policy::per_minute(600))?;
/// assert!(p.insert("bad name!", Policy::per_second(1)).is_err());
/// assert!(p.insert("zero", Policy::per_second(0)).is_err());
/// # Ok::<(), stead_core::InvalidInput>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<String, Policy>")]
pub struct Policies {
    map: BTreeMap<String, Policy>,
}

impl TryFrom<BTreeMap<String, Policy>> for Policies {
    type Error = InvalidInput;
    fn try_from(map: BTreeMap<String, Policy>) -> Result<Self, InvalidInput> {
        let mut p = Policies::new();
        for (name, policy) in map {
            p.insert(&name, policy)?;
        }
        Ok(p)
    }
}

impl Policies {
    /// No named policies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the policy called `name` (1 to 64 of `A-Z a-z 0-9 _ - .`).
    pub fn insert(&mut self, name: &str, policy: Policy) -> Result<(), InvalidInput> {
        check_policy_name(name)?;
        policy
            .validate()
            .map_err(|e| InvalidInput::new(format!("policy {name:?}: {e}")))?;
        self.map.insert(name.to_owned(), policy);
        Ok(())
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.map.get(name)
    }

    /// Every named policy, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Policy)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn check_policy_name(name: &str) -> Result<(), InvalidInput> {
    let ok = !name.is_empty()
        && name.len() <= MAX_POLICY_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(format!(
            "policy name {name:?} must be 1 to {MAX_POLICY_NAME_BYTES} characters of A-Z a-z 0-9 _ - ."
        )))
    }
}

/// A policy with the name it is known by: the name of a configured policy, or
/// [`Policy::inline_name`] for one given inline. Limiters are per (name, key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    name: String,
    policy: Policy,
}

impl Limit {
    fn new(name: String, policy: Policy) -> Self {
        Limit { name, policy }
    }

    /// A policy given inline, validated, named by [`Policy::inline_name`].
    pub fn inline(policy: Policy) -> Result<Self, InvalidInput> {
        policy.validate()?;
        Ok(Limit::new(policy.inline_name(), policy))
    }

    /// Gives the limit another name (1 to 64 of `A-Z a-z 0-9 _ - .`), used in the
    /// `RateLimit` headers and to tell limiters apart.
    pub fn named(self, name: &str) -> Result<Self, InvalidInput> {
        check_policy_name(name)?;
        Ok(Limit::new(name.to_owned(), self.policy))
    }

    /// Its `RateLimit-Policy` header field value: `"<name>";q=<limit>;w=<period s>`.
    pub fn policy_field(&self) -> String {
        let window = self.policy.period_ms.div_ceil(1000).max(1);
        format!("\"{}\";q={};w={window}", self.name, self.policy.limit)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// How to set up the rate limiter on a runtime (the `[ratelimit]` table of the server's
/// configuration: `durability`, and `[ratelimit.policies.<name>]` tables).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Policies callers may name.
    pub policies: Policies,
    /// The durability of limiter state. Default: `Memory`, as in-process limiters keep it
    /// (a restart forgives the limits in force). `ProcessCrashSafe` keeps every limit exact
    /// across a restart or a crash of the process, at the price of a write per admitted
    /// request; `Fsync` across power loss too.
    pub durability: Option<Durability>,
}

impl RateLimitConfig {
    /// A configuration with these named policies.
    pub fn with_policies(policies: Policies) -> Self {
        RateLimitConfig {
            policies,
            durability: None,
        }
    }

    /// Overrides the durability of limiter state (`ProcessCrashSafe` to be exact across
    /// restarts, `Fsync` across power loss).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }
}

/// Rate limiters: one durable object per (policy, key), exact under any concurrency.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_ratelimit::{Limit, Policy, RateLimitClient};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let limits = RateLimitClient::new(&rt)?;
/// let per_min = Limit::inline(Policy::per_minute(2))?;
/// assert!(limits.check("alice", &per_min, 1).await?.allowed);
/// assert!(limits.check("alice", &per_min, 1).await?.allowed);
/// let third = limits.check("alice", &per_min, 1).await?;
/// assert!(!third.allowed);
/// assert!(third.retry_after_ms.unwrap() > 29_000); // one comes back every 30 s
/// assert!(limits.check("bob", &per_min, 1).await?.allowed); // keys are independent
/// # rt.shutdown().await?;
/// # Ok::<(), stead_ratelimit::RateLimitError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct RateLimitClient {
    /// One reference count to bump per clone: the routes and the layer clone a client per
    /// request.
    inner: Arc<Inner>,
}

struct Inner {
    ns: Namespace<RateLimiter>,
    /// Decision counters, registered once rather than looked up on every check.
    allowed: metrics::Counter,
    denied: metrics::Counter,
}

impl std::fmt::Debug for RateLimitClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitClient")
            .field("policies", self.policies())
            .finish()
    }
}

impl RateLimitClient {
    /// The rate limiter of `rt`: the one already set up, or a new one with no named policies
    /// and the default durability.
    pub fn new(rt: &Runtime) -> Result<Self> {
        let (ns, _) = rt.get_or_register::<RateLimiter>(default_options(None), Policies::new)?;
        Ok(Self::from_namespace(ns))
    }

    fn from_namespace(ns: Namespace<RateLimiter>) -> Self {
        let counter = |decision: &'static str| metrics::counter!("stead_ratelimit_decisions_total", "decision" => decision);
        RateLimitClient {
            inner: Arc::new(Inner {
                ns,
                allowed: counter("allowed"),
                denied: counter("denied"),
            }),
        }
    }

    /// Sets up the rate limiter of `rt` with a configuration. Do this before anything else
    /// uses the rate limiter on that runtime: a runtime has one, and a second configuration
    /// with other policies is refused.
    pub fn with_config(rt: &Runtime, config: RateLimitConfig) -> Result<Self> {
        if rt.config().durability == Durability::Memory
            && config.durability.is_some_and(|d| d != Durability::Memory)
        {
            return Err(Error::invalid_config(format!(
                "rate-limit durability {:?} cannot hold on a runtime that keeps nothing on disk",
                config.durability
            )));
        }
        let opts = default_options(config.durability);
        let ns = rt.configured_namespace::<RateLimiter>(config.policies, opts)?;
        Ok(Self::from_namespace(ns))
    }

    /// The named policies.
    pub fn policies(&self) -> &Policies {
        self.inner.ns.env()
    }

    /// The configured policy called `name`.
    pub fn named(&self, name: &str) -> Result<Limit, RateLimitError> {
        match self.policies().get(name) {
            Some(p) => Ok(Limit::new(name.to_owned(), p.clone())),
            None => Err(RateLimitError::UnknownPolicy {
                name: name.to_owned(),
                known: self.policies().iter().map(|(n, _)| n.to_owned()).collect(),
            }),
        }
    }

    fn stub(&self, key: &str, limit: &Limit) -> Result<Stub<RateLimiter>, RateLimitError> {
        check_key(key)?;
        let mut name = String::with_capacity(key.len() + 1 + limit.name.len());
        name.push_str(key);
        name.push(SEP);
        name.push_str(&limit.name);
        Ok(self.inner.ns.get_by_name(&name))
    }

    /// Checks a request of `cost` units from `key`, consuming them when it is admitted.
    pub async fn check(
        &self,
        key: &str,
        limit: &Limit,
        cost: u64,
    ) -> Result<Decision, RateLimitError> {
        let decision = self
            .stub(key, limit)?
            .call(Check {
                policy: limit.policy.clone(),
                cost,
            })
            .await?;
        if decision.allowed {
            self.inner.allowed.increment(1);
        } else {
            self.inner.denied.increment(1);
        }
        Ok(decision)
    }

    /// What a unit-cost request from `key` would get now, without consuming anything.
    pub async fn peek(&self, key: &str, limit: &Limit) -> Result<Decision, RateLimitError> {
        self.stub(key, limit)?
            .call(Peek {
                policy: limit.policy.clone(),
            })
            .await
    }

    /// Forgets `key`'s state under `limit`; answers whether there was any.
    pub async fn reset(&self, key: &str, limit: &Limit) -> Result<bool, RateLimitError> {
        Ok(self.stub(key, limit)?.call(Reset).await?)
    }

    /// Forgets `key`'s state under every policy it has state under; answers how many.
    pub async fn reset_all(&self, key: &str) -> Result<u64, RateLimitError> {
        check_key(key)?;
        let prefix = format!("{key}{SEP}");
        let mut cursor: Option<String> = None;
        let mut names = Vec::new();
        loop {
            let page = self
                .inner
                .ns
                .list_by_name(&prefix, cursor.as_deref(), 1000)
                .await?;
            names.extend(page.objects.into_iter().map(|o| o.name));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut n = 0;
        for name in names {
            if self.inner.ns.get_by_name(&name).call(Reset).await? {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn default_options(durability: Option<Durability>) -> NamespaceOptions {
    NamespaceOptions::durability(durability.unwrap_or(Durability::Memory))
}

/// Checks a rate-limit key: 1 to 256 characters, no control characters.
pub(crate) fn check_key(key: &str) -> Result<(), InvalidInput> {
    stead_core::validate_name("rate-limit key", key)
}
