# Shared by bench/run.sh and bench/scale.sh (sourced, not run): processes in their own
# process groups, and the two 5-member clusters on loopback, same setup in both scripts.
#
# The sourcing script sets: NODES, CHAT_BASE_PORT, ETCD_CLIENT_BASE_PORT,
# ETCD_PEER_BASE_PORT, KEEP, and before starting a cluster $bin (release binaries) and
# $dir (one directory on one disk for both systems' data). CHAT_NODE_ARGS (optional):
# more flags for every chatnode, e.g. "--io-threads 2" to measure a setting.

log() { printf '== %s\n' "$*" >&2; }

# -- processes -----------------------------------------------------------------------
groups=()
# Starts a command in a new session (its own process group); remembers the group. The
# group's leader is the command itself, so its pid is the server's pid.
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
# SIGKILLs the given groups (a comma-separated list of their pids), waits for them, and
# forgets them.
kill9_groups() {
    local group kept=()
    local -a doomed
    IFS=, read -r -a doomed <<<"$1"
    for group in "${doomed[@]}"; do kill -KILL -- "-$group" 2>/dev/null || true; done
    for group in "${doomed[@]}"; do wait "$group" 2>/dev/null || true; done
    for group in "${groups[@]}"; do
        [[ ",$1," == *",$group,"* ]] || kept+=("$group")
    done
    groups=("${kept[@]}")
}
cleanup() {
    stop_all
    if [ "$KEEP" = 1 ]; then
        log "data kept in $dir"
    else
        rm -rf "$dir"
    fi
}
# The pids of the groups started since the groups array had $1 entries, comma-separated.
groups_since() {
    local -a started=("${groups[@]:$1}")
    (IFS=,; echo "${started[*]}")
}

# -- etcd ----------------------------------------------------------------------------
ensure_etcd() {
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        log "installing etcd-server and etcd-client from Debian"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
    fi
    etcd_bin=$(command -v etcd)
    etcd_cluster=""
    etcd_endpoints=""
    local i
    for i in $(seq "$NODES"); do
        etcd_cluster+="${etcd_cluster:+,}e$i=http://127.0.0.1:$((ETCD_PEER_BASE_PORT + i - 1))"
        etcd_endpoints+="${etcd_endpoints:+,}127.0.0.1:$((ETCD_CLIENT_BASE_PORT + i - 1))"
    done
}

# Starts the 5 members on $dir/etcd-I (again, after a crash, when their data is there:
# etcd then ignores --initial-cluster-state), logs to $dir/etcd-I.LOGTAG.log; sets
# etcd_pids. Call ensure_etcd first.
start_etcd() {
    local logtag=${1:-run} first=${#groups[@]} i
    for i in $(seq "$NODES"); do
        local client_url="http://127.0.0.1:$((ETCD_CLIENT_BASE_PORT + i - 1))"
        local peer_url="http://127.0.0.1:$((ETCD_PEER_BASE_PORT + i - 1))"
        # Default durability: the WAL is fsynced before entries are acknowledged.
        spawn "$dir/etcd-$i.$logtag.log" "$etcd_bin" --name "e$i" --data-dir "$dir/etcd-$i" \
            --listen-client-urls "$client_url" --advertise-client-urls "$client_url" \
            --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
            --initial-cluster "$etcd_cluster" --initial-cluster-token chatbench \
            --initial-cluster-state new --logger zap --log-level warn
    done
    etcd_pids=$(groups_since "$first")
}

wait_etcd_healthy() {
    for _ in $(seq 100); do
        etcdctl --endpoints "$etcd_endpoints" endpoint health >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "etcd did not become healthy; see $dir/etcd-*.log"
    return 1
}

# Prints the client address (HOST:PORT) of the member that leads now.
etcd_leader() {
    ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoints" endpoint status -w simple |
        awk -F', ' '$5 == "true" { sub("^http://", "", $1); print $1 }'
}

# -- chat ----------------------------------------------------------------------------
# Starts the 5 chatnodes on $dir/chat-I (again, after a crash, when their data is
# there), logs to $dir/chat-I.LOGTAG.log; sets chat_endpoints and chat_pids. With a
# second argument M, node I also serves metrics at 127.0.0.1:M+I-1 and
# chat_metrics_endpoints lists them.
start_chat() {
    local logtag=${1:-run} metrics_base_port=${2:-} first=${#groups[@]} i j
    [ -f "$dir/secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/secret"
    chat_endpoints=""
    chat_metrics_endpoints=""
    for i in $(seq "$NODES"); do
        chat_endpoints+="${chat_endpoints:+,}127.0.0.1:$((CHAT_BASE_PORT + i - 1))"
    done
    for i in $(seq "$NODES"); do
        local peers="" metrics=()
        for j in $(seq "$NODES"); do
            [ "$j" = "$i" ] && continue
            peers+="${peers:+,}$j=127.0.0.1:$((CHAT_BASE_PORT + j - 1))"
        done
        if [ -n "$metrics_base_port" ]; then
            local metrics_addr="127.0.0.1:$((metrics_base_port + i - 1))"
            metrics=(--metrics-addr "$metrics_addr")
            chat_metrics_endpoints+="${chat_metrics_endpoints:+,}$metrics_addr"
        fi
        RUST_LOG=${RUST_LOG:-warn} spawn "$dir/chat-$i.$logtag.log" "$bin/chatnode" --id "$i" \
            --listen "127.0.0.1:$((CHAT_BASE_PORT + i - 1))" --peers "$peers" \
            --data-dir "$dir/chat-$i" --secret-file "$dir/secret" "${metrics[@]}" \
            ${CHAT_NODE_ARGS:-}
    done
    chat_pids=$(groups_since "$first")
}
