//! # stead-budget: a budget governor
//!
//! A governor splits each cycle's budget across processors by integer weight, in integer
//! minor units, and lets them spend it through two-phase reservations: reserve first (only
//! if it fits), then commit what was actually spent (freeing the rest), void, or let it
//! expire. Two workers can never both spend the same remainder.
//!
//! [`ledger`] is the pure room: the split, the accounts, cycles with rollover, reservations
//! and after-the-fact usage, with the invariants property-tested. The durable object
//! ([`Governor`]) keeps a ledger per budget, starts cycles by schedule and expires
//! reservations by schedule; [`BudgetClient`] is its typed client.
//!
//! Over HTTP (see `router`, feature `http`, on by default): `PUT|GET|DELETE /budgets/{name}`,
//! `GET .../plan`, `.../history`, `.../events`, `POST .../cycles`, `.../reservations`,
//! `.../reservations/{id}/commit`, `.../reservations/{id}/void`, `.../usage`.
//!
//! ```
//! use stead_budget::ledger::{Ledger, Rollover};
//!
//! let mut books = Ledger::default();
//! let weights = vec![("keywords".to_owned(), 5), ("content".to_owned(), 3), ("seo".to_owned(), 2)];
//! books.start_cycle(10_000, &weights, Rollover::Off, 50, 0);
//! let r = books.reserve("job-1", "keywords", 1_200, 60_000, 0).unwrap();
//! books.commit(&r.id, 400, 1_000).unwrap(); // spent 400, 800 freed
//! assert_eq!(books.current().unwrap().accounts["keywords"].available(), 4_600);
//! ```

mod client;
mod error;
#[cfg(feature = "http")]
mod http;
pub mod ledger;
mod object;
mod spec;

pub use client::{BudgetClient, BudgetConfig};
pub use error::BudgetError;
#[cfg(feature = "http")]
pub use http::BudgetPattern;
pub use ledger::{LedgerError, Rollover};
pub use object::{
    AccountView, BudgetEvent, BudgetState, Commit, Configure, CycleView, EventKind, Events,
    Governor, History, Inspect, MAX_PAGE, MAX_TTL_MS, Plan, PlanLine, PlanPhase, Remove,
    ReservationView, Reserve, Reserved, StartCycle, Usage, Void,
};
pub use spec::{
    BudgetSpec, MAX_AMOUNT, MAX_HISTORY, MAX_PROCESSORS, MAX_WEIGHT, ProcessorSpec, TierSpec,
};

/// The budget routes, without a prefix (the umbrella crate mounts them under `/budgets`), in
/// any app state.
///
/// Say who may call them when you mount them: `.bearer(tokens)?` (or
/// `.unauthenticated()`, in so many words); see [`stead_core::http::Routes`].
#[cfg(feature = "http")]
pub fn router<S: Clone + Send + Sync + 'static>(
    rt: &stead_core::Runtime,
) -> stead_core::Result<stead_core::http::Routes<S>> {
    <BudgetPattern as stead_core::http::Pattern>::routes(rt)
}

/// The OpenAPI 3.1 description of [`router`]'s routes (paths without a prefix).
#[cfg(feature = "http")]
pub fn openapi() -> utoipa::openapi::OpenApi {
    <BudgetPattern as stead_core::http::Pattern>::openapi()
}
