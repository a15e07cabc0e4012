#!/bin/sh
# Starts boxd in a private mount namespace whose /tmp is a small tmpfs, so a run can fill "/tmp"
# without touching the host's. Used by tests/load/conftest.py (start_boxd_tmpfs) in place of the
# boxd binary: the arguments are boxd's; the real binary and the size come from the environment.
#
#   BOXD_LOAD_REAL_BIN    the boxd binary to exec
#   BOXD_LOAD_TMPFS_SIZE  the tmpfs size (mount's size= option, e.g. 64m)
#
# The daemon's socket lives under the host's /tmp (the conftest's work directory): that directory
# is bind-mounted back over the new tmpfs, reached through the cwd taken before the mount hides
# it (--no-canonicalize: mount would otherwise resolve "." to the path, now on the tmpfs). unshare and sh exec in place, so the pid the conftest started (and fenced) is boxd's.
set -eu
: "${BOXD_LOAD_REAL_BIN:?}" "${BOXD_LOAD_TMPFS_SIZE:?}"
sock=
prev=
for a in "$@"; do
    if [ "$prev" = --listen ]; then
        case "$a" in unix:*) sock=${a#unix:} ;; esac
    fi
    prev=$a
done
[ -n "$sock" ] || { echo "boxd-tmpfs.sh: no --listen unix:PATH" >&2; exit 2; }
dir=$(dirname "$sock")
case "$dir" in /tmp/?*) ;; *) echo "boxd-tmpfs.sh: $dir is not under /tmp" >&2; exit 2 ;; esac
# The binary is opened before the tmpfs goes over /tmp (a checkout may itself live under /tmp,
# as CI's clean clone can) and exec'd through its descriptor.
exec unshare --mount --propagation private sh -euc '
    exec 8<"$BOXD_LOAD_REAL_BIN"
    cd "$1"
    mount -t tmpfs -o "size=$2,mode=1777" boxd-load-tmp /tmp
    mkdir -p "$1"
    mount --no-canonicalize --bind . "$1"
    cd /
    shift 2
    exec /proc/self/fd/8 "$@"
' boxd-tmpfs "$dir" "$BOXD_LOAD_TMPFS_SIZE" "$@"
