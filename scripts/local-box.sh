#!/bin/sh
# local-box.sh: builds boxd and boxctl and serves this machine as a local box.
#
#   scripts/local-box.sh [--foreground] [-- BOXD_ARGS...]   build, then start boxd
#   scripts/local-box.sh status                             is it running, where, since when
#   scripts/local-box.sh --stop                             stop it (SIGTERM, then KILL after 10 s)
#
# By default boxd is started in the background: the command returns once boxd answers on its
# socket, and says where its log is and how to stop it, so it can be pasted together with
# tests/run. --foreground runs boxd in this terminal instead (Ctrl-C stops it).
#
# The socket is /run/boxd.sock (or $BOXD_SOCKET); the state (pid, log, build log) is in
# /run/boxd-local (or $BOXD_LOCAL_DIR). Starting while it already serves changes nothing and
# says so. Needs root for the build dependencies (scripts/deps.sh build) and for /run.
# The last line of a start's stdout is the socket path.
set -eu
cd "$(dirname "$0")/.."
REPO=$(pwd)
SOCK=${BOXD_SOCKET:-/run/boxd.sock}
STATE=${BOXD_LOCAL_DIR:-/run/boxd-local}
PIDF=$STATE/boxd.pid
LOG=$STATE/boxd.log
BUILD_LOG=$STATE/build.log

say() { printf 'local-box: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    sed -n '2,16s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

# The pid of the boxd this script started, if it still runs (checked by name and socket, so a
# reused pid is never taken for it).
running_pid() {
    [ -f "$PIDF" ] || return 1
    pid=$(cat "$PIDF")
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = boxd ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "unix:$SOCK" || return 1
    printf '%s\n' "$pid"
}

serving() {
    [ -x build/boxctl ] && build/boxctl -s "$SOCK" ping >/dev/null 2>&1
}

status() {
    if pid=$(running_pid); then
        say "boxd is running: pid $pid, unix:$SOCK, log $LOG"
        if serving; then
            build/boxctl -s "$SOCK" info 2>/dev/null | sed -n '1,6s/^/  /p' >&2 || true
        else
            say "but it does not answer ping on $SOCK (see $LOG)"
        fi
        return 0
    fi
    say "no local boxd is running (no live pid in $PIDF); start one with scripts/local-box.sh"
    return 3
}

stop() {
    if ! pid=$(running_pid); then
        say "no local boxd is running (no live pid in $PIDF): nothing to stop"
        rm -f "$PIDF"
        return 1
    fi
    say "stopping boxd (pid $pid): SIGTERM, runs get their grace period"
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = boxd ]; do
        i=$((i + 1))
        if [ "$i" -ge 100 ]; then
            say "boxd did not exit within 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$PIDF"
    say "stopped (its log stays in $LOG)"
}

FG=
case ${1:-} in
status) status; exit $? ;;
--stop | stop) stop; exit $? ;;
-h | --help) usage 0 ;;
--foreground) FG=1; shift ;;
start) shift ;;
esac
[ "${1:-}" = -- ] && shift

[ "$(id -u)" = 0 ] || die "must run as root (build dependencies, /run, and boxd runs as a box's root)"
mkdir -p "$STATE"

if pid=$(running_pid) && serving; then
    say "already serving on unix:$SOCK (pid $pid); log: $LOG; stop: scripts/local-box.sh --stop"
    printf '%s\n' "$SOCK"
    exit 0
fi
# Said before building, so that a running boxd's binary is not rebuilt under it. (boxd checks
# again itself, also when this ping cannot tell, e.g. when the running one wants a token.)
if [ -S "$SOCK" ] && serving; then
    die "another boxd, not started by this script, serves unix:$SOCK; stop it first or set BOXD_SOCKET"
fi

say "checking build dependencies (scripts/deps.sh build)"
sh scripts/deps.sh build >&2
say "configuring build/ (cmake, RelWithDebInfo)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$BUILD_LOG" 2>&1 ||
    { tail -n 20 "$BUILD_LOG" >&2; die "cmake failed (log: $BUILD_LOG)"; }
say "building boxd and boxctl (about 25 s the first time on 2 CPUs; log: $BUILD_LOG)"
t0=$(date +%s)
cmake --build build -j"$(nproc)" --target boxd boxctl >>"$BUILD_LOG" 2>&1 ||
    { tail -n 30 "$BUILD_LOG" >&2; die "build failed (log: $BUILD_LOG)"; }
say "built in $(($(date +%s) - t0)) s"

if [ -n "$FG" ]; then
    say "starting boxd in the foreground on unix:$SOCK (Ctrl-C stops it; try: build/boxctl -s $SOCK exec 'echo hello')"
    exec build/boxd --listen "unix:$SOCK" "$@"
fi

: >"$LOG"
# setsid: boxd outlives this shell and is not in its terminal's process group (a Ctrl-C in
# the terminal that started it does not reach it).
setsid build/boxd --listen "unix:$SOCK" "$@" </dev/null >>"$LOG" 2>&1 &
pid=$!
printf '%s\n' "$pid" >"$PIDF"
i=0
until serving; do
    # Gone, or a zombie (our child, not yet waited for): start-up failed. (Before its exec
    # the child is still a shell or setsid, so its name says nothing yet.)
    st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    if [ -z "$st" ] || [ "$st" = Z ]; then
        rm -f "$PIDF"
        tail -n 20 "$LOG" | sed 's/^/  | /' >&2
        die "boxd exited at start-up (log: $LOG)"
    fi
    i=$((i + 1))
    [ "$i" -lt 200 ] || die "boxd (pid $pid) does not answer on $SOCK after 10 s (log: $LOG)"
    sleep 0.05
done
say "boxd (pid $pid) serves unix:$SOCK"
if [ "$SOCK" = /run/boxd.sock ]; then
    say "  try:   build/boxctl exec 'echo hello'"
else
    say "  try:   build/boxctl -s $SOCK exec 'echo hello'   (or export BOXD_SOCKET=$SOCK)"
fi
say "  log:   $LOG"
say "  state: scripts/local-box.sh status; stop: scripts/local-box.sh --stop"
printf '%s\n' "$SOCK"
