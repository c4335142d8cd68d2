#![no_main]
// The body is ivrd::fuzzing::api_request, shared with tests/fuzz_regressions.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ivrd::fuzzing::api_request(data));
