//! The core's conformance suite, unchanged, against PostgreSQL (one schema per test), and
//! the SIGKILL crash test.

mod support;

mod postgres {
    stead_core::conformance!(|b, dir| crate::support::setup(b, dir));
}

mod crash {
    stead_core::crash_test!(|b, dir| crate::support::setup(b, dir));
}
