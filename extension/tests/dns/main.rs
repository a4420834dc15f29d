//! The DNS listener's integration tests, in one binary so the harness links once:
//! `cargo test -p egress-warden --test dns [FILTER]`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test set-up: a failure is the test failing"
)]

mod answers;
mod dnsmasq;
mod failures;
mod support;
mod transport;
