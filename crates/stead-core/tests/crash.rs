//! Crash consistency of the SQLite store with real SIGKILLs: no acknowledged write is ever
//! lost, in either durable mode (a SIGKILL leaves the operating system's page cache alone, so
//! `process-crash-safe` must lose nothing either). The harness is `stead_core::crash_test!`.

stead_core::crash_test!(|b, dir| b.sqlite(dir));
