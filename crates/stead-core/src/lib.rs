//! # stead-core: the durable object runtime
//!
//! A durable object is an addressable, single-threaded object with its own durable
//! key-value storage and an alarm. Each message it handles is one *turn*: the turn's writes
//! commit atomically, and the reply leaves the object only once they are durable (the
//! *output gate*). Turns of a busy object run back to back while earlier commits are still
//! in flight, and a backend writer makes many turns durable with one write and one fsync,
//! so a hot object is bounded by CPU, not by the disk.
//!
//! ```
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use stead_core::{Context, DurableObject, Handler, Result, Runtime};
//!
//! struct Counter { value: i64 }
//!
//! impl DurableObject for Counter {
//!     const CLASS: &'static str = "counter";
//!     type Env = ();
//!     async fn activate(ctx: &mut Context, _env: Arc<()>) -> Result<Self> {
//!         Ok(Counter { value: ctx.storage().get("value").await?.unwrap_or(0) })
//!     }
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Increment { by: i64 }
//!
//! impl Handler<Increment> for Counter {
//!     type Reply = Result<i64>;
//!     async fn handle(&mut self, msg: Increment, ctx: &mut Context) -> Result<i64> {
//!         self.value += msg.by;
//!         ctx.storage().put("value", &self.value)?;
//!         Ok(self.value)
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let rt = Runtime::builder().sqlite(dir.path()).build().await?;
//! let counters = rt.namespace::<Counter>(())?;
//! let views = counters.get_by_name("page-views");
//! views.call(Increment { by: 1 }).await?;
//! assert_eq!(views.call(Increment { by: 2 }).await?, 3);
//! rt.shutdown().await?;
//!
//! // Everything acknowledged is on disk: a new runtime on the same directory sees it.
//! let rt = Runtime::builder().sqlite(dir.path()).build().await?;
//! let views = rt.namespace::<Counter>(())?.get_by_name("page-views");
//! assert_eq!(views.call(Increment { by: 0 }).await?, 3);
//! # rt.shutdown().await?;
//! # Ok::<(), stead_core::Error>(()) }).unwrap();
//! ```
//!
//! `call` flattens a handler's `Result` with the runtime's failures (`ask` keeps them apart).
//! Each promise of the runtime has a test in this crate's `tests/`; the storage and alarm
//! promises are a conformance suite any backend can run (`testing`, with the `test-util`
//! feature).

mod backend;
mod clock;
mod config;
mod context;
mod error;
mod executor;
#[cfg(feature = "http")]
pub mod http;
mod id;
mod input;
mod join;
mod log;
mod object;
mod remembered;
mod remote;
mod runtime;
mod schedule;
mod scheduler;
mod shared;
mod sql;
mod storage;
// Sockets are accepted through the `http` feature; without it this room is unused.
#[cfg(feature = "test-util")]
pub mod testing;
#[cfg_attr(not(feature = "http"), allow(dead_code))]
mod websocket;

pub use backend::{
    AlarmChange, Backend, CommitBatch, Durability, FenceToken, ListOptions, MemoryBackend,
    NamedObject, ObjectEntry, ObjectRef, Value,
};
#[cfg(feature = "sqlite")]
pub use backend::{BackupReport, SqliteBackend, SqliteOptions};
/// The date and time library of every timestamp in the API (instants are
/// `chrono::DateTime<Utc>`; durations are `std::time::Duration` throughout).
pub use chrono;
pub use clock::{Clock, ManualClock, Sleep, SystemClock, from_ms, to_ms};
pub use config::{NamespaceOptions, RuntimeConfig};
pub use context::{Context, Deferred};
pub use error::{BoxError, Error, MAX_PARKED_PER_OBJECT, Result};
pub use executor::{NamedPage, Namespace, ObjectPage, Stub};
pub use id::ObjectId;
pub use input::{
    InvalidInput, MAX_NAME_CHARS, MAX_OBJECT_NAME_BYTES, MAX_PAGE, duration_ms, validate_ms,
    validate_name, validate_object_name, validate_page_limit,
};
pub use log::{Log, LogOrder, LogPage, LogQuery};
pub use object::{AlarmInfo, DeferredHandler, DurableObject, Handler, Message, Outcome};
pub use remembered::{Remembered, RememberedLayout, Remembering, check_room};
pub use remote::{Cluster, Handover, Leaving, Location, PeerCall, PeerReply, Remote};
pub use runtime::{ClassVitals, Runtime, RuntimeBuilder, Vitals};
pub use schedule::{ScheduleInfo, ScheduleKind, ScheduledJob, Schedules, check_cron};
pub use sql::{
    Cursor, Description, Params, Sql, SqlConfig, SqlError, SqlErrorKind, SqlValue, split_statements,
};
pub use storage::{MAX_KEY_BYTES, ObjectDocument, Storage};
pub use websocket::{
    MAX_ATTACHMENT_BYTES, MAX_TAG_CHARS, MAX_TAGS, WebSocket, WebSocketClose, WebSocketConfig,
    WebSocketMessage,
};
