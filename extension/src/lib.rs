//! egress-warden: an AWS Lambda external extension that makes a function's outbound traffic
//! fast, predictable and observable.
//!
//! Data flows one way: Lambda events drive [`lifecycle`]; traffic flows through [`proxy`] →
//! [`dns`] / connection pools → upstream; every observation goes to the one
//! [`metrics::Recorder`], which the EMF writer reads. [`warm`] opens connections through the
//! proxy ahead of need.

pub mod config;
pub mod context;
pub mod dns;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod warm;
