//! egress-warden: an AWS Lambda external extension that makes a function's outbound traffic
//! fast, predictable and observable.
//!
//! Data flows one way: Lambda events and platform telemetry ([`telemetry`]) drive
//! [`lifecycle`]; traffic flows through [`proxy`] → [`dns`] / connection pools → upstream;
//! every observation goes to the one [`metrics::Recorder`], which the EMF writer reads. [`warm`] opens connections through the
//! proxy ahead of need. The diagnosis ([`diagnose`]) names network symptoms (findings) from the
//! recorder's journal of events and posts them on the findings board in [`context`], which the
//! log, the EMF flush and the status page carry. [`aws`] reads what AWS endpoint host names say
//! (region, service).

pub mod aws;
pub mod clock;
pub mod config;
pub mod diagnose;
pub mod dns;
pub mod error_chain;
pub mod findings;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod shutdown;
pub mod telemetry;
pub mod warm;
