#!/bin/sh
# vmbox/run.sh: boots the microVM box under QEMU (TCG, -M microvm) with boxd as PID 1.
#
#   run.sh [--name NAME] [--disk DISK] [--ports N] [--direct K] [--net] [--mem MB] [--cpus N] [--timeout S] [--fg]
#          [-- BOXD_ARGS...]
#       Boots box NAME (default "vm") in the background from vmbox/build.sh's cache and waits
#       for boxd's "ready" line on the console. Prints the host end of the agent's virtio-serial
#       port (/run/boxd-vms/NAME/agent.sock). --fg: console on stdout, no waiting, QEMU in the
#       foreground (Ctrl-A X quits).
#       --disk DISK: boot DISK (image.sh --format vm) instead of the cache's box.ext4; boxd then
#       gets the arguments the image configures in its /etc/boxd/boxd.args (read from the disk
#       with debugfs) before BOXD_ARGS.
#       --net: a network device on QEMU's user-mode network (slirp: outgoing TCP and UDP through
#       the host's own sockets, nothing reaches the guest from outside), configured by the
#       initramfs (10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3, which forwards to the host's
#       resolver). Without it the VM has no network at all.
#       --ports N: virtio-serial ports for host clients (default 8, $BOXD_VM_PORTS; at most 12).
#       With more than one, agent.sock is served by portmux.py, which gives each host client a
#       port of its own, so clients do not wait for each other; with 1, agent.sock is QEMU's
#       own chardev socket, which serves one client at a time.
#       --direct K: the last K of those ports are left out of portmux.py, for host clients that
#       open QEMU's chardev socket themselves (boxctl -s serial:/run/boxd-vms/NAME/port-J.sock,
#       one client at a time on each); their paths are listed in /run/boxd-vms/NAME/direct
#       (default 0, $BOXD_VM_DIRECT; at least one port stays with agent.sock).
#   run.sh --stop NAME
#       Stops QEMU (SIGTERM, then SIGKILL after 5 s) and removes the box's state.
#
# State under /run/boxd-vms/NAME ($BOXD_VMS_DIR/NAME): qemu.pid, console.log (the serial
# console: the kernel's and boxd's log), agent.sock (the host clients' socket), port-K.sock
# (QEMU's chardev socket of port K: box.agent, box.agent.1, ...), direct (the port sockets left
# to direct clients by --direct, one a line), portmux.pid and portmux.log,
# boot_ms (QEMU start to boxd's ready line). The cached disk is never written: QEMU
# runs it with snapshot=on (writes go to a temporary file that is dropped at exit).
#
# The agent port: the guest sees a virtio-serial port named box.agent. When the installed boxd
# supports it (its --help mentions virtio-port), it is started with --listen virtio-port:box.agent
# and a client talks to it through agent.sock; until then the box is observable only through the
# console, and BOXD_ARGS can still pass options to boxd. BOXD_VM_LISTEN overrides the choice
# ("" for none).
set -eu

CACHE=${BOXD_VM_CACHE:-/var/cache/boxd/vm}
VMS_DIR=${BOXD_VMS_DIR:-/run/boxd-vms}
PORT_NAME=box.agent
HERE=$(cd "$(dirname "$0")" && pwd)

log() { printf 'vmbox/run.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
now_ms() { date +%s%3N; }

NAME=vm
MEM=512
CPUS=2
TIMEOUT=60
FG=0
STOP=
DISK=
NET=
PORTS=${BOXD_VM_PORTS:-8}
DIRECT=${BOXD_VM_DIRECT:-0}
while [ $# -gt 0 ]; do
    case $1 in
    --name) NAME=${2:?}; shift 2 ;;
    --mem) MEM=${2:?}; shift 2 ;;
    --cpus) CPUS=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --fg) FG=1; shift ;;
    --disk) DISK=${2:?}; shift 2 ;;
    --ports) PORTS=${2:?}; shift 2 ;;
    --direct) DIRECT=${2:?}; shift 2 ;;
    --net) NET=1; shift ;;
    --stop) STOP=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done

check_name() {
    case $1 in
    '' | .* | *[!A-Za-z0-9_.-]*) die "bad box name '$1'" ;;
    esac
    [ ${#1} -le 48 ] || die "box name '$1' is longer than 48 characters"
}

# qemu_pid STATE: the pid in STATE/qemu.pid if that process is still our QEMU.
qemu_pid() {
    [ -f "$1/qemu.pid" ] || return 1
    p=$(cat "$1/qemu.pid")
    [ -n "$p" ] && alive "$p" || return 1
    # The command line names this box's state directory: a reused pid does not.
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "$1/port-0.sock" || return 1
    printf '%s\n' "$p"
}

# alive PID: the process runs (a zombie does not: a daemonized QEMU's parent is the host's init,
# which may take its time to reap it).
alive() {
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# mux_pid STATE: the pid of the box's portmux.py, if it runs.
mux_pid() {
    [ -f "$1/portmux.pid" ] || return 1
    p=$(cat "$1/portmux.pid")
    [ -n "$p" ] && alive "$p" || return 1
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "$1/agent.sock" || return 1
    printf '%s\n' "$p"
}

stop_vm() {
    state=$VMS_DIR/$1
    if p=$(mux_pid "$state"); then
        kill -TERM "$p" 2>/dev/null || true
    fi
    if p=$(qemu_pid "$state"); then
        # QEMU quits cleanly on SIGTERM (the guest is stopped; its disk is a snapshot anyway).
        kill -TERM "$p" 2>/dev/null || true
        deadline=$(($(now_ms) + 5000))
        while alive "$p" && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.01; done
        if alive "$p"; then
            log "QEMU $p ignored SIGTERM, killing it"
            kill -KILL "$p" 2>/dev/null || true
            while alive "$p"; do sleep 0.01; done
        fi
    fi
    rm -rf --one-file-system "$state"
}

[ "$(id -u)" = 0 ] || die "must run as root"
if [ -n "$STOP" ]; then
    check_name "$STOP"
    [ -d "$VMS_DIR/$STOP" ] || die "no box named $STOP (nothing in $VMS_DIR/$STOP)"
    stop_vm "$STOP"
    exit 0
fi
case $PORTS in '' | *[!0-9]* | 0) die "--ports takes a number from 1 to 12" ;; esac
[ "$PORTS" -le 12 ] || die "--ports: at most 12 (boxd takes 16 --listen, the rest are for BOXD_ARGS)"
case $DIRECT in '' | *[!0-9]*) die "--direct takes a number of ports (0 for none)" ;; esac
[ "$DIRECT" -lt "$PORTS" ] || die "--direct $DIRECT: leaves no port for agent.sock (--ports $PORTS; give more ports)"
if [ "$PORTS" -gt 1 ] && [ ! -x /usr/bin/python3 ]; then
    log "no /usr/bin/python3 for portmux.py: one port, so host clients take turns (apt-get install python3)"
    PORTS=1
    DIRECT=0
fi
# Ports 0 .. MUXED-1 are portmux's (or agent.sock's), the rest are for direct clients.
MUXED=$((PORTS - DIRECT))

check_name "$NAME"
for f in vmlinuz initrd.img; do
    [ -f "$CACHE/$f" ] || die "no $CACHE/$f: run packaging/vmbox/build.sh first"
done
HELP=$CACHE/boxd.help
if [ -n "$DISK" ]; then
    [ -f "$DISK" ] || die "no disk $DISK (make one: packaging/image.sh --format vm)"
    [ -f "$DISK.help" ] && HELP=$DISK.help
else
    DISK=$CACHE/box.ext4
    [ -f "$DISK" ] || die "no $DISK: run packaging/vmbox/build.sh first"
fi
STATE=$VMS_DIR/$NAME
qemu_pid "$STATE" >/dev/null && die "box $NAME is running (stop it with: run.sh --stop $NAME)"
rm -rf --one-file-system "$STATE"
mkdir -p "$STATE"

# The hook for the agent's transport (see the header).
if [ -z "${BOXD_VM_LISTEN+set}" ]; then
    BOXD_VM_LISTEN=
    if grep -q 'virtio-port' "$HELP" 2>/dev/null; then
        BOXD_VM_LISTEN=virtio-port:$PORT_NAME
        k=1
        while [ $k -lt "$PORTS" ]; do
            BOXD_VM_LISTEN="$BOXD_VM_LISTEN virtio-port:$PORT_NAME.$k"
            k=$((k + 1))
        done
    fi
fi
LISTEN_ARGS=
for l in $BOXD_VM_LISTEN; do LISTEN_ARGS="$LISTEN_ARGS --listen $l"; done
# shellcheck disable=SC2086
set -- $LISTEN_ARGS "$@"
# The image's own boxd arguments, from the disk (debugfs reads ext4 without mounting it).
if command -v debugfs >/dev/null 2>&1; then
    image_args=$(debugfs -R 'cat /etc/boxd/boxd.args' "$DISK" 2>/dev/null | grep -v -e '^#' -e '^[[:space:]]*$' | tr '\n' ' ')
    case $image_args in *[!A-Za-z0-9_.,:/=\ -]*) die "$DISK: /etc/boxd/boxd.args: only plain words, one a line" ;; esac
    # shellcheck disable=SC2086
    [ -n "$image_args" ] && set -- $image_args "$@" && log "boxd arguments from the image: $image_args"
fi

# The guest's TSC ticks at the host's TSC rate under TCG. Telling the kernel that rate skips its
# PIT-based TSC calibration, which fails when the host is busy (QEMU's threads are descheduled in
# the middle of the measurement): the kernel then finds no TSC frequency, jiffies never advance,
# and the boot hangs in the delay-loop calibration (4 boots of 5 hung with two busy host CPUs;
# none of 6 with tsc_early_khz). The value needs only be roughly right: with two vCPUs the guest
# marks its TSC unstable anyway and keeps time with jiffies.
host_tsc_khz() {
    if [ -n "${BOXD_VM_TSC_KHZ:-}" ]; then
        echo "$BOXD_VM_TSC_KHZ"
        return
    fi
    mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: \(Refined TSC clocksource calibration\|Detected\) \([0-9]*\)\.\([0-9]*\) MHz.*/\2\3/p' | tail -n 1)
    if [ -n "$mhz" ]; then
        echo "$mhz"
        return
    fi
    mhz=$(awk -F': *' '/^cpu MHz/ { printf "%d\n", $2 * 1000; exit }' /proc/cpuinfo)
    echo "${mhz:-2000000}"
}

# Arguments after "--" on the kernel command line are the init's: the initramfs passes them on
# to boxd. boxd.hostname= is read by boxd itself (the kernel ignores dotted unknown parameters).
APPEND="console=ttyS0 root=/dev/vda init=/sbin/boxd panic=-1 quiet boxd.hostname=$NAME"
APPEND="$APPEND tsc_early_khz=$(host_tsc_khz)"
[ -n "$NET" ] && APPEND="$APPEND boxd.net=user"
[ $# -gt 0 ] && APPEND="$APPEND -- $*"

# KVM is present on the development machine but fails an MSR assertion: TCG is what works.
set -- qemu-system-x86_64 -accel tcg -M microvm -m "$MEM" -smp "$CPUS" \
    -nodefaults -no-user-config -display none -no-reboot \
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" -append "$APPEND" \
    -drive "file=$DISK,format=raw,if=none,id=d0,snapshot=on" \
    -device virtio-blk-device,drive=d0 \
    -device "virtio-serial-device,max_ports=$((PORTS + 1))"
if [ -n "$NET" ]; then
    set -- "$@" -netdev user,id=n0 -device virtio-net-device,netdev=n0
fi
# One chardev socket and one port per host client served at once (see --ports).
k=0
while [ $k -lt "$PORTS" ]; do
    name=$PORT_NAME
    [ $k -gt 0 ] && name=$PORT_NAME.$k
    set -- "$@" -chardev "socket,id=c$k,path=$STATE/port-$k.sock,server=on,wait=off" \
        -device "virtserialport,chardev=c$k,name=$name"
    k=$((k + 1))
done
if [ "$MUXED" = 1 ] || [ "$FG" = 1 ]; then
    ln -s port-0.sock "$STATE/agent.sock"
fi
: >"$STATE/direct"
k=$MUXED
while [ $k -lt "$PORTS" ]; do echo "$STATE/port-$k.sock" >>"$STATE/direct"; k=$((k + 1)); done

if [ "$FG" = 1 ]; then
    exec "$@" -serial mon:stdio
fi

t0=$(now_ms)
"$@" -serial "file:$STATE/console.log" -pidfile "$STATE/qemu.pid" -daemonize ||
    die "QEMU did not start"
if [ "$MUXED" -gt 1 ]; then
    k=0
    socks=
    while [ $k -lt "$MUXED" ]; do socks="$socks $STATE/port-$k.sock"; k=$((k + 1)); done
    # shellcheck disable=SC2086
    setsid /usr/bin/python3 "$HERE/portmux.py" "$STATE/agent.sock" $socks \
        </dev/null >>"$STATE/portmux.log" 2>&1 &
    echo $! >"$STATE/portmux.pid"
fi
# boxd's line: "boxd VERSION ready[ in N ms]: pid 1, mode vm, ..." (older builds lack "in N ms").
while ! grep -Eq ' ready( in [0-9.]+ ms)?: pid 1,' "$STATE/console.log" 2>/dev/null; do
    if ! qemu_pid "$STATE" >/dev/null; then
        log "box $NAME: QEMU exited before boxd was ready; console:"
        tail -n 30 "$STATE/console.log" | sed 's/^/  | /' >&2
        stop_vm "$NAME"
        exit 1
    fi
    if [ "$(now_ms)" -gt $((t0 + TIMEOUT * 1000)) ]; then
        log "box $NAME: boxd not ready after ${TIMEOUT}s; console:"
        tail -n 30 "$STATE/console.log" | sed 's/^/  | /' >&2
        stop_vm "$NAME"
        exit 1
    fi
    sleep 0.02
done
while [ ! -S "$STATE/agent.sock" ]; do
    [ "$(now_ms)" -lt $((t0 + TIMEOUT * 1000)) ] || { log "box $NAME: portmux.py did not start:"; cat "$STATE/portmux.log" >&2; stop_vm "$NAME"; exit 1; }
    sleep 0.01
done
echo $(($(now_ms) - t0)) >"$STATE/boot_ms"
log "box $NAME ready in $(cat "$STATE/boot_ms") ms (QEMU pid $(cat "$STATE/qemu.pid"))"
printf '%s\n' "$STATE/agent.sock"
