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
//! // Mount every enabled pattern under /stead in your own app, for holders of a token:
//! let token = "a-long-random-admin-token";
//! let app: axum::Router = axum::Router::new().nest("/stead", stead::router(&rt)?.bearer([token])?);
//! # let _ = app;
//! rt.shutdown().await?;
//! # Ok::<(), stead::Error>(()) }).unwrap();
//! ```

/// The date and time types of the API (`ctx.now()`, alarms).
pub use stead_core::chrono;
pub use stead_core::{
    AlarmInfo, Backend, ClassVitals, Clock, Context, Deferred, DeferredHandler, Durability,
    DurableObject, Error, Handler, InvalidInput, ListOptions, Log, LogOrder, LogPage, LogQuery,
    MAX_NAME_CHARS, ManualClock, MemoryBackend, Message, Namespace, NamespaceOptions,
    ObjectDocument, ObjectEntry, ObjectId, ObjectPage, Result, Runtime, RuntimeBuilder,
    RuntimeConfig, ScheduleInfo, ScheduleKind, ScheduledJob, Schedules, Storage, Stub, SystemClock,
    Vitals, WebSocket, WebSocketClose, WebSocketConfig, WebSocketMessage, validate_ms,
    validate_name,
};
#[cfg(feature = "sqlite")]
pub use stead_core::{BackupReport, SqliteBackend, SqliteOptions};
/// SQL in every object (`ctx.sql()`): see the guide's chapter "SQL in an object".
pub use stead_core::{
    Cursor, Description, Params, Sql, SqlConfig, SqlError, SqlErrorKind, SqlValue,
    split_statements, sql_params,
};

/// HTTP plumbing shared by the pattern routers: problem+json errors, the JSON and `Name`
/// extractors, the OpenAPI pieces, and the `Pattern` trait.
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

/// Entity-scoped storage for workflows: versioned values, lists, quotas, a lifetime and
/// checkpointed steps (feature `sidecar`).
#[cfg(feature = "sidecar")]
pub use stead_sidecar as sidecar;

/// Sessions that expire by themselves, a tower-sessions store, and per-user sign-out
/// everywhere (feature `session`).
#[cfg(feature = "session")]
pub use stead_session as session;

/// Adaptive batch controllers: policies that find the batch size from success and
/// latency, a circuit breaker, and work leased to workers or run in process (feature
/// `controller`).
#[cfg(feature = "controller")]
pub use stead_controller as controller;

/// Budget governors: allocation by weight in integer minor units, two-phase reservations
/// that never overspend, cycles with rollover, alerts (feature `budget`).
#[cfg(feature = "budget")]
pub use stead_budget as budget;

/// A SQL database per name, spoken to over the libSQL remote protocol by stock clients
/// (feature `databases`).
#[cfg(feature = "databases")]
pub use stead_databases as databases;
/// Feature flags: flagd's definitions, evaluated from committed snapshots without a turn,
/// served over OpenFeature's remote evaluation protocol (feature `flags`).
#[cfg(feature = "flags")]
pub use stead_flags as flags;
/// The PostgreSQL backend: objects, alarms and the registry in PostgreSQL, one active node
/// per deployment by a fenced lease (feature `postgres`).
#[cfg(feature = "postgres")]
pub use stead_postgres as postgres;
/// Event reactors: decisions per entity with an idempotent ingest and a durable outbox,
/// pulled or pushed to signed webhooks (feature `reactor`).
#[cfg(feature = "reactor")]
pub use stead_reactor as reactor;

/// Calls `$f::<P>(args)?` for every pattern `P` enabled by Cargo features: the one list of
/// patterns that [`router`], [`openapi`] and [`configure`] (and so the server) go through.
/// A new pattern is one line here.
macro_rules! for_each_pattern {
    ($f:ident ( $($arg:expr),* )) => {{
        #[cfg(feature = "ratelimit")]
        $f::<stead_ratelimit::RateLimitPattern>($($arg),*)?;
        #[cfg(feature = "counter")]
        $f::<stead_counter::CounterPattern>($($arg),*)?;
        #[cfg(feature = "lock")]
        $f::<stead_lock::LockPattern>($($arg),*)?;
        #[cfg(feature = "leader")]
        $f::<stead_leader::LeaderPattern>($($arg),*)?;
        #[cfg(feature = "sidecar")]
        $f::<stead_sidecar::SidecarPattern>($($arg),*)?;
        #[cfg(feature = "session")]
        $f::<stead_session::SessionPattern>($($arg),*)?;
        #[cfg(feature = "controller")]
        $f::<stead_controller::ControllerPattern>($($arg),*)?;
        #[cfg(feature = "budget")]
        $f::<stead_budget::BudgetPattern>($($arg),*)?;
        #[cfg(feature = "flags")]
        $f::<stead_flags::FlagsPattern>($($arg),*)?;
        #[cfg(feature = "reactor")]
        $f::<stead_reactor::ReactorPattern>($($arg),*)?;
        #[cfg(feature = "databases")]
        $f::<stead_databases::DatabasesPattern>($($arg),*)?;
    }};
}

/// The routes of every pattern enabled by Cargo features, each under its own prefix
/// (`/counters`, `/locks`, ...), and the few a protocol fixes at the root (OpenFeature's
/// `/ofrep/v1/...` for the default flag set), in any app state `S`. Say who may call them
/// as you mount them: `.bearer(tokens)?` answers 401 to a request without one of the
/// tokens; `.unauthenticated()` is the choice, in so many words, of a mount no untrusted
/// caller can reach (see [`http::Routes`], and the guide's security section for what each
/// route reveals). Then `.nest()` or `.merge()` it anywhere in an axum app; wrong methods
/// and oversized bodies on its routes get RFC 9457 problem+json answers (each pattern's
/// routes carry [`http::ProblemLayer`]; give your app a fallback such as
/// [`http::not_found`] for unknown paths). With no pattern enabled it has no routes.
///
/// To mount one pattern, use its own router (`stead::counter::router(&rt)`, ...) with
/// `default-features = false` and the pattern's feature.
///
/// Set patterns up with other settings first, with [`configure`] or their clients'
/// `with_config`; otherwise they run with their defaults.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let rt = stead::Runtime::builder().memory().build().await?;
/// let token = "a-long-random-admin-token";
/// let app: axum::Router = axum::Router::new().nest("/stead", stead::router(&rt)?.bearer([token])?);
/// # let _ = app;
/// # rt.shutdown().await?;
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
pub fn router<S: Clone + Send + Sync + 'static>(rt: &Runtime) -> Result<http::Routes<S>> {
    #[allow(unused_mut)]
    let mut router = axum::Router::new();
    #[allow(dead_code)]
    fn nest<P: http::Pattern>(
        router: &mut axum::Router<impl Clone + Send + Sync + 'static>,
        rt: &Runtime,
    ) -> Result<()> {
        let routes = P::router(rt)?;
        *router = std::mem::take(router)
            .nest(P::PREFIX, routes)
            .merge(P::root_router(rt)?);
        Ok(())
    }
    for_each_pattern!(nest(&mut router, rt));
    let _ = rt;
    Ok(http::Routes::new(router))
}

/// Sets up every enabled pattern on `rt` from its table of `settings` (keyed by
/// [`http::Pattern::SETTINGS_KEY`]: `ratelimit`, `counters`, `locks`, `leaders`, `sidecars`, `sessions`, `controllers`, `budgets`, `flags`, `reactors`), which it
/// removes from the map; a pattern without a table gets its defaults. What is left in the
/// map belongs to no enabled pattern. The server calls this with the tables of its
/// configuration file before it builds the router.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let rt = stead::Runtime::builder().memory().build().await?;
/// let mut settings = serde_json::json!({
///     "ratelimit": { "policies": { "api": { "limit": 100, "period_ms": 60000 } } },
///     "server": { "bind": "127.0.0.1:8080" },
/// });
/// stead::configure(&rt, settings.as_object_mut().unwrap())?;
/// # #[cfg(feature = "ratelimit")]
/// assert!(stead::ratelimit::RateLimitClient::new(&rt)?.named("api").is_ok());
/// assert_eq!(settings.as_object().unwrap().len(), 1, "only the server's table is left");
/// # rt.shutdown().await?;
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
pub fn configure(
    rt: &Runtime,
    settings: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    #[allow(dead_code)]
    fn one<P: http::Pattern>(
        rt: &Runtime,
        settings: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let parsed = match settings.remove(P::SETTINGS_KEY) {
            Some(table) => serde_json::from_value(table)
                .map_err(|e| Error::invalid_config(format!("[{}]: {e}", P::SETTINGS_KEY)))?,
            None => P::Settings::default(),
        };
        P::configure(rt, parsed).map_err(|e| match e {
            Error::InvalidConfig { detail } => {
                Error::invalid_config(format!("[{}]: {detail}", P::SETTINGS_KEY))
            }
            other => other,
        })
    }
    for_each_pattern!(one(rt, settings));
    let _ = (rt, settings);
    Ok(())
}

/// Checks pattern settings without a runtime (a server checks its configuration file
/// before it opens its store): every key must be the table of an enabled pattern, and every
/// table must be valid settings for it. The error names the table and the fault.
pub fn check_settings(settings: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    #[allow(dead_code)]
    fn key<P: http::Pattern>(keys: &mut Vec<&'static str>) -> Result<()> {
        keys.push(P::SETTINGS_KEY);
        Ok(())
    }
    #[allow(dead_code)]
    fn parse<P: http::Pattern>(
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        if let Some(table) = settings.get(P::SETTINGS_KEY) {
            serde_json::from_value::<P::Settings>(table.clone())
                .map_err(|e| Error::invalid_config(format!("[{}]: {e}", P::SETTINGS_KEY)))?;
        }
        Ok(())
    }
    #[allow(unused_mut)]
    let mut keys: Vec<&'static str> = Vec::new();
    for_each_pattern!(key(&mut keys));
    if let Some(unknown) = settings.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(Error::invalid_config(format!(
            "unknown setting {unknown:?} (the pattern tables of this build: {})",
            if keys.is_empty() {
                "none".to_owned()
            } else {
                keys.join(", ")
            }
        )));
    }
    for_each_pattern!(parse(settings));
    Ok(())
}

/// The OpenAPI 3.1 description of every route [`router`] serves, generated from each
/// pattern's handlers and types, with the problem responses every route may give
/// (serialize it with `serde_json`).
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
    #[allow(dead_code)]
    fn nest<P: http::Pattern>(doc: &mut utoipa::openapi::OpenApi) -> Result<()> {
        let taken = std::mem::replace(doc, utoipa::openapi::OpenApiBuilder::new().build());
        let theirs = P::openapi();
        // Schemas are named by their Rust type's name: two patterns' types of one name
        // would describe one pattern's body with the other's schema.
        if let (Some(ours), Some(new)) = (&taken.components, &theirs.components) {
            for (name, schema) in &new.schemas {
                let same = ours.schemas.get(name).is_none_or(|s| s == schema);
                debug_assert!(same, "two schemas are named {name} ({})", P::PREFIX);
            }
        }
        // A pattern's `/` is its prefix itself, as axum nests it.
        *doc = taken.nest_with_path_composer(P::PREFIX, theirs, |base, path| {
            if path == "/" {
                base.to_owned()
            } else {
                format!("{base}{path}")
            }
        });
        if let Some(root) = P::root_openapi() {
            doc.merge(root);
        }
        Ok(())
    }
    #[allow(unused_mut)]
    let mut build = || -> Result<()> {
        for_each_pattern!(nest(&mut doc));
        Ok(())
    };
    // Nesting cannot fail; the list's `?` is for the other uses.
    let _ = build();
    stead_core::http::document_problems(&mut doc);
    doc
}

/// The README and every chapter of the guide, compiled and run as doc tests, so that no code
/// block in them goes stale.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../README.md")]
    mod readme {}
    #[doc = include_str!("../book/src/introduction.md")]
    mod introduction {}
    #[doc = include_str!("../book/src/quick-start.md")]
    mod quick_start {}
    #[doc = include_str!("../book/src/getting-started.md")]
    mod getting_started {}
    #[doc = include_str!("../book/src/model.md")]
    mod model {}
    #[doc = include_str!("../book/src/custom-object.md")]
    mod custom_object {}
    #[doc = include_str!("../book/src/websockets.md")]
    mod websockets {}
    #[doc = include_str!("../book/src/sql.md")]
    mod sql {}
    #[doc = include_str!("../book/src/patterns.md")]
    mod patterns {}
    #[doc = include_str!("../book/src/patterns/ratelimit.md")]
    mod ratelimit {}
    #[doc = include_str!("../book/src/patterns/counter.md")]
    mod counter {}
    #[doc = include_str!("../book/src/patterns/lock.md")]
    mod lock {}
    #[doc = include_str!("../book/src/patterns/leader.md")]
    mod leader {}
    #[cfg(feature = "sidecar")]
    #[doc = include_str!("../book/src/patterns/sidecar.md")]
    mod sidecar {}
    #[cfg(feature = "session")]
    #[doc = include_str!("../book/src/patterns/session.md")]
    mod session {}
    #[cfg(feature = "controller")]
    #[doc = include_str!("../book/src/patterns/controller.md")]
    mod controller {}
    #[cfg(feature = "budget")]
    #[doc = include_str!("../book/src/patterns/budget.md")]
    mod budget {}
    #[cfg(feature = "flags")]
    #[doc = include_str!("../book/src/patterns/flags.md")]
    mod flags {}
    #[cfg(feature = "reactor")]
    #[doc = include_str!("../book/src/patterns/reactor.md")]
    mod reactor {}
    #[cfg(feature = "databases")]
    #[doc = include_str!("../book/src/patterns/databases.md")]
    mod databases {}
    #[doc = include_str!("../book/src/testing.md")]
    mod testing {}
    #[doc = include_str!("../book/src/deployment.md")]
    mod deployment {}
    #[doc = include_str!("../book/src/operations.md")]
    mod operations {}
    #[doc = include_str!("../book/src/benchmarks.md")]
    mod benchmarks {}
    #[doc = include_str!("../book/src/contributing.md")]
    mod contributing {}
    #[doc = include_str!("../book/src/comparison.md")]
    mod comparison {}
}
