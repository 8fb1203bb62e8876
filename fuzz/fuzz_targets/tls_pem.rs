#![no_main]
//! See `starling_fuzz_targets::tls_pem`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz_targets::tls_pem(data));
