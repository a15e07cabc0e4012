#!/bin/sh
# Builds boxd and boxctl and starts boxd serving this machine as a local box, in the
# foreground, on its default socket /run/boxd.sock (or $BOXD_SOCKET). Ctrl-C stops it.
#   In another shell:  build/boxctl exec 'echo hello'
# Run twice, the second refuses to start: boxd never takes a socket another boxd serves.
set -eu
cd "$(dirname "$0")/.."
sock="${BOXD_SOCKET:-/run/boxd.sock}"
# Said before building, so that a running boxd's binary is not rebuilt under it. (boxd checks
# again itself, also when this ping cannot tell, e.g. when the running one wants a token.)
if [ -S "$sock" ] && [ -x build/boxctl ] && build/boxctl -s "$sock" ping >/dev/null 2>&1; then
    echo "boxd: another boxd is serving unix:$sock; stop it first or set BOXD_SOCKET" >&2
    exit 1
fi
sh scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target boxd boxctl >/dev/null
echo "boxd: starting on unix:$sock (try: build/boxctl -s $sock exec 'echo hello')"
exec build/boxd --listen "unix:$sock" "$@"
