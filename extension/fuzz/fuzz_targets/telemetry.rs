//! A Telemetry API batch body as Lambda POSTs it to the listener.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let batch = egress_warden::telemetry::parse_batch(data);
    std::hint::black_box(batch);
});
