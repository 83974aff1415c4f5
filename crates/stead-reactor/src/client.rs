//! The typed client, the configuration of a runtime's reactors, and what their objects
//! share: the reactor types (written in Rust and registered, or declarative and loaded from
//! their definitions), the HTTP client webhooks are sent with.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use stead_core::{
    Clock, Durability, InvalidInput, LogPage, LogQuery, Namespace, NamespaceOptions, Runtime, Stub,
};

use crate::definition::{Declarative, Delivery};
use crate::delivery;
use crate::error::ReactorError;
use crate::object::{
    Ack, CommandPage, Configure, DeadLetter, DeadLetterAction, DeadLetters, Decision, Decisions,
    Delivered, EntityView, Ingest, Ingested, Inspect, Poll, ReactorEntity, ReactorType,
    ResolveDeadLetters, Target, entity_name,
};
use crate::reactor::{Event, Reactor, SharedBehaviour, Typed};

/// How the reactors of a runtime are kept (the `[reactors]` table of the server's
/// configuration). Every bound is per entity.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use stead_reactor::{ReactorClient, ReactorConfig};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let mut config = ReactorConfig::default();
/// config.max_outbox = 1000;
/// let reactors = ReactorClient::with_config(&rt, config)?;
/// # let _ = reactors;
/// # Ok::<(), stead_reactor::ReactorError>(()) }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ReactorConfig {
    /// How durable reactor state is; `None` takes the runtime's default.
    pub durability: Option<Durability>,
    /// How many decisions each entity's log keeps (the oldest go first).
    pub decisions: u32,
    /// The most commands an outbox holds before the entity refuses events (503).
    pub max_outbox: u32,
    /// The most bytes (of command payloads) an outbox holds before the entity refuses
    /// events (503).
    pub max_outbox_bytes: u64,
    /// The most bytes of commands one event (or one cycle) may emit; more is refused (400).
    pub max_event_output_bytes: u64,
    /// How long an event id is remembered, so that the same event again changes nothing,
    /// in ms.
    pub event_retention_ms: u64,
    /// The most event ids an entity remembers. None is forgotten before `event_retention_ms`:
    /// at the bound, a new event is refused (503 `remembering`, with when to retry) rather
    /// than a young id forgotten (default 1,000,000: about 11 events a second, every second
    /// of a day, per entity).
    pub max_event_ids: u32,
    /// How many dead letters an entity keeps (the oldest go first).
    pub dead_letters: u32,
    /// The largest state, as JSON, in bytes.
    pub max_state_bytes: u32,
    /// Deliveries of one command to one endpoint before it becomes a dead letter.
    pub max_attempts: u32,
    /// The wait before the first retry, in ms; it doubles per failure.
    pub retry_base_ms: u64,
    /// The longest wait between retries, in ms.
    pub retry_max_ms: u64,
    /// How long a webhook endpoint has to answer, in ms.
    pub delivery_timeout_ms: u64,
    /// Where webhooks may deliver: host names (`hooks.internal`), addresses (`10.0.0.7`) or
    /// networks (`10.0.0.0/8`, `fd00::/8`). Empty (the default) allows every destination
    /// but link-local addresses and cloud metadata endpoints, which only an entry here
    /// allows. Checked when a definition is stored.
    pub webhook_hosts: Vec<String>,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            durability: None,
            decisions: 100,
            max_outbox: 10_000,
            max_outbox_bytes: 64 << 20,
            max_event_output_bytes: 4 << 20,
            event_retention_ms: 86_400_000,
            max_event_ids: 1_000_000,
            dead_letters: 1000,
            max_state_bytes: 65_536,
            max_attempts: 8,
            retry_base_ms: 1000,
            retry_max_ms: 3_600_000,
            delivery_timeout_ms: 10_000,
            webhook_hosts: Vec::new(),
        }
    }
}

impl ReactorConfig {
    fn check(&self) -> Result<(), InvalidInput> {
        let positive = [
            ("decisions", u64::from(self.decisions)),
            ("max_outbox", u64::from(self.max_outbox)),
            ("max_outbox_bytes", self.max_outbox_bytes),
            ("max_event_output_bytes", self.max_event_output_bytes),
            ("event_retention_ms", self.event_retention_ms),
            ("max_event_ids", u64::from(self.max_event_ids)),
            ("dead_letters", u64::from(self.dead_letters)),
            ("max_state_bytes", u64::from(self.max_state_bytes)),
            ("max_attempts", u64::from(self.max_attempts)),
            ("retry_base_ms", self.retry_base_ms),
            ("retry_max_ms", self.retry_max_ms),
            ("delivery_timeout_ms", self.delivery_timeout_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(InvalidInput::new(format!(
                "reactors: {name} must be above 0"
            )));
        }
        if self.retry_max_ms < self.retry_base_ms {
            return Err(InvalidInput::new(
                "reactors: retry_max_ms may not be below retry_base_ms",
            ));
        }
        for entry in &self.webhook_hosts {
            crate::destination::check_entry(entry).map_err(|m| {
                InvalidInput::new(format!("reactors: webhook_hosts entry {entry:?}: {m}"))
            })?;
        }
        Ok(())
    }
}

/// A reactor type, ready to run.
pub(crate) struct TypeEntry {
    pub(crate) behaviour: SharedBehaviour,
    pub(crate) delivery: Delivery,
    /// Registered in code (not replaceable by a definition).
    code: bool,
    /// The definition, for a declarative type.
    pub(crate) definition: Option<Value>,
}

impl TypeEntry {
    fn declarative(compiled: Arc<Declarative>, def: Value) -> Arc<TypeEntry> {
        Arc::new(TypeEntry {
            delivery: compiled.delivery().clone(),
            behaviour: compiled,
            code: false,
            definition: Some(def),
        })
    }
}

/// The reactor types of a runtime: a cache of the declarative ones (their definitions are
/// stored by [`ReactorType`]s) and the ones registered in code.
#[derive(Default)]
pub struct Types {
    map: RwLock<HashMap<String, Arc<TypeEntry>>>,
    registry: OnceLock<Namespace<ReactorType>>,
}

impl Types {
    fn get(&self, kind: &str) -> Option<Arc<TypeEntry>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
            .cloned()
    }

    pub(crate) fn is_code(&self, kind: &str) -> bool {
        self.get(kind).is_some_and(|t| t.code)
    }

    pub(crate) fn put_declarative(&self, kind: &str, compiled: Arc<Declarative>, def: Value) {
        let entry = TypeEntry::declarative(compiled, def);
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind.to_owned(), entry);
    }
}

impl std::fmt::Debug for Types {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Types")
            .field("types", &map.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The environment of [`ReactorType`]s.
#[derive(Debug)]
pub struct TypesEnv(pub(crate) Arc<Types>);

/// The environment of [`ReactorEntity`] objects.
pub struct ReactorEnv {
    pub(crate) config: ReactorConfig,
    pub(crate) types: Arc<Types>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    entities: OnceLock<Namespace<ReactorEntity>>,
}

impl std::fmt::Debug for ReactorEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorEnv")
            .field("config", &self.config)
            .field("types", &self.types)
            .finish()
    }
}

impl PartialEq for ReactorEnv {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl ReactorEnv {
    fn new(config: ReactorConfig, clock: Arc<dyn Clock>) -> Self {
        // Every host name is resolved through the destination rules at each delivery.
        let http = reqwest::Client::builder()
            .dns_resolver(crate::destination::CheckedResolver::new(
                &config.webhook_hosts,
            ))
            .build()
            .expect("the webhook HTTP client builds");
        ReactorEnv {
            config,
            types: Arc::default(),
            http,
            clock,
            entities: OnceLock::new(),
        }
    }

    /// The type `kind`: registered in code, cached, or loaded from its definition.
    pub(crate) async fn entry(&self, kind: &str) -> Result<Arc<TypeEntry>, ReactorError> {
        if let Some(t) = self.types.get(kind) {
            return Ok(t);
        }
        let registry = self
            .types
            .registry
            .get()
            .ok_or_else(|| ReactorError::UnknownType(kind.to_owned()))?;
        let def = registry
            .get_by_name(kind)
            .ask(Inspect)
            .await?
            .ok_or_else(|| ReactorError::UnknownType(kind.to_owned()))?;
        let entry = TypeEntry::declarative(Arc::new(Declarative::compile(&def)?), def);
        // A definition stored meanwhile is newer than this one: it stays.
        let mut map = self.types.map.write().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry(kind.to_owned()).or_insert(entry).clone())
    }

    /// Sends one delivery and tells the entity how it went.
    pub(crate) async fn deliver(
        &self,
        name: String,
        endpoint: String,
        key: Vec<u8>,
        target: Target,
        command: crate::object::Command,
    ) {
        let body = serde_json::to_vec(&command).unwrap_or_default();
        let timestamp = self.clock.now().timestamp();
        let timeout = Duration::from_millis(self.config.delivery_timeout_ms);
        let outcome = delivery::send(
            &self.http,
            &endpoint,
            &key,
            &command.id,
            timestamp,
            body,
            timeout,
        )
        .await;
        if let Some(entities) = self.entities.get() {
            let _ = entities.get_by_name(&name).tell(Delivered {
                endpoint,
                target,
                outcome,
            });
        }
    }
}

/// Reactors: register or define types, send events, read state and decisions, pull and
/// acknowledge commands, handle dead letters.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use serde_json::json;
/// use stead_reactor::{Event, ReactorClient};
/// let rt = stead_core::Runtime::builder().memory().build().await?;
/// let reactors = ReactorClient::new(&rt)?;
/// reactors.define("orders", json!({
///     "state": {"big": 0},
///     "rules": [{"on": "order.placed", "when": {">": [{"var": "event.payload.amount"}, 100]},
///                "increment": {"big": 1},
///                "emit": [{"type": "review.request", "payload": {"order": {"var": "event.payload.id"}}}],
///                "reason": "large order"}]
/// })).await?;
/// let event = Event::new("e-1", "order.placed", json!({"id": "o-1", "amount": 250}));
/// assert_eq!(reactors.send("orders", "acme", event.clone()).await?.commands, 1);
/// assert!(reactors.send("orders", "acme", event).await?.duplicate);
/// let page = reactors.commands("orders", "acme", 0, 10, std::time::Duration::ZERO).await?;
/// assert_eq!(page.commands[0].payload, json!({"order": "o-1"}));
/// reactors.ack("orders", "acme", page.commands[0].seq).await?;
/// # rt.shutdown().await?;
/// # Ok::<(), stead_reactor::ReactorError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct ReactorClient {
    entities: Namespace<ReactorEntity>,
    registry: Namespace<ReactorType>,
}

impl std::fmt::Debug for ReactorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorClient").finish()
    }
}

fn check_type(kind: &str) -> Result<(), InvalidInput> {
    stead_core::validate_name("reactor type", kind)?;
    if kind.contains('/') {
        return Err(InvalidInput::new("a reactor type may not contain /"));
    }
    Ok(())
}

impl ReactorClient {
    /// The reactors of `rt`, as they were configured ([`with_config`](Self::with_config)),
    /// or with the defaults if they were not.
    pub fn new(rt: &Runtime) -> Result<Self, ReactorError> {
        let clock = rt.clock().clone();
        let (entities, _) = rt
            .get_or_register::<ReactorEntity>(NamespaceOptions::default(), || {
                ReactorEnv::new(ReactorConfig::default(), clock)
            })?;
        Self::finish(rt, entities)
    }

    /// The reactors of `rt`, set up with `config`: an [`stead_core::Error::InvalidConfig`]
    /// if they were set up with another configuration already.
    pub fn with_config(rt: &Runtime, config: ReactorConfig) -> Result<Self, ReactorError> {
        config.check()?;
        let opts = config
            .durability
            .map(NamespaceOptions::durability)
            .unwrap_or_default();
        let entities = rt.configured_namespace::<ReactorEntity>(
            ReactorEnv::new(config, rt.clock().clone()),
            opts,
        )?;
        Self::finish(rt, entities)
    }

    fn finish(rt: &Runtime, entities: Namespace<ReactorEntity>) -> Result<Self, ReactorError> {
        let env = entities.env().clone();
        let opts = env
            .config
            .durability
            .map(NamespaceOptions::durability)
            .unwrap_or_default();
        let types = env.types.clone();
        let (registry, _) = rt.get_or_register::<ReactorType>(opts, || TypesEnv(types))?;
        let _ = env.types.registry.set(registry.clone());
        let _ = env.entities.set(entities.clone());
        Ok(ReactorClient { entities, registry })
    }

    fn entity(&self, kind: &str, entity: &str) -> Result<Stub<ReactorEntity>, ReactorError> {
        check_type(kind)?;
        stead_core::validate_name("entity", entity)?;
        Ok(self.entities.get_by_name(&entity_name(kind, entity)))
    }

    /// Registers a reactor written in Rust as type `kind`, with how its commands are
    /// delivered. Register it at start-up, before events or cycles reach it: an entity
    /// whose type is unknown refuses events.
    pub fn register<R: Reactor>(
        &self,
        kind: &str,
        reactor: R,
        delivery: Delivery,
    ) -> Result<(), ReactorError> {
        check_type(kind)?;
        delivery.check()?;
        for c in reactor.cycles() {
            crate::definition::check_cron(&c.cron)
                .map_err(|m| stead_core::InvalidInput::new(format!("cycle {:?}: {m}", c.name)))?;
        }
        let entry = Arc::new(TypeEntry {
            behaviour: Arc::new(Typed(reactor)),
            delivery,
            code: true,
            definition: None,
        });
        self.entities
            .env()
            .types
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind.to_owned(), entry);
        Ok(())
    }

    /// Sets the definition of declarative type `kind` (see [`crate::Declarative`]);
    /// whether the type is new. Entities use it from their next turn.
    pub async fn define(&self, kind: &str, definition: Value) -> Result<bool, ReactorError> {
        check_type(kind)?;
        let compiled = Declarative::compile(&definition)?;
        crate::destination::check(
            &compiled.delivery().webhooks,
            &self.entities.env().config.webhook_hosts,
        )?;
        self.registry
            .get_by_name(kind)
            .call(Configure(definition))
            .await
    }

    /// The definition of declarative type `kind` (`None` for a type registered in code).
    pub async fn definition(&self, kind: &str) -> Result<Option<Value>, ReactorError> {
        check_type(kind)?;
        Ok(self.entities.env().entry(kind).await?.definition.clone())
    }

    /// Sends an event to an entity; the same event id again (within the retention window)
    /// is acknowledged and changes nothing.
    pub async fn send(
        &self,
        kind: &str,
        entity: &str,
        event: Event,
    ) -> Result<Ingested, ReactorError> {
        self.entity(kind, entity)?.call(Ingest(event)).await
    }

    /// An entity's state and where its outbox stands.
    pub async fn state(&self, kind: &str, entity: &str) -> Result<EntityView, ReactorError> {
        self.entity(kind, entity)?.call(Inspect).await
    }

    /// A page of the decision log (`LogQuery::newest(50)`: the last 50, newest first).
    pub async fn decisions(
        &self,
        kind: &str,
        entity: &str,
        page: LogQuery,
    ) -> Result<LogPage<Decision>, ReactorError> {
        self.entity(kind, entity)?.call(Decisions(page)).await
    }

    /// Commands numbered above `after` (and above those acknowledged), at most `limit`;
    /// with a `wait`, answers as soon as there is one, or empty when the wait is over.
    pub async fn commands(
        &self,
        kind: &str,
        entity: &str,
        after: u64,
        limit: u32,
        wait: Duration,
    ) -> Result<CommandPage, ReactorError> {
        let wait_ms = stead_core::duration_ms(wait);
        self.entity(kind, entity)?
            .with_timeout(wait + Duration::from_secs(30))
            .call(Poll {
                after,
                limit,
                wait_ms,
            })
            .await
    }

    /// Acknowledges every command up to `up_to` (they leave storage once every webhook has
    /// them too); the number acknowledged now.
    pub async fn ack(&self, kind: &str, entity: &str, up_to: u64) -> Result<u64, ReactorError> {
        self.entity(kind, entity)?.call(Ack { up_to }).await
    }

    /// A page of the dead letters (`LogQuery::oldest(50)`: the first 50 to handle).
    pub async fn dead_letters(
        &self,
        kind: &str,
        entity: &str,
        page: LogQuery,
    ) -> Result<LogPage<DeadLetter>, ReactorError> {
        self.entity(kind, entity)?.call(DeadLetters(page)).await
    }

    /// Retries or drops dead letters (those numbered in `seqs`, or all); how many.
    pub async fn resolve_dead_letters(
        &self,
        kind: &str,
        entity: &str,
        action: DeadLetterAction,
        seqs: Option<Vec<u64>>,
    ) -> Result<u64, ReactorError> {
        self.entity(kind, entity)?
            .call(ResolveDeadLetters { action, seqs })
            .await
    }

    /// The stub of an entity's object (for its live view).
    pub(crate) fn stub(
        &self,
        kind: &str,
        entity: &str,
    ) -> Result<Stub<ReactorEntity>, ReactorError> {
        self.entity(kind, entity)
    }
}
