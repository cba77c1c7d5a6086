# Sourced by the scripts that start clusters of their own, from the repository root: the capkv
# binary (CAPKV_BIN, or a release build made when it is not given), a work directory removed on
# exit unless KEEP=1, and every cluster registered with `track_cluster` stopped on exit, however
# the script ends.

if [ -z "${CAPKV_BIN:-}" ]; then
    CAPKV_BIN=target/release/capkv
    echo "building capkv (release)"
    cargo build --release --quiet --bin capkv
fi
[ -x "$CAPKV_BIN" ] || { echo "CAPKV_BIN=$CAPKV_BIN is not an executable" >&2; exit 2; }

work="$(mktemp -d)"
clusters=()
cleanup() {
    for dir in "${clusters[@]+"${clusters[@]}"}"; do
        "$CAPKV_BIN" cluster down --data-dir "$dir" >/dev/null 2>&1 || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# Registers the cluster under $1 to be stopped on exit. Call it before `start_cluster`, outside
# `$(...)`: a variable set in that subshell is lost.
track_cluster() {
    clusters+=("$1")
}

# Starts a 3-node cluster with data under $1 and gRPC ports from $2 (HTTP ports +1000, peer
# ports +2000); prints its endpoints.
start_cluster() {
    local dir="$1" port="$2"
    "$CAPKV_BIN" cluster up --detach --data-dir "$dir" --base-port "$port" \
        --http-base-port $((port + 1000)) --peer-base-port $((port + 2000)) --timeout 60s >/dev/null
    echo "127.0.0.1:$port,127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2))"
}
