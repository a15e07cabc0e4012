#!/bin/sh
# deb.sh: builds the boxd Debian package from the CMake install rules (CPack DEB) and prints its
# path on the last line of stdout.
#
# The package holds /usr/sbin/boxd, /usr/bin/boxctl, libboxclient (static) with its headers and
# pkg-config file, /etc/boxd/languages.conf (a conffile), boxd.8 and boxctl.1, PROTOCOL.md, and
# boxd.service (Type=notify, Delegate=yes, OOMScoreAdjust=-1000, Restart=always) for images
# where systemd, not boxd, is PID 1. Its dependencies come from dpkg-shlibdeps (libc6, libuv1,
# libmsgpackc2, libseccomp2).
#
# Idempotent, no input, needs root (it installs the build dependencies with scripts/deps.sh when
# they are missing). The build directory is build-deb/ in the repository (incremental); the
# package is copied to $BOXD_DEB_DIR (default /var/cache/boxd/deb) under a temporary name and
# renamed, so the printed path is always a complete file. Concurrent calls take turns.
#
# Environment:
#   BOXD_DEB_VERSION   the package's and boxd's version (default: the project version in
#                      CMakeLists.txt); a higher one builds an upgrade
#   BOXD_DEB_DIR       where the .deb goes (default /var/cache/boxd/deb)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
BUILD=$REPO/build-deb
OUT=${BOXD_DEB_DIR:-/var/cache/boxd/deb}

log() { printf 'deb.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs build dependencies with apt-get)"
sh "$REPO/scripts/deps.sh" build >&2

mkdir -p "$BUILD" "$OUT"
exec 9>"$BUILD.lock"
flock 9

PROJECT_VERSION=$(sed -n 's/^project(boxd VERSION \([0-9.]*\).*/\1/p' "$REPO/CMakeLists.txt")
VERSION=${BOXD_DEB_VERSION:-$PROJECT_VERSION}
case $VERSION in
'' | *[!0-9A-Za-z.+~-]* | [!0-9]*) die "bad version '$VERSION' (Debian versions: digits first, then [0-9A-Za-z.+~-])" ;;
esac

log "configuring $BUILD (prefix /usr, sysconfdir /etc, version $VERSION)"
cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
    -DCMAKE_INSTALL_SYSCONFDIR=/etc -DBOXD_VERSION_STRING="$VERSION" >"$BUILD/configure.log" 2>&1 ||
    { tail -n 20 "$BUILD/configure.log" >&2; die "cmake configure failed (log: $BUILD/configure.log)"; }
log "building boxd, boxctl, the client library and the man pages"
cmake --build "$BUILD" -j"$(nproc)" --target boxd boxctl boxclient boxcodec boxschema boxcommon man boxctl_man \
    >"$BUILD/build.log" 2>&1 ||
    { tail -n 30 "$BUILD/build.log" >&2; die "build failed (log: $BUILD/build.log)"; }
ARCH=$(dpkg --print-architecture)
DEST=$OUT/boxd_${VERSION}_$ARCH.deb
# Idempotent: the package is made again only when what it would hold changed (a staged install's
# file contents, the maintainer scripts, the version), so a second call with nothing new is quick
# and returns the same file (cpack's output is not byte-reproducible: it stamps times).
rm -rf "$BUILD/stage"
DESTDIR=$BUILD/stage cmake --install "$BUILD" >"$BUILD/stage.log" 2>&1 ||
    { tail -n 20 "$BUILD/stage.log" >&2; die "staged install failed (log: $BUILD/stage.log)"; }
stamp=$( { echo "$VERSION"; cd "$BUILD/stage" && find . -type f | LC_ALL=C sort | xargs sha256sum;
           cd "$HERE" && find debian systemd -type f | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -d' ' -f1)
if [ -f "$DEST" ] && [ "$(cat "$DEST.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "unchanged since $DEST was made: kept"
    printf '%s\n' "$DEST"
    exit 0
fi
log "packaging (cpack -G DEB)"
rm -f "$BUILD"/boxd_*.deb
(cd "$BUILD" && cpack -G DEB) >"$BUILD/cpack.log" 2>&1 ||
    { tail -n 30 "$BUILD/cpack.log" >&2; die "cpack failed (log: $BUILD/cpack.log)"; }
DEB=$BUILD/boxd_${VERSION}_$ARCH.deb
[ -f "$DEB" ] || die "cpack made no $DEB (log: $BUILD/cpack.log)"
dpkg-deb --info "$DEB" >/dev/null || die "$DEB is not a valid package"

cp "$DEB" "$DEST.tmp.$$"
mv -f "$DEST.tmp.$$" "$DEST"
printf '%s\n' "$stamp" >"$DEST.stamp"
log "made $DEST ($(du -k "$DEST" | cut -f1) KiB): $(dpkg-deb -f "$DEST" Depends)"
printf '%s\n' "$DEST"
