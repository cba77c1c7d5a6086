#!/usr/bin/env bash
# Short Jepsen-style runs for CI (about 5 minutes on 2 cores):
#
#   bash scripts/jepsen-ci.sh
#
# 1. cp register under partition-halves, cp register under kill, ap register under
#    partition-halves, cp bank under mixed: each must exit 0 (verdict valid).
# 2. Negative control: the runner built with `--features unsafe-local-reads` (linearizable reads
#    served from the local state machine, no ReadIndex) runs cp register under partition-halves;
#    it must exit non-zero AND report a `linearizability` anomaly. The script fails if the broken
#    build is NOT caught.
# 3. Negative control: the runner built with `--features no-anti-entropy` (no hints, no
#    anti-entropy) runs ap register under partition-halves; it must report a `divergence`.
# 4. Rebuilds the normal feature set, so the tree is left consistent.
# 5. As root: one netns-layer run (nodes in network namespaces on a bridge, partitions as iptables
#    rules), cp register under partition-halves, which must exit 0; iptables is installed first
#    when missing. Not root: skipped, with the reason printed.
#
# Runs 1-4 use the built-in fault layer (capkv's own fault filter). Runs are stored under
# JEPSEN_CI_STORE, which is kept. Without it they go to a fresh temp dir, kept (and printed) when
# something failed and removed when everything passed: each run's store holds its nodes' data,
# about 150 MB per invocation.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS="${JEPSEN_CI_SECS:-20}"
SEED="${JEPSEN_CI_SEED:-7}"
STORE="${JEPSEN_CI_STORE:-}"
TEMP_STORE=""
if [ -z "$STORE" ]; then
    STORE="$(mktemp -d "${TMPDIR:-/tmp}/jepsen-ci.XXXXXX")"
    TEMP_STORE="$STORE"
fi
RUN_TIMEOUT="$((SECS + 200))s"
FAILED=()

run() { # name, args...
    local name="$1"
    shift
    printf '\n==================== jepsen-style %s ====================\n' "$name"
    if timeout "$RUN_TIMEOUT" cargo run -q -p jepsen-style -- run "$@" --time-limit "$SECS" --seed "$SEED" \
        --store "$STORE/$name"; then
        echo "ok: $name"
    else
        echo "FAILED: $name (exit $?)"
        FAILED+=("$name")
    fi
}

cargo build -q -p jepsen-style
run cp-register-partition-halves --mode cp --workload register --nemesis partition-halves --layer built-in
run cp-register-kill --mode cp --workload register --nemesis kill --layer built-in
run cp-register-membership --mode cp --workload register --nemesis membership --layer built-in
run ap-register-partition-halves --mode ap --workload register --nemesis partition-halves --layer built-in
run cp-bank-mixed --mode cp --workload bank --nemesis mixed --layer built-in

# A build with a deliberately broken FEATURE must exit non-zero and report an anomaly of KIND.
negative_control() { # FEATURE, mode, KIND
    local feature="$1" mode="$2" kind="$3"
    local dir="$STORE/negative-$feature" code
    printf '\n==================== negative control: %s ====================\n' "$feature"
    set +e
    timeout "$RUN_TIMEOUT" cargo run -q -p jepsen-style --features "$feature" -- run --mode "$mode" \
        --workload register --nemesis partition-halves --layer built-in --time-limit "$SECS" --seed "$SEED" \
        --store "$dir"
    code=$?
    set -e
    local results
    results="$(find "$dir" -name results.json 2>/dev/null | head -n 1)"
    if [ "$code" -ne 0 ] && [ -n "$results" ] && grep -q "\"kind\": \"$kind\"" "$results"; then
        echo "ok: the $feature build was caught (exit $code, $kind anomaly in $results)"
    else
        echo "FAILED: the $feature build was NOT caught (exit $code, results: ${results:-none})"
        FAILED+=("negative-control-$feature")
    fi
}

negative_control unsafe-local-reads cp linearizability
negative_control no-anti-entropy ap divergence

printf '\n==================== rebuilding the normal feature set ====================\n'
cargo build -q -p jepsen-style

printf '\n==================== netns layer ====================\n'
if [ "$(id -u)" -ne 0 ]; then
    echo "skipped: the netns layer needs root (network namespaces, a bridge and iptables rules); running as uid $(id -u)"
else
    if ! command -v iptables >/dev/null 2>&1; then
        echo "installing iptables (needed by the netns layer)"
        apt-get update -qq && apt-get install -y -qq iptables
    fi
    run netns-cp-register-partition-halves --mode cp --workload register --nemesis partition-halves --layer netns
fi

if [ "${#FAILED[@]}" -ne 0 ]; then
    echo "runs stored in $STORE"
    echo "jepsen-ci: FAILED: ${FAILED[*]}"
    exit 1
fi
if [ -n "$TEMP_STORE" ]; then
    rm -rf "$TEMP_STORE"
    echo "runs' store $TEMP_STORE removed (everything passed; set JEPSEN_CI_STORE=DIR to keep the runs)"
else
    echo "runs stored in $STORE"
fi
echo "jepsen-ci: all runs passed and every negative control was caught"
