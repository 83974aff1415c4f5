//! The probe and harness of `stead_core::testing`, with a short way to pick one of this
//! crate's backends.
#![allow(dead_code, unused_imports, unreachable_pub, missing_docs)]

use std::sync::Arc;

pub use stead_core::testing::probe::*;
pub use stead_core::testing::start_time;
use stead_core::testing::{FaultyBackend, Harness as Inner};
use stead_core::{Durability, ManualClock, MemoryBackend, Runtime, RuntimeBuilder};

/// Which backend a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Memory,
    Sqlite,
    SqliteProcessCrashSafe,
    FaultyMemory,
}

/// A runtime on a backend, with the fault wrapper when there is one.
pub struct Harness {
    pub rt: Runtime,
    pub clock: ManualClock,
    pub faulty: Option<Arc<FaultyBackend>>,
    pub dir: tempfile::TempDir,
}

pub async fn harness(kind: Kind) -> Harness {
    harness_with(kind, |b| b).await
}

pub async fn harness_with(
    kind: Kind,
    tune: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
) -> Harness {
    let faulty = matches!(kind, Kind::FaultyMemory)
        .then(|| Arc::new(FaultyBackend::new(MemoryBackend::new())));
    let wrapper = faulty.clone();
    let setup = move |b: RuntimeBuilder, dir: &std::path::Path| match kind {
        Kind::Memory => b.memory(),
        Kind::Sqlite => b.sqlite(dir).shards(2),
        Kind::SqliteProcessCrashSafe => b
            .sqlite(dir)
            .shards(2)
            .durability(Durability::ProcessCrashSafe),
        Kind::FaultyMemory => b.backend(wrapper.clone().expect("made above")),
    };
    let Inner { rt, clock, dir, .. } = Inner::start_with(&setup, tune).await;
    Harness {
        rt,
        clock,
        faulty,
        dir,
    }
}
