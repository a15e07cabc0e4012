#!/bin/busybox sh
# /init of the microVM box's initramfs (vmbox/build.sh). Loads the virtio and vsock modules,
# mounts the root disk, and hands over to the real init named by init= on the kernel command
# line (run.sh passes init=/sbin/boxd), with the arguments the kernel gave us (those after "--"
# on the command line). Messages go to the console, prefixed "initramfs:".
/bin/busybox mkdir -p /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

say() { echo "initramfs: $*" >/dev/console; }

mount -t devtmpfs -o mode=0755 devtmpfs /dev
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys

kver=$(uname -r)
while read -r m; do
    insmod "/lib/modules/$kver/$m" 2>/dev/null || say "insmod $m failed"
done </etc/boxd-modules

init=/sbin/init
root=/dev/vda
rootfstype=ext4
rootflags=rw
net=
for arg in $(cat /proc/cmdline); do
    case $arg in
    --) break ;;
    boxd.net=*) net=${arg#boxd.net=} ;;
    init=*) init=${arg#init=} ;;
    root=*) root=${arg#root=} ;;
    rootfstype=*) rootfstype=${arg#rootfstype=} ;;
    rootflags=*) rootflags=${arg#rootflags=} ;;
    ro) rootflags=ro ;;
    esac
done

# The disk appears when virtio_blk has probed it; that is normally done by now.
i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    if [ $i -gt 500 ]; then
        say "no root device $root"
        ls /dev >/dev/console
        poweroff -f
    fi
    sleep 0.01
done

if ! mount -t "$rootfstype" -o "$rootflags" "$root" /newroot; then
    say "cannot mount $root"
    poweroff -f
fi
if [ ! -x "/newroot$init" ]; then
    say "no init $init on $root"
    poweroff -f
fi

# boxd.net=user (run.sh --net): QEMU's user-mode network, whose addresses are fixed: the guest
# 10.0.2.15/24, the gateway 10.0.2.2, the DNS relay 10.0.2.3 (it forwards to the host's
# resolver). The interface is configured here, before boxd, and stays so after switch_root;
# resolv.conf goes to the disk's snapshot layer, so the cached disk is not written.
if [ "$net" = user ]; then
    if ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2; then
        rm -f /newroot/etc/resolv.conf
        echo "nameserver 10.0.2.3" >/newroot/etc/resolv.conf
    else
        say "boxd.net=user: cannot configure eth0"
    fi
fi

# devtmpfs moves with the switch (the box's init finds /dev populated and mounted); proc and
# sysfs are the init's to mount.
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot "$init" "$@"
