//! Test harness for egress-warden: a faithful local Lambda emulator ([`emulator`]), an EMF
//! validator written from the CloudWatch Embedded Metric Format specification ([`emf`]) and
//! the totals `lambda-emulator` prints ([`emf_summary`]),
//! helpers to find and stage the extension binary ([`warden`]), a tiny blocking HTTP client
//! for the std-only test doubles ([`blocking_http`]), a dnsmasq upstream for DNS ([`dnsmasq`]),
//! the Python interpreter and upstream of the proxy tests ([`python`]), moto's CloudWatch server
//! ([`moto`]), and a network-namespace
//! lab for broken networks ([`netns`]); for the end-to-end tests, a guard that keeps the heavy
//! ones apart ([`serial`]), the check of what a test needs from the machine
//! ([`prerequisite`]), child processes ended with the test ([`process`]), polling
//! ([`wait`]) and curl ([`curl`]).

pub mod blocking_http;
pub mod curl;
pub mod dnsmasq;
pub mod emf;
pub mod emf_summary;
pub mod emulator;
pub mod load;
pub mod moto;
pub mod netns;
pub mod node;
pub mod prerequisite;
pub mod process;
pub mod python;
pub mod serial;
pub mod wait;
pub mod warden;

pub use prerequisite::prerequisite;
pub use serial::{exclusive, exclusive_async, one_at_a_time};
