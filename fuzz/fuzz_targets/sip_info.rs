#![no_main]
// The body is ivrd::fuzzing::sip_info, shared with tests/fuzz_regressions.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ivrd::fuzzing::sip_info(data));
