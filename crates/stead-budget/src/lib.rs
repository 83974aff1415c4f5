//! # stead-budget: a budget governor (in progress)
//!
//! A governor splits each cycle's budget across processors by integer weight, in integer
//! minor units, and lets them spend it through two-phase reservations: reserve first (only
//! if it fits), then commit what was actually spent (freeing the rest), void, or let it
//! expire. Two workers can never both spend the same remainder.
//!
//! This crate holds, so far, its pure room, [`ledger`]: the split, the accounts, cycles with
//! rollover, reservations and after-the-fact usage, with the invariants property-tested.
//! The durable object, its client and routes are not written yet; until they are, the crate
//! is not in the umbrella.
//!
//! ```
//! use stead_budget::ledger::{Ledger, Rollover};
//!
//! let mut books = Ledger::default();
//! let weights = vec![("keywords".to_owned(), 5), ("content".to_owned(), 3), ("seo".to_owned(), 2)];
//! books.start_cycle(10_000, &weights, Rollover::Off, 50, 0);
//! let r = books.reserve("job-1", "keywords", 1_200, 60_000, 0).unwrap();
//! books.commit(&r.id, 400).unwrap(); // spent 400, 800 freed
//! assert_eq!(books.current().unwrap().accounts["keywords"].available(), 4_600);
//! ```

pub mod ledger;
