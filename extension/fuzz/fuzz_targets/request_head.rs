//! A client's request head down the proxy's CONNECT, forward and route paths.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_warden::proxy::fuzz::request_head(data));
