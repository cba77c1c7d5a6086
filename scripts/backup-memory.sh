#!/usr/bin/env bash
# Backs up and restores a large cp keyspace (1 GiB by default) and reports how long each took and
# the peak memory of the CLI and of the nodes, next to their memory when idle. The backup is
# written by the CLI (VIA=cli, the default: every byte streams through it) or by a node (VIA=node:
# the nodes get --backup-dir on the work directory, and the coordinating node streams). The claim it checks: memory stays bounded by a few export pages and
# one data object, whatever the data size.
#
#   bash scripts/backup-memory.sh                 # 1 GiB in 4,096 values of 256 KiB
#   SIZE_MB=128 VALUE_KB=64 bash scripts/backup-memory.sh
#
# Environment: SIZE_MB (data size), VALUE_KB (value size), VIA (cli or node), CAPKV_BIN (default: a release build,
# built when missing), PORT_BASE (gRPC port of the first node of the source cluster; the restore
# cluster uses PORT_BASE+100, HTTP ports are +1000), KEEP=1 keeps the work directory.
# The values are mostly padding, so the stored backup is far smaller than the data; memory and
# time follow the data streamed, not the stored size.
set -euo pipefail

SIZE_MB="${SIZE_MB:-1024}"
VALUE_KB="${VALUE_KB:-256}"
PORT_BASE="${PORT_BASE:-27001}"
VIA="${VIA:-cli}"
cd "$(dirname "$0")/.."

if [ "$VIA" != cli ] && [ "$VIA" != node ]; then
    echo "VIA must be cli or node" >&2
    exit 2
fi
if [ "$VALUE_KB" -lt 1 ] || [ "$VALUE_KB" -gt 1024 ]; then
    echo "VALUE_KB must be between 1 and 1024 (a value is at most 1 MiB)" >&2
    exit 2
fi

# shellcheck source=scripts/lib/clusters.sh
source scripts/lib/clusters.sh

# Resident memory (KiB) of the nodes whose data directory is under $1, summed, and the largest.
node_pids() { pgrep -f -- "--data-dir $1/" || true; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
nodes_rss() {
    local total=0 max=0 r
    for pid in $(node_pids "$1"); do
        r="$(rss_kib "$pid")"
        total=$((total + r))
        [ "$r" -gt "$max" ] && max="$r"
    done
    echo "$total $max"
}

# Runs a CLI command in the background and samples its memory and the nodes' every 100 ms.
# Prints: seconds, CLI peak KiB, largest node peak KiB.
measure() {
    local dir="$1"
    shift
    local started cli_peak=0 node_peak=0 r
    started="$(date +%s.%N)"
    "$@" >"$work/out" 2>"$work/err" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        r="$(rss_kib "$pid")"
        [ "$r" -gt "$cli_peak" ] && cli_peak="$r"
        read -r _ r <<<"$(nodes_rss "$dir")"
        [ "$r" -gt "$node_peak" ] && node_peak="$r"
        sleep 0.1
    done
    if ! wait "$pid"; then
        echo "failed: $*" >&2
        cat "$work/err" >&2
        exit 1
    fi
    echo "$(awk -v a="$(date +%s.%N)" -v b="$started" 'BEGIN { printf "%.1f", a - b }') $cli_peak $node_peak"
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

keys=$((SIZE_MB * 1024 / VALUE_KB))
echo "source cluster: $keys keys of $VALUE_KB KiB ($SIZE_MB MiB)"
track_cluster "$work/source"
# Nodes inherit it from `cluster up`: where a node may write file:// backups (VIA=node).
export CAPKV_BACKUP_DIR="$work/backups"
src_endpoints="$(start_cluster "$work/source" "$PORT_BASE")"
cli=("$CAPKV_BIN" --endpoints "$src_endpoints" --timeout 60s)
"${cli[@]}" keyspace create blobs --mode cp >/dev/null
# `--op get` writes every key once before it reads: that is the load.
"${cli[@]}" bench --keyspace blobs --op get --keys "$keys" --value-size $((VALUE_KB * 1024)) \
    --concurrency 8 --duration 1s >/dev/null
sleep 2
read -r src_idle _ <<<"$(nodes_rss "$work/source")"
read -r _ src_idle_max <<<"$(nodes_rss "$work/source")"

url="file://$work/backups"
read -r b_secs b_cli b_node <<<"$(measure "$work/source" "${cli[@]}" -o json backup create --to "$url" --via "$VIA")"
stored="$(grep -o '"bytes": *[0-9]*' "$work/out" | tail -1 | grep -o '[0-9]*$')"

track_cluster "$work/restore"
dst_endpoints="$(start_cluster "$work/restore" $((PORT_BASE + 100)))"
sleep 2
read -r _ dst_idle_max <<<"$(nodes_rss "$work/restore")"
read -r r_secs r_cli r_node <<<"$(measure "$work/restore" "$CAPKV_BIN" --endpoints "$dst_endpoints" \
    --timeout 60s backup restore --from "$url")"
restored="$("$CAPKV_BIN" --endpoints "$dst_endpoints" -o json keyspace list | grep -c '"blobs"' || true)"
[ "$restored" -ge 1 ] || { echo "the restored cluster has no keyspace blobs" >&2; exit 1; }

echo
echo "data: $SIZE_MB MiB in $keys keys, backup written by the $VIA; stored backup: $(mib $((stored / 1024))) MiB"
printf '%-8s %8s %14s %22s\n' step seconds "CLI peak MiB" "node idle->peak MiB"
printf '%-8s %8.1f %14s %22s\n' backup "$b_secs" "$(mib "$b_cli")" "$(mib "$src_idle_max") -> $(mib "$b_node")"
printf '%-8s %8.1f %14s %22s\n' restore "$r_secs" "$(mib "$r_cli")" "$(mib "$dst_idle_max") -> $(mib "$r_node")"
echo "(node columns: the largest node's resident memory; source nodes hold $(mib "$src_idle") MiB in all when idle)"
