//! The objects: one [`ReactorEntity`] per reactor type and entity (its state, the ids of events it
//! has seen, its decision log, its outbox, its dead letters, its delivery cursors), and one
//! [`ReactorType`] per declarative reactor type (its definition).
//!
//! An event's turn runs the reactor and writes, together, the new state, the commands it
//! emitted (numbered per entity), the decisions and the event's id: a crash leaves all or
//! none. Commands leave by pull (read, then acknowledge) and by webhooks, one delivery in
//! flight per endpoint so that each endpoint sees an entity's commands in order; a command
//! is deleted once every way has it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use stead_core::{
    Context, Deferred, DeferredHandler, DurableObject, Handler, InvalidInput, ListOptions, Log,
    LogPage, LogQuery, Remembered, RememberedLayout, ScheduledJob, WebSocket, WebSocketMessage,
    from_ms, to_ms,
};

use crate::client::ReactorEnv;
use crate::definition::{Declarative, Delivery};
use crate::delivery;
use crate::error::ReactorError;
use crate::reactor::{Decide, Event, Note, SharedBehaviour};

mod handlers;
mod messages;
mod types;
mod work;

pub use messages::*;
pub use types::*;

const META: &str = "meta";
const CMD: &str = "cmd/";
/// The decision log.
const DECISIONS: Log = Log::new("dec/");
/// Where event ids are remembered (hashed), by the rule of `stead_core::Remembered`.
const EVENT_IDS: RememberedLayout = RememberedLayout {
    ids: "ev/",
    index: "evt/",
    count: "evn",
};
/// At most this many expired event ids are forgotten in one turn.
const FORGET_BATCH: usize = 100;
/// Where builds before `Remembered` kept them: hashed id -> when it was seen.
const LEGACY_SEEN: &str = "seen/";
const DEAD: &str = "dead/";
/// The dead letters, numbered in the order they were dead-lettered.
const DEAD_LETTERS: Log = Log::new(DEAD);
const DEF: &str = "def";
/// The job that delivers to webhooks (at the next retry, or as a watchdog while a delivery
/// is in flight).
const DELIVER_JOB: &str = "deliver";
/// While a delivery is in flight the delivery job comes back this often (in ms): after a
/// crash, the deliveries lost with the process start again this soon after the restart.
const WATCHDOG_MS: i64 = 1000;
/// The job that answers long-polls whose wait is over.
const POLL_JOB: &str = "poll";
/// Cycle jobs are named with this prefix and the cycle's name.
const CYCLE_JOB: &str = "cycle:";
/// The tag of live-view sockets.
pub(crate) const LIVE_TAG: &str = "live";

pub use stead_core::MAX_PAGE;
/// The longest long-poll, in ms.
pub const MAX_WAIT_MS: u64 = 60_000;

fn seq_key(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:020}")
}

/// A command in an entity's outbox, as pulled and as pushed to webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Command {
    /// Its number in the entity's outbox, from 1, without gaps.
    pub seq: u64,
    /// Its id, unique across entities (the `webhook-id` of its deliveries).
    pub id: String,
    /// What to do.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its data.
    pub payload: Value,
    /// The reactor type.
    pub reactor: String,
    /// The entity.
    pub entity: String,
    /// When it was decided.
    pub created_at: DateTime<Utc>,
    /// What decided it: `event:` and the event's id, or `cycle:` and the cycle's name.
    pub cause: String,
}

/// An entry of the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema), schema(as = ReactorDecision))]
pub struct Decision {
    /// Its number, from 1.
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// The kind of decision.
    #[serde(rename = "type")]
    pub kind: String,
    /// Why.
    pub reason: String,
    /// What it looked at.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub context: Value,
    /// What decided it, as for [`Command::cause`].
    pub cause: String,
    /// The commands it emitted, by number.
    pub commands: Vec<u64>,
}

/// A command a webhook endpoint did not take after every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    /// Its number, from 1.
    pub seq: u64,
    /// The endpoint that refused it.
    pub endpoint: String,
    /// The command.
    pub command: Command,
    /// How many deliveries were tried.
    pub attempts: u32,
    /// Why the last one failed.
    pub error: String,
    /// When it was given up.
    pub at: DateTime<Utc>,
    /// Whether it is queued to be delivered again.
    pub retrying: bool,
}

/// Where a webhook endpoint stands with an entity's commands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct EndpointView {
    /// The endpoint.
    pub url: String,
    /// Every command up to this number was delivered (or dead-lettered).
    pub delivered: u64,
    /// Failed attempts at the next command.
    pub attempts: u32,
    /// When the next attempt is due, if it is waiting for a retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// An entity's state and where its outbox stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct EntityView {
    /// The reactor type.
    pub reactor: String,
    /// The entity.
    pub entity: String,
    /// Its state (the initial state if no event has come yet).
    pub state: Value,
    /// Events accepted (not counting duplicates).
    pub events: u64,
    /// The number of the last command emitted (0: none yet).
    pub last_seq: u64,
    /// Every command up to this number was acknowledged by pull consumers (absent when the
    /// type is not pulled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<u64>,
    /// Commands still in the outbox.
    pub pending: u64,
    /// The webhook endpoints.
    pub endpoints: Vec<EndpointView>,
    /// Dead letters kept.
    pub dead_letters: u64,
}

/// The answer to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Ingested {
    /// Always true: the event is recorded (or was, for a duplicate).
    pub accepted: bool,
    /// Whether the event was seen before (it changed nothing this time).
    pub duplicate: bool,
    /// How many commands it emitted (0 for a duplicate).
    pub commands: u64,
}

/// Commands read from an outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct CommandPage {
    /// In order.
    pub commands: Vec<Command>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    delivered: u64,
    attempts: u32,
    retry_at_ms: Option<i64>,
    last_error: Option<String>,
    /// Dead letters queued to be delivered again, before the commands after `delivered`.
    redo: VecDeque<u64>,
}

impl Cursor {
    /// The cursor of an endpoint first seen when everything up to `start` is gone.
    fn starting_at(start: u64) -> Self {
        Cursor {
            delivered: start,
            ..Cursor::default()
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    /// The state; `None` until the first event or cycle.
    state: Option<Value>,
    events: u64,
    last_seq: u64,
    acked: u64,
    endpoints: BTreeMap<String, Cursor>,
    last_decision: u64,
    last_dead: u64,
    /// How many dead letters are kept (counted once from storage for an entity written
    /// before the count was kept).
    #[serde(default)]
    dead_count: Option<u64>,
    /// The cycles whose jobs are set.
    cycles: Vec<crate::reactor::Cycle>,
}

/// What a webhook delivery carries: a command of the outbox, or a dead letter sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Target {
    Seq(u64),
    Dead(u64),
}

struct Waiter {
    after: u64,
    limit: u32,
    deadline: DateTime<Utc>,
    reply: Deferred<Result<CommandPage, ReactorError>>,
}

/// One entity of one reactor type: its state, its outbox, its logs (class `reactor`, named
/// `{type}/{entity}`).
pub struct ReactorEntity {
    env: Arc<ReactorEnv>,
    kind: String,
    entity: String,
    id_prefix: String,
    meta: Meta,
    /// The outbox, in memory (it is bounded by `max_outbox`).
    outbox: BTreeMap<u64, Command>,
    /// What the outbox's commands weigh (see [`command_bytes`]).
    outbox_bytes: u64,
    /// Event ids (hashed) seen within the retention time.
    seen: Remembered,
    /// Deliveries in flight, per endpoint, with when they started.
    inflight: HashMap<String, (Target, i64)>,
    waiters: Vec<Waiter>,
    /// Whether this activation has checked the cycle jobs against the type.
    cycles_checked: bool,
}

impl std::fmt::Debug for ReactorEntity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorEntity")
            .field("reactor", &self.kind)
            .field("entity", &self.entity)
            .finish()
    }
}

/// What a command weighs against the outbox's byte bound: its payload as JSON, its type
/// and cause, and a fixed share for the rest.
fn command_bytes(c: &Command) -> u64 {
    let payload = serde_json::to_vec(&c.payload).map_or(0, |v| v.len());
    (payload + c.kind.len() + c.cause.len() + 128) as u64
}

/// The object name of an entity: the type (which has no `/`), `/`, the entity.
pub(crate) fn entity_name(kind: &str, entity: &str) -> String {
    format!("{kind}/{entity}")
}

impl DurableObject for ReactorEntity {
    const CLASS: &'static str = "reactor";
    type Env = ReactorEnv;

    fn remote(remote: &mut stead_core::Remote<Self>) {
        remote
            .message::<Ack>()
            .message::<DeadLetters>()
            .message::<Decisions>()
            .message::<Delivered>()
            .message::<Ingest>()
            .message::<Inspect>()
            .message::<Poll>()
            .message::<ResolveDeadLetters>();
    }

    async fn activate(ctx: &mut Context, env: Arc<ReactorEnv>) -> stead_core::Result<Self> {
        let name = ctx.name().unwrap_or_default().to_owned();
        let (kind, entity) = name.split_once('/').unwrap_or((name.as_str(), ""));
        let mut meta: Meta = ctx.storage().get(META).await?.unwrap_or_default();
        if meta.dead_count.is_none() {
            let dead: Vec<(String, Value)> = ctx.storage().list(ListOptions::prefix(DEAD)).await?;
            meta.dead_count = Some(dead.len() as u64);
        }
        let commands: Vec<(String, Command)> = ctx.storage().list(ListOptions::prefix(CMD)).await?;
        let outbox: BTreeMap<u64, Command> =
            commands.into_iter().map(|(_, c)| (c.seq, c)).collect();
        let outbox_bytes = outbox.values().map(command_bytes).sum();
        let mut seen = Remembered::load(
            ctx.storage(),
            EVENT_IDS,
            env.config.event_retention_ms,
            u64::from(env.config.max_event_ids),
        )
        .await?;
        // Ids an earlier build kept under `seen/` are remembered from when they were seen
        // (an entity that remembers ids under the new keys has none left there).
        if seen.is_empty() {
            let legacy: Vec<(String, i64)> =
                ctx.storage().list(ListOptions::prefix(LEGACY_SEEN)).await?;
            for (k, at) in legacy {
                ctx.storage().delete(&k)?;
                seen.remember(ctx.storage(), &k[LEGACY_SEEN.len()..], at)
                    .await?;
            }
        }
        let id_hash = hex(&Sha256::digest(name.as_bytes()))[..16].to_owned();
        Ok(ReactorEntity {
            kind: kind.to_owned(),
            entity: entity.to_owned(),
            id_prefix: format!("cmd_{id_hash}_"),
            env,
            meta,
            outbox,
            outbox_bytes,
            seen,
            inflight: HashMap::new(),
            waiters: Vec::new(),
            cycles_checked: false,
        })
    }

    async fn on_schedule(
        &mut self,
        ctx: &mut Context,
        job: ScheduledJob,
    ) -> stead_core::Result<()> {
        match job.name.as_str() {
            DELIVER_JOB => {
                let Some(delivery) = self.delivery_for_job().await? else {
                    return Ok(());
                };
                let now = to_ms(ctx.now());
                // A delivery whose answer never came (the message was lost) is sent again;
                // one in flight in a process that died was forgotten with it.
                let timeout = self.env.config.delivery_timeout_ms as i64 + WATCHDOG_MS;
                self.inflight.retain(|_, (_, since)| now - *since < timeout);
                self.pump(ctx, &delivery).await?;
                self.save(ctx)?;
                Ok(())
            }
            POLL_JOB => {
                self.answer_waiters(ctx)?;
                Ok(())
            }
            name if name.starts_with(CYCLE_JOB) => {
                let cycle = &name[CYCLE_JOB.len()..];
                match self.run_cycle(ctx, cycle).await {
                    Ok(()) => Ok(()),
                    // A refused cycle changes nothing; it runs again at its next time.
                    Err(ReactorError::Rejected(r)) => {
                        tracing::warn!(reactor = %self.kind, entity = %self.entity, cycle, reason = %r, "a cycle was refused");
                        Ok(())
                    }
                    Err(ReactorError::Runtime(e)) => Err(e),
                    Err(e) => {
                        tracing::warn!(reactor = %self.kind, entity = %self.entity, cycle, error = %e, "a cycle did not run");
                        Ok(())
                    }
                }
            }
            _ => Ok(()),
        }
    }

    async fn on_websocket_open(
        &mut self,
        ctx: &mut Context,
        socket: WebSocket,
    ) -> stead_core::Result<()> {
        let state = match self.state_or_initial().await {
            Ok(s) => s,
            Err(_) => Value::Null,
        };
        let hello = serde_json::json!({
            "kind": "snapshot",
            "reactor": self.kind,
            "entity": self.entity,
            "state": state,
            "last_seq": self.meta.last_seq,
            "last_decision": self.meta.last_decision,
        });
        socket.send(ctx, WebSocketMessage::Text(hello.to_string()));
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn seen_key(id: &str) -> String {
    hex(&Sha256::digest(id.as_bytes()))[..32].to_owned()
}
