//! The `http_request` boundary: see `corral::fuzzing::http_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: corral::fuzzing::http_request_init(), |data: &[u8]| {
    corral::fuzzing::http_request(data)
});
