//! WebSocket frames from Home Assistant: see `checks::ha_decode`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::ha_decode(data));
