//! # stead: Durable Objects for Rust
//!
//! Addressable, single-threaded objects with their own durable storage and alarms, run in
//! your own process on an embedded SQLite store, plus a catalog of ready-made coordination
//! patterns, each enabled by a Cargo feature and mounted into an axum app by
//! [`router`].
//!
//! ```
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use stead::{Context, DurableObject, Handler, Result, Runtime};
//!
//! struct Visits { count: u64 }
//!
//! impl DurableObject for Visits {
//!     const CLASS: &'static str = "visits";
//!     type Env = ();
//!     async fn activate(ctx: &mut Context, _env: Arc<()>) -> Result<Self> {
//!         Ok(Visits { count: ctx.storage().get("count").await?.unwrap_or(0) })
//!     }
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Visit;
//!
//! impl Handler<Visit> for Visits {
//!     type Reply = Result<u64>;
//!     async fn handle(&mut self, _: Visit, ctx: &mut Context) -> Result<u64> {
//!         self.count += 1;
//!         ctx.storage().put("count", &self.count)?;
//!         Ok(self.count)
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let rt = Runtime::builder().sqlite(dir.path()).build().await?;
//! let page = rt.namespace::<Visits>(())?.get_by_name("/home");
//! assert_eq!(page.call(Visit).await?, 1);
//! // Mount every enabled pattern under /stead in your own app:
//! let app: axum::Router = axum::Router::new().nest("/stead", stead::router(&rt)?);
//! # let _ = app;
//! rt.shutdown().await?;
//! # Ok::<(), stead::Error>(()) }).unwrap();
//! ```

pub use stead_core::{
    AlarmInfo, Backend, Clock, Context, Deferred, Durability, DurableObject, Error, Handler,
    ListOptions, ManualClock, MemoryBackend, Message, Namespace, NamespaceOptions, ObjectEntry,
    ObjectId, ObjectPage, Result, Runtime, RuntimeBuilder, RuntimeConfig, ScheduleInfo,
    ScheduleKind, ScheduledJob, Schedules, Storage, Stub, SystemClock,
};
#[cfg(feature = "sqlite")]
pub use stead_core::{SqliteBackend, SqliteOptions};

/// HTTP plumbing shared by the pattern routers: problem+json errors, a JSON extractor, name
/// validation.
pub use stead_core::http;

/// Exact per-key rate limiting with a tower layer (feature `ratelimit`).
#[cfg(feature = "ratelimit")]
pub use stead_ratelimit as ratelimit;

/// Sharded counters: exact, durable, idempotent (feature `counter`).
#[cfg(feature = "counter")]
pub use stead_counter as counter;

/// Locks and semaphores with fencing tokens (feature `lock`).
#[cfg(feature = "lock")]
pub use stead_lock as lock;

/// Leader election with strictly increasing terms (feature `leader`).
#[cfg(feature = "leader")]
pub use stead_leader as leader;

/// The routes of every pattern enabled by Cargo features, each under its own prefix
/// (`/counters`, `/locks`, ...). `.nest()` or `.merge()` it anywhere in an axum app; wrong
/// methods and oversized bodies on its routes get RFC 9457 problem+json answers (each
/// pattern's routes carry [`http::ProblemLayer`]; give your
/// app a fallback such as [`http::not_found`] for unknown paths). With no pattern enabled
/// it has no routes.
pub fn router(rt: &Runtime) -> Result<axum::Router> {
    let _ = rt;
    #[allow(unused_mut)]
    let mut router = axum::Router::new();
    #[cfg(feature = "ratelimit")]
    {
        router = router.merge(stead_ratelimit::router(rt)?);
    }
    #[cfg(feature = "counter")]
    {
        router = router.merge(stead_counter::router(rt)?);
    }
    #[cfg(feature = "lock")]
    {
        router = router.merge(stead_lock::router(rt)?);
    }
    #[cfg(feature = "leader")]
    {
        router = router.merge(stead_leader::router(rt)?);
    }
    // Each pattern's routes carry `http::ProblemLayer` themselves; another layer here would
    // only run the same check again on every request.
    Ok(router)
}

/// The OpenAPI 3.1 description of every route [`router`] serves, generated from each
/// pattern's handlers and types (serialize it with `serde_json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[allow(unused_mut)]
    let mut doc = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("stead")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Durable objects and coordination patterns over HTTP. Every error is an RFC 9457 problem document.",
                ))
                .build(),
        )
        .build();
    #[cfg(feature = "ratelimit")]
    doc.merge(stead_ratelimit::openapi());
    #[cfg(feature = "counter")]
    doc.merge(stead_counter::openapi());
    #[cfg(feature = "lock")]
    doc.merge(stead_lock::openapi());
    #[cfg(feature = "leader")]
    doc.merge(stead_leader::openapi());
    stead_core::http::document_body_errors(&mut doc);
    doc
}
