//! The conformance suite of `stead_core::testing`, run against every backend of this crate.

use stead_core::testing::FaultyBackend;
use stead_core::{Durability, MemoryBackend};

mod memory {
    stead_core::conformance!(|b, _| b.memory());
}

mod sqlite {
    stead_core::conformance!(|b, dir| b.sqlite(dir).shards(2));
}

mod sqlite_process_crash_safe {
    use super::*;
    stead_core::conformance!(|b, dir| b
        .sqlite(dir)
        .shards(2)
        .durability(Durability::ProcessCrashSafe));
}

mod faulty_wrapper {
    use super::*;
    stead_core::conformance!(|b, _| b.backend(FaultyBackend::new(MemoryBackend::new())));
}
