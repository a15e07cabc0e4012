"""boxd as PID 1 of a namespace box on a real Debian rootfs (packaging/nsbox.sh).

Run alone:  /usr/bin/python3 -m pytest -m boxes tests/boxes
Each test gets its own box (about 0.1 s to start once the rootfs is cached) and checks at teardown
that the box left nothing behind on the host: no process, no cgroup, no state, no mount.
"""

import os
import socket
import time

import pytest

import minibox
from boxtest import wait_for
from minibox import ok, text

pytestmark = pytest.mark.boxes



def gone(pid):
    """True when pid no longer runs. A zombie counts as gone: the box's launcher (unshare, in the
    host's PID namespace) is reparented to the host's init when nsbox.sh exits, and that init
    reaps it when it gets to it."""
    return host_state(pid) in (None, "Z")


def host_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
        return s[s.rindex(")") + 2]
    except (FileNotFoundError, ProcessLookupError):
        return None


# ---- PID 1 ----------------------------------------------------------------------------------------

def test_boxd_is_pid1(box, client):
    hello = client.hello()
    assert hello["pid"] == 1
    info = client.request({"type": "info"})
    assert info["type"] == "info"
    assert info["pid"] == 1 and info["pid1"] is True
    assert ok(client.run("cat /proc/1/comm")) == "boxd"
    # The host sees the same process as an ordinary pid, in the box's cgroup.
    assert box.pid != 1 and box.pid in box.cgroup_pids()


def test_shell_sees_the_box_pid_namespace(client):
    pid, ppid = ok(client.run("echo $$ $PPID")).split()
    assert int(pid) > 1 and int(ppid) == 1
    # Only the box's own processes are visible: boxd, the run's shell and ps itself.
    procs = ok(client.run("ps -e -o pid=,comm="))
    lines = [l.split() for l in procs.splitlines()]
    assert lines[0] == ["1", "boxd"]
    assert len(lines) <= 4, procs
    # One level of pid namespace as seen from inside: NSpid has a single number.
    nspid = ok(client.run("grep NSpid /proc/self/status")).split()
    assert len(nspid) == 2


def test_hostname_stays_inside(box, client):
    host_name = socket.gethostname()
    assert ok(client.run("hostname")) == box.name
    assert ok(client.run("hostname boxd-renamed && hostname")) == "boxd-renamed"
    assert ok(client.run("cat /proc/sys/kernel/hostname")) == "boxd-renamed"
    assert socket.gethostname() == host_name


def test_real_debian(client):
    assert ok(client.run("apt-get --version")).startswith("apt 2.")
    assert ok(client.run("cat /etc/debian_version")).startswith("12")
    assert ok(client.run("dpkg-query -W -f '${Status}' libuv1")) == "install ok installed"


# ---- processes --------------------------------------------------------------------------------

def box_zombies(client):
    out = ok(client.run("ps -e -o stat=,pid=,ppid=,comm="))
    return [l for l in out.splitlines() if l.split()[0].startswith("Z")]


def test_orphans_are_reaped(box, client):
    reaped0 = client.request({"type": "info"})["reaped"]
    ok(client.run("sh -c '(sleep 0.1 &) ; exit 0'"))
    ok(client.run("for i in $(seq 20); do (sleep 0.0$i &) ; done; "
                  "bash -c \"bash -c 'echo zombie' &\" &"))
    # Once the sleeps are done, nothing is left over: no sleep, no zombie, inside or as the
    # host sees the box's cgroup.
    assert wait_for(lambda: "sleep" not in ok(client.run("ps -e -o comm=")), 5)
    assert wait_for(lambda: box_zombies(client) == [], 5), box_zombies(client)
    assert [p for p in box.cgroup_pids() if host_state(p) == "Z"] == []
    info = client.request({"type": "info"})
    assert info["reaped"] >= reaped0 + 21


def test_teardown_kills_the_whole_box(box, client):
    # Processes that escape a process-group kill: setsid, double fork, a TERM-ignoring one.
    ok(client.run("sleep 1000 & setsid sleep 1001 & (sleep 1002 &); "
                  "(trap '' TERM; exec sleep 1003) & echo started"))
    pids = box.cgroup_pids()
    sleeps = [p for p in pids if open("/proc/%d/comm" % p).read().strip() == "sleep"]
    assert len(sleeps) == 4
    client.close()
    rc, err = box.stop(grace=5)
    assert rc == 0, err
    for p in pids:
        assert gone(p), "pid %d survived the box" % p
    assert not os.path.exists(box.cgroup)
    assert not os.path.lexists(box.state)


def test_stop_falls_back_to_cgroup_kill(box, client):
    ok(client.run("(trap '' TERM; exec sleep 1000) & echo started"))
    pids = box.cgroup_pids()
    client.close()
    # No grace at all: SIGTERM to PID 1, then cgroup.kill at once.
    rc, err = box.stop(grace=0)
    assert rc == 0, err
    assert all(gone(p) for p in pids)
    assert not os.path.exists(box.cgroup)


# ---- filesystems ------------------------------------------------------------------------------

def host_root_mount():
    """(mount id, major:minor, options) of the host's / mount."""
    for line in minibox.mount_table().splitlines():
        f = line.split()
        if f[4] == "/":
            return f[0], f[2], f[5]
    raise AssertionError("no / in mountinfo")


def test_box_mount_table_is_its_own(client):
    inside = ok(client.run("cat /proc/self/mountinfo"))
    root = [l.split() for l in inside.splitlines() if l.split()[4] == "/"]
    assert len(root) == 1 and root[0][root[0].index("-") + 1] == "overlay", inside
    # The host's root filesystem is not mounted anywhere in the box: the inherited copies of
    # the host's mounts were detached after pivot_root.
    _mid, host_dev, _opts = host_root_mount()
    assert host_dev not in [l.split()[2] for l in inside.splitlines()], inside


def test_remount_root_read_only_stays_inside(box, client):
    before = minibox.mount_table()
    host_before = host_root_mount()
    # Only ever try this on a box whose / is its own overlay (see packaging/README.md).
    root_line = ok(client.run("grep -E '^[0-9]+ [0-9]+ [0-9:]+ / / ' /proc/self/mountinfo"))
    assert " - overlay " in root_line, root_line
    assert host_before[1] != root_line.split()[2]

    ok(client.run("mount -o remount,ro /"))
    assert " ro," in ok(client.run("grep -E ' / / ' /proc/self/mountinfo")) + ","
    end = client.run("touch /remount-probe")
    assert end["exit_code"] != 0 and "Read-only file system" in text(end["stderr"])

    # The host: / still read-write, the mount table unchanged, and writable in fact.
    assert host_root_mount() == host_before
    assert "rw" in host_before[2].split(",")
    assert not os.statvfs("/").f_flag & os.ST_RDONLY
    assert minibox.mount_table() == before
    probe = os.path.join(box.state, "host-write-probe")
    with open(probe, "w") as f:
        f.write("ok")
    os.unlink(probe)


def test_writes_go_to_the_overlay_not_the_cache(box, client, rootfs):
    ok(client.run("echo written-inside > /etc/boxd-test-file"))
    assert open(os.path.join(box.root, "etc/boxd-test-file")).read() == "written-inside\n"
    assert os.path.exists(os.path.join(box.state, "upper/etc/boxd-test-file"))
    assert not os.path.exists(os.path.join(rootfs, "etc/boxd-test-file"))
    # boxd was installed into the box, not into the cache.
    assert not os.path.exists(os.path.join(rootfs, "usr/sbin/boxd"))
    assert os.path.exists(os.path.join(box.state, "upper/usr/sbin/boxd"))


def test_socket_is_under_the_box_root(box):
    assert box.socket == os.path.join(box.state, "root", "run", "boxd.sock")
    assert os.readlink(box.root) == "/proc/%d/root" % box.pid
    # Fast enough for the normal suite once the rootfs is cached.
    assert box.start_s < 5, box.start_s


def test_cgroup_namespace_and_cgroup2(box, client):
    # The box's cgroup is the root of its cgroup namespace: a run sees only boxd's own tree.
    v2 = [l for l in ok(client.run("cat /proc/self/cgroup")).splitlines() if l.startswith("0::")]
    assert len(v2) == 1 and v2[0].startswith("0::/") and "boxd-box" not in v2[0], v2
    assert "cgroup.kill" in ok(client.run("ls /sys/fs/cgroup"))
    assert ok(client.run("cat /sys/fs/cgroup/cgroup.events")).startswith("populated 1")
