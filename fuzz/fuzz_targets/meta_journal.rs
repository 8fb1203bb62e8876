#![no_main]
//! See `starling_fuzz_targets::meta_journal`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz_targets::meta_journal(data));
