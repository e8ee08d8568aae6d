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
# result files go, default the data dir).
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

log() { printf '== %s\n' "$*" >&2; }

# -- processes -----------------------------------------------------------------------
groups=()
# Starts a command in a new session (its own process group); remembers the group.
spawn() {
    local logfile=$1
    shift
    setsid "$@" >"$logfile" 2>&1 </dev/null &
    groups+=("$!")
}
# Stops every group started so far: TERM, a grace period, then KILL.
stop_all() {
    local group
    [ ${#groups[@]} -eq 0 ] && return 0
    for group in "${groups[@]}"; do kill -TERM -- "-$group" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for group in "${groups[@]}"; do kill -0 -- "-$group" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break
        sleep 0.1
    done
    for group in "${groups[@]}"; do kill -KILL -- "-$group" 2>/dev/null || true; done
    for group in "${groups[@]}"; do wait "$group" 2>/dev/null || true; done
    groups=()
}
cleanup() {
    stop_all
    if [ "$KEEP" = 1 ]; then
        log "data kept in $dir"
    else
        rm -rf "$dir"
    fi
}

# -- setup ---------------------------------------------------------------------------
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    log "installing etcd-server and etcd-client from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
etcd_bin=$(command -v etcd)

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
etcd_cluster=""
etcd_endpoints=""
for i in $(seq $NODES); do
    etcd_cluster+="${etcd_cluster:+,}e$i=http://127.0.0.1:$((ETCD_PEER_BASE_PORT + i - 1))"
    etcd_endpoints+="${etcd_endpoints:+,}127.0.0.1:$((ETCD_CLIENT_BASE_PORT + i - 1))"
done
log "starting 5 etcd members ($($etcd_bin --version | head -1)) in $dir"
for i in $(seq $NODES); do
    client_url="http://127.0.0.1:$((ETCD_CLIENT_BASE_PORT + i - 1))"
    peer_url="http://127.0.0.1:$((ETCD_PEER_BASE_PORT + i - 1))"
    # Default durability: the WAL is fsynced before entries are acknowledged.
    spawn "$dir/etcd-$i.log" "$etcd_bin" --name "e$i" --data-dir "$dir/etcd-$i" \
        --listen-client-urls "$client_url" --advertise-client-urls "$client_url" \
        --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
        --initial-cluster "$etcd_cluster" --initial-cluster-token chatbench \
        --initial-cluster-state new --logger zap --log-level warn
done
for _ in $(seq 100); do
    etcdctl --endpoints "$etcd_endpoints" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
done
etcdctl --endpoints "$etcd_endpoints" endpoint health >/dev/null 2>&1 || { log "etcd did not become healthy; see $dir/etcd-*.log"; exit 1; }
etcd_targets=$etcd_endpoints
if [ "$ETCD_TARGET" = leader ]; then
    etcd_targets=$(ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoints" endpoint status -w simple |
        awk -F', ' '$5 == "true" { sub("^http://", "", $1); print $1 }')
    [ -n "$etcd_targets" ] || { log "no etcd leader found"; exit 1; }
fi
log "etcd clients call $etcd_targets"
etcd_pids=$(IFS=,; echo "${groups[*]}")

# -- chat ----------------------------------------------------------------------------
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/secret"
chat_endpoints=""
for i in $(seq $NODES); do
    chat_endpoints+="${chat_endpoints:+,}127.0.0.1:$((CHAT_BASE_PORT + i - 1))"
done
log "starting 5 chatnodes in $dir"
for i in $(seq $NODES); do
    peers=""
    for j in $(seq $NODES); do
        [ "$j" = "$i" ] && continue
        peers+="${peers:+,}$j=127.0.0.1:$((CHAT_BASE_PORT + j - 1))"
    done
    RUST_LOG=${RUST_LOG:-warn} spawn "$dir/chat-$i.log" "$bin/chatnode" --id "$i" \
        --listen "127.0.0.1:$((CHAT_BASE_PORT + i - 1))" --peers "$peers" \
        --data-dir "$dir/chat-$i" --secret-file "$dir/secret"
done
chat_pids=$(IFS=,; echo "${groups[*]}" | cut -d, -f$((NODES + 1))-)

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
