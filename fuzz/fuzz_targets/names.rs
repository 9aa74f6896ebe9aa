//! Names from Home Assistant turned into file names: see `checks::names`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::names(data));
