#!/usr/bin/env bash
# The project's test command, used by CI (.ci/run, .github/workflows/ci.yml) and by developers.
#
#   bash scripts/test.sh
#
# Steps: rustfmt check, clippy (warnings are errors), build every test target, then unit tests,
# doc tests, other integration test targets, and the multi-process integration suite `it`
# (3-node clusters on loopback; one test at a time, the machine has 2 cores).
#
# Time bounds: the build gets CAPKV_BUILD_TIMEOUT (default 40m); all test steps together get
# CAPKV_TEST_BUDGET_SECS (default 1500 = 25 min), each step the part of the budget still left.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD_TIMEOUT="${CAPKV_BUILD_TIMEOUT:-40m}"
TEST_BUDGET_SECS="${CAPKV_TEST_BUDGET_SECS:-1500}"
LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/capkv-test.XXXXXX")"
TEST_LOG="$LOG_DIR/tests.log"
SCRIPT_START=$(date +%s)

section() {
    printf '\n==================== %s ====================\n' "$*"
}

elapsed() {
    echo "$(($(date +%s) - SCRIPT_START))s"
}

fail() {
    printf '\nFAILED: %s (after %s)\n' "$*" "$(elapsed)" >&2
    exit 1
}

# --- tools ---------------------------------------------------------------------------------------
section "tools"
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || fail "cargo is not installed (install Rust stable with rustup)"
for component in rustfmt clippy; do
    subcommand="$component"
    [ "$component" = rustfmt ] && subcommand=fmt
    if ! cargo "$subcommand" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            echo "installing the $component component"
            rustup component add "$component"
        else
            fail "cargo $component is missing and rustup is not available to install it"
        fi
    fi
done
command -v timeout >/dev/null 2>&1 || fail "timeout (coreutils) is missing"
# The traced-syscall test (tests/it/syscalls.rs) needs strace; it skips itself without it.
if ! command -v strace >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "installing strace (for the traced-syscall durability test)"
        SUDO=""
        [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
        { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq strace; } \
            || echo "WARNING: could not install strace; the traced-syscall test will be skipped"
    else
        echo "WARNING: strace is missing and apt-get is not available; the traced-syscall test will be skipped"
    fi
fi
cargo --version
cargo fmt --version
cargo clippy --version

# An S3-compatible server for the backup tests (tests/it/backup.rs): moto[server] and boto3 (the
# independent client the tests read uploads with), in a virtual environment when missing.
# CI must have them; elsewhere the S3 tests skip with a printed reason when this step fails.
s3_tools() {
    if command -v moto_server >/dev/null 2>&1 && python3 -c 'import boto3' >/dev/null 2>&1; then
        export CAPKV_TEST_PYTHON=python3
        return 0
    fi
    local venv="${CAPKV_TOOLS_DIR:-$HOME/.cache/capkv-tools}/venv"
    if [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/python" -c 'import boto3' >/dev/null 2>&1; then
        command -v python3 >/dev/null 2>&1 || { echo "python3 is missing"; return 1; }
        if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
            if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
                echo "installing python3-venv"
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            fi
        fi
        echo "installing moto[server] and boto3 into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" && "$venv/bin/pip" install -q 'moto[server]' boto3 || return 1
    fi
    export PATH="$venv/bin:$PATH"
    export CAPKV_TEST_PYTHON="$venv/bin/python"
}
if s3_tools; then
    echo "moto_server: $(command -v moto_server)"
elif [ "${CI:-}" = true ]; then
    fail "could not install moto[server] and boto3 for the S3 backup tests"
else
    echo "WARNING: moto[server]/boto3 unavailable; the S3 backup tests will skip"
fi

# --- static checks -------------------------------------------------------------------------------
section "cargo fmt --check"
cargo fmt --all -- --check || fail "formatting differs: run 'cargo fmt --all'"

section "cargo clippy (-D warnings, timeout $BUILD_TIMEOUT)"
timeout --kill-after=30s "$BUILD_TIMEOUT" cargo clippy --workspace --all-targets -- -D warnings || fail "clippy"

# --- build ---------------------------------------------------------------------------------------
section "build all test targets (timeout $BUILD_TIMEOUT)"
timeout --kill-after=30s "$BUILD_TIMEOUT" cargo test --workspace --all-targets --no-run \
    || fail "building the tests"

# --- tests ---------------------------------------------------------------------------------------
TEST_START=$(date +%s)

# Runs one test step with whatever is left of the test budget, appending its output to TEST_LOG.
run_tests() {
    local name="$1"
    shift
    local left=$((TEST_BUDGET_SECS - ($(date +%s) - TEST_START)))
    section "$name (time left in the test budget: ${left}s)"
    if ((left <= 0)); then
        fail "$name: the test time budget of ${TEST_BUDGET_SECS}s is used up"
    fi
    local rc=0
    timeout --kill-after=30s "${left}s" "$@" 2>&1 | tee -a "$TEST_LOG" || rc=$?
    if ((rc == 124 || rc == 137)); then
        fail "$name: timed out (test budget ${TEST_BUDGET_SECS}s)"
    elif ((rc != 0)); then
        fail "$name (exit code $rc)"
    fi
}

run_tests "unit tests" cargo test --workspace --lib --bins
run_tests "doc tests" cargo test --workspace --doc

# Integration test targets other than `it` (tests/*.rs, tests/*/main.rs, jepsen-style/tests/*.rs).
other_targets=()
for f in tests/*.rs; do
    [ -e "$f" ] && other_targets+=("capkv:$(basename "$f" .rs)")
done
for f in tests/*/main.rs; do
    [ -e "$f" ] || continue
    name="$(basename "$(dirname "$f")")"
    [ "$name" = "it" ] || other_targets+=("capkv:$name")
done
for f in jepsen-style/tests/*.rs; do
    [ -e "$f" ] && other_targets+=("jepsen-style:$(basename "$f" .rs)")
done
for target in "${other_targets[@]+"${other_targets[@]}"}"; do
    run_tests "integration tests: ${target}" cargo test -p "${target%%:*}" --test "${target#*:}"
done

# Short Jepsen-style runs (built-in fault layer) and one negative control that must be caught.
run_tests "jepsen-style short runs (scripts/jepsen-ci.sh)" bash scripts/jepsen-ci.sh

# The multi-process suite runs last: it is the slowest and needs the machine to itself.
run_tests "multi-process integration tests (tests/it, one at a time)" \
    cargo test --workspace --test it -- --test-threads=1

# --- summary -------------------------------------------------------------------------------------
section "summary"
awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/)  passed  += $(i - 1)
            if ($(i) ~ /^failed;?$/)  failed  += $(i - 1)
            if ($(i) ~ /^ignored;?$/) ignored += $(i - 1)
        }
    }
    END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }
' "$TEST_LOG" >"$LOG_DIR/summary"
echo "finished in $(elapsed)"
cat "$LOG_DIR/summary"
rm -rf "$LOG_DIR"
