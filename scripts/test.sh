#!/usr/bin/env bash
# The project's test command: install the SIP peers the integration tests need (SIPp,
# baresip), then build and run every test target. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --all-targets "$@"
