//! The archive verifier over arbitrary bytes: see `checks::archive_verify`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::archive_verify(data));
