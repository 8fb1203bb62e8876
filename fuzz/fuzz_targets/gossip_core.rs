#![no_main]
//! See `starling_fuzz_targets::gossip_core`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz_targets::gossip_core(data));
