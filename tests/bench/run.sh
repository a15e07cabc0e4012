#!/usr/bin/env bash
# The boxd benchmark suite. Builds what it needs in build-bench/, starts its own boxd on a
# temporary socket, runs every benchmark, stops boxd, and prints one table (also written to
# build-bench/results.md). Not part of the tests' pass/fail: targets are reported, not enforced.
#
# usage: tests/bench/run.sh [--quick]
#   --quick   small sizes for a fast check; any BENCH_* variable already set wins.
#
# Sizes (environment; full defaults shown):
#   BENCH_ITERS=2000            exec latency iterations (bench_exec)
#   BENCH_GAP_ITERS=100         exec latency iterations after an idle gap (bench_exec)
#   BENCH_GAP_MS=50             that gap
#   BENCH_SSH_ITERS=200         ssh iterations, when sshd and keys are set up
#   BENCH_SSH_HOST=localhost    where ssh goes (user@localhost). sshd runs the command through
#                               that user's login shell, and bash then reads ~/.bashrc: give
#                               a user with Debian's default dotfiles, or ssh pays for them
#   BENCH_CONC_LEVELS=1,8,64    concurrent clients (bench_conc)
#   BENCH_CONC_MS=3000          duration of each concurrency measurement
#   BENCH_STREAM_BYTES=1073741824  bytes streamed (bench_stream)
#   BENCH_STREAM_ROUNDS=3       alternating rounds of baseline and boxd; medians reported
#   BENCH_CODE_ITERS=200        code runs per language (bench_code; python and node)
#   BENCH_LIVE_RUNS=1000        live runs for the RSS measurement (bench_rss)
#   BENCH_SEQ_RUNS=100000       sequential runs for the RSS measurement
#   BENCH_START_N=20            start-ups timed
#   BENCH_TTY_KEYS=300          keystrokes timed per client (tty_echo.py: boxctl shell vs ssh -tt)
#   BENCH_ONLY="exec conc stream code tty rss"   run only these
#   BENCH_BOXD_ARGS=""          more boxd options, e.g. "--user nobody" to measure runs that
#                               switch identity (through the exec helper, README "How it works")
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$ROOT/build-bench
MODE=full
if [ "${1:-}" = "--quick" ]; then
    MODE=quick
    : "${BENCH_ITERS:=300}" "${BENCH_SSH_ITERS:=50}" "${BENCH_CONC_MS:=1000}" "${BENCH_GAP_ITERS:=20}"
    : "${BENCH_STREAM_BYTES:=67108864}" "${BENCH_SEQ_RUNS:=5000}" "${BENCH_START_N:=5}"
    : "${BENCH_CODE_ITERS:=40}" "${BENCH_TTY_KEYS:=100}"
elif [ $# -gt 0 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
    exit 2
fi
: "${BENCH_ITERS:=2000}" "${BENCH_SSH_ITERS:=200}" "${BENCH_SSH_HOST:=localhost}" "${BENCH_CONC_LEVELS:=1,8,64}"
: "${BENCH_GAP_ITERS:=100}" "${BENCH_GAP_MS:=50}"
: "${BENCH_CONC_MS:=3000}" "${BENCH_STREAM_BYTES:=1073741824}" "${BENCH_LIVE_RUNS:=1000}"
: "${BENCH_SEQ_RUNS:=100000}" "${BENCH_START_N:=20}" "${BENCH_ONLY:=exec conc stream code tty rss}"
: "${BENCH_CODE_ITERS:=200}"
export BENCH_ITERS BENCH_GAP_ITERS BENCH_GAP_MS BENCH_SSH_ITERS BENCH_CONC_LEVELS BENCH_CONC_MS BENCH_STREAM_BYTES
export BENCH_STREAM_ROUNDS=${BENCH_STREAM_ROUNDS:-3}
export BENCH_LIVE_RUNS BENCH_SEQ_RUNS BENCH_START_N BENCH_CODE_ITERS
export BENCH_TTY_KEYS=${BENCH_TTY_KEYS:-300}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- Build ----------------------------------------------------------------------------------
mkdir -p "$OUT"
BENCHES="bench_exec bench_conc bench_stream bench_rss bench_code"
echo "run.sh: building boxd and the benchmarks in $OUT" >&2
build() {
    cmake -S "$ROOT" -B "$OUT" -DBOXD_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
        cmake --build "$OUT" --target boxd boxctl boxclient boxschema -j2
}
if ! build >"$OUT/build.log" 2>&1; then
    cat "$OUT/build.log" >&2
    exit 1
fi
if cmake --build "$OUT" --target help 2>/dev/null | grep -qw bench_exec; then
    # The lead's tree includes tests/bench/CMakeLists.txt: let CMake build the benchmarks.
    # shellcheck disable=SC2086
    cmake --build "$OUT" --target $BENCHES -j2 >>"$OUT/build.log" 2>&1 ||
        { cat "$OUT/build.log" >&2; exit 1; }
    BIN=$(dirname "$(find "$OUT" -type f -name bench_exec -perm -u+x | head -n 1)")
else
    # Standalone: the same flags as the project's, against the libboxcodec.a just built.
    CFLAGS=(-std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
            -Wmissing-prototypes -Wformat=2 -Wvla -fno-strict-aliasing
            -I"$ROOT/protocol/codec" -I"$ROOT/protocol/client" -I"$ROOT/protocol/common"
            -I"$ROOT/protocol/schema" -I"$ROOT/tests/bench")
    BIN=$OUT/bench
    mkdir -p "$BIN"
    CODEC=$(find "$OUT" -maxdepth 2 -name libboxcodec.a | head -n 1)
    CLIENT=$(find "$OUT" -maxdepth 2 -name libboxclient.a | head -n 1)
    COMMON=$(find "$OUT" -maxdepth 2 -name libboxcommon.a | head -n 1)
    SCHEMA=$(find "$OUT" -maxdepth 2 -name libboxschema.a | head -n 1)
    # shellcheck disable=SC2046
    {
        cc "${CFLAGS[@]}" -c "$ROOT/tests/bench/bench.c" -o "$BIN/bench.o" &&
            for b in $BENCHES; do
                cc "${CFLAGS[@]}" "$ROOT/tests/bench/$b.c" "$BIN/bench.o" "$CLIENT" "$SCHEMA" "$CODEC" "$COMMON" \
                    $(pkg-config --libs msgpack) -lpthread -lm -o "$BIN/$b" || exit 1
            done
    } >>"$OUT/build.log" 2>&1 || { cat "$OUT/build.log" >&2; exit 1; }
fi

# ---- boxd and clean-up ----------------------------------------------------------------------
TMP=$(mktemp -d /tmp/boxd-bench.XXXXXX)
SOCK=$TMP/boxd.sock
BOXD_PID=
SSH_CTL=
stop_boxd() {
    [ -n "$BOXD_PID" ] || return 0
    kill -TERM "$BOXD_PID" 2>/dev/null || true
    # Bounded: boxd cancels its runs with a 2 s grace; after 10 s it is killed.
    for _ in $(seq 100); do
        kill -0 "$BOXD_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$BOXD_PID" 2>/dev/null || true
    wait "$BOXD_PID" 2>/dev/null || true
    BOXD_PID=
}
cleanup() {
    stop_boxd
    if [ -n "$SSH_CTL" ]; then
        ssh -S "$SSH_CTL" -O exit "$BENCH_SSH_HOST" >/dev/null 2>&1 || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss_of() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# shellcheck disable=SC2086
"$OUT/boxd" --listen "unix:$SOCK" --max-runs 2000 ${BENCH_BOXD_ARGS:-} 2>"$OUT/boxd.log" &
BOXD_PID=$!
for _ in $(seq 200); do
    [ -S "$SOCK" ] && break
    sleep 0.05
done
if [ ! -S "$SOCK" ]; then
    echo "run.sh: boxd did not start; see $OUT/boxd.log" >&2
    exit 1
fi
sleep 0.2
SHARED_IDLE=$(rss_of "$BOXD_PID")

# ---- ssh, when there is one to compare with -------------------------------------------------
unset BENCH_SSH_CONTROL
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null 2>&1; then
    export BENCH_SSH_NOTE="no sshd"
elif timeout 15 ssh -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=accept-new \
    -o UserKnownHostsFile="$TMP/known_hosts" -o ControlMaster=yes \
    -o ControlPath="$TMP/ssh-cm" -o ControlPersist=600 -fN "$BENCH_SSH_HOST" >/dev/null 2>&1; then
    SSH_CTL=$TMP/ssh-cm
    BENCH_SSH_BIN=$(command -v ssh)
    export BENCH_SSH_CONTROL=$SSH_CTL BENCH_SSH_BIN BENCH_SSH_HOST
else
    export BENCH_SSH_NOTE="ssh $BENCH_SSH_HOST failed"
fi

# ---- Benchmarks -----------------------------------------------------------------------------
ROWS=$OUT/rows.tsv
: >"$ROWS"
FAILED=()
bench() { # name, command...
    local name=$1
    shift
    case " $BENCH_ONLY " in *" $name "*) ;; *) return 0 ;; esac
    echo "run.sh: --- $name" >&2
    local t0=$SECONDS
    if ! "$@" >>"$ROWS"; then
        FAILED+=("$name")
    fi
    echo "run.sh: $name took $((SECONDS - t0)) s" >&2
    if [ -n "$BOXD_PID" ] && ! kill -0 "$BOXD_PID" 2>/dev/null; then
        echo "run.sh: boxd died during $name; see $OUT/boxd.log" >&2
        FAILED+=("boxd-died-in-$name")
        exit 1
    fi
}
bench exec "$BIN/bench_exec" "$SOCK"
bench conc "$BIN/bench_conc" "$SOCK"
bench stream "$BIN/bench_stream" "$SOCK" "$OUT/boxctl"
bench code "$BIN/bench_code" "$SOCK"
# Keystroke echo through boxctl shell against ssh -tt to a private sshd it starts itself.
bench tty env BOXCTL_BIN="$OUT/boxctl" /usr/bin/python3 "$ROOT/tests/bench/tty_echo.py" \
    --socket "$SOCK" --rows
# The shared boxd keeps finished runs with their logs (up to --max-finished, each up to
# --log-bytes), so after the stream benchmark this includes its runs' retained logs (one per
# round, 8 MiB each by default).
case " $BENCH_ONLY " in
*" exec "* | *" conc "* | *" stream "*)
    SHARED_END=$(rss_of "$BOXD_PID")
    printf 'ROW\tshared boxd RSS after the benchmarks above (KiB) [baseline: its idle RSS]\t%s\t%s\t%s\t-\n' \
        "$SHARED_END" "$SHARED_IDLE" \
        "$(awk -v a="$SHARED_END" -v b="$SHARED_IDLE" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')" \
        >>"$ROWS"
    ;;
esac
stop_boxd
bench rss "$BIN/bench_rss" "$OUT/boxd" "$TMP" "$OUT/boxd-rss.log"

# ---- The table ------------------------------------------------------------------------------
{
    echo "# boxd benchmarks"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $MODE run, $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r), boxd $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')"
    echo
    echo "Load average at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other load on the machine skews the ratios; rerun when it is idle)."
    echo
    echo "BENCH_ITERS=$BENCH_ITERS BENCH_GAP_ITERS=$BENCH_GAP_ITERS BENCH_GAP_MS=$BENCH_GAP_MS BENCH_CONC_LEVELS=$BENCH_CONC_LEVELS BENCH_CONC_MS=$BENCH_CONC_MS BENCH_STREAM_BYTES=$BENCH_STREAM_BYTES BENCH_LIVE_RUNS=$BENCH_LIVE_RUNS BENCH_SEQ_RUNS=$BENCH_SEQ_RUNS BENCH_START_N=$BENCH_START_N"
    echo
    echo "| metric | boxd | baseline | ratio | target |"
    echo "|---|---:|---:|---:|---|"
    awk -F'\t' '$1 == "ROW" { printf "| %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6 }' "$ROWS"
    if grep -q '^NOTE' "$ROWS"; then
        echo
        awk -F'\t' '$1 == "NOTE" { printf "- %s\n", $2 }' "$ROWS"
    fi
    if [ ${#FAILED[@]} -gt 0 ]; then
        echo
        echo "FAILED: ${FAILED[*]} (see the messages above and $OUT/boxd*.log)"
    fi
} >"$OUT/results.md"

echo
awk -F'\t' '
    $1 == "ROW" { n++; for (i = 2; i <= 6; i++) { c[n, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
    $1 == "NOTE" { notes[++m] = $2 }
    END {
        h[2] = "metric"; h[3] = "boxd"; h[4] = "baseline"; h[5] = "ratio"; h[6] = "target"
        for (i = 2; i <= 6; i++) if (length(h[i]) > w[i]) w[i] = length(h[i])
        line = sprintf("%-*s  %*s  %*s  %*s  %-*s", w[2], h[2], w[3], h[3], w[4], h[4], w[5], h[5], w[6], h[6])
        print line
        gsub(/./, "-", line); print line
        for (r = 1; r <= n; r++)
            printf "%-*s  %*s  %*s  %*s  %-*s\n", w[2], c[r, 2], w[3], c[r, 3], w[4], c[r, 4], w[5], c[r, 5], w[6], c[r, 6]
        for (k = 1; k <= m; k++) print "note: " notes[k]
    }' "$ROWS"
echo
echo "results: $OUT/results.md"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}" >&2
    exit 1
fi
