#![no_main]
// The body is ivrd::fuzzing::http_response, shared with tests/fuzz_regressions.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ivrd::fuzzing::http_response(data));
