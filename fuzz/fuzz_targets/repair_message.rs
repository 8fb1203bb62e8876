#![no_main]
//! See `starling_fuzz_targets::repair_message`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz_targets::repair_message(data));
