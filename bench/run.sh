#!/usr/bin/env bash
# Benchmarks our 5-node chat cluster side by side with a 5-member etcd cluster, on
# loopback, data on the same disk, same load generator (chatbench), same clients and
# payload, the two taking turns at each concurrency; then the simulator's speed. Prints both results and the ratios ours/etcd.
#
#   bench/run.sh                       # everything, defaults below
#   DURATION=5 CLIENTS="1 16 64" PAYLOAD=256 bench/run.sh
#
# Knobs (environment): DURATION (s per phase, 3), WARMUP (s, 0.5), PAYLOAD (bytes, 256),
# CLIENTS ("1 16 64"), ETCD_TARGET (leader|all: which etcd members the clients call,
# leader), SIM (1: run chatsim; 0: skip), KEEP (1: keep the data dir), OUT (where the
# result files go, default the data dir), CHAT_NODE_ARGS (more
# chatnode flags, e.g. "--io-threads 2").
#
# Everything it starts runs in its own process group and is stopped on exit.
set -euo pipefail

DURATION=${DURATION:-3}
WARMUP=${WARMUP:-0.5}
PAYLOAD=${PAYLOAD:-256}
CLIENTS=${CLIENTS:-"1 16 64"}
ETCD_TARGET=${ETCD_TARGET:-leader}
SIM=${SIM:-1}
KEEP=${KEEP:-0}
NODES=5
CHAT_BASE_PORT=${CHAT_BASE_PORT:-27001}
ETCD_CLIENT_BASE_PORT=${ETCD_CLIENT_BASE_PORT:-23791}
ETCD_PEER_BASE_PORT=${ETCD_PEER_BASE_PORT:-23801}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin="$root/target/release"

# Processes, cleanup and the two clusters' setup, shared with bench/scale.sh.
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# -- setup ---------------------------------------------------------------------------
ensure_etcd

log "building chatnode, chatbench, chatsim (release)"
cargo build --release -q -p chat-node -p chat-bench -p chat-sim

# One directory on the same disk for both systems' data.
dir=$(mktemp -d "${TMPDIR:-/tmp}/chatbench.XXXXXX")
OUT=${OUT:-$dir}
mkdir -p "$OUT"
trap cleanup EXIT
trap 'exit 130' INT TERM
ours="$OUT/ours.jsonl"
theirs="$OUT/etcd.jsonl"
: >"$ours"
: >"$theirs"

# Each group's leader is the server process itself, so chatbench can read the servers'
# CPU time and context switches from their pids.
run_bench() { # system endpoints clients output server-pids
    "$bin/chatbench" run --system "$1" --endpoints "$2" --clients "$3" \
        --payload-bytes "$PAYLOAD" --duration-secs "$DURATION" --warmup-secs "$WARMUP" \
        --ops write,read --server-pids "$5" --json | tee -a "$4"
}

# -- etcd ----------------------------------------------------------------------------
log "starting 5 etcd members ($($etcd_bin --version | head -1)) in $dir"
start_etcd
wait_etcd_healthy
etcd_targets=$etcd_endpoints
if [ "$ETCD_TARGET" = leader ]; then
    etcd_targets=$(etcd_leader)
    [ -n "$etcd_targets" ] || { log "no etcd leader found"; exit 1; }
fi
log "etcd clients call $etcd_targets"

# -- chat ----------------------------------------------------------------------------
log "starting 5 chatnodes in $dir"
start_chat

# -- load ----------------------------------------------------------------------------
# Both clusters stay up (an idle one costs a few hundredths of a core) and the two take
# turns at each concurrency, so that other work on the machine falls on both alike.
# chatbench's setup waits for our leader (it retries registration for up to 20 s).
for c in $CLIENTS; do
    run_bench etcd "$etcd_targets" "$c" "$theirs" "$etcd_pids"
    run_bench chat "$chat_endpoints" "$c" "$ours" "$chat_pids"
done
stop_all

# -- simulator -----------------------------------------------------------------------
sim_args=()
if [ "$SIM" = 1 ]; then
    log "chatsim run --jobs 1 --json (default seeds)"
    # A failing seed makes chatsim exit 1; the speed figures are still valid.
    "$bin/chatsim" run --jobs 1 --json >"$OUT/sim.json" || log "chatsim reported failures"
    sim_args=(--sim "$OUT/sim.json")
fi

# -- report --------------------------------------------------------------------------
echo
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, kernel $(uname -r), disk $(df -h "$dir" | awk 'NR == 2 { print $1 " " $2 }')"
echo "load average at the end (other work on the machine): $(cut -d' ' -f1-3 /proc/loadavg)"
echo "load: $PAYLOAD-byte payload, ${WARMUP}s warmup + ${DURATION}s per phase, etcd clients on: $ETCD_TARGET"
echo
"$bin/chatbench" compare --ours "$ours" --etcd "$theirs" "${sim_args[@]}"
