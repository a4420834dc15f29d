//! An upstream response prepared for the cache and rendered for a client's query.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_warden::dns::fuzz::answer(data));
