//! A host name through normalisation and the policy's fixed points.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_warden::proxy::fuzz::host(data));
