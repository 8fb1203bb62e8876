#![no_main]
//! See `starling_fuzz_targets::status_json`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz_targets::status_json(data));
