//! The traits a durable object implements.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::error::Result;
use crate::schedule::ScheduledJob;

/// A class of durable objects: addressable, single-threaded, with durable storage and an
/// alarm.
///
/// ```
/// use std::sync::Arc;
/// use stead_core::{Context, DurableObject, Handler, Result};
/// use serde::{Deserialize, Serialize};
///
/// struct Counter { value: i64 }
///
/// impl DurableObject for Counter {
///     const CLASS: &'static str = "counter";
///     type Env = ();
///     async fn activate(ctx: &mut Context, _env: Arc<()>) -> Result<Self> {
///         Ok(Counter { value: ctx.storage().get("value").await?.unwrap_or(0) })
///     }
/// }
///
/// #[derive(Serialize, Deserialize)]
/// struct Add(i64);
///
/// impl Handler<Add> for Counter {
///     type Reply = Result<i64>;
///     async fn handle(&mut self, msg: Add, ctx: &mut Context) -> Result<i64> {
///         self.value += msg.0;
///         ctx.storage().put("value", &self.value)?;
///         Ok(self.value)
///     }
/// }
/// ```
pub trait DurableObject: Sized + Send + 'static {
    /// The class name: part of every id derived from a name, and of every stored row.
    /// Never change it for a class that has data.
    const CLASS: &'static str;

    /// Shared dependencies given to every activation (configuration, clients, ...).
    type Env: Send + Sync + 'static;

    /// Builds the in-memory object when it is first addressed or after eviction; may read
    /// (and write) storage. Runs as a turn of its own.
    fn activate(
        ctx: &mut Context,
        env: Arc<Self::Env>,
    ) -> impl Future<Output = Result<Self>> + Send;

    /// Runs when the alarm set with [`crate::Storage::set_alarm`] falls due. The alarm is
    /// cleared before the call (set a new one to repeat). An error or panic retries the
    /// alarm with exponential backoff.
    fn alarm(
        &mut self,
        ctx: &mut Context,
        info: AlarmInfo,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, info);
        async { Ok(()) }
    }

    /// Runs when a job of [`Context::schedules`] falls due.
    fn on_schedule(
        &mut self,
        ctx: &mut Context,
        job: ScheduledJob,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, job);
        async { Ok(()) }
    }
}

/// A message a durable object can receive: any serde type, so that a later cluster mode can
/// forward it. Calls within one process never serialize.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Message for T {}

/// How an object handles messages of type `M`. Each call is one turn.
pub trait Handler<M: Message>: DurableObject {
    /// What the caller gets back (commonly a `Result`).
    type Reply: Send + 'static;

    /// Handles one message. Storage writes made here commit atomically with the turn; the
    /// reply is held until they are durable.
    fn handle(&mut self, msg: M, ctx: &mut Context) -> impl Future<Output = Self::Reply> + Send;
}

/// What an alarm handler is told about the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AlarmInfo {
    /// When the alarm was set to go off.
    pub scheduled_at: DateTime<Utc>,
    /// 0 on the first delivery, then 1, 2, ... on retries after failures.
    pub retry_count: u32,
}
