#!/usr/bin/env bash
# The project's test command: install the SIP peers the integration tests need (SIPp,
# baresip, linphonec, Kamailio), then build and run every test target. Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --all-targets "$@"

# The fuzz targets (fuzz/, see the README's Fuzzing section) are built here but not run: a
# target that no longer compiles against the library fails CI. Their seeds and crash inputs are
# replayed by tests/fuzz_regressions.rs above. libfuzzer-sys builds on stable without
# cargo-fuzz's sanitizer flags (the binaries link libFuzzer but carry no coverage
# instrumentation), so this needs neither nightly nor cargo-fuzz installed. With
# CARGO_TARGET_DIR=target it reuses the dependencies `cargo test` just compiled (fuzz/Cargo.toml
# has the same dev profile, fuzz/Cargo.lock the same versions): it compiles only libfuzzer-sys,
# ivrd itself and the eight small binaries, about two minutes on a 2-core machine.
CARGO_TARGET_DIR=target cargo build --manifest-path fuzz/Cargo.toml --bins
