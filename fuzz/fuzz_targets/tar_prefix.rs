//! `backup.json` from an archive prefix: see `checks::tar_prefix`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::tar_prefix(data));
