#!/usr/bin/env bash
# capkv against etcd on this machine, side by side, with identical load.
#
#   bash scripts/bench-vs-etcd.sh                 # 3 rounds x 7 cases x 10 s each (~12 minutes)
#   ROUNDS=1 DURATION=5s bash scripts/bench-vs-etcd.sh
#   CASES=put-c64,linearizable-get-c64 bash scripts/bench-vs-etcd.sh
#
# Installs etcd 3.4 (Debian package etcd-server) when it is missing, builds capkv and the load
# generator (loadgen/, release profile), starts a 3-member etcd and a 3-node capkv (`cluster up
# --detach`) on 127.0.0.1, creates the keyspaces `bench` (cp) and `bench_ap` (ap), and runs
# `capkv-loadgen compare`: every case against etcd and capkv back to back, the order flipped each
# round. Prints the markdown table (medians over rounds; the ratio column has the per-round
# spread), then each process's peak and current resident memory. Everything it started is
# stopped and its files removed on exit.
#
# Both systems run with their defaults: etcd fdatasyncs its WAL before it acknowledges a write;
# capkv's durability is what README's "Durability" section says. `cluster up` gives each capkv
# node its share of the CPUs (--worker-threads); etcd members inherit the environment, so
# `GOMAXPROCS=1 bash scripts/bench-vs-etcd.sh` runs them on one thread each as well.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CASES="${CASES:-}"
ETCD_PORT="${ETCD_PORT:-12379}"        # members use ETCD_PORT, +10, +20 (peers +1)
CAPKV_PORT="${CAPKV_PORT:-17001}"      # nodes use CAPKV_PORT..+2, HTTP CAPKV_HTTP_PORT..+2
CAPKV_HTTP_PORT="${CAPKV_HTTP_PORT:-18001}"
CAPKV_PEER_PORT="${CAPKV_PEER_PORT:-17101}"  # peer ports CAPKV_PEER_PORT..+2

if ! command -v etcd >/dev/null 2>&1; then
    echo "etcd is missing; installing the Debian package etcd-server" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "installing etcd needs root: run as root or install etcd-server (etcd 3.4) yourself" >&2
        exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    # The package starts a system etcd on 2379; this script runs its own on other ports.
    systemctl disable --now etcd >/dev/null 2>&1 || true
fi
etcd --version | awk "NR == 1" >&2  # awk reads all: no SIGPIPE under pipefail

cargo build --release -q -p capkv -p capkv-loadgen
CAPKV=target/release/capkv
LOADGEN=target/release/capkv-loadgen

WORK="$(mktemp -d "${TMPDIR:-/tmp}/capkv-vs-etcd.XXXXXX")"
ETCD_PIDS=()
cleanup() {
    "$CAPKV" cluster down --data-dir "$WORK/capkv" >/dev/null 2>&1 || true
    for pid in "${ETCD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# --- etcd: 3 members ------------------------------------------------------------------------------
initial=""
for i in 0 1 2; do
    initial+="${initial:+,}m$i=http://127.0.0.1:$((ETCD_PORT + 10 * i + 1))"
done
ETCD_ENDPOINTS=""
for i in 0 1 2; do
    client=$((ETCD_PORT + 10 * i))
    peer=$((client + 1))
    ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}127.0.0.1:$client"
    etcd --name "m$i" --data-dir "$WORK/etcd-$i" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token capkv-vs-etcd \
        --log-level error >"$WORK/etcd-$i.log" 2>&1 &
    ETCD_PIDS+=("$!")
done

# --- capkv: 3 nodes -------------------------------------------------------------------------------
"$CAPKV" cluster up --detach --data-dir "$WORK/capkv" --base-port "$CAPKV_PORT" \
    --http-base-port "$CAPKV_HTTP_PORT" --peer-base-port "$CAPKV_PEER_PORT" >"$WORK/capkv-up.log" 2>&1 ||
    { cat "$WORK/capkv-up.log" >&2; exit 1; }
CAPKV_ENDPOINTS="127.0.0.1:$CAPKV_PORT,127.0.0.1:$((CAPKV_PORT + 1)),127.0.0.1:$((CAPKV_PORT + 2))"
"$CAPKV" --endpoints "$CAPKV_ENDPOINTS" keyspace create bench --mode cp >/dev/null
"$CAPKV" --endpoints "$CAPKV_ENDPOINTS" keyspace create bench_ap --mode ap >/dev/null

# etcd must have a leader before the first run.
for _ in $(seq 1 50); do
    "$LOADGEN" run --system etcd --endpoints "$ETCD_ENDPOINTS" --op put --concurrency 1 \
        --duration 100ms --keys 1 >/dev/null 2>&1 && break
    sleep 0.2
done

echo "capkv $(git rev-parse --short HEAD 2>/dev/null || echo '?') vs $(etcd --version | awk "NR == 1"), $(nproc) cores," \
    "$(date -u +%Y-%m-%d), rounds $ROUNDS x $DURATION, 256-byte values over 10k keys, 4 connections"
"$LOADGEN" compare --etcd "$ETCD_ENDPOINTS" --capkv "$CAPKV_ENDPOINTS" --rounds "$ROUNDS" \
    --duration "$DURATION" ${CASES:+--cases "$CASES"} --json "${JSON_OUT:-$WORK/runs.json}"

echo
echo "| process | peak RSS MiB | RSS now MiB |"
echo "|---|---|---|"
memory() { # name pid
    local hwm rss
    hwm=$(awk '/^VmHWM/ {print int($2/1024)}' "/proc/$2/status" 2>/dev/null || echo "?")
    rss=$(awk '/^VmRSS/ {print int($2/1024)}' "/proc/$2/status" 2>/dev/null || echo "?")
    echo "| $1 | $hwm | $rss |"
}
for i in 0 1 2; do memory "etcd m$i" "${ETCD_PIDS[$i]}"; done
for pid in $(pgrep -f "capkv node .*$WORK/capkv" || true); do
    memory "capkv node $(tr '\0' ' ' <"/proc/$pid/cmdline" | sed -n 's/.*--id \([0-9]*\).*/\1/p')" "$pid"
done
