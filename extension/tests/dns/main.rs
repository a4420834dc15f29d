//! The DNS listener's integration tests, in one binary so the harness links once:
//! `cargo test -p egress-warden --test dns [FILTER]`.

mod answers;
mod dnsmasq;
mod failures;
mod support;
mod transport;
