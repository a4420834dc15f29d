//! Test harness for egress-warden: a faithful local Lambda emulator ([`emulator`]), an EMF
//! validator written from the CloudWatch Embedded Metric Format specification ([`emf`]),
//! helpers to find and stage the extension binary ([`warden`]), a tiny blocking HTTP client
//! for the std-only test doubles ([`blocking_http`]), a dnsmasq upstream for DNS ([`dnsmasq`]),
//! the Python interpreter and upstream of the proxy tests ([`python`]), and a network-namespace
//! lab for broken networks ([`netns`]).

pub mod blocking_http;
pub mod dnsmasq;
pub mod emf;
pub mod emulator;
pub mod load;
pub mod netns;
pub mod python;
pub mod warden;
