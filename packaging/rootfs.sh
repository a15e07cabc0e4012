#!/bin/sh
# rootfs.sh [DIR]: makes (once) the Debian bookworm rootfs that every box starts from.
#
# The rootfs is cached outside the repository, by default in /var/cache/boxd/rootfs-bookworm
# (or $BOXD_ROOTFS). It is built only when it is missing or its stamp file does not match the
# current recipe; a build goes to a temporary directory next to DIR and is renamed into place
# once it is complete, so DIR is either absent or whole. Concurrent callers serialise on a lock
# file, and the second one finds the work done.
#
# The cached tree is never modified for a test: boxes run on an overlay of it (nsbox.sh) or on a
# copy of it (vmbox/build.sh). boxd is not part of it (install-boxd.sh puts it into a copy).
#
# Environment:
#   BOXD_ROOTFS   default DIR
#   BOXD_MIRROR   Debian mirror for debootstrap (default http://deb.debian.org/debian)
#
# Prints DIR on stdout when done; progress goes to stderr. Needs root.
set -eu

DIR=${1:-${BOXD_ROOTFS:-/var/cache/boxd/rootfs-bookworm}}
MIRROR=${BOXD_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# What the boxes need: boxd's shared libraries (libuv1, libmsgpackc2, libseccomp2), ip and ps for
# tests, kmod (modprobe, for the microVM's vsock modules), and python3-minimal (12 MB installed,
# about a second of debootstrap) so tests can run small scripts inside a box.
INCLUDE=libuv1,libmsgpackc2,libseccomp2,iproute2,procps,kmod,python3-minimal
# The stamp records the recipe; change RECIPE_VERSION to force a rebuild everywhere.
RECIPE_VERSION=1
RECIPE="boxd-rootfs v$RECIPE_VERSION suite=$SUITE variant=minbase include=$INCLUDE"
STAMP_NAME=.boxd-rootfs-stamp

log() { printf 'rootfs.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

is_complete() {
    [ -f "$1/$STAMP_NAME" ] && [ "$(cat "$1/$STAMP_NAME")" = "$RECIPE" ]
}

[ "$(id -u)" = 0 ] || die "must run as root"
case $DIR in /*) ;; *) DIR=$(pwd)/$DIR ;; esac
DIR=${DIR%/}

if is_complete "$DIR"; then
    printf '%s\n' "$DIR"
    exit 0
fi

PARENT=$(dirname "$DIR")
mkdir -p "$PARENT"

# One builder at a time; the lock is held until this script exits.
exec 9>"$DIR.lock"
flock 9
if is_complete "$DIR"; then
    printf '%s\n' "$DIR"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap (and the Debian archive keyring it checks the mirror with), --no-install-recommends"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap debian-archive-keyring >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap debian-archive-keyring >&2; } ||
        die "cannot install debootstrap"
fi

# Leftovers of an interrupted build. Its mounts (if any) lived in a private mount namespace that
# died with it (see below), so plain removal is enough.
for old in "$DIR".tmp.* "$DIR".old.*; do
    [ -e "$old" ] || continue
    log "removing leftover $old"
    rm -rf --one-file-system "$old"
done

TMP="$DIR.tmp.$$"
cleanup() { rm -rf --one-file-system "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

log "building $SUITE rootfs in $TMP (debootstrap, about 30 s)"
start=$(date +%s)
# debootstrap mounts /proc and /sys inside the target while it configures packages. Running it
# in a private mount namespace keeps those mounts off the host's mount table, and they vanish
# with the namespace even when debootstrap fails half way.
if ! unshare --mount --propagation private \
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$TMP" "$MIRROR" \
    >"$DIR.debootstrap.log" 2>&1; then
    tail -n 20 "$DIR.debootstrap.log" >&2 || true
    [ -f "$TMP/debootstrap/debootstrap.log" ] && tail -n 20 "$TMP/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (full log: $DIR.debootstrap.log)"
fi

# The downloaded .debs (about 30 MB) and the package lists are not needed in a box.
chroot "$TMP" apt-get clean
rm -rf "$TMP"/var/lib/apt/lists/* "$TMP"/var/log/apt/* "$TMP"/var/cache/debconf/*-old
# A neutral identity: debootstrap copies the build host's hostname and resolv.conf.
echo box >"$TMP/etc/hostname"
: >"$TMP/etc/resolv.conf"
mkdir -p "$TMP/run" "$TMP/tmp" "$TMP/proc" "$TMP/sys" "$TMP/dev"
chmod 1777 "$TMP/tmp"

printf '%s\n' "$RECIPE" >"$TMP/$STAMP_NAME"
sync -f "$TMP/$STAMP_NAME" 2>/dev/null || true

# Atomic replacement: an old, incomplete or out-of-date DIR is moved aside first (rename cannot
# replace a non-empty directory), then the new tree takes its name.
if [ -e "$DIR" ]; then
    mv "$DIR" "$DIR.old.$$"
fi
mv "$TMP" "$DIR"
trap - EXIT
rm -rf --one-file-system "$DIR.old.$$"
log "done in $(($(date +%s) - start)) s: $(du -sh "$DIR" | cut -f1) in $DIR"
printf '%s\n' "$DIR"
