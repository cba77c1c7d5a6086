#!/usr/bin/env bash
# The ap path at scale, on a release build: how fast keys written on the minority side of a
# partition reach every node after the heal, and how much CPU a node spends on repair when it
# holds many keys that already agree with its peers.
#
#   bash scripts/ap-scale.sh                      # 10k and 100k keys converge; idle CPU at 1M keys
#   CONVERGE_KEYS=10000 IDLE_KEYS=0 bash scripts/ap-scale.sh
#
# Environment: CONVERGE_KEYS (space-separated counts, default "10000 100000"), IDLE_KEYS (keys
# held for the idle measurement, default 1000000; 0 skips it), IDLE_SECONDS (default 30),
# IDLE_SETTLE_SECONDS (between the two idle windows, default 120),
# CAPKV_BIN (default: a release build, built when missing), PORT_BASE (gRPC port of node 1,
# default 27101; HTTP ports are +1000, peer ports +2000), KEEP=1 keeps the work directory.
#
# Convergence is timed from `fault heal` to the first poll (every 100 ms) at which every node's
# own replica holds all the keys (`keyspace describe`, which counts the replica it is asked on).
# Values are 256 bytes, written by `capkv bench`'s preload (64 at a time) to node 3 while it is cut
# off. Idle CPU is each node's user + system time over IDLE_SECONDS, read from /proc, once just
# after the replicas agree and once more IDLE_SETTLE_SECONDS later; then each node's resident
# memory (VmRSS).
set -euo pipefail

CONVERGE_KEYS="${CONVERGE_KEYS:-10000 100000}"
IDLE_KEYS="${IDLE_KEYS:-1000000}"
IDLE_SECONDS="${IDLE_SECONDS:-30}"
IDLE_SETTLE_SECONDS="${IDLE_SETTLE_SECONDS:-120}"
PORT_BASE="${PORT_BASE:-27101}"
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/clusters.sh
source scripts/lib/clusters.sh

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

stop_cluster() {
    "$CAPKV_BIN" cluster down --data-dir "$1" >/dev/null 2>&1 || true
}

endpoint() { echo "127.0.0.1:$((PORT_BASE + $1 - 1))"; }

# The live keys of `carts` in node $1's own replica.
keys_on() {
    "$CAPKV_BIN" --endpoints "$(endpoint "$1")" keyspace describe carts -o json 2>/dev/null |
        sed -n 's/.*"keys": *\([0-9]*\).*/\1/p'
}

# Writes keys 0..$2-1 of `carts` through node(s) $1 with bench's preload.
fill() {
    "$CAPKV_BIN" --endpoints "$1" bench --keyspace carts --op get --keys "$2" \
        --concurrency 64 --duration 1s --timeout 30s -o json >"$work/fill.json"
}

converge() {
    local keys="$1" dir="$work/converge-$1" endpoints started n
    track_cluster "$dir"
    endpoints="$(start_cluster "$dir" "$PORT_BASE")"
    "$CAPKV_BIN" --endpoints "$endpoints" keyspace create carts --mode ap >/dev/null
    "$CAPKV_BIN" --endpoints "$endpoints" fault partition 1,2 3 >/dev/null
    sleep 1.5 # liveness on both sides sees the other side gone
    started="$(now)"
    fill "$(endpoint 3)" "$keys"
    echo "  wrote $keys keys to node 3 alone in $(since "$started") s"
    "$CAPKV_BIN" --endpoints "$endpoints" fault heal >/dev/null
    started="$(now)"
    for id in 1 2 3; do
        while :; do
            n="$(keys_on "$id")"
            [ "${n:-0}" = "$keys" ] && break
            if [ "$(since "$started" | cut -d. -f1)" -ge 300 ]; then
                echo "  node $id holds ${n:-?} of $keys keys 300 s after the heal: not converged" >&2
                exit 1
            fi
            sleep 0.1
        done
    done
    echo "  $keys keys on all 3 nodes $(since "$started") s after the heal"
    stop_cluster "$dir"
}

# CPU seconds (user + system) a process has used.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# Prints each node's CPU share over IDLE_SECONDS (uses `pids` from `idle`).
idle_window() {
    local keys="$1" when="$2" before after id
    for id in 1 2 3; do
        before[id]="$(cpu_seconds "${pids[id]}")"
    done
    sleep "$IDLE_SECONDS"
    for id in 1 2 3; do
        after="$(cpu_seconds "${pids[id]}")"
        awk -v id="$id" -v a="${before[id]}" -v b="$after" -v s="$IDLE_SECONDS" -v k="$keys" -v w="$when" \
            'BEGIN { printf "  node %d, holding %d keys in agreement, %s: %.2f%% of a core over %d s\n", id, k, w, 100 * (b - a) / s, s }'
    done
}

idle() {
    local keys="$1" dir="$work/idle" endpoints started pids id
    track_cluster "$dir"
    endpoints="$(start_cluster "$dir" "$PORT_BASE")"
    "$CAPKV_BIN" --endpoints "$endpoints" keyspace create carts --mode ap >/dev/null
    started="$(now)"
    fill "$endpoints" "$keys"
    echo "  wrote $keys keys through all nodes in $(since "$started") s"
    for id in 1 2 3; do
        until [ "$(keys_on "$id")" = "$keys" ]; do sleep 1; done
    done
    sleep 5 # the last repair rounds and flushes settle
    for id in 1 2 3; do
        pids[id]="$(pgrep -f -- "--data-dir $dir/node-$id" | head -1)"
    done
    idle_window "$keys" "just after the load"
    # sled goes on rewriting pages of its log for a while after a bulk load (segment cleaning,
    # seen in a profile as PageCache::rewrite_page); the second window is the steady state.
    sleep "$IDLE_SETTLE_SECONDS"
    idle_window "$keys" "$((IDLE_SETTLE_SECONDS + IDLE_SECONDS)) s later"
    for id in 1 2 3; do
        awk -v id="$id" -v k="$keys" '$1 == "VmRSS:" { printf "  node %d, holding %d keys: %.0f MiB resident\n", id, k, $2 / 1024 }' \
            "/proc/${pids[id]}/status"
    done
    stop_cluster "$dir"
}

echo "capkv $("$CAPKV_BIN" --version | awk '{ print $2 }'), $(nproc) cores, $(date -u +%F), 256-byte values"
for keys in $CONVERGE_KEYS; do
    echo "convergence of $keys keys written on the minority:"
    converge "$keys"
done
if [ "$IDLE_KEYS" -gt 0 ]; then
    echo "idle repair CPU:"
    idle "$IDLE_KEYS"
fi
