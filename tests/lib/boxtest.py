"""Helpers every Python test suite of boxd shares (tests/integration, tests/load, tests/boxes,
tests/sdk): time limits scaled for slow builds, /proc readers for leak checks, polling, latency
statistics, and the cgroup v2 fence each daemon is started in (fence_*). Nothing here starts a
daemon: each suite's conftest does that its own way.

Import it after putting this directory on sys.path:
    sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
    from boxtest import T, wait_for, proc_counts
"""

import math
import os
import secrets
import time

import pytest

SLOW = float(os.environ.get("BOXD_TEST_SLOW", "1"))


def _find_cgroup2():
    """The host's cgroup2 mount: /sys/fs/cgroup/unified (hybrid) or /sys/fs/cgroup (pure v2)."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = {p[1]: p[2] for p in (line.split() for line in f) if len(p) >= 3}
    except OSError:
        return None
    for d in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if mounts.get(d) == "cgroup2":
            return d
    return None


CGROOT = _find_cgroup2() or "/sys/fs/cgroup/unified"

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer",
                     "ERROR: ThreadSanitizer", "WARNING: ThreadSanitizer")


def T(seconds):
    """A time limit scaled by BOXD_TEST_SLOW."""
    return seconds * SLOW


def cgroup2_available():
    return _find_cgroup2() is not None and os.access(os.path.join(CGROOT, "cgroup.procs"), os.W_OK)


# ---- /proc helpers ------------------------------------------------------------------------------

def read_stat(pid):
    """Returns (state, ppid, pgrp, session) of pid, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            s = f.read().decode("latin-1")
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = s[s.rindex(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[2]), int(rest[3])


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def zombie_children(pid):
    """Pids of zombie processes whose parent is pid."""
    out = []
    for p in all_pids():
        st = read_stat(p)
        if st and st[0] == "Z" and st[1] == pid:
            out.append(p)
    return out


def proc_status(pid):
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return fields


def proc_counts(pid):
    """(open fds, VmRSS kB, threads, zombie children) of pid, for leak checks."""
    nfd = len(os.listdir("/proc/%d/fd" % pid))
    st = proc_status(pid)
    rss = int(st.get("VmRSS", "0 kB").split()[0])
    threads = int(st["Threads"])
    return nfd, rss, threads, len(zombie_children(pid))


def procs_in_pgrp(pgid):
    out = []
    for p in all_pids():
        st = read_stat(p)
        if st and st[2] == pgid:
            out.append(p)
    return out


def procs_with_env(key, value):
    """Pids of live (non-zombie) processes whose environment has key=value."""
    needle = ("%s=%s" % (key, value)).encode()
    out = []
    for p in all_pids():
        try:
            with open("/proc/%d/environ" % p, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            st = read_stat(p)
            if st and st[0] != "Z":
                out.append(p)
    return out


def wait_for(pred, timeout, interval=0.02):
    """Polls pred until it returns a truthy value or timeout s pass; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


# ---- the cgroup v2 fence every daemon a test starts lives in ---------------------------------

def fence_new(prefix="boxd-test-"):
    """A fresh cgroup v2 directory under CGROOT (prefix + random hex), or None without cgroup v2.
    The daemon enters it through fence_preexec; teardown is fence_kill, then fence_remove."""
    if not cgroup2_available():
        return None
    cg = os.path.join(CGROOT, prefix + secrets.token_hex(6))
    os.mkdir(cg)
    return cg


def fence_preexec(cg):
    """A Popen preexec_fn that moves the child into cg between fork and exec."""
    procs = os.path.join(cg, "cgroup.procs")

    def preexec():
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    return preexec


def fence_kill(cg, timeout=10):
    """cgroup.kill on cg, then waits (up to timeout s) until nothing in it is left alive.
    Returns True once empty (or gone)."""
    try:
        with open(os.path.join(cg, "cgroup.kill"), "w") as f:
            f.write("1")
    except OSError:
        pass
    events = os.path.join(cg, "cgroup.events")

    def empty():
        try:
            with open(events) as f:
                return "populated 0" in f.read()
        except OSError:
            return True
    return wait_for(empty, timeout)


def fence_remove(cg, timeout=5):
    """Removes cg and the child cgroups the daemon made, bottom-up. A parent's rmdir fails with
    EBUSY until its removed children are offline (asynchronous in the kernel), so it retries for
    up to timeout s. Returns True once removed."""
    def remove_all():
        for root, dirs, _files in os.walk(cg, topdown=False):
            for d in dirs:
                try:
                    os.rmdir(os.path.join(root, d))
                except OSError:
                    pass
        try:
            os.rmdir(cg)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
    return wait_for(remove_all, timeout, interval=0.05)


def p99(xs):
    """The 99th percentile of xs (nearest rank)."""
    s = sorted(xs)
    return s[max(0, int(math.ceil(0.99 * len(s))) - 1)]


def ping_latencies(c, n, interval=0.01):
    """n pings on client c (boxd_client.Client or anything with .ping), interval s apart;
    returns their round-trip times in s."""
    lats = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = c.ping(timeout=T(5))
        lats.append(time.perf_counter() - t0)
        assert r["type"] == "pong", r
        time.sleep(interval)
    return lats


def read_int(path):
    with open(path) as f:
        return int(f.read().strip())


PIDS_V1 = "/sys/fs/cgroup/pids"


def v1_pids_path(pid):
    """pid's path in the cgroup v1 pids hierarchy, or None."""
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if "pids" in ctrls.split(","):
                return path
    return None


def pids_current(cg):
    return read_int(os.path.join(cg, "pids.current"))


@pytest.fixture
def pids_cgroup():
    """A cgroup v1 pids group of our own, removed after the daemons (requested before
    start_boxd, so torn down after it: whatever it holds has been killed by then)."""
    if not os.access(os.path.join(PIDS_V1, "cgroup.procs"), os.W_OK):
        pytest.skip("no writable cgroup v1 pids hierarchy at %s" % PIDS_V1)
    cg = os.path.join(PIDS_V1, "boxd-sec-" + secrets.token_hex(6))
    os.mkdir(cg)
    yield cg

    def remove():
        try:
            os.rmdir(cg)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
    if not wait_for(remove, 10, interval=0.05):
        with open(os.path.join(cg, "cgroup.procs")) as f:
            left = f.read().split()
        pytest.fail("could not remove %s (holds %s)" % (cg, left), pytrace=False)
