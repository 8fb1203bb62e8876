#![no_main]
//! See `starling_fuzz_targets::kafka_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz_targets::kafka_request(data));
