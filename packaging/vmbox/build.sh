#!/bin/sh
# vmbox/build.sh: makes what the microVM box boots, cached in /var/cache/boxd/vm ($BOXD_VM_CACHE):
#
#   vmlinuz         Debian's cloud kernel (linux-image-*-cloud-amd64-unsigned, from apt)
#   initrd.img      static busybox + the virtio and vsock modules; mounts /dev/vda, reads init=
#                   from /proc/cmdline and switch_roots to it (initramfs-init.sh)
#   box.ext4        the root disk: a copy of the cached rootfs (rootfs.sh) with boxd installed and
#                   the same modules under /lib/modules (with modules.dep), 512 MB ext4
#   boxd.help       `boxd --help` of the installed boxd, so run.sh knows what it supports
#
# Each piece is rebuilt only when what it is made from changed: the kernel is fetched once, the
# initramfs when the kernel or the module list changes, the disk when boxd, boxctl, the rootfs or
# the kernel changes (stamps record each input). Needs root and apt (qemu-system-x86, e2fsprogs,
# busybox-static, kmod, cpio are installed when missing).
#
#   build.sh [BOXD_BIN [BOXCTL_BIN]]     (defaults: build/boxd, build/boxctl)
#   build.sh --rootfs DIR --disk PATH
#       The disk at PATH is made from DIR, a root that has its own boxd (the product image,
#       image.sh --format vm does this); the kernel and initramfs are the cache's. The disk is
#       sized to the tree (used space + 50%, at least 512 MB; a sparse file).
#
# Environment: BOXD_VM_CACHE, BOXD_ROOTFS (see rootfs.sh), BOXD_VM_KERNEL_PKG (an exact kernel
# package name instead of the current cloud-amd64 one).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
PACKAGING=$(dirname "$HERE")
REPO=$(dirname "$PACKAGING")
CACHE=${BOXD_VM_CACHE:-/var/cache/boxd/vm}
ROOT_FROM=
DISK=$CACHE/box.ext4
while [ $# -gt 0 ]; do
    case $1 in
    --rootfs) ROOT_FROM=${2:?}; shift 2 ;;
    --disk) DISK=${2:?}; shift 2 ;;
    *) break ;;
    esac
done
BOXD_BIN=${1:-${BOXD_BIN:-$REPO/build/boxd}}
BOXCTL_BIN=${2:-${BOXCTL_BIN:-$REPO/build/boxctl}}
DISK_SIZE=512M
# Loaded by the initramfs in this order after their dependencies (resolved from modules.dep):
# the virtio transports (PCI for -M pc/q35, MMIO for -M microvm), the disk, the console ports,
# vsock (guest-local loopback works here; host-to-guest needs /dev/vhost-vsock on the host), and
# the network device run.sh --net adds.
MODULES="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio
virtio_blk virtio_console vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
vsock_loopback virtio_net"
RECIPE_VERSION=1

log() { printf 'vmbox/build.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
if [ -n "$ROOT_FROM" ]; then
    [ -x "$ROOT_FROM/usr/sbin/boxd" ] || die "$ROOT_FROM has no /usr/sbin/boxd"
    BOXD_BIN=$ROOT_FROM/usr/sbin/boxd
fi
[ -x "$BOXD_BIN" ] || die "no boxd binary at $BOXD_BIN (build it: cmake --build build --target boxd)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
# Leftovers of an interrupted build (stages are made with mktemp under the lock).
rm -rf --one-file-system "$CACHE"/initrd.?????? "$CACHE"/disk.?????? "$CACHE"/*.new

# ---- host tools ---------------------------------------------------------------------------------
need=
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
command -v mkfs.ext4 >/dev/null 2>&1 || need="$need e2fsprogs"
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx switch_root || need="$need busybox-static"
command -v depmod >/dev/null 2>&1 || need="$need kmod"
command -v cpio >/dev/null 2>&1 || need="$need cpio"
if [ -n "$need" ]; then
    log "installing:$need (QEMU, mkfs.ext4, the initramfs's busybox, depmod, cpio), --no-install-recommends"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >&2; } ||
        die "cannot install$need"
fi
file /bin/busybox 2>/dev/null | grep -q 'dynamically linked' &&
    die "/bin/busybox is dynamically linked; the initramfs needs busybox-static"

sha() { sha256sum "$@" | cut -c1-64; }

# ---- kernel -------------------------------------------------------------------------------------
# Fetched once; the version in use is recorded in kernel.version. Delete the cache to update.
if [ ! -s "$CACHE/kernel.version" ] || [ ! -f "$CACHE/vmlinuz" ]; then
    t0=$(date +%s%3N)
    pkg=${BOXD_VM_KERNEL_PKG:-}
    if [ -z "$pkg" ]; then
        # The meta-package names the current image package; its unsigned twin has the same
        # kernel and the plain (unsigned, uncompressed) modules.
        dep() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '$1 == "Depends:" { print $2; exit }'; }
        meta=$(dep)
        [ -n "$meta" ] || { apt-get update -q >&2 && meta=$(dep); }
        [ -n "$meta" ] || die "apt knows no linux-image-cloud-amd64 (Debian main in sources.list?)"
        pkg=$meta-unsigned
        apt-cache show "$pkg" >/dev/null 2>&1 || pkg=$meta
    fi
    log "fetching kernel package $pkg"
    rm -rf "$CACHE/dl" "$CACHE/kernel"
    mkdir -p "$CACHE/dl"
    # apt's sandbox user cannot write into a root-only directory; /tmp is fine for it.
    dl=$(mktemp -d /tmp/boxd-kernel.XXXXXX)
    chown _apt "$dl" 2>/dev/null || chmod 0777 "$dl"
    (cd "$dl" && apt-get download -q "$pkg" >&2) || { rm -rf "$dl"; die "apt-get download $pkg failed"; }
    mv "$dl"/*.deb "$CACHE/dl/"
    rmdir "$dl"
    dpkg -x "$CACHE"/dl/*.deb "$CACHE/kernel"
    kver=$(ls "$CACHE/kernel/lib/modules" | head -n 1)
    [ -n "$kver" ] && [ -f "$CACHE/kernel/boot/vmlinuz-$kver" ] || die "no kernel in $pkg"
    # The package ships no modules.dep.
    depmod -b "$CACHE/kernel" "$kver"
    cp "$CACHE/kernel/boot/vmlinuz-$kver" "$CACHE/vmlinuz"
    rm -rf "$CACHE/dl"
    printf '%s\n' "$kver" >"$CACHE/kernel.version"
    log "kernel $kver ready in $(($(date +%s%3N) - t0)) ms"
fi
KVER=$(cat "$CACHE/kernel.version")
KMOD=$CACHE/kernel/lib/modules/$KVER

# ---- module closure -----------------------------------------------------------------------------
# Prints the .ko paths (relative to KMOD) of the wanted modules and everything they depend on,
# dependencies first, each once.
resolve() {
    awk -v want="$(echo $MODULES)" '
        {
            mod = $1; sub(/:$/, "", mod)
            name = mod; sub(/.*\//, "", name); sub(/\.ko(\.[a-z]+)?$/, "", name)
            gsub(/-/, "_", name)
            path[name] = mod
            deps[name] = ""
            for (i = 2; i <= NF; i++) {
                d = $i; sub(/.*\//, "", d); sub(/\.ko(\.[a-z]+)?$/, "", d); gsub(/-/, "_", d)
                deps[name] = deps[name] " " d
            }
        }
        function visit(n,   ds, k, i) {
            if (n in done) return
            if (!(n in path)) { print "missing module " n > "/dev/stderr"; bad = 1; return }
            done[n] = 1
            k = split(deps[n], ds, " ")
            for (i = k; i >= 1; i--) visit(ds[i])
            print path[n]
        }
        END {
            n = split(want, w, " ")
            for (i = 1; i <= n; i++) visit(w[i])
            exit bad
        }' "$KMOD/modules.dep"
}
MODPATHS=$(resolve) || die "a module is missing from kernel $KVER"

# ---- initramfs ----------------------------------------------------------------------------------
INITRD_KEY=$(printf '%s\n' "v$RECIPE_VERSION" "$KVER" "$MODPATHS" "$(sha "$HERE/initramfs-init.sh" /bin/busybox)" | sha)
if [ ! -f "$CACHE/initrd.img" ] || [ "$(cat "$CACHE/initrd.stamp" 2>/dev/null)" != "$INITRD_KEY" ]; then
    t0=$(date +%s%3N)
    stage=$(mktemp -d "$CACHE/initrd.XXXXXX")
    mkdir -p "$stage/bin" "$stage/dev" "$stage/proc" "$stage/sys" "$stage/newroot" "$stage/etc" \
        "$stage/lib/modules/$KVER"
    cp /bin/busybox "$stage/bin/busybox"
    cp "$HERE/initramfs-init.sh" "$stage/init"
    chmod 0755 "$stage/init"
    for m in $MODPATHS; do
        mkdir -p "$stage/lib/modules/$KVER/$(dirname "$m")"
        cp "$KMOD/$m" "$stage/lib/modules/$KVER/$m"
        printf '%s\n' "$m" >>"$stage/etc/boxd-modules"
    done
    # The kernel needs /dev/console to give init its stdio before devtmpfs is mounted.
    mknod -m 600 "$stage/dev/console" c 5 1
    (cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -9 >"$CACHE/initrd.img.new"
    mv "$CACHE/initrd.img.new" "$CACHE/initrd.img"
    rm -rf "$stage"
    printf '%s\n' "$INITRD_KEY" >"$CACHE/initrd.stamp"
    log "initramfs ready in $(($(date +%s%3N) - t0)) ms: $(du -h "$CACHE/initrd.img" | cut -f1)"
fi

# ---- root disk ----------------------------------------------------------------------------------
if [ -n "$ROOT_FROM" ]; then
    # The product image: its stamps name its recipe and its boxd.
    ROOTFS=$ROOT_FROM
    DISK_KEY=$(printf '%s\n' "v$RECIPE_VERSION" "$KVER" "$MODPATHS" "$ROOTFS" \
        "$(cat "$ROOTFS"/.boxd-image-* 2>/dev/null)" "$(stat -c %Y "$ROOTFS" "$ROOTFS"/.boxd-image-* 2>/dev/null)" \
        "$(sha "$BOXD_BIN")" | sha)
    DISK_SIZE=$(du -sm "$ROOTFS" | awk '{ s = int($1 * 1.5) + 64; print (s < 512 ? 512 : s) "M" }')
else
    ROOTFS=$("$PACKAGING/rootfs.sh")
    bins=$BOXD_BIN
    [ -x "$BOXCTL_BIN" ] && bins="$bins $BOXCTL_BIN"
    # shellcheck disable=SC2086
    DISK_KEY=$(printf '%s\n' "v$RECIPE_VERSION" "$KVER" "$MODPATHS" "$(cat "$ROOTFS/.boxd-rootfs-stamp")" \
        "$(stat -c %Y "$ROOTFS/.boxd-rootfs-stamp")" "$(sha $bins "$PACKAGING/install-boxd.sh")" | sha)
fi
STAMPF=$DISK.stamp
[ "$DISK" = "$CACHE/box.ext4" ] && STAMPF=$CACHE/box.stamp
if [ ! -f "$DISK" ] || [ "$(cat "$STAMPF" 2>/dev/null)" != "$DISK_KEY" ]; then
    t0=$(date +%s%3N)
    stage=$(mktemp -d "$CACHE/disk.XXXXXX")
    trap 'rm -rf --one-file-system "$stage"' EXIT
    cp -a --reflink=auto "$ROOTFS/." "$stage/"
    rm -f "$stage/.boxd-rootfs-stamp" "$stage"/.boxd-image-*
    [ -n "$ROOT_FROM" ] || "$PACKAGING/install-boxd.sh" "$stage" "$BOXD_BIN" "$BOXCTL_BIN"
    # The same modules, loadable later from the running box (modprobe vsock_loopback).
    for m in $MODPATHS; do
        mkdir -p "$stage/lib/modules/$KVER/$(dirname "$m")"
        cp "$KMOD/$m" "$stage/lib/modules/$KVER/$m"
    done
    cp "$KMOD/modules.order" "$KMOD/modules.builtin" "$KMOD/modules.builtin.modinfo" \
        "$stage/lib/modules/$KVER/" 2>/dev/null || true
    depmod -b "$stage" "$KVER"
    echo box >"$stage/etc/hostname"
    mkfs.ext4 -q -F -L boxroot -d "$stage" "$DISK.new" "$DISK_SIZE" >&2
    mv "$DISK.new" "$DISK"
    if [ -n "$ROOT_FROM" ]; then
        # The image's boxd runs against the image's libraries.
        chroot "$ROOT_FROM" /usr/sbin/boxd --help >"$DISK.help" 2>&1 || true
    else
        "$BOXD_BIN" --help >"$CACHE/boxd.help" 2>&1 || true
    fi
    printf '%s\n' "$DISK_KEY" >"$STAMPF"
    rm -rf --one-file-system "$stage"
    trap - EXIT
    log "root disk $DISK ready in $(($(date +%s%3N) - t0)) ms ($DISK_SIZE, $(du -h "$DISK" | cut -f1) used)"
fi
printf '%s\n' "$CACHE"
