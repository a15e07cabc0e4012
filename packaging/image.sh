#!/bin/sh
# image.sh --format rootfs|oci|vm: makes the product's box image, in the form a platform uses.
#
#   rootfs  the box's root filesystem, a directory: prints it (/var/cache/boxd/image/rootfs).
#           Boot it as a namespace box:  nsbox.sh --lower "$(image.sh --format rootfs)"
#   oci     an OCI image in podman's store, imported from that directory, with boxd as its
#           entrypoint: prints its reference (localhost/boxd-box:KEY, also tagged :latest).
#   vm      the microVM's root disk, an ext4 image of that directory: prints its path
#           (/var/cache/boxd/image/box.ext4). Boot it:  vmbox/run.sh --disk DISK
#
# The image: Debian 12 (bookworm) with nodejs and npm, python3 with pip and venv, git, curl,
# ca-certificates and sudo; a user `box` (uid 1000) with passwordless sudo; /work owned by box;
# a hostname that resolves (/etc/hosts, and NSS `myhostname` for whatever name the platform
# gives the box); the build host's DNS servers in /etc/resolv.conf; boxd, configured by
# /etc/boxd/boxd.args (`--user box`: runs run as box) and /etc/boxd/languages.conf.
#
# Every form is cached under /var/cache/boxd/image ($BOXD_IMAGE_CACHE) and rebuilt only when
# what it is made from changed: the packages when the recipe below changes, boxd when its
# binary (or .deb) changes, the OCI image and the disk when the rootfs changes. Idempotent;
# needs root and apt; takes no input; progress on stderr, the result on the last line of stdout.
#
# boxd comes from packaging/deb.sh's .deb when that script exists (installed with dpkg in the
# image), else from build/boxd and build/boxctl (install-boxd.sh); --boxd/--boxctl or
# $BOXD_BIN/$BOXCTL_BIN name other binaries for the second way.
#
# Environment: BOXD_IMAGE_CACHE, BOXD_ROOTFS and BOXD_MIRROR (see rootfs.sh), BOXD_VM_CACHE
# (see vmbox/build.sh), BOXD_IMAGE_REF (default localhost/boxd-box).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${BOXD_IMAGE_CACHE:-/var/cache/boxd/image}
IMAGE_REF=${BOXD_IMAGE_REF:-localhost/boxd-box}
BOXD_BIN=${BOXD_BIN:-$REPO/build/boxd}
BOXCTL_BIN=${BOXCTL_BIN:-$REPO/build/boxctl}

# What the image is. --no-install-recommends keeps it to these and their dependencies (about
# 400 packages, npm's node-* libraries being most of them). libnss-myhostname resolves the
# box's own hostname whatever the platform names it (sudo needs that). openssh-server is the
# sshd that `ssh <box-id>@...` reaches through a boxd tunnel (PROTOCOL.md section 13); it is
# installed, not started: `sudo box-sshd` starts it (below).
PACKAGES="nodejs npm python3 python3-pip python3-venv git curl ca-certificates sudo libnss-myhostname openssh-server"
BOX_USER=box
BOX_UID=1000
# Change RECIPE_VERSION (or anything above) to make every machine rebuild the packages.
RECIPE_VERSION=4
RECIPE="boxd-image v$RECIPE_VERSION packages=$PACKAGES user=$BOX_USER:$BOX_UID"
# The OCI form: where its socket is (bind-mount the directory), and what its entrypoint adds.
OCI_SOCKET=/var/lib/boxd/boxd.sock
OCI_RECIPE="oci v1 socket=$OCI_SOCKET seccomp=none"
STAMP=.boxd-image-stamp
BOXD_STAMP=.boxd-image-boxd

log() { printf 'image.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
now_ms() { date +%s%3N; }
sha() { sha256sum "$@" | cut -c1-64; }

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

FORMAT=
while [ $# -gt 0 ]; do
    case $1 in
    --format) FORMAT=${2:?}; shift 2 ;;
    --format=*) FORMAT=${1#--format=}; shift ;;
    --boxd) BOXD_BIN=${2:?}; shift 2 ;;
    --boxctl) BOXCTL_BIN=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    *) log "unknown argument '$1'"; usage ;;
    esac
done
case $FORMAT in
rootfs | oci | vm) ;;
'') log "say which form: --format rootfs, oci or vm"; usage ;;
*) die "unknown format '$FORMAT' (rootfs, oci or vm)" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
ROOT=$CACHE/rootfs

# ---- boxd into a root ---------------------------------------------------------------------------
# The one place that decides how boxd gets into the image. With packaging/deb.sh present, its
# .deb (the last line of its stdout) is installed with dpkg inside ROOT; otherwise the binaries
# are copied in by install-boxd.sh. Prints nothing; fails if boxd cannot be installed.
boxd_source() {
    if [ -x "$HERE/deb.sh" ]; then
        deb=$("$HERE/deb.sh" | tail -n 1)
        [ -f "$deb" ] || die "deb.sh printed '$deb', which is not a file"
        printf 'deb %s\n' "$deb"
    else
        [ -x "$BOXD_BIN" ] || die "no boxd binary at $BOXD_BIN (build it: cmake --build build --target boxd boxctl)"
        printf 'bin %s %s\n' "$BOXD_BIN" "$BOXCTL_BIN"
    fi
}

install_boxd() {
    root=$1
    src=$(boxd_source) || exit 1
    # shellcheck disable=SC2086
    set -- $src
    case $1 in
    deb)
        cp "$2" "$root/tmp/boxd.deb"
        # The image's own /etc/boxd/languages.conf (written above) is a conffile of the package:
        # keep it, never prompt (--force-confold), as an upgrade in a running box would.
        chroot "$root" dpkg -i --force-confdef --force-confold /tmp/boxd.deb >&2 ||
            die "dpkg -i of $2 in the image failed"
        rm -f "$root/tmp/boxd.deb"
        ;;
    bin)
        "$HERE/install-boxd.sh" "$root" "$2" "$3"
        ;;
    esac
}

boxd_key() {
    src=$(boxd_source) || exit 1
    # shellcheck disable=SC2086
    set -- $src
    case $1 in
    deb) printf 'deb %s\n' "$(sha "$2")" ;;
    bin) shift; printf 'bin %s\n' "$(sha "$@" "$HERE/install-boxd.sh" 2>/dev/null | tr '\n' ' ')" ;;
    esac
}

# ---- the rootfs ---------------------------------------------------------------------------------
# The build host's name servers, for a box on the host's network. A resolver on loopback
# (systemd-resolved's 127.0.0.53) does not answer inside a box with a network of its own, so
# then the upstream list systemd-resolved keeps is used; if there is none, the file says so.
write_resolv_conf() {
    src=/etc/resolv.conf
    if ! grep -Eq '^nameserver[[:space:]]+[^1[:space:]]' "$src" 2>/dev/null &&
        [ -f /run/systemd/resolve/resolv.conf ]; then
        src=/run/systemd/resolve/resolv.conf
    fi
    {
        echo "# The build host's DNS servers (packaging/image.sh); nsbox.sh replaces this file"
        echo "# with its host's at each start, podman and Kubernetes write their own."
        grep -E '^(nameserver|search|domain|options)[[:space:]]' "$src" 2>/dev/null || true
    } >"$1/etc/resolv.conf"
}

build_rootfs() {
    base=$("$HERE/rootfs.sh")
    t0=$(now_ms)
    for old in "$ROOT".tmp.* "$ROOT".old.*; do
        [ -e "$old" ] && rm -rf --one-file-system "$old"
    done
    tmp=$ROOT.tmp.$$
    trap 'rm -rf --one-file-system "$tmp"' EXIT
    log "building the image's rootfs in $tmp from $base (about 30 s: ~400 packages)"
    cp -a "$base/." "$tmp/"
    rm -f "$tmp/.boxd-rootfs-stamp"
    # No documentation, manual pages or translations (about 90 MB): a box is driven by
    # programs. Copyright files stay.
    mkdir -p "$tmp/etc/dpkg/dpkg.cfg.d"
    cat >"$tmp/etc/dpkg/dpkg.cfg.d/boxd-minimal" <<'EOF'
# packaging/image.sh: the box image carries no documentation.
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
    cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
    # The downloaded .debs are kept in the cache ($CACHE/apt-archives), bind-mounted over the
    # image's apt cache, so a rebuild downloads only what changed. The mounts live in a private
    # mount namespace that dies with the build.
    mkdir -p "$CACHE/apt-archives/partial"
    # No service starts during the install: openssh-server's postinst would start an sshd in the
    # build's chroot, on the host's network. policy-rc.d's 101 is "action forbidden".
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
    chmod 0755 "$tmp/usr/sbin/policy-rc.d"
    unshare --mount --propagation private sh -eu -c '
        tmp=$1 archives=$2 packages=$3
        mount -t proc proc "$tmp/proc"
        mount --bind "$archives" "$tmp/var/cache/apt/archives"
        chroot "$tmp" apt-get update -q
        DEBIAN_FRONTEND=noninteractive chroot "$tmp" apt-get install -y -q --no-install-recommends $packages
    ' sh "$tmp" "$CACHE/apt-archives" "$PACKAGES" >"$CACHE/apt.log" 2>&1 || {
        tail -n 20 "$CACHE/apt.log" >&2
        die "installing the image's packages failed (full log: $CACHE/apt.log)"
    }
    rm -f "$tmp/usr/sbin/policy-rc.d"
    # Every box makes its own host keys when its sshd first starts: keys baked into the image
    # would be one key shared by every box, so one box could impersonate all the others.
    rm -f "$tmp"/etc/ssh/ssh_host_*
    cat >"$tmp/usr/local/sbin/box-sshd" <<'EOF'
#!/bin/sh
# box-sshd [SSHD-OPTIONS...]: starts the box's sshd (packaging/image.sh). Makes this box's own
# host keys the first time, and sshd's privilege separation directory, then runs sshd, which
# detaches. The platform runs `sudo box-sshd` once per box; its gateway reaches the sshd through
# a boxd tunnel to 127.0.0.1:22 (boxctl tunnel 127.0.0.1:22).
set -eu
ssh-keygen -A >/dev/null
mkdir -p /run/sshd
chmod 0755 /run/sshd
exec /usr/sbin/sshd "$@"
EOF
    chmod 0755 "$tmp/usr/local/sbin/box-sshd"
    rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/log/apt/* "$tmp"/var/cache/debconf/*-old \
        "$tmp"/var/cache/apt/*.bin "$tmp"/var/log/dpkg.log
    # What the base rootfs installed before the exclusions above took effect.
    find "$tmp/usr/share/doc" -depth -mindepth 1 ! -name copyright ! -type d -delete
    find "$tmp/usr/share/doc" -depth -mindepth 1 -type d -empty -delete
    find "$tmp/usr/share/man" "$tmp/usr/share/info" -mindepth 1 -delete 2>/dev/null || true
    find "$tmp/usr/share/locale" -mindepth 1 ! -name locale.alias -delete 2>/dev/null || true

    # The box user, passwordless sudo, /work.
    chroot "$tmp" useradd --create-home --shell /bin/bash --uid "$BOX_UID" --user-group "$BOX_USER"
    printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$BOX_USER" >"$tmp/etc/sudoers.d/$BOX_USER"
    chmod 0440 "$tmp/etc/sudoers.d/$BOX_USER"
    mkdir -p "$tmp/work" "$tmp/var/lib/boxd"
    chmod 0700 "$tmp/var/lib/boxd"
    chroot "$tmp" chown "$BOX_USER:$BOX_USER" /work
    # Names: the default hostname in /etc/hosts; any other name the platform sets is answered
    # by NSS myhostname (nsbox.sh and vmbox/run.sh name each box, Kubernetes names the pod).
    echo box >"$tmp/etc/hostname"
    cat >"$tmp/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	box
::1	localhost ip6-localhost ip6-loopback
EOF
    sed -i -E 's/^hosts:.*/hosts:          files myhostname dns/' "$tmp/etc/nsswitch.conf"
    grep -q '^hosts:.*myhostname' "$tmp/etc/nsswitch.conf" || die "nsswitch.conf has no hosts line"
    write_resolv_conf "$tmp"
    # boxd's configuration: every launcher (nsbox.sh --lower, vmbox/run.sh --disk, the OCI
    # entrypoint, the Kubernetes manifest) passes these arguments before its own --listen.
    mkdir -p "$tmp/etc/boxd"
    cat >"$tmp/etc/boxd/boxd.args" <<EOF
# boxd's arguments in this image, one per line (packaging/image.sh); the launcher adds --listen.
--user
$BOX_USER
EOF
    cat >"$tmp/etc/boxd/languages.conf" <<'EOF'
# The languages of the box image (packaging/image.sh), in boxd's languages.conf format: they
# replace boxd's built-in entries of the same names. Node 18 cannot run TypeScript itself.
python aliases=py,python3 file=main.py env=PYTHONUNBUFFERED=1 env=PYTHONDONTWRITEBYTECODE=1 cmd=/usr/bin/python3 -u {file}
js aliases=javascript,node,nodejs file=main.js cmd=/usr/bin/node {file}
ts off
EOF
    printf '%s\n' "$RECIPE" >"$tmp/$STAMP"
    [ -e "$ROOT" ] && mv "$ROOT" "$ROOT.old.$$"
    mv "$tmp" "$ROOT"
    trap - EXIT
    rm -rf --one-file-system "$ROOT.old.$$"
    rm -f "$ROOT/$BOXD_STAMP"
    log "rootfs built in $(($(now_ms) - t0)) ms: $(du -sh "$ROOT" | cut -f1)"
}

if [ ! -f "$ROOT/$STAMP" ] || [ "$(cat "$ROOT/$STAMP")" != "$RECIPE" ]; then
    build_rootfs
fi
# boxd is installed in place (a rename, so a running box sees the old or the new binary).
key=$(boxd_key) || exit 1
if [ "$(cat "$ROOT/$BOXD_STAMP" 2>/dev/null)" != "$key" ]; then
    install_boxd "$ROOT"
    printf '%s\n' "$key" >"$ROOT/$BOXD_STAMP"
    log "boxd installed in $ROOT"
fi
ROOT_KEY=$(printf '%s\n' "$(cat "$ROOT/$STAMP")" "$key" | sha)

case $FORMAT in
rootfs)
    printf '%s\n' "$ROOT"
    ;;
oci)
    # The image is the rootfs as one layer (podman import), its entrypoint boxd with the
    # image's arguments and its socket in /var/lib/boxd, the directory to bind-mount from the
    # host (not under /run: a boxd that may mount puts a tmpfs on /run, hiding the mount).
    # --seccomp none: in a container boxd has no CAP_SYS_ADMIN, and without it the kernel
    # loads a seccomp filter only under no_new_privs, which would make sudo fail in every run.
    # The engine's own seccomp profile (podman's default, Kubernetes' RuntimeDefault) still
    # filters every process of the container; the container is the boundary.
    # podman, runc and catatonit: scripts/deps.sh's podman group (about 18 packages and 10 s),
    # installed here when missing so that the OCI form works from a bare checkout too.
    sh "$REPO/scripts/deps.sh" podman >&2 || die "cannot install the podman group (scripts/deps.sh podman)"
    OCI_KEY=$(printf '%s\n' "$ROOT_KEY" "$OCI_RECIPE" | sha)
    ref=$IMAGE_REF:$(printf '%s' "$OCI_KEY" | cut -c1-12)
    if ! podman image exists "$ref"; then
        t0=$(now_ms)
        entry='"/usr/sbin/boxd"'
        while read -r a; do
            case $a in '#'* | '') continue ;; esac
            entry="$entry, \"$a\""
        done <"$ROOT/etc/boxd/boxd.args"
        entry="$entry, \"--seccomp\", \"none\", \"--listen\", \"unix:$OCI_SOCKET\""
        tar -C "$ROOT" --exclude "./$STAMP" --exclude "./$BOXD_STAMP" -c . |
            podman import --change "ENTRYPOINT [$entry]" --change "WORKDIR /work" \
                --change "LABEL org.boxd.key=$OCI_KEY" - "$ref" >&2 ||
            die "podman import failed"
        podman tag "$ref" "$IMAGE_REF:latest"
        # Earlier builds' tags: each is a whole copy of the rootfs in podman's store.
        podman images --format '{{.Repository}}:{{.Tag}}' "$IMAGE_REF" |
            grep -vx -e "$ref" -e "$IMAGE_REF:latest" | xargs -r podman rmi >/dev/null 2>&1 || true
        log "OCI image $ref made in $(($(now_ms) - t0)) ms"
    fi
    printf '%s\n' "$ref"
    ;;
vm)
    "$HERE/vmbox/build.sh" --rootfs "$ROOT" --disk "$CACHE/box.ext4" >&2
    printf '%s\n' "$CACHE/box.ext4"
    ;;
esac
