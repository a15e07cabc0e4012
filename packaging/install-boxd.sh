#!/bin/sh
# install-boxd.sh ROOTFS [BOXD_BIN [BOXCTL_BIN]]: puts boxd (and boxctl, when built) into a box's
# root filesystem, as ROOTFS/sbin/boxd and ROOTFS/usr/bin/boxctl.
#
# ROOTFS must be a box's own tree - a copy of the cached rootfs or the merged view of an overlay
# on it - never the cache itself: the script refuses a plain directory that carries rootfs.sh's
# stamp.
# The binaries default to the repository's build/boxd and build/boxctl. boxd is linked against
# the rootfs's own libuv1 and libmsgpackc2 (same Debian release as the build host), and the
# script checks that those libraries are present.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

die() { printf 'install-boxd.sh: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: install-boxd.sh ROOTFS [BOXD_BIN [BOXCTL_BIN]]"
ROOTFS=${1%/}
BOXD_BIN=${2:-$REPO/build/boxd}
BOXCTL_BIN=${3:-$REPO/build/boxctl}

[ -d "$ROOTFS/usr" ] || die "$ROOTFS does not look like a root filesystem"
# The cache carries rootfs.sh's stamp; an overlay on it shows the stamp too, and is fine.
if [ -e "$ROOTFS/.boxd-rootfs-stamp" ] && [ "$(stat -f -c %T "$ROOTFS")" != overlayfs ]; then
    die "$ROOTFS is the cached rootfs; install into a copy or an overlay of it"
fi
[ -x "$BOXD_BIN" ] || die "no boxd binary at $BOXD_BIN (build it: cmake --build build --target boxd)"

# Debian bookworm has merged /usr: /sbin is a link to usr/sbin. Writing through the link keeps
# it a link (in an overlay too, where creating a real sbin directory would hide usr/sbin).
sbin=$ROOTFS/sbin
[ -L "$sbin" ] && sbin=$ROOTFS/usr/sbin
mkdir -p "$sbin" "$ROOTFS/usr/bin"

# Copy to a temporary name, then rename: a box never sees a half-written binary.
cp "$BOXD_BIN" "$sbin/.boxd.new"
chmod 0755 "$sbin/.boxd.new"
mv -f "$sbin/.boxd.new" "$sbin/boxd"
if [ -x "$BOXCTL_BIN" ]; then
    cp "$BOXCTL_BIN" "$ROOTFS/usr/bin/.boxctl.new"
    chmod 0755 "$ROOTFS/usr/bin/.boxctl.new"
    mv -f "$ROOTFS/usr/bin/.boxctl.new" "$ROOTFS/usr/bin/boxctl"
fi

# Every shared library boxd needs must exist in the box (firecracker-containerd#773: a binary
# that does not run in its image kills the box at boot). ldd is not used: it would run the
# host's loader on the host's libraries. The DT_NEEDED names are checked against the rootfs.
if command -v objdump >/dev/null 2>&1; then
    for lib in $(objdump -p "$BOXD_BIN" | awk '$1 == "NEEDED" { print $2 }'); do
        found=
        for d in usr/lib/x86_64-linux-gnu lib/x86_64-linux-gnu usr/lib lib usr/lib64 lib64; do
            if [ -e "$ROOTFS/$d/$lib" ]; then
                found=1
                break
            fi
        done
        [ -n "$found" ] || die "boxd needs $lib, which $ROOTFS lacks"
    done
fi
