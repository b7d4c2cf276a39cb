//! The `guest_response` boundary: see `corral::fuzzing::guest_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::guest_response(data));
