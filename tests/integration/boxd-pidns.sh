#!/bin/sh
# Starts boxd in a new pid namespace, as an ordinary process of it (sh is its PID 1), so that
# what a test's runs do to "the next pids" (signals, ptrace) can reach no process outside this
# daemon. sh passes SIGTERM on to boxd and exits with boxd's status.
#   BOXD_REAL_BIN   the boxd binary to run (arguments are boxd's)
set -eu
: "${BOXD_REAL_BIN:?}"
exec unshare --pid --fork --kill-child sh -c '
    "$BOXD_REAL_BIN" "$@" &
    pid=$!
    trap "kill -TERM $pid" TERM
    while :; do
        wait "$pid"
        rc=$?
        kill -0 "$pid" 2>/dev/null || exit "$rc"
    done
' boxd-pidns "$@"
