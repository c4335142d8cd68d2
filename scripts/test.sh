#!/usr/bin/env bash
# The project's test command: install the SIP peers the integration tests need (SIPp,
# baresip, linphonec, Kamailio), then build and run every test target. Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh

# A clean build of every test target and the fuzz targets takes about 3 GB under target/
# (Cargo.toml keeps line tables only in debug builds). Incremental compilation would add as
# much again for nothing on a fresh checkout, so it is off unless asked for. A disk too full
# for the build says so here, not as an LLVM I/O error half-way through.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
need_kb=$((4 * 1024 * 1024))
mkdir -p target
free_kb=$(df -Pk target | awk 'NR == 2 { print $4 }')
if [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
    echo "test.sh: $((free_kb / 1024)) MiB free under $(pwd)/target; the build needs about 4 GiB" >&2
    du -sh target >&2 || true
    exit 1
fi
cargo test --all-targets "$@"

# The fuzz targets (fuzz/, see the README's Fuzzing section) are built here but not run: a
# target that no longer compiles against the library fails CI. Their seeds and crash inputs are
# replayed by tests/fuzz_regressions.rs above. libfuzzer-sys builds on stable without
# cargo-fuzz's sanitizer flags (the binaries link libFuzzer but carry no coverage
# instrumentation), so this needs neither nightly nor cargo-fuzz installed. With
# CARGO_TARGET_DIR=target it reuses the dependencies `cargo test` just compiled (fuzz/Cargo.toml
# has the same dev profile, fuzz/Cargo.lock the same versions): it compiles only libfuzzer-sys,
# ivrd itself and the nine small binaries, about two minutes on a 2-core machine.
CARGO_TARGET_DIR=target cargo build --manifest-path fuzz/Cargo.toml --bins
