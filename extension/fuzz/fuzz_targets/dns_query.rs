//! A client's DNS packet: header, question and OPT parsing, rejects written back.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_warden::dns::fuzz::query(data));
