//! What every stead crate's tests and benches share, written once (dev-only, not published).
//!
//! - [`TestRuntime`]: a runtime on a [`ManualClock`](stead_core::ManualClock), on the memory
//!   store or on SQLite in a temporary directory, that can be restarted on the same files.
//! - [`TestClient`]: calls an axum router without a socket, as a peer address of your choice.
//! - [`eventually`]: waits for a condition that background work will make true, sleeping
//!   between looks instead of spinning, and fails with a message when it never does.
//! - [`history`]: a history checker for registers (stale and backward reads).
//! - [`bench`]: a tokio runtime for benches and the fan-out of N callers that each run a
//!   series of operations, timed.
//!
//! ```
//! use std::time::Duration;
//! use stead_fixtures::TestRuntime;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let t = TestRuntime::sqlite().await;
//! t.advance(Duration::from_secs(60)).await;
//! let t = t.restart().await; // the same files, the same clock
//! t.shutdown().await.unwrap();
//! # });
//! ```

pub mod bench;
mod client;
pub mod history;
mod runtime;
mod wait;

pub use client::{TestClient, TestRequest, TestResponse};
pub use runtime::{TestRuntime, TestRuntimeBuilder};
pub use stead_core::testing::start_time;
pub use wait::eventually;
