#!/usr/bin/env bash
# Measures how the simulator finds planted bugs, one at a time.
#
#   scripts/measure-planted.sh PATCH_DIR [NAME_FILTER]
#
# For each PATCH_DIR/*.patch (whose name contains NAME_FILTER, if given): apply it to the
# working tree, build the simulator (`--profile sim`), run `chatsim run --seeds 0..256`
# (the default sweep) and, if nothing fails there, `--seeds 256..$SEEDS_MAX`; if still
# nothing, `chatsim explore --budget-secs $EXPLORE_SECS --jobs $JOBS`. Then the patch is
# reverted (also on Ctrl-C or error). Prints one tab-separated line per patch:
#   name  first_failing_seed|none  check  found_in_256  explore_seconds|not-found|skipped
# A replica assertion that fires is reported by `chatsim run` as check `panic` with its
# seed (it used to abort the whole process; the one-by-one fallback below stays for
# binaries built before that).
# Raw outputs go to $LOG_DIR (default /tmp/measure-planted). The tree must be clean.
set -euo pipefail
PATCH_DIR=${1:?usage: $0 PATCH_DIR [NAME_FILTER]}
FILTER=${2:-}
SEEDS_MAX=${SEEDS_MAX:-3000}
EXPLORE_SECS=${EXPLORE_SECS:-60}
JOBS=${JOBS:-2}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
LOG_DIR=${LOG_DIR:-/tmp/measure-planted}
ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
mkdir -p "$LOG_DIR"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "working tree not clean: refusing to plant" >&2
    exit 2
fi
CHATSIM=target/sim/chatsim
current=""
revert() {
    if [ -n "$current" ]; then
        git apply -R "$current" || git checkout -- .
        current=""
    fi
}
trap revert EXIT
trap 'revert; exit 130' INT TERM

# Smallest failing seed and its check, from `chatsim run` output (failures print as each
# seed ends, not necessarily in seed order).
first_failure() {
    { grep -oE '^seed [0-9]+ FAILED [^ ]+' "$1" || true; } | sort -k2,2n | head -1 |
        awk '{print $2 "\t" $4}'
}

# The first seed in $1..$2 that fails or panics, run one at a time.
first_panic() {
    local k out
    for ((k = $1; k < $2; k++)); do
        out=$(timeout "$RUN_TIMEOUT" "$CHATSIM" run --seed "$k" --jobs 1 2>&1 || true)
        if grep -q 'panicked at' <<<"$out"; then
            printf '%s\tpanic:%s\n' "$k" \
                "$(grep -A1 'panicked at' <<<"$out" | sed -n 2p | tr ' \t' '_ ' | cut -c1-80)"
            return
        fi
        if grep -q '^seed [0-9]* FAILED' <<<"$out"; then
            grep -oE '^seed [0-9]+ FAILED [^ ]+' <<<"$out" | awk '{print $2 "\t" $4}'
            return
        fi
    done
}

for patch in "$PATCH_DIR"/*.patch; do
    name=$(basename "$patch" .patch)
    case "$name" in *"$FILTER"*) ;; *) continue ;; esac
    log="$LOG_DIR/$name"
    git apply "$patch"
    current="$patch"
    if ! cargo build --profile sim -p chat-sim >"$log.build" 2>&1; then
        printf '%s\tbuild-failed\t-\t-\t-\n' "$name"
        revert
        continue
    fi
    found=""
    timeout "$RUN_TIMEOUT" "$CHATSIM" run --seeds 0..256 --jobs "$JOBS" >"$log.run256" 2>&1 || true
    found=$(first_failure "$log.run256")
    in256=yes
    if [ -z "$found" ] && grep -q 'panicked at' "$log.run256"; then
        found=$(first_panic 0 256)
    fi
    if [ -z "$found" ]; then
        in256=no
        timeout "$RUN_TIMEOUT" "$CHATSIM" run --seeds "256..$SEEDS_MAX" --jobs "$JOBS" \
            >"$log.run$SEEDS_MAX" 2>&1 || true
        found=$(first_failure "$log.run$SEEDS_MAX")
        if [ -z "$found" ] && grep -q 'panicked at' "$log.run$SEEDS_MAX"; then
            found=$(first_panic 256 "$SEEDS_MAX")
        fi
    fi
    explore=skipped
    if [ "$in256" = no ]; then
        start=$(date +%s.%N)
        if "$CHATSIM" explore --budget-secs "$EXPLORE_SECS" --jobs "$JOBS" \
            --out-dir "$LOG_DIR/$name.explore-out" >"$log.explore" 2>&1; then
            explore=not-found
        else
            explore=$(echo "$(date +%s.%N) - $start" | bc | xargs printf '%.1f')
        fi
    fi
    revert
    printf '%s\t%s\t%s\t%s\n' "$name" "${found:-none	-}" "$in256" "$explore"
done
