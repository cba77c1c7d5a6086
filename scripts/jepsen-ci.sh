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
# JEPSEN_CI_STORE (default: a fresh temp dir), printed at the end.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS="${JEPSEN_CI_SECS:-20}"
SEED="${JEPSEN_CI_SEED:-7}"
STORE="${JEPSEN_CI_STORE:-$(mktemp -d "${TMPDIR:-/tmp}/jepsen-ci.XXXXXX")}"
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
run ap-register-partition-halves --mode ap --workload register --nemesis partition-halves --layer built-in
run cp-bank-mixed --mode cp --workload bank --nemesis mixed --layer built-in

printf '\n==================== negative control: unsafe-local-reads ====================\n'
NEG="$STORE/negative-unsafe-local-reads"
set +e
timeout "$RUN_TIMEOUT" cargo run -q -p jepsen-style --features unsafe-local-reads -- run --mode cp \
    --workload register --nemesis partition-halves --layer built-in --time-limit "$SECS" --seed "$SEED" --store "$NEG"
NEG_EXIT=$?
set -e
NEG_RESULTS="$(find "$NEG" -name results.json 2>/dev/null | head -n 1)"
if [ "$NEG_EXIT" -ne 0 ] && [ -n "$NEG_RESULTS" ] && grep -q '"kind": "linearizability"' "$NEG_RESULTS"; then
    echo "ok: the broken build was caught (exit $NEG_EXIT, linearizability anomaly in $NEG_RESULTS)"
else
    echo "FAILED: the unsafe-local-reads build was NOT caught (exit $NEG_EXIT, results: ${NEG_RESULTS:-none})"
    FAILED+=("negative-control")
fi

printf '\n==================== negative control: no-anti-entropy ====================\n'
NEG2="$STORE/negative-no-anti-entropy"
set +e
timeout "$RUN_TIMEOUT" cargo run -q -p jepsen-style --features no-anti-entropy -- run --mode ap \
    --workload register --nemesis partition-halves --layer built-in --time-limit "$SECS" --seed "$SEED" --store "$NEG2"
NEG2_EXIT=$?
set -e
NEG2_RESULTS="$(find "$NEG2" -name results.json 2>/dev/null | head -n 1)"
if [ "$NEG2_EXIT" -ne 0 ] && [ -n "$NEG2_RESULTS" ] && grep -q '"kind": "divergence"' "$NEG2_RESULTS"; then
    echo "ok: the build without anti-entropy was caught (exit $NEG2_EXIT, divergence in $NEG2_RESULTS)"
else
    echo "FAILED: the no-anti-entropy build was NOT caught (exit $NEG2_EXIT, results: ${NEG2_RESULTS:-none})"
    FAILED+=("negative-control-no-anti-entropy")
fi

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

echo "runs stored in $STORE"
if [ "${#FAILED[@]}" -ne 0 ]; then
    echo "jepsen-ci: FAILED: ${FAILED[*]}"
    exit 1
fi
echo "jepsen-ci: all runs passed and the negative control was caught"
