#!/bin/sh
# Starts boxd where cgroup v2 cannot be written, to test its fallback (process group plus a
# /proc walk): a private mount namespace in which /sys/fs/cgroup/unified is remounted read-only.
# The remount is a bind remount of this namespace's own mount entry: the host's stays rw.
#   BOXD_REAL_BIN   the boxd binary to exec (arguments are boxd's)
set -eu
: "${BOXD_REAL_BIN:?}"
exec unshare --mount --propagation private sh -euc '
    for m in /sys/fs/cgroup/unified /sys/fs/cgroup; do
        if grep -q " $m cgroup2 " /proc/self/mounts; then
            mount -o remount,bind,ro "$m"
        fi
    done
    exec "$BOXD_REAL_BIN" "$@"
' boxd-nocgroup "$@"
