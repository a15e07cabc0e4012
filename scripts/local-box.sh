#!/bin/sh
# Builds boxd and boxctl and starts boxd serving this machine as a local box, in the
# foreground, on its default socket /run/boxd.sock (or $BOXD_SOCKET). Ctrl-C stops it.
#   In another shell:  build/boxctl exec 'echo hello'
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target boxd boxctl >/dev/null
sock="${BOXD_SOCKET:-/run/boxd.sock}"
echo "boxd: serving unix:$sock (try: build/boxctl -s $sock exec 'echo hello')"
exec build/boxd --listen "unix:$sock" "$@"
