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
# IDLE_SETTLE_SECONDS (the longest wait for sled's log cleaning after the load, default 1800),
# CAPKV_BIN (default: a release build, built when missing), PORT_BASE (gRPC port of node 1,
# default 27101; HTTP ports are +1000, peer ports +2000), KEEP=1 keeps the work directory.
#
# Convergence is timed from `fault heal` to the first poll (every 100 ms) at which every node's
# own replica holds all the keys (`keyspace describe`, which counts the replica it is asked on).
# Values are 256 bytes, written by `capkv bench`'s preload (64 at a time) to node 3 while it is cut
# off. Idle CPU is each node's user + system time over IDLE_SECONDS, read from /proc: first with
# the ap keyspace created and empty (what every node pays for liveness pings, Raft heartbeats and
# repair rounds that find nothing to compare), then just after the replicas agree on all the keys,
# and once more when sled has finished cleaning its log after the load (see `settle`). Each window
# also splits out sled's own threads. The last window less the first is what holding the keys
# costs at idle: repair over them and the storage's upkeep. Then each node's resident memory
# (VmRSS).
set -euo pipefail

CONVERGE_KEYS="${CONVERGE_KEYS:-10000 100000}"
IDLE_KEYS="${IDLE_KEYS:-1000000}"
IDLE_SECONDS="${IDLE_SECONDS:-30}"
IDLE_SETTLE_SECONDS="${IDLE_SETTLE_SECONDS:-1800}"
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

# CPU ticks (user + system) of process $1 as "all tid:ticks tid:ticks ...": the whole process
# (threads that exited included), then each of sled's own threads (its log flusher, which also
# cleans the log's segments, and its IO threads).
cpu_ticks() {
    local task comm sled=""
    for task in /proc/"$1"/task/*; do
        comm="$(cat "$task/comm" 2>/dev/null)" || continue
        case "$comm" in
            "log flusher" | sled-*)
                sled+=" ${task##*/}:$(sed 's/.*) //' "$task/stat" 2>/dev/null | awk '{ print $12 + $13 }')"
                ;;
        esac
    done
    echo "$(sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }')$sled"
}

# Each node's CPU share over $1 seconds: sets `share` (whole node) and `storage` (sled's threads;
# a sled thread that exits during the window is left out of it).
measure() {
    local seconds="$1" id
    local -a before after
    for id in 1 2 3; do
        before[id]="$(cpu_ticks "${pids[id]}")"
    done
    sleep "$seconds"
    for id in 1 2 3; do
        after[id]="$(cpu_ticks "${pids[id]}")"
        read -r share[id] storage[id] < <(awk -v b="${before[id]}" -v a="${after[id]}" -v s="$seconds" -v hz="$(getconf CLK_TCK)" '
            BEGIN {
                nb = split(b, x, " "); na = split(a, y, " ")
                for (i = 2; i <= nb; i++) { split(x[i], t, ":"); was[t[1]] = t[2] }
                for (i = 2; i <= na; i++) { split(y[i], t, ":"); sled += t[2] - was[t[1]] }
                printf "%.2f %.2f\n", 100 * (y[1] - x[1]) / hz / s, 100 * sled / hz / s
            }')
    done
}

# Prints each node's CPU share over IDLE_SECONDS (uses `pids` from `idle`).
idle_window() {
    local keys="$1" when="$2" id
    measure "$IDLE_SECONDS"
    for id in 1 2 3; do
        echo "  node $id, holding $keys keys in agreement, $when: ${share[id]}% of a core over $IDLE_SECONDS s" \
            "(sled's threads ${storage[id]}%, the rest $(awk -v a="${share[id]}" -v b="${storage[id]}" 'BEGIN { printf "%.2f", a - b }')%)"
    done
}

# Waits until sled's threads on every node use under 0.2% of a core in 3 windows of 20 s in a
# row: after a bulk load sled goes on cleaning its log for many minutes (PageCache::rewrite_page
# in a profile, on its log flusher thread, at 0.5-1.5% of a core in the runs so far, and the
# node's runtime thread is busier meanwhile too), which is the storage settling, not repair. After one
# quiet window, a run measured the whole node at 2.4-2.7% of a core, where a node watched for 20
# minutes after the same load used 2.4-3.6% while sled cleaned and 1.2-1.9% from the minute it
# stopped; hence a minute of quiet. Gives up after IDLE_SETTLE_SECONDS.
SETTLE_QUIET_WINDOWS=3
settle() {
    local started id busy quiet=0
    started="$(now)"
    while :; do
        measure 20
        busy=0
        for id in 1 2 3; do
            awk -v s="${storage[id]}" 'BEGIN { exit !(s >= 0.2) }' && busy=1
        done
        if [ "$busy" = 0 ]; then
            quiet=$((quiet + 1))
        else
            quiet=0
        fi
        if [ "$quiet" -ge "$SETTLE_QUIET_WINDOWS" ]; then
            echo "  sled's threads were quiet (under 0.2% of a core in $SETTLE_QUIET_WINDOWS windows of 20 s in a row)" \
                "$(since "$started") s after that window"
            return
        fi
        if [ "$(since "$started" | cut -d. -f1)" -ge "$IDLE_SETTLE_SECONDS" ]; then
            echo "  sled's threads still use ${storage[*]}% of a core $IDLE_SETTLE_SECONDS s after that window; measuring anyway"
            return
        fi
    done
}

idle() {
    local keys="$1" dir="$work/idle" endpoints started pids share storage empty id
    track_cluster "$dir"
    endpoints="$(start_cluster "$dir" "$PORT_BASE")"
    "$CAPKV_BIN" --endpoints "$endpoints" keyspace create carts --mode ap >/dev/null
    for id in 1 2 3; do
        pids[id]="$(pgrep -f -- "--data-dir $dir/node-$id" | head -1)"
    done
    sleep 5 # the keyspace reaches every node and the first repair rounds run
    idle_window 0 "before the load"
    for id in 1 2 3; do
        empty[id]="${share[id]}"
    done
    started="$(now)"
    fill "$endpoints" "$keys"
    echo "  wrote $keys keys through all nodes in $(since "$started") s"
    for id in 1 2 3; do
        until [ "$(keys_on "$id")" = "$keys" ]; do sleep 1; done
    done
    sleep 5 # the last repair rounds and flushes settle
    idle_window "$keys" "just after the load"
    settle
    idle_window "$keys" "after the wait for sled's cleaning"
    for id in 1 2 3; do
        awk -v id="$id" -v k="$keys" -v e="${empty[id]}" -v f="${share[id]}" \
            'BEGIN { printf "  node %d: holding %d keys costs %.2f%% of a core at idle (%.2f%% less %.2f%% empty)\n", id, k, f - e, f, e }'
    done
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
