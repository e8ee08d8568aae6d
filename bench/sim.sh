#!/usr/bin/env bash
# Simulator speed: the default sweep (256 seeds, all faults) on one core, then on all
# cores. Prints chatsim's JSON summaries: events_per_sec and acceleration (simulated
# time / wall time) are the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile sim --locked -p chat-sim --bin chatsim
echo "== one core"
target/sim/chatsim run --jobs 1 --json
echo "== all cores"
target/sim/chatsim run --json
