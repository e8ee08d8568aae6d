#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, lints, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

echo "== chaos sweep: 2,000 seeds, all faults (profile sim: release speed, assertions on)"
cargo run --profile sim --locked -p chat-sim --bin chatsim -- run --seeds 0..2000 --faults all
# chatsim exits non-zero on any failing seed (and `set -e` stops here), so reaching this
# line means every seed passed.
echo "sweep: 2000 passed, 0 failed"
