#!/bin/sh
# Installs the Debian 12 packages boxd needs to build and test, if any is missing.
# Idempotent; needs root (apt-get). Nothing is downloaded except Debian packages.
set -eu
PKGS="build-essential cmake pkg-config libuv1-dev libmsgpack-dev libseccomp-dev
      python3 python3-pytest python3-pytest-xdist python3-msgpack procps iproute2 util-linux sudo"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "deps: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
