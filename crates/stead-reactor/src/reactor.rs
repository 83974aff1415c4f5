//! The pure room: what a reactor is (its state, what it does with an event and on a cycle)
//! and what one decision produces (commands to emit, entries for the decision log). Nothing
//! here touches storage or the network: the object runs a reactor inside one turn and keeps
//! what it produced.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A domain event, as it arrives for one entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The sender's id for it: the same id again within the retention window is
    /// acknowledged and changes nothing.
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::name))]
    pub id: String,
    /// What happened (`order.placed`, `research.completed`, ...).
    #[serde(rename = "type")]
    #[cfg_attr(feature = "http", schema(schema_with = stead_core::http::schema::name))]
    pub kind: String,
    /// Its data.
    #[serde(default)]
    pub payload: Value,
}

impl Event {
    /// An event.
    pub fn new(id: impl Into<String>, kind: impl Into<String>, payload: Value) -> Self {
        Event {
            id: id.into(),
            kind: kind.into(),
            payload,
        }
    }
}

/// A command a decision emits: stored in the entity's outbox with the decision, then
/// delivered at least once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emit {
    /// What to do (`content.create`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its data.
    pub payload: Value,
}

/// An entry of the decision log: what was decided and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// The kind of decision (`create-content`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Why, in words.
    pub reason: String,
    /// What the decision looked at, if anything worth keeping.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub context: Value,
}

/// What one event or cycle decides, collected while a reactor runs: the time and entity it
/// runs for, the commands it emits and the decisions it logs. The commands of one decision
/// are numbered in the order they were emitted.
#[derive(Debug)]
pub struct Decide {
    now: DateTime<Utc>,
    entity: String,
    pub(crate) commands: Vec<Emit>,
    pub(crate) notes: Vec<(Note, Vec<usize>)>,
    /// How many commands the last note covers from (commands emitted since the last note
    /// belong to the next one).
    since_note: usize,
}

impl Decide {
    /// An empty decision for `entity` at `now`.
    pub fn new(entity: impl Into<String>, now: DateTime<Utc>) -> Self {
        Decide {
            now,
            entity: entity.into(),
            commands: Vec::new(),
            notes: Vec::new(),
            since_note: 0,
        }
    }

    /// The time of the turn (the runtime's clock).
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The entity the reactor runs for.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// Emits a command. A payload that does not serialize to JSON is [`Rejected`] (say
    /// `out.emit(...)?`): the event is refused and nothing it decided is kept.
    pub fn emit(
        &mut self,
        kind: impl Into<String>,
        payload: impl Serialize,
    ) -> Result<(), Rejected> {
        let kind = kind.into();
        let payload = serde_json::to_value(payload).map_err(|e| {
            Rejected(format!(
                "the payload of a {kind:?} command does not serialize to JSON: {e}"
            ))
        })?;
        self.emit_value(kind, payload);
        Ok(())
    }

    /// Emits a command whose payload is JSON already.
    pub fn emit_value(&mut self, kind: impl Into<String>, payload: Value) {
        self.commands.push(Emit {
            kind: kind.into(),
            payload,
        });
    }

    /// Logs a decision: the commands emitted since the previous entry are recorded as its.
    pub fn log(&mut self, kind: impl Into<String>, reason: impl Into<String>) {
        self.log_with(kind, reason, Value::Null);
    }

    /// Logs a decision with the context it looked at.
    pub fn log_with(&mut self, kind: impl Into<String>, reason: impl Into<String>, context: Value) {
        let covered = (self.since_note..self.commands.len()).collect();
        self.since_note = self.commands.len();
        self.notes.push((
            Note {
                kind: kind.into(),
                reason: reason.into(),
                context,
            },
            covered,
        ));
    }

    /// The commands emitted so far.
    pub fn commands(&self) -> &[Emit] {
        &self.commands
    }

    /// The decisions logged so far.
    pub fn notes(&self) -> impl Iterator<Item = &Note> {
        self.notes.iter().map(|(n, _)| n)
    }
}

/// Why a reactor refused an event or a cycle: nothing it decided is kept, and the event is
/// not marked as seen (a sender may fix it and send it again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{0}")]
pub struct Rejected(pub String);

/// A periodic decision cycle: `name` runs whenever the cron expression `cron` matches (UTC,
/// five fields, or six with seconds first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cycle {
    /// The cycle's name, passed to [`Reactor::on_cycle`].
    pub name: String,
    /// When it runs.
    pub cron: String,
}

impl Cycle {
    /// A cycle.
    pub fn new(name: impl Into<String>, cron: impl Into<String>) -> Self {
        Cycle {
            name: name.into(),
            cron: cron.into(),
        }
    }
}

/// An agent per entity: it keeps a picture of the world (its state), and on each event
/// and each cycle decides what to do, as commands to emit and decisions to log. Each call
/// runs inside one turn of the entity's object: the new state, the commands and the
/// decisions are stored together or not at all.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use stead_reactor::{Decide, Event, Reactor, Rejected};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Orders { big: u32 }
///
/// struct Reviewer;
///
/// impl Reactor for Reviewer {
///     type State = Orders;
///     fn on_event(&self, state: &mut Orders, event: &Event, out: &mut Decide) -> Result<(), Rejected> {
///         let amount = event.payload["amount"].as_f64().ok_or_else(|| Rejected("no amount".into()))?;
///         if event.kind == "order.placed" && amount > 100.0 {
///             state.big += 1;
///             out.emit("review.request", serde_json::json!({"order": event.payload["id"]}))?;
///             out.log("review", "large order");
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Reactor: Send + Sync + 'static {
    /// The reactor's picture of the world, kept per entity as JSON. A new entity starts
    /// from `Default`.
    type State: Serialize + DeserializeOwned + Default + Send;

    /// Decides what an event means.
    fn on_event(
        &self,
        state: &mut Self::State,
        event: &Event,
        out: &mut Decide,
    ) -> Result<(), Rejected>;

    /// The periodic cycles each entity runs (none by default).
    fn cycles(&self) -> Vec<Cycle> {
        Vec::new()
    }

    /// Runs cycle `name` (one of [`cycles`](Self::cycles)).
    fn on_cycle(
        &self,
        state: &mut Self::State,
        name: &str,
        out: &mut Decide,
    ) -> Result<(), Rejected> {
        let _ = (state, name, out);
        Ok(())
    }
}

/// A reactor with its state as JSON: what the object runs, for reactors written in Rust
/// and declarative ones alike.
pub(crate) trait Behaviour: Send + Sync + 'static {
    /// The state of a new entity.
    fn initial(&self) -> Result<Value, Rejected>;
    fn on_event(&self, state: &mut Value, event: &Event, out: &mut Decide) -> Result<(), Rejected>;
    fn cycles(&self) -> Vec<Cycle>;
    fn on_cycle(&self, state: &mut Value, name: &str, out: &mut Decide) -> Result<(), Rejected>;
}

/// A Rust reactor behind [`Behaviour`].
pub(crate) struct Typed<R>(pub(crate) R);

impl<R: Reactor> Typed<R> {
    /// Runs `f` on the state, typed. On an error `state` is left empty: the object keeps
    /// nothing of a refused turn.
    fn run(
        &self,
        state: &mut Value,
        f: impl FnOnce(&R, &mut R::State) -> Result<(), Rejected>,
    ) -> Result<(), Rejected> {
        let mut typed: R::State = serde_json::from_value(std::mem::take(state)).map_err(|e| {
            Rejected(format!(
                "the stored state does not fit the reactor's type: {e}"
            ))
        })?;
        f(&self.0, &mut typed)?;
        *state = serde_json::to_value(&typed)
            .map_err(|e| Rejected(format!("the state does not serialize: {e}")))?;
        Ok(())
    }
}

impl<R: Reactor> Behaviour for Typed<R> {
    fn initial(&self) -> Result<Value, Rejected> {
        serde_json::to_value(R::State::default())
            .map_err(|e| Rejected(format!("the state does not serialize: {e}")))
    }

    fn on_event(&self, state: &mut Value, event: &Event, out: &mut Decide) -> Result<(), Rejected> {
        self.run(state, |r, s| r.on_event(s, event, out))
    }

    fn cycles(&self) -> Vec<Cycle> {
        self.0.cycles()
    }

    fn on_cycle(&self, state: &mut Value, name: &str, out: &mut Decide) -> Result<(), Rejected> {
        self.run(state, |r, s| r.on_cycle(s, name, out))
    }
}

/// A shared behaviour.
pub(crate) type SharedBehaviour = Arc<dyn Behaviour>;
