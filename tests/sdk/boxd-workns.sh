#!/bin/sh
# Starts boxd in a private mount namespace in which BOXD_WORK_DIR is bind-mounted on /work, so
# the SDK examples' `cd /work && npm install && npm test` runs in a test project, as in a box,
# and nothing outside the namespace sees the mount. The mount is made by this process before it
# becomes boxd (exec), so boxd's pid is this process's.
#   BOXD_REAL_BIN   the boxd binary (arguments are boxd's)
#   BOXD_WORK_DIR   the directory to show as /work
set -eu
: "${BOXD_REAL_BIN:?}" "${BOXD_WORK_DIR:?}"
exec unshare --mount --propagation private sh -c '
    mount --bind "$BOXD_WORK_DIR" /work
    exec "$BOXD_REAL_BIN" "$@"
' boxd-workns "$@"
