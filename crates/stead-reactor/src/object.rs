//! The objects: one [`Entity`] per reactor type and entity (its state, the ids of events it
//! has seen, its decision log, its outbox, its dead letters, its delivery cursors), and one
//! [`TypeObject`] per declarative reactor type (its definition).
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

/// One entity of one reactor type.
pub struct Entity {
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

impl std::fmt::Debug for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entity")
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

impl DurableObject for Entity {
    const CLASS: &'static str = "reactor";
    type Env = ReactorEnv;

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
        // Ids an earlier build kept under `seen/` are remembered from when they were seen.
        let legacy: Vec<(String, i64)> =
            ctx.storage().list(ListOptions::prefix(LEGACY_SEEN)).await?;
        for (k, at) in legacy {
            ctx.storage().delete(&k)?;
            seen.remember(ctx.storage(), &k[LEGACY_SEEN.len()..], at)
                .await?;
        }
        let id_hash = hex(&Sha256::digest(name.as_bytes()))[..16].to_owned();
        Ok(Entity {
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

// ----- messages -----------------------------------------------------------------------------

/// Takes an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ingest(pub Event);

/// Reads what an object holds: an entity's state and where its outbox stands; a type's
/// definition.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Inspect;

/// Asks for a page of the decision log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Decisions(pub LogQuery);

/// Reads commands after `after` (and after those acknowledged), waiting up to `wait_ms`
/// for one when there is none.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Poll {
    /// Only commands numbered above this.
    pub after: u64,
    /// At most this many.
    pub limit: u32,
    /// How long to wait for one, in ms (0: answer at once).
    pub wait_ms: u64,
}

/// Acknowledges every command up to `up_to` for pull consumers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Ack {
    /// The last command taken.
    pub up_to: u64,
}

/// Asks for a page of the dead letters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DeadLetters(pub LogQuery);

/// What to do with dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterAction {
    /// Deliver them again to their endpoint (before the commands it has not had yet).
    Retry,
    /// Forget them.
    Drop,
}

/// Retries or drops dead letters (the listed ones, or all).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveDeadLetters {
    /// What to do.
    pub action: DeadLetterAction,
    /// Which; `None` for all.
    pub seqs: Option<Vec<u64>>,
}

/// The outcome of a webhook delivery (sent by the delivery task).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Delivered {
    pub(crate) endpoint: String,
    pub(crate) target: Target,
    pub(crate) outcome: Result<(), String>,
}

// ----- handlers -----------------------------------------------------------------------------

impl Handler<Ingest> for Entity {
    type Reply = Result<Ingested, ReactorError>;
    async fn handle(&mut self, Ingest(event): Ingest, ctx: &mut Context) -> Self::Reply {
        stead_core::validate_name("event id", &event.id)?;
        stead_core::validate_name("event type", &event.kind)?;
        let ty = self.env.entry(&self.kind).await?;
        let now = ctx.now();
        let now_ms = to_ms(now);
        self.seen
            .forget_expired(ctx.storage(), now_ms, FORGET_BATCH)
            .await?;
        let key = seen_key(&event.id);
        if self.seen.seen(ctx.storage(), &key, now_ms).await?.is_some() {
            return Ok(Ingested {
                accepted: true,
                duplicate: true,
                commands: 0,
            });
        }
        let pending = self.pending(&ty.delivery);
        if pending >= u64::from(self.env.config.max_outbox) {
            return Err(ReactorError::OutboxFull { pending });
        }
        self.check_cycles(ctx, &ty.behaviour).await?;
        let mut state = self.state_or(&ty.behaviour)?;
        let mut out = Decide::new(self.entity.clone(), now);
        ty.behaviour.on_event(&mut state, &event, &mut out)?;
        let emitted = out.commands.len() as u64;
        if pending + emitted > u64::from(self.env.config.max_outbox) {
            return Err(ReactorError::OutboxFull { pending });
        }
        self.check_size(&state)?;
        if let Err(r) = self.seen.make_room(ctx.storage(), now_ms).await? {
            return Err(ReactorError::Remembering(r));
        }
        self.seen.remember(ctx.storage(), &key, now_ms).await?;
        self.meta.events += 1;
        self.record(ctx, state, out, format!("event:{}", event.id), &ty.delivery)
            .await?;
        Ok(Ingested {
            accepted: true,
            duplicate: false,
            commands: emitted,
        })
    }
}

impl Handler<Inspect> for Entity {
    type Reply = Result<EntityView, ReactorError>;
    async fn handle(&mut self, _: Inspect, _ctx: &mut Context) -> Self::Reply {
        let ty = self.env.entry(&self.kind).await?;
        let state = self.state_or(&ty.behaviour)?;
        let endpoints = ty
            .delivery
            .webhooks
            .iter()
            .map(|w| {
                let c = self.meta.endpoints.get(&w.url).cloned().unwrap_or_default();
                EndpointView {
                    url: w.url.clone(),
                    delivered: self.start_of(&w.url),
                    attempts: c.attempts,
                    retry_at: c.retry_at_ms.map(from_ms),
                    last_error: c.last_error,
                }
            })
            .collect();
        Ok(EntityView {
            reactor: self.kind.clone(),
            entity: self.entity.clone(),
            state,
            events: self.meta.events,
            last_seq: self.meta.last_seq,
            acked: ty.delivery.pull.then_some(self.meta.acked),
            pending: self.outbox.len() as u64,
            endpoints,
            dead_letters: self.meta.dead_count.unwrap_or(0),
        })
    }
}

impl Handler<Decisions> for Entity {
    type Reply = Result<LogPage<Decision>, ReactorError>;
    async fn handle(&mut self, msg: Decisions, ctx: &mut Context) -> Self::Reply {
        Ok(DECISIONS.page(ctx.storage(), &msg.0).await?)
    }
}

impl DeferredHandler<Poll> for Entity {
    type Reply = Result<CommandPage, ReactorError>;
    async fn handle(&mut self, msg: Poll, ctx: &mut Context, reply: Deferred<Self::Reply>) {
        let answer = async {
            stead_core::validate_page_limit(u64::from(msg.limit))?;
            if msg.wait_ms > MAX_WAIT_MS {
                return Err(
                    InvalidInput::new(format!("wait_ms may be at most {MAX_WAIT_MS}")).into(),
                );
            }
            let ty = self.env.entry(&self.kind).await?;
            if !ty.delivery.pull {
                return Err(ReactorError::NotPulled);
            }
            Ok(())
        }
        .await;
        if let Err(e) = answer {
            reply.complete(ctx, Err(e));
            return;
        }
        let page = self.page(msg.after, msg.limit);
        if !page.commands.is_empty() || msg.wait_ms == 0 {
            reply.complete(ctx, Ok(page));
            return;
        }
        let deadline = ctx.now() + chrono::Duration::milliseconds(msg.wait_ms as i64);
        self.waiters.retain(|w| !w.reply.is_closed());
        if self.waiters.len() >= stead_core::MAX_PARKED_PER_OBJECT {
            let err = stead_core::Error::too_many_waiting(<Self as DurableObject>::CLASS);
            reply.complete(ctx, Err(err.into()));
            return;
        }
        self.waiters.push(Waiter {
            after: msg.after,
            limit: msg.limit,
            deadline,
            reply,
        });
        if let Err(e) = self.arm_poll(ctx) {
            tracing::warn!(error = %e, "a long-poll could not set its deadline");
        }
    }
}

impl Handler<Ack> for Entity {
    type Reply = Result<u64, ReactorError>;
    async fn handle(&mut self, msg: Ack, ctx: &mut Context) -> Self::Reply {
        let ty = self.env.entry(&self.kind).await?;
        if !ty.delivery.pull {
            return Err(ReactorError::NotPulled);
        }
        if msg.up_to > self.meta.last_seq {
            return Err(ReactorError::AckBeyondOutbox {
                up_to: msg.up_to,
                last: self.meta.last_seq,
            });
        }
        if msg.up_to > self.meta.acked {
            self.meta.acked = msg.up_to;
            self.collect(ctx, &ty.delivery).await?;
            self.save(ctx)?;
        }
        Ok(self.meta.acked)
    }
}

impl Handler<DeadLetters> for Entity {
    type Reply = Result<LogPage<DeadLetter>, ReactorError>;
    async fn handle(&mut self, msg: DeadLetters, ctx: &mut Context) -> Self::Reply {
        let page: LogPage<DeadLetter> = DEAD_LETTERS.page(ctx.storage(), &msg.0).await?;
        Ok(page.map(|mut d| {
            d.retrying = self
                .meta
                .endpoints
                .get(&d.endpoint)
                .is_some_and(|c| c.redo.contains(&d.seq));
            d
        }))
    }
}

impl Handler<ResolveDeadLetters> for Entity {
    type Reply = Result<u64, ReactorError>;
    async fn handle(&mut self, msg: ResolveDeadLetters, ctx: &mut Context) -> Self::Reply {
        let all: Vec<(String, DeadLetter)> = ctx.storage().list(ListOptions::prefix(DEAD)).await?;
        let chosen: Vec<DeadLetter> = all
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| msg.seqs.as_ref().is_none_or(|s| s.contains(&d.seq)))
            .collect();
        if let Some(seqs) = &msg.seqs
            && let Some(missing) = seqs.iter().find(|s| !chosen.iter().any(|d| d.seq == **s))
        {
            return Err(ReactorError::UnknownDeadLetter(*missing));
        }
        let delivery = self.delivery().await?;
        let mut n = 0;
        for d in chosen {
            match msg.action {
                DeadLetterAction::Drop => {
                    self.remove_dead(ctx, d.seq).await?;
                    if let Some(c) = self.meta.endpoints.get_mut(&d.endpoint) {
                        c.redo.retain(|s| *s != d.seq);
                    }
                    n += 1;
                }
                DeadLetterAction::Retry => {
                    if !delivery.webhooks.iter().any(|w| w.url == d.endpoint) {
                        return Err(ReactorError::EndpointGone(d.endpoint));
                    }
                    let c = self.meta.endpoints.entry(d.endpoint.clone()).or_default();
                    if !c.redo.contains(&d.seq) {
                        c.redo.push_back(d.seq);
                        n += 1;
                    }
                }
            }
        }
        self.pump(ctx, &delivery).await?;
        self.save(ctx)?;
        Ok(n)
    }
}

impl Handler<Delivered> for Entity {
    type Reply = stead_core::Result<()>;
    async fn handle(&mut self, msg: Delivered, ctx: &mut Context) -> Self::Reply {
        let Some(delivery) = self.delivery_for_job().await? else {
            return Ok(());
        };
        let was_inflight = self.inflight.get(&msg.endpoint).map(|(t, _)| *t) == Some(msg.target);
        if was_inflight {
            self.inflight.remove(&msg.endpoint);
        }
        let Some(hook) = delivery.webhooks.iter().find(|w| w.url == msg.endpoint) else {
            return Ok(());
        };
        let url = hook.url.clone();
        let start = self.start_of(&url);
        let now = to_ms(ctx.now());
        let cfg = &self.env.config;
        let (max_attempts, base_ms, max_ms) =
            (cfg.max_attempts, cfg.retry_base_ms, cfg.retry_max_ms);
        let cursor = self
            .meta
            .endpoints
            .entry(url.clone())
            .or_insert_with(|| Cursor::starting_at(start));
        // Only the outcome for what the endpoint waits on counts (a late answer to a
        // delivery sent again is a duplicate): its next command, or the dead letter first in
        // line. A dead letter queued while a command was out does not make that command's
        // answer a duplicate.
        let waited_on = match msg.target {
            Target::Seq(s) => s == cursor.delivered + 1,
            Target::Dead(d) => cursor.redo.front() == Some(&d),
        };
        if !waited_on {
            if was_inflight {
                // The endpoint is free again: send what it does wait on.
                self.pump(ctx, &delivery).await?;
                self.save(ctx)?;
            }
            return Ok(());
        }
        match msg.outcome {
            Ok(()) => {
                cursor.attempts = 0;
                cursor.retry_at_ms = None;
                cursor.last_error = None;
                match msg.target {
                    Target::Seq(s) => cursor.delivered = s,
                    Target::Dead(d) => {
                        cursor.redo.pop_front();
                        self.remove_dead(ctx, d).await?;
                    }
                }
            }
            Err(error) => {
                cursor.attempts += 1;
                cursor.last_error = Some(error.clone());
                if cursor.attempts >= max_attempts {
                    let attempts = cursor.attempts;
                    cursor.attempts = 0;
                    cursor.retry_at_ms = None;
                    match msg.target {
                        Target::Seq(s) => {
                            cursor.delivered = s;
                            if let Some(command) = self.outbox.get(&s).cloned() {
                                self.dead_letter(ctx, &url, command, attempts, error)
                                    .await?;
                            }
                        }
                        Target::Dead(d) => {
                            // Given up again: it stays a dead letter, no longer queued.
                            cursor.redo.pop_front();
                            let key = DEAD_LETTERS.key(d);
                            if let Some(mut dead) = ctx.storage().get::<DeadLetter>(&key).await? {
                                dead.attempts += attempts;
                                dead.error = error;
                                dead.at = from_ms(now);
                                ctx.storage().put(&key, &dead)?;
                            }
                        }
                    }
                } else {
                    let wait = delivery::backoff(cursor.attempts, base_ms, max_ms);
                    cursor.retry_at_ms = Some(now + wait as i64);
                }
            }
        }
        self.collect(ctx, &delivery).await?;
        self.pump(ctx, &delivery).await?;
        self.save(ctx)
    }
}

// ----- the entity's work ---------------------------------------------------------------------

impl Entity {
    async fn delivery(&self) -> Result<Delivery, ReactorError> {
        Ok(self.env.entry(&self.kind).await?.delivery.clone())
    }

    /// The delivery of the type, for work the runtime starts (a job, a delivery's
    /// outcome): a type that is gone leaves nothing to do (and is logged).
    async fn delivery_for_job(&self) -> stead_core::Result<Option<Delivery>> {
        match self.delivery().await {
            Ok(d) => Ok(Some(d)),
            Err(ReactorError::Runtime(e)) => Err(e),
            Err(e) => {
                tracing::warn!(reactor = %self.kind, entity = %self.entity, error = %e, "no deliveries: the reactor type is not available");
                Ok(None)
            }
        }
    }

    async fn state_or_initial(&self) -> Result<Value, ReactorError> {
        let ty = self.env.entry(&self.kind).await?;
        self.state_or(&ty.behaviour)
    }

    fn state_or(&self, behaviour: &SharedBehaviour) -> Result<Value, ReactorError> {
        match &self.meta.state {
            Some(s) => Ok(s.clone()),
            None => Ok(behaviour.initial()?),
        }
    }

    fn check_size(&self, state: &Value) -> Result<(), ReactorError> {
        let bytes = serde_json::to_vec(state).map_or(usize::MAX, |v| v.len());
        let max = self.env.config.max_state_bytes as usize;
        if bytes > max {
            return Err(ReactorError::StateTooLarge { bytes, max });
        }
        Ok(())
    }

    /// Commands not yet everywhere they go.
    fn pending(&self, delivery: &Delivery) -> u64 {
        self.meta.last_seq - self.low_water(delivery)
    }

    /// The command every way has: what may leave storage.
    fn low_water(&self, delivery: &Delivery) -> u64 {
        let mut low = self.meta.last_seq;
        if delivery.pull {
            low = low.min(self.meta.acked);
        }
        for w in &delivery.webhooks {
            low = low.min(self.start_of(&w.url));
        }
        low
    }

    /// Every command up to this one is delivered to (or dead-lettered for) the endpoint. An
    /// endpoint added to a type later starts after the commands already gone.
    fn start_of(&self, url: &str) -> u64 {
        match self.meta.endpoints.get(url) {
            Some(c) => c.delivered,
            None => self
                .outbox
                .keys()
                .next()
                .map_or(self.meta.last_seq, |first| first - 1),
        }
    }

    /// Sets the cycle jobs to the type's cycles, once per activation (a type's cycles
    /// that changed reach an entity when it next activates or its next cycle runs).
    async fn check_cycles(
        &mut self,
        ctx: &mut Context,
        behaviour: &SharedBehaviour,
    ) -> Result<(), ReactorError> {
        if self.cycles_checked {
            return Ok(());
        }
        let wanted = behaviour.cycles();
        if wanted != self.meta.cycles {
            for old in &self.meta.cycles {
                if !wanted.contains(old) {
                    ctx.schedules()
                        .cancel(&format!("{CYCLE_JOB}{}", old.name))
                        .await?;
                }
            }
            for c in &wanted {
                if !self.meta.cycles.contains(c) {
                    ctx.schedules()
                        .cron(&format!("{CYCLE_JOB}{}", c.name), &c.cron)
                        .map_err(|e| InvalidInput::new(e.to_string()))?;
                }
            }
            self.meta.cycles = wanted;
        }
        self.cycles_checked = true;
        Ok(())
    }

    async fn run_cycle(&mut self, ctx: &mut Context, cycle: &str) -> Result<(), ReactorError> {
        let ty = self.env.entry(&self.kind).await?;
        self.cycles_checked = false;
        self.check_cycles(ctx, &ty.behaviour).await?;
        if !self.meta.cycles.iter().any(|c| c.name == cycle) {
            return Ok(());
        }
        let mut state = self.state_or(&ty.behaviour)?;
        let mut out = Decide::new(self.entity.clone(), ctx.now());
        ty.behaviour.on_cycle(&mut state, cycle, &mut out)?;
        let pending = self.pending(&ty.delivery);
        if pending + out.commands.len() as u64 > u64::from(self.env.config.max_outbox) {
            return Err(ReactorError::OutboxFull { pending });
        }
        self.check_size(&state)?;
        self.record(ctx, state, out, format!("cycle:{cycle}"), &ty.delivery)
            .await?;
        Ok(())
    }

    /// Keeps what a decision produced: the state, the commands, the log entries; then
    /// starts deliveries, answers long-polls and tells live views, once it is durable.
    async fn record(
        &mut self,
        ctx: &mut Context,
        state: Value,
        out: Decide,
        cause: String,
        delivery: &Delivery,
    ) -> Result<(), ReactorError> {
        let now = ctx.now();
        let first = self.meta.last_seq + 1;
        let commands: Vec<Command> = out
            .commands
            .into_iter()
            .zip(first..)
            .map(|(emit, seq)| Command {
                seq,
                id: format!("{}{seq}", self.id_prefix),
                kind: emit.kind,
                payload: emit.payload,
                reactor: self.kind.clone(),
                entity: self.entity.clone(),
                created_at: now,
                cause: cause.clone(),
            })
            .collect();
        // Bounded by bytes as well as by count, before anything is written.
        let weight: u64 = commands.iter().map(command_bytes).sum();
        let config = &self.env.config;
        if weight > config.max_event_output_bytes {
            return Err(InvalidInput::new(format!(
                "the decision emits {weight} bytes of commands; one event or cycle may emit at most {}",
                config.max_event_output_bytes
            ))
            .into());
        }
        if self.outbox_bytes + weight > config.max_outbox_bytes {
            return Err(ReactorError::OutboxFull {
                pending: self.pending(delivery),
            });
        }
        let mut seqs = Vec::with_capacity(commands.len());
        for command in commands {
            let seq = command.seq;
            self.meta.last_seq = seq;
            ctx.storage().put(&seq_key(CMD, seq), &command)?;
            self.outbox.insert(seq, command);
            seqs.push(seq);
        }
        self.outbox_bytes += weight;
        let keep = u64::from(self.env.config.decisions);
        let mut logged = Vec::with_capacity(out.notes.len());
        for (
            Note {
                kind,
                reason,
                context,
            },
            covered,
        ) in out.notes
        {
            self.meta.last_decision += 1;
            let n = self.meta.last_decision;
            let decision = Decision {
                seq: n,
                at: now,
                kind,
                reason,
                context,
                cause: cause.clone(),
                commands: covered.iter().map(|i| first + *i as u64).collect(),
            };
            DECISIONS.append(ctx.storage(), n, &decision, keep)?;
            logged.push(decision);
        }
        let changed = self.meta.state.as_ref() != Some(&state);
        self.meta.state = Some(state);
        self.pump(ctx, delivery).await?;
        self.save(ctx)?;
        if !seqs.is_empty() {
            self.answer_waiters(ctx)?;
        }
        if !ctx.websockets(Some(LIVE_TAG)).is_empty() {
            let update = serde_json::json!({
                "kind": "update",
                "cause": cause,
                "state": if changed { self.meta.state.clone() } else { None },
                "decisions": logged,
                "commands": seqs.iter().filter_map(|s| self.outbox.get(s)).collect::<Vec<_>>(),
            });
            ctx.broadcast(Some(LIVE_TAG), WebSocketMessage::Text(update.to_string()));
        }
        Ok(())
    }

    /// Starts a delivery to every endpoint that has something to send, is not waiting for
    /// an answer or a retry; sets the delivery job for the next retry or as a watchdog.
    async fn pump(&mut self, ctx: &mut Context, delivery: &Delivery) -> stead_core::Result<()> {
        if delivery.webhooks.is_empty() {
            return Ok(());
        }
        let now = to_ms(ctx.now());
        let mut wake: Option<i64> = None;
        for hook in &delivery.webhooks {
            let start = self.start_of(&hook.url);
            let cursor = self
                .meta
                .endpoints
                .entry(hook.url.clone())
                .or_insert_with(|| Cursor::starting_at(start));
            if self.inflight.contains_key(&hook.url) {
                let watchdog = now + WATCHDOG_MS;
                wake = Some(wake.map_or(watchdog, |w| w.min(watchdog)));
                continue;
            }
            if let Some(retry) = cursor.retry_at_ms
                && retry > now
            {
                wake = Some(wake.map_or(retry, |w| w.min(retry)));
                continue;
            }
            let (target, command) = loop {
                match cursor.redo.front() {
                    Some(d) => {
                        let d = *d;
                        match ctx
                            .storage()
                            .get::<DeadLetter>(&DEAD_LETTERS.key(d))
                            .await?
                        {
                            Some(dead) => break (Target::Dead(d), Some(dead.command)),
                            // Dropped meanwhile.
                            None => {
                                cursor.redo.pop_front();
                            }
                        }
                    }
                    None if cursor.delivered < self.meta.last_seq => {
                        let s = cursor.delivered + 1;
                        break (Target::Seq(s), self.outbox.get(&s).cloned());
                    }
                    None => break (Target::Seq(0), None),
                }
            };
            let Some(command) = command else {
                continue;
            };
            self.inflight.insert(hook.url.clone(), (target, now));
            let watchdog = now + WATCHDOG_MS;
            wake = Some(wake.map_or(watchdog, |w| w.min(watchdog)));
            let env = self.env.clone();
            let name = entity_name(&self.kind, &self.entity);
            let url = hook.url.clone();
            let key = hook.key();
            // Sent only once this turn is durable: a command is never delivered before it
            // is stored.
            ctx.after_commit(move || {
                tokio::spawn(async move {
                    env.deliver(name, url, key, target, command).await;
                });
            });
        }
        if let Some(wake) = wake {
            ctx.schedules().once(DELIVER_JOB, from_ms(wake))?;
        }
        Ok(())
    }

    /// Deletes the commands every way has.
    async fn collect(&mut self, ctx: &mut Context, delivery: &Delivery) -> stead_core::Result<()> {
        let low = self.low_water(delivery);
        let gone: Vec<u64> = self.outbox.range(..=low).map(|(s, _)| *s).collect();
        for s in gone {
            if let Some(c) = self.outbox.remove(&s) {
                self.outbox_bytes = self.outbox_bytes.saturating_sub(command_bytes(&c));
            }
            ctx.storage().delete(&seq_key(CMD, s))?;
        }
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        ctx: &mut Context,
        endpoint: &str,
        command: Command,
        attempts: u32,
        error: String,
    ) -> stead_core::Result<()> {
        let keep = u64::from(self.env.config.dead_letters);
        self.meta.last_dead += 1;
        let n = self.meta.last_dead;
        tracing::warn!(reactor = %self.kind, entity = %self.entity, endpoint = %crate::delivery::masked(endpoint), command = %command.id, %error, "a command was dead-lettered");
        let dead = DeadLetter {
            seq: n,
            endpoint: endpoint.to_owned(),
            command,
            attempts,
            error,
            at: ctx.now(),
            retrying: false,
        };
        ctx.storage().put(&DEAD_LETTERS.key(n), &dead)?;
        *self.meta.dead_count.get_or_insert(0) += 1;
        if n > keep {
            let old = n - keep;
            self.remove_dead(ctx, old).await?;
            for c in self.meta.endpoints.values_mut() {
                c.redo.retain(|s| *s != old);
            }
        }
        Ok(())
    }

    /// Deletes dead letter `seq`, if it is still there, and counts it out.
    async fn remove_dead(&mut self, ctx: &mut Context, seq: u64) -> stead_core::Result<()> {
        let key = DEAD_LETTERS.key(seq);
        if ctx.storage().get::<Value>(&key).await?.is_some() {
            ctx.storage().delete(&key)?;
            let n = self.meta.dead_count.get_or_insert(0);
            *n = n.saturating_sub(1);
        }
        Ok(())
    }

    fn save(&mut self, ctx: &mut Context) -> stead_core::Result<()> {
        ctx.storage().put(META, &self.meta)
    }

    fn page(&self, after: u64, limit: u32) -> CommandPage {
        let from = after.max(self.meta.acked) + 1;
        CommandPage {
            commands: self
                .outbox
                .range(from..)
                .take(limit as usize)
                .map(|(_, c)| c.clone())
                .collect(),
        }
    }

    /// Answers the long-polls that have commands now or whose wait is over; sets the poll
    /// job for the next deadline.
    fn answer_waiters(&mut self, ctx: &mut Context) -> stead_core::Result<()> {
        let now = ctx.now();
        for w in std::mem::take(&mut self.waiters) {
            if w.reply.is_closed() {
                continue;
            }
            let page = self.page(w.after, w.limit);
            if !page.commands.is_empty() || w.deadline <= now {
                w.reply.complete(ctx, Ok(page));
            } else {
                self.waiters.push(w);
            }
        }
        self.arm_poll(ctx)
    }

    fn arm_poll(&mut self, ctx: &mut Context) -> stead_core::Result<()> {
        match self.waiters.iter().map(|w| w.deadline).min() {
            Some(next) => ctx.schedules().once(POLL_JOB, next),
            None => Ok(()),
        }
    }
}

// ----- the definitions of declarative types ----------------------------------------------------

/// The definition of one declarative reactor type.
pub struct TypeObject {
    env: Arc<crate::client::Types>,
    definition: Option<Value>,
}

impl std::fmt::Debug for TypeObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypeObject").finish()
    }
}

impl DurableObject for TypeObject {
    const CLASS: &'static str = "reactor-type";
    type Env = crate::client::TypesEnv;

    async fn activate(
        ctx: &mut Context,
        env: Arc<crate::client::TypesEnv>,
    ) -> stead_core::Result<Self> {
        Ok(TypeObject {
            env: env.0.clone(),
            definition: ctx.storage().get(DEF).await?,
        })
    }
}

/// Sets a type's definition; whether it was new.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Configure(pub Value);

impl Handler<Configure> for TypeObject {
    type Reply = Result<bool, ReactorError>;
    async fn handle(&mut self, Configure(def): Configure, ctx: &mut Context) -> Self::Reply {
        let kind = ctx.name().unwrap_or_default().to_owned();
        if self.env.is_code(&kind) {
            return Err(ReactorError::DefinedInCode(kind));
        }
        let compiled = Arc::new(Declarative::compile(&def)?);
        ctx.storage().put(DEF, &def)?;
        let created = self.definition.is_none();
        self.definition = Some(def.clone());
        let types = self.env.clone();
        ctx.after_commit(move || types.put_declarative(&kind, compiled, def));
        Ok(created)
    }
}

impl Handler<Inspect> for TypeObject {
    type Reply = Option<Value>;
    async fn handle(&mut self, _: Inspect, _ctx: &mut Context) -> Self::Reply {
        self.definition.clone()
    }
}
