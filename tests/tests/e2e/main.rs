//! The end-to-end tests, one binary: the harness links once, and tests of different modules
//! share the two test threads. Tests that measure time, memory or descriptors, hold a thousand
//! sockets or run heavy processes take `warden_tests::exclusive` so that no two of them overlap.
//!
//!   cargo test -p warden-tests --test e2e [<module>::<test name filter>]

mod cargo_lambda_watch;
mod cloudwatch_init_cost;
mod cloudwatch_sink;
mod demo;
mod dns_lambda;
mod drills;
mod egress_costs;
mod emulator_selftest;
mod execution_models;
mod findings_netns;
mod layer;
mod lifecycle;
mod node_runtimes;
mod own_function;
mod proxy_e2e;
mod proxy_memory;
mod rate_limits;
mod sam_template;
mod warm_netns;
mod wrapper;
