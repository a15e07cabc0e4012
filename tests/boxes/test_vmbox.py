"""boxd as the init of the microVM box (packaging/vmbox), talked to over virtio-serial.

One VM per module: it boots in about 3.5 s under TCG. The first run also builds the VM's kernel,
initramfs and disk (about 10 s, cached in /var/cache/boxd/vm). Skipped with the reason when the
machine cannot (no QEMU and no apt, no kernel package, not root).

Run alone:  /usr/bin/python3 -m pytest -m vm tests/boxes
Leave out:  -m "not vm"
"""

import os
import subprocess

import pytest

import minibox
from minibox import ok

pytestmark = [pytest.mark.boxes, pytest.mark.vm]

VMBOX = os.path.join(minibox.PACKAGING, "vmbox")
BOXD_BIN = os.environ.get("BOXD_BIN", os.path.join(minibox.REPO, "build", "boxd"))


@pytest.fixture(scope="module")
def vm(rootfs):
    p = subprocess.run([os.path.join(VMBOX, "build.sh"), BOXD_BIN], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=900)
    if p.returncode != 0:
        pytest.skip("cannot build the microVM box:\n" +
                    "\n".join(p.stderr.decode("utf-8", "replace").splitlines()[-8:]))
    cache = p.stdout.decode().strip().splitlines()[-1]
    with open(os.path.join(cache, "boxd.help")) as f:
        if "virtio-port" not in f.read():
            pytest.skip("this boxd has no --listen virtio-port: the VM cannot be talked to")
    name = "tv%d" % os.getpid()
    p = subprocess.run([os.path.join(VMBOX, "run.sh"), "--name", name], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
    state = os.path.join("/run/boxd-vms", name)
    sock = p.stdout.decode().strip()
    try:
        yield {"socket": sock, "state": state, "name": name}
    finally:
        p = subprocess.run([os.path.join(VMBOX, "run.sh"), "--stop", name],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
        assert not os.path.exists(state)


@pytest.fixture
def vclient(vm):
    # QEMU's chardev socket takes one client at a time; the boot can take a while on a busy host.
    with minibox.Client(vm["socket"], timeout=60) as c:
        c.hello()
        yield c


def test_vm_boots_to_boxd_as_init(vm, vclient):
    with open(os.path.join(vm["state"], "console.log"), errors="replace") as f:
        console = f.read()
    assert "ready: pid 1, mode vm" in console
    info = vclient.request({"type": "info"})
    assert info["pid"] == 1 and info["pid1"] is True
    assert info.get("mode", "vm") == "vm"
    assert ok(vclient.run("cat /proc/1/comm")) == "boxd"
    assert ok(vclient.run("hostname")) == vm["name"]


def test_vm_is_a_real_debian_kernel(vclient):
    assert ok(vclient.run("uname -r")).endswith("-cloud-amd64")
    assert ok(vclient.run("apt-get --version")).startswith("apt 2.")
    # The full cgroup2 controller set, unlike the development host's hybrid hierarchy.
    controllers = ok(vclient.run("cat /sys/fs/cgroup/cgroup.controllers")).split()
    assert {"memory", "pids", "cpu"} <= set(controllers)


def test_vm_has_the_vsock_modules(vclient):
    mods = ok(vclient.run("cat /proc/modules")).splitlines()
    loaded = {m.split()[0] for m in mods}
    assert {"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
            "vsock_loopback", "virtio_console", "virtio_blk"} <= loaded
    # The same modules are on the root disk, with modules.dep, for modprobe.
    ok(vclient.run("modprobe vsock_loopback && test -e /dev/vsock"))


def test_vm_orphans_are_reaped(vclient):
    ok(vclient.run("for i in $(seq 10); do (sleep 0.0$i &) ; done"))
    ok(vclient.run("sleep 0.5"))
    out = ok(vclient.run("ps -e -o stat=,comm="))
    assert not [l for l in out.splitlines() if l.split()[0].startswith("Z")], out
