#!/bin/sh
# nsbox.sh: starts and stops namespace boxes - boxd as PID 1 of fresh PID, mount, UTS, IPC and
# cgroup namespaces, on an overlay of the cached Debian rootfs. See packaging/README.md.
#
#   nsbox.sh [--name NAME] [--root DIR] [--lower DIR] [--boxd BIN] [--boxctl BIN]
#            [--socket PATH] [--timeout SECONDS] [--no-mounts] [--net] [-- BOXD_ARGS...]
#       Starts box NAME (default "box") and prints, once boxd accepts connections, the host path
#       of its socket: /run/boxd-boxes/NAME/root/run/boxd.sock.
#       --net: the box also gets a network namespace of its own (only a loopback device, down
#       until boxd brings it up; its sysfs is then its own superblock, not the host's).
#   nsbox.sh --stop NAME [--grace SECONDS]
#       SIGTERM to the box's PID 1, then (after the grace, default 5 s) cgroup.kill; waits until
#       the box's cgroup is empty, removes it and the box's state directory.
#
# Layout of a box, under /run/boxd-boxes/NAME ($BOXD_BOXES_DIR/NAME):
#   upper/ work/    the overlay's writable layer: every file the box changed or created
#   merged/         where the overlay is mounted - inside the box's own mount namespace only;
#                   on the host it stays an empty directory
#   root            a symlink to /proc/PID/root (PID: the box's PID 1 as the host numbers it):
#                   the box's whole filesystem as the box sees it, so ROOT/run/boxd.sock is the
#                   socket boxd listens on, wherever the box mounted its /run
#   pid             that PID; console.log: boxd's stderr (its log), and the start-up's
#   cgroup          the box's cgroup directory
#
# The box's root is an overlay mounted inside the box's private mount namespace, after which the
# box pivot_roots into it and detaches every mount inherited from the host: the box's mount table
# holds only its own mounts. Nothing the box mounts, unmounts or remounts can reach a host mount
# (README.md: "Why a remount inside cannot touch the host"). This script itself never mounts,
# remounts or unmounts anything in the host's mount namespace.
#
# --lower DIR: the overlay's lower layer instead of the cached test rootfs - typically the product
# image, nsbox.sh --lower "$(image.sh --format rootfs)". When DIR has /etc/boxd/boxd.args (the
# image's boxd configuration, one argument a line), those arguments come first on boxd's command
# line; when DIR has its own /usr/sbin/boxd, that boxd runs (unless --boxd names one).
#
# Unless --net, the box shares the host's network, and the host's /etc/resolv.conf is copied into
# the box at each start (as docker does), so names resolve wherever the host's DNS works.
#
# With --root DIR the box runs in DIR itself (a copy the caller made, e.g. with cp -a): boxd is
# installed into DIR, and the box chroots into it. The overlay mode is the default and the one
# tests use: it starts in milliseconds and never writes to the cached rootfs.
#
# Environment: BOXD_BOXES_DIR (default /run/boxd-boxes), BOXD_CGROUP_ROOT (default: the cgroup2
# mount at /sys/fs/cgroup/unified, else /sys/fs/cgroup; "none": no cgroup), BOXD_ROOTFS (see rootfs.sh), BOXD_BIN,
# BOXCTL_BIN. Needs root, util-linux (unshare, pivot_root) and perl-base.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
BOXES_DIR=${BOXD_BOXES_DIR:-/run/boxd-boxes}

log() { printf 'nsbox.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

now_ms() { date +%s%3N; }

cgroup_root() {
    case ${BOXD_CGROUP_ROOT:-} in
    none) return ;;
    ?*) printf '%s\n' "$BOXD_CGROUP_ROOT"; return ;;
    esac
    for d in /sys/fs/cgroup/unified /sys/fs/cgroup; do
        if [ "$(stat -f -c %T "$d" 2>/dev/null)" = cgroup2fs ]; then
            printf '%s\n' "$d"
            return
        fi
    done
}

# populated CG: succeeds while some process is in the cgroup CG (or below it).
populated() {
    [ -f "$1/cgroup.events" ] && grep -qx 'populated 1' "$1/cgroup.events"
}

# wait_empty CG SECONDS: waits until CG is empty; fails on timeout.
wait_empty() {
    deadline=$(($(now_ms) + $2 * 1000))
    while populated "$1"; do
        [ "$(now_ms)" -lt "$deadline" ] || return 1
        sleep 0.01
    done
}

check_name() {
    case $1 in
    '' | .* | *[!A-Za-z0-9_.-]*) die "bad box name '$1' (use [A-Za-z0-9_.-], not starting with '.')" ;;
    esac
    # The socket path, /run/boxd-boxes/NAME/root/run/boxd.sock, must fit sun_path (108 bytes).
    [ ${#1} -le 48 ] || die "box name '$1' is longer than 48 characters"
}

# stop_box NAME GRACE: stops the box if it runs, then removes its cgroup and state. Succeeds when
# nothing of the box is left. Unmounts nothing: the overlay lives in the box's mount namespace,
# which the kernel tears down with the box's last process.
stop_box() {
    name=$1
    grace=$2
    state=$BOXES_DIR/$name
    cg=
    [ -f "$state/cgroup" ] && cg=$(cat "$state/cgroup")
    [ -n "$cg" ] || { cgr=$(cgroup_root) && [ -n "$cgr" ] && cg=$cgr/boxd-box-$name; } || true
    if [ -n "$cg" ] && [ -d "$cg" ]; then
        pid=
        [ -f "$state/pid" ] && pid=$(cat "$state/pid")
        # Only signal a pid that is still in the box's cgroup: the number may have been reused.
        if [ -n "$pid" ] && grep -qx "$pid" "$cg/cgroup.procs" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
        if ! wait_empty "$cg" "$grace"; then
            log "box $name: still running after ${grace}s, killing it"
            if [ -f "$cg/cgroup.kill" ]; then
                echo 1 >"$cg/cgroup.kill"
            else
                # Before Linux 5.14: kill what is there until nothing is (forks may race).
                for _ in 1 2 3 4 5 6 7 8 9 10; do
                    populated "$cg" || break
                    xargs -r kill -KILL <"$cg/cgroup.procs" 2>/dev/null || true
                    sleep 0.05
                done
            fi
            wait_empty "$cg" 5 || die "box $name: cgroup $cg is not empty after SIGKILL"
        fi
        # boxd makes child cgroups for its runs; cgroup directories go with rmdir, deepest first.
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [ ! -d "$cg" ] || die "box $name: cannot remove $cg"
    elif [ -f "$state/pid" ]; then
        # No cgroup (no cgroup2 on this host): the box is its PID 1 and that process's children.
        pid=$(cat "$state/pid")
        if [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = boxd ]; then
            kill -TERM "$pid" 2>/dev/null || true
            deadline=$(($(now_ms) + grace * 1000))
            while grep -q '^State:[[:space:]]*[^ZX]' "/proc/$pid/status" 2>/dev/null &&
                [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.01; done
            # The kernel kills every process of a PID namespace when its init dies.
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    if [ -d "$state" ]; then
        rm -f "$state/root"
        # merged/ is a mount point only inside the box's (now dead) namespace; on the host it
        # is a plain directory, and --one-file-system would refuse to cross a mount anyway.
        rm -rf --one-file-system "$state"
    fi
}

# ---- arguments ----------------------------------------------------------------------------------
NAME=box
ROOT_DIR=
LOWER=
BOXD_GIVEN=${BOXD_BIN:+1}
BOXD_BIN=${BOXD_BIN:-$REPO/build/boxd}
BOXCTL_BIN=${BOXCTL_BIN:-$REPO/build/boxctl}
SOCKET=/run/boxd.sock
TIMEOUT=10
GRACE=5
MOUNTS=1
NETNS=
STOP=
while [ $# -gt 0 ]; do
    case $1 in
    --name) NAME=${2:?}; shift 2 ;;
    --root) ROOT_DIR=${2:?}; shift 2 ;;
    --lower) LOWER=${2:?}; shift 2 ;;
    --boxd) BOXD_BIN=${2:?}; BOXD_GIVEN=1; shift 2 ;;
    --boxctl) BOXCTL_BIN=${2:?}; shift 2 ;;
    --socket) SOCKET=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --grace) GRACE=${2:?}; shift 2 ;;
    --no-mounts) MOUNTS=0; shift ;;
    --net) NETNS=--net; shift ;;
    --stop) STOP=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    --) shift; break ;;
    *) log "unknown argument '$1'"; usage ;;
    esac
done

[ "$(id -u)" = 0 ] || die "must run as root"
case $TIMEOUT$GRACE in *[!0-9]*) die "--timeout and --grace take whole seconds" ;; esac

if [ -n "$STOP" ]; then
    check_name "$STOP"
    # An unknown name is an error, said as one: a typo must not look like a clean stop.
    stop_cg=
    cgr=$(cgroup_root) && [ -n "$cgr" ] && stop_cg=$cgr/boxd-box-$STOP
    if [ ! -d "$BOXES_DIR/$STOP" ] && { [ -z "$stop_cg" ] || [ ! -d "$stop_cg" ]; }; then
        known=$(ls "$BOXES_DIR" 2>/dev/null | tr '\n' ' ')
        die "no box named $STOP (no $BOXES_DIR/$STOP${stop_cg:+, no $stop_cg}); running: ${known:-none}. Start one with: nsbox.sh --name $STOP"
    fi
    stop_box "$STOP" "$GRACE"
    log "box $STOP stopped"
    exit 0
fi

# ---- start --------------------------------------------------------------------------------------
check_name "$NAME"
case $SOCKET in /*) ;; *) die "--socket must be an absolute path inside the box" ;; esac
STATE=$BOXES_DIR/$NAME
CGROOT=$(cgroup_root)
CG=
if [ -n "$CGROOT" ]; then
    CG=$CGROOT/boxd-box-$NAME
    populated "$CG" && die "box $NAME is running (stop it with: nsbox.sh --stop $NAME)"
else
    log "no cgroup2 mount found: the box gets no cgroup of its own"
    if [ -f "$STATE/pid" ] && [ "$(cat "/proc/$(cat "$STATE/pid")/comm" 2>/dev/null)" = boxd ]; then
        die "box $NAME is running (stop it with: nsbox.sh --stop $NAME)"
    fi
fi
t0=$(now_ms)
# Leftovers of a box of this name that was not stopped: its processes are gone (checked above).
stop_box "$NAME" 0

if [ -z "$ROOT_DIR" ]; then
    MODE=overlay
    [ -n "$LOWER" ] || LOWER=$("$HERE/rootfs.sh")
    [ -d "$LOWER/usr" ] || die "no rootfs at $LOWER"
    IMAGE_DIR=$LOWER
    mkdir -p "$STATE/upper" "$STATE/work" "$STATE/merged"
    TARGET=$STATE/merged
else
    MODE=chroot
    TARGET=$(cd "$ROOT_DIR" && pwd)
    [ -d "$TARGET/usr" ] || die "$ROOT_DIR does not look like a root filesystem"
    [ ! -e "$TARGET/.boxd-rootfs-stamp" ] ||
        die "$ROOT_DIR is the cached rootfs; give a copy of it (or no --root for an overlay)"
    IMAGE_DIR=$TARGET
    mkdir -p "$STATE"
fi
# The image's own boxd and its arguments (see --lower above).
INSTALL=$HERE/install-boxd.sh
if [ -z "$BOXD_GIVEN" ] && [ -x "$IMAGE_DIR/usr/sbin/boxd" ] && [ -f "$IMAGE_DIR/etc/boxd/boxd.args" ]; then
    INSTALL=
    log "running the image's own boxd ($IMAGE_DIR/usr/sbin/boxd)"
else
    [ -x "$BOXD_BIN" ] || die "no boxd binary at $BOXD_BIN (build it: cmake --build build --target boxd)"
fi
if [ -f "$IMAGE_DIR/etc/boxd/boxd.args" ]; then
    IMAGE_ARGS=$(grep -v -e '^#' -e '^[[:space:]]*$' "$IMAGE_DIR/etc/boxd/boxd.args" | tr '\n' ' ')
    case $IMAGE_ARGS in *[!A-Za-z0-9_.,:/=\ -]*) die "$IMAGE_DIR/etc/boxd/boxd.args: only plain words, one a line" ;; esac
    # shellcheck disable=SC2086
    set -- $IMAGE_ARGS "$@"
    log "boxd arguments from the image: $IMAGE_ARGS"
fi
RESOLV=
[ -z "$NETNS" ] && [ -f /etc/resolv.conf ] && RESOLV=/etc/resolv.conf
: >"$STATE/console.log"
if [ -n "$CG" ]; then
    mkdir "$CG"
    printf '%s\n' "$CG" >"$STATE/cgroup"
fi

# The box's start-up, run by the host's sh as PID 1 of the new namespaces, before it becomes
# boxd. Every mount here happens in the box's own mount namespace, made private first so that
# no mount or unmount propagates to the host's.
INNER='
set -eu
mode=$1 lower=$2 state=$3 target=$4 mounts=$5 name=$6 boxd=$7 boxctl=$8 install=$9
resolv=${10}
shift 10
mount --make-rprivate /
if [ "$mode" = overlay ]; then
    mount -t overlay boxd-box -o "lowerdir=$lower,upperdir=$state/upper,workdir=$state/work" "$target"
fi
[ -z "$install" ] || "$install" "$target" "$boxd" "$boxctl"
if [ -n "$resolv" ]; then
    rm -f "$target/etc/resolv.conf"
    cat "$resolv" >"$target/etc/resolv.conf"
fi
mount -t proc -o nosuid,nodev,noexec proc "$target/proc"
if [ "$mounts" = 1 ]; then
    # boxd mounts what is missing as a container PID 1; these are here for a boxd that does not.
    mount -t sysfs -o nosuid,nodev,noexec sysfs "$target/sys"
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$target/sys/fs/cgroup"
    mount -t devpts -o newinstance,nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts "$target/dev/pts"
fi
hostname "$name"
if [ "$mode" = overlay ]; then
    # The overlay becomes /, and the inherited copies of the host mounts are detached: from
    # here the box cannot name, let alone remount, a host filesystem.
    cd "$target"
    pivot_root . .
    umount -l .
    cd /
    exec /sbin/boxd "$@"
fi
exec chroot "$target" /sbin/boxd "$@"
'

# setsid: the box must not share the caller's terminal or process group (a Ctrl-C or a test
# runner killing its group must not reach it). The first sh enters the box's cgroup before
# unshare, so unshare, the box's PID 1 and everything it starts are in it.
setsid sh -c 'if [ -n "$1" ]; then echo $$ >"$1/cgroup.procs"; fi; shift; exec "$@"' sh "$CG" \
    unshare --pid --fork --mount --uts --ipc --cgroup $NETNS --propagation private \
    sh -c "$INNER" inner "$MODE" "$LOWER" "$STATE" "$TARGET" "$MOUNTS" "$NAME" \
    "$BOXD_BIN" "$BOXCTL_BIN" "$INSTALL" "$RESOLV" \
    --listen "unix:$SOCKET" "$@" \
    </dev/null >>"$STATE/console.log" 2>&1 &
LAUNCHER=$!

fail() {
    log "box $NAME did not start: $*"
    tail -n 20 "$STATE/console.log" | sed 's/^/  | /' >&2
    stop_box "$NAME" 1
    exit 1
}

# The box's PID 1, as the host numbers it: the process whose NSpid has two levels, the inner 1.
deadline=$(($(now_ms) + TIMEOUT * 1000))
PID=
while [ -z "$PID" ]; do
    if [ -n "$CG" ]; then
        for p in $(cat "$CG/cgroup.procs"); do
            if grep -q "^NSpid:[[:space:]]*${p}[[:space:]][[:space:]]*1\$" "/proc/$p/status" 2>/dev/null; then
                PID=$p
                break
            fi
        done
    else
        for p in $(cat "/proc/$LAUNCHER/task/$LAUNCHER/children" 2>/dev/null); do PID=$p; done
    fi
    [ -n "$PID" ] && break
    kill -0 "$LAUNCHER" 2>/dev/null || fail "it exited during start-up"
    [ "$(now_ms)" -lt "$deadline" ] || fail "timeout"
    sleep 0.005
done
printf '%s\n' "$PID" >"$STATE/pid"

# Until PID 1 is boxd, /proc/PID/root is still the host's root: ROOT/run/boxd.sock would name the
# host's /run/boxd.sock. Only boxd's own socket counts, so wait for the exec first.
while [ "$(cat "/proc/$PID/comm" 2>/dev/null)" != boxd ]; do
    [ -d "/proc/$PID" ] || fail "its PID 1 exited during start-up"
    [ "$(now_ms)" -lt "$deadline" ] || fail "timeout before boxd started"
    sleep 0.005
done
ln -sfn "/proc/$PID/root" "$STATE/root"
HOST_SOCKET=$STATE/root$SOCKET

until perl -MIO::Socket::UNIX -e 'exit(IO::Socket::UNIX->new(Peer => $ARGV[0]) ? 0 : 1)' \
    "$HOST_SOCKET" 2>/dev/null; do
    [ "$(cat "/proc/$PID/comm" 2>/dev/null)" = boxd ] || fail "boxd exited"
    [ "$(now_ms)" -lt "$deadline" ] || fail "timeout waiting for $HOST_SOCKET"
    sleep 0.005
done
log "box $NAME ready in $(($(now_ms) - t0)) ms (pid $PID, $MODE)"
printf '%s\n' "$HOST_SOCKET"
