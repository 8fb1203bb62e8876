#![no_main]
//! See `starling_fuzz_targets::stored_record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz_targets::stored_record(data));
