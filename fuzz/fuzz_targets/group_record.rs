#![no_main]
//! See `starling_fuzz_targets::group_record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz_targets::group_record(data));
