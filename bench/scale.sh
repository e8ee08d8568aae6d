#!/usr/bin/env bash
# The scale benchmark (issue #12), side by side: grows a 5-member etcd cluster and our
# 5-node cluster to the same number of unique 256-byte values (etcd: keys; ours:
# messages over USERS accounts), with the same closed-loop clients, reporting every
# window; then kills -9 all five servers of that system, restarts them on their data,
# and measures the time to the first acknowledged write. Prints the table.
#
#   bench/scale.sh                                  # 1M messages, 10k users, 64 clients
#   MESSAGES=50000 USERS=1000 bench/scale.sh        # a quick check
#   KEEP=1 OUT=/tmp/scale bench/scale.sh            # keep data dirs, logs and JSON
#
# Knobs (environment): MESSAGES (1000000), USERS (10000), CLIENTS (64), PAYLOAD (bytes,
# 256), WINDOW (s per reported window, 5), FIRST_WRITE_TIMEOUT (s, 30), ETCD_TARGET
# (leader|all, leader), KEEP (1: keep the data dir), OUT (where the result files go,
# default the data dir), CHAT_NODE_ARGS (more
# chatnode flags, e.g. "--io-threads 2").
#
# The systems run one after the other (etcd, then ours), each alone on the machine
# while it fills: a fill takes minutes, too long to take turns as bench/run.sh does.
# Everything it starts runs in its own process group and is stopped on exit.
set -euo pipefail

MESSAGES=${MESSAGES:-1000000}
USERS=${USERS:-10000}
CLIENTS=${CLIENTS:-64}
PAYLOAD=${PAYLOAD:-256}
WINDOW=${WINDOW:-5}
FIRST_WRITE_TIMEOUT=${FIRST_WRITE_TIMEOUT:-30}
ETCD_TARGET=${ETCD_TARGET:-leader}
KEEP=${KEEP:-0}
NODES=5
CHAT_BASE_PORT=${CHAT_BASE_PORT:-27001}
CHAT_METRICS_BASE_PORT=${CHAT_METRICS_BASE_PORT:-27101}
ETCD_CLIENT_BASE_PORT=${ETCD_CLIENT_BASE_PORT:-23791}
ETCD_PEER_BASE_PORT=${ETCD_PEER_BASE_PORT:-23801}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin="$root/target/release"

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

ensure_etcd
log "building chatnode and chatbench (release)"
cargo build --release -q -p chat-node -p chat-bench

dir=$(mktemp -d "${TMPDIR:-/tmp}/chatscale.XXXXXX")
OUT=${OUT:-$dir}
mkdir -p "$OUT"
trap cleanup EXIT
trap 'exit 130' INT TERM

data_dirs() { # system: the members' data dirs, comma-separated
    local i list=""
    for i in $(seq "$NODES"); do list+="${list:+,}$dir/$1-$i"; done
    echo "$list"
}
now_ms() { date +%s%3N; }

# The fill: JSON lines to $OUT/SYSTEM-fill.jsonl, one line per window on the terminal.
fill() { # system endpoints metrics-endpoints server-pids [chatbench args...]
    local system=$1 endpoints=$2 metrics=$3 pids=$4
    shift 4
    log "$system: filling to $MESSAGES values of $PAYLOAD B with $CLIENTS clients (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    "$bin/chatbench" fill --system "$system" --endpoints "$endpoints" \
        --messages "$MESSAGES" --clients "$CLIENTS" --payload-bytes "$PAYLOAD" \
        --window-secs "$WINDOW" --metrics-endpoints "$metrics" --server-pids "$pids" \
        --data-dirs "$(data_dirs "$system")" --json "$@" >"$OUT/$system-fill.jsonl"
}

# kill -9 of every member, then a restart on the same data; the clock starts when the
# restart begins. An unacknowledged write leaves the result file empty.
restart_and_write() { # system pids start-function endpoints [chatbench args...]
    local system=$1 pids=$2 start=$3 endpoints=$4
    shift 4
    log "$system: kill -9 of all $NODES, restart, first acknowledged write"
    kill9_groups "$pids"
    local since
    since=$(now_ms)
    # Our nodes log each step of their recovery (`recovered ... storage_ms replica_ms`)
    # and when they learn the leader, at info: kept in $dir/chat-N.restart.log.
    RUST_LOG=${RUST_LOG:-warn,chat_node::server=info,chat_node::metrics=info} "$start" restart
    "$bin/chatbench" first-write --system "$system" --endpoints "$endpoints" \
        --timeout-secs "$FIRST_WRITE_TIMEOUT" --payload-bytes "$PAYLOAD" \
        --since-unix-ms "$since" --json "$@" >"$OUT/$system-first-write.json" ||
        log "$system: no write acknowledged within ${FIRST_WRITE_TIMEOUT}s"
    cat "$OUT/$system-first-write.json" >&2
    if [ "$system" = chat ]; then
        # Each node's restart steps, for the report.
        grep -h -o 'recovered id=.*' "$dir"/chat-*.restart.log >"$OUT/chat-restart-steps.txt" || true
        cat "$OUT/chat-restart-steps.txt" >&2
    fi
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
# An etcd member serves /metrics on its client address.
fill etcd "$etcd_targets" "$etcd_endpoints" "$etcd_pids"
restart_and_write etcd "$etcd_pids" start_etcd "$etcd_endpoints"
stop_all

# -- chat ----------------------------------------------------------------------------
log "starting 5 chatnodes in $dir, metrics at 127.0.0.1:$CHAT_METRICS_BASE_PORT-$((CHAT_METRICS_BASE_PORT + NODES - 1))"
start_chat run "$CHAT_METRICS_BASE_PORT"
# Accounts fill-0 .. fill-(USERS-1); client i sends as fill-i.
fill chat "$chat_endpoints" "$chat_metrics_endpoints" "$chat_pids" --users "$USERS" --prefix fill
restart_and_write chat "$chat_pids" start_chat "$chat_endpoints" --user fill-0
stop_all

# -- report --------------------------------------------------------------------------
echo
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, kernel $(uname -r), disk $(df -h "$dir" | awk 'NR == 2 { print $1 " " $2 }')"
echo "load average at the end (other work on the machine): $(cut -d' ' -f1-3 /proc/loadavg)"
echo "fill: $MESSAGES unique $PAYLOAD-byte values, $CLIENTS clients, ours over $USERS accounts; etcd clients on: $ETCD_TARGET"
echo
echo "our nodes' restart steps (ms from each process start: storage_ms reads and checks its files, decoding the snapshot in the pass that checks it; replica_ms builds the replica):"
sed 's/^/    /' "$OUT/chat-restart-steps.txt" 2>/dev/null || true
echo
"$bin/chatbench" scale-report --ours "$OUT/chat-fill.jsonl" --etcd "$OUT/etcd-fill.jsonl" \
    --ours-first-write "$OUT/chat-first-write.json" --etcd-first-write "$OUT/etcd-first-write.json"
