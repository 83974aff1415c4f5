//! # stead-reactor: event reactors with a durable outbox
//!
//! A reactor is an agent per entity: it takes domain events, keeps its picture of the world
//! (its state), decides, logs why, and emits commands; cycles on cron run its periodic
//! decisions. Each event is one turn of the entity's object, so the new state, the commands
//! and the decisions are stored together or not at all (a transactional outbox), and an event
//! id seen before is acknowledged without deciding twice.
//!
//! Commands are numbered per entity and delivered at least once, in order per entity and
//! consumer: pulled (`commands`, then `ack`, with a long-poll that answers as soon as one is
//! there) or pushed to webhooks signed as the Standard Webhooks specification says, retried
//! with exponential backoff and jitter, and dead-lettered after the last attempt.
//!
//! Reactors are written in Rust ([`Reactor`], registered with [`ReactorClient::register`]) or
//! declared in JSON ([`Declarative`], set with [`ReactorClient::define`] or `PUT
//! /reactors/{type}`): rules matched by event type, with JsonLogic conditions and values over
//! `{event, state, now, entity}`.
//!
//! The rooms: [`reactor`] and [`definition`] are pure (what a decision produces, the
//! declarative language); `delivery` signs and sends webhooks; `object` keeps the entities;
//! `client` is the typed client; `http` the routes (feature `http`, on by default).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use serde::{Deserialize, Serialize};
//! use stead_reactor::{Decide, Delivery, Event, Reactor, ReactorClient, Rejected};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Stock { level: i64 }
//!
//! struct Restock;
//!
//! impl Reactor for Restock {
//!     type State = Stock;
//!     fn on_event(&self, s: &mut Stock, e: &Event, out: &mut Decide) -> Result<(), Rejected> {
//!         s.level += e.payload["delta"].as_i64().ok_or_else(|| Rejected("delta".into()))?;
//!         if s.level < 10 {
//!             out.emit("purchase.order", serde_json::json!({"sku": out.entity(), "qty": 100}))?;
//!             out.log("restock", format!("level {} is below 10", s.level));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let rt = stead_core::Runtime::builder().memory().build().await?;
//! let reactors = ReactorClient::new(&rt)?;
//! reactors.register("stock", Restock, Delivery::pull())?;
//! let e = Event::new("e-1", "sold", serde_json::json!({"delta": 5}));
//! assert_eq!(reactors.send("stock", "sku-1", e).await?.commands, 1);
//! let log = reactors.decisions("stock", "sku-1", stead_core::LogQuery::newest(10)).await?;
//! assert_eq!(log.entries[0].reason, "level 5 is below 10");
//! # rt.shutdown().await?;
//! # Ok::<(), stead_reactor::ReactorError>(()) }).unwrap();
//! ```

mod client;
pub mod definition;
mod delivery;
mod destination;
mod error;
#[cfg(feature = "http")]
mod http;
mod object;
pub mod reactor;

pub use client::{ReactorClient, ReactorConfig, ReactorEnv, Types, TypesEnv};
pub use definition::{Declarative, DefinitionError, Delivery, Webhook};
pub use delivery::sign;
pub use error::ReactorError;
#[cfg(feature = "http")]
pub use http::ReactorPattern;
pub use object::{
    Ack, Command, CommandPage, Configure, DeadLetter, DeadLetterAction, DeadLetters, Decision,
    Decisions, EndpointView, EntityView, Ingest, Ingested, Inspect, MAX_PAGE, MAX_WAIT_MS, Poll,
    ReactorEntity, ReactorType, ResolveDeadLetters,
};
pub use reactor::{Cycle, Decide, Emit, Event, Note, Reactor, Rejected};

/// The reactor routes, without a prefix (the umbrella crate mounts them under
/// `/reactors`), in any app state.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`].
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <ReactorPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ReactorPattern as stead_core::http::Pattern>::openapi()
}
