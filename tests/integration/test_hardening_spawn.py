"""Issue 11, items 1 and 8: no process the run's user can signal or trace shares boxd's memory
or holds its spawner, and `max_rss_kb` is the run's own peak.

The SIGSTOP race runs boxd in a pid namespace of its own (boxd-pidns.sh), so the attacker's
signals to "the next pids" reach only this daemon's processes."""

import os
import signal
import threading
import time

import pytest

import conftest
from conftest import T, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))

# Watches the pid counter and stops whatever is made next, as fast as it can.
STOPPER = r"""
import os, signal, sys
f = os.open("/proc/sys/kernel/ns_last_pid", os.O_RDONLY)
me = os.getpid()
stopped = 0
while True:
    last = int(os.pread(f, 32, 0))
    for p in (last, last + 1, last + 2, last + 3):
        if p != me:
            try:
                os.kill(p, signal.SIGSTOP)
                stopped += 1
            except OSError:
                pass
"""


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def start_in_pidns(start_boxd, *args):
    """A daemon in its own pid namespace; returns (daemon, boxd's pid as seen from here)."""
    real = conftest.BOXD_BIN
    conftest.BOXD_BIN = os.path.join(HERE, "boxd-pidns.sh")
    try:
        d = start_boxd(*args, env={"BOXD_REAL_BIN": real})
    finally:
        conftest.BOXD_BIN = real
    # unshare -> sh (the namespace's PID 1) -> boxd
    sh = wait_for(lambda: children(d.pid), T(5))
    boxd = wait_for(lambda: children(sh[0]), T(5))
    assert boxd, "boxd not found under %d" % d.pid
    return d, boxd[0]


class Pinger(threading.Thread):
    """Pings on its own connection every 20 ms and keeps the worst latency."""

    def __init__(self, c):
        super().__init__(daemon=True)
        self.c = c
        self.worst = 0.0
        self.count = 0
        self.failed = None
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                m = self.c.ping(timeout=T(10))
                assert m["type"] == "pong", m
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.failed = repr(e)
                return
            self.worst = max(self.worst, time.monotonic() - t0)
            self.count += 1
            time.sleep(0.02)


def test_sigstop_race_never_wedges_the_spawner(start_boxd):
    d, boxd_pid = start_in_pidns(start_boxd, "--user", "nobody")
    try:
        sigstop_race(d, boxd_pid)
    finally:
        # unshare ignores SIGTERM: whatever happened, boxd must go for the daemon to stop.
        if os.path.exists("/proc/%d" % boxd_pid):
            os.kill(boxd_pid, signal.SIGKILL)


def sigstop_race(d, boxd_pid):
    c = d.client()
    attacker = c.exec_start(argv=["/usr/bin/python3", "-c", STOPPER], id="stopper",
                            follow=False, timeout_ms=int(T(120) * 1000))
    assert c.recv_req(attacker, timeout=T(10))["type"] == "started"
    pinger = Pinger(d.client())
    pinger.start()

    bound = T(10)  # the spawn deadline (5 s) and room for a busy machine
    outcomes = {}
    stuck_cancelled = []  # (id, cancel sent, reply arrived)
    slowest = 0.0
    n = n_stuck = 0
    # 30 s, as issue 11 asks; the sanitized pass (BOXD_SANITIZED) looks for memory errors on the
    # same paths, for which 10 s of the race is plenty.
    end = time.monotonic() + (10 if os.environ.get("BOXD_SANITIZED") else 30)
    while time.monotonic() < end:
        batch = {}
        for _ in range(4):
            n += 1
            rid = "t%d" % n
            req = c.exec_start(argv=["true"], id=rid, follow=False, timeout_ms=1500,
                               grace_ms=100)
            batch[req] = (rid, time.monotonic())
        replied = {}
        t_wait = time.monotonic() + 0.5
        while batch.keys() - replied.keys() and time.monotonic() < t_wait:
            try:
                t, m = c.recv_match(lambda m: m.get("req") in batch and
                                    m.get("req") not in replied,
                                    timeout=max(0.01, t_wait - time.monotonic()), timed=True)
            except TimeoutError:
                break
            replied[m["req"]] = (m, t)
        # Still starting after 0.5 s: the attacker may have caught its child. Every other one
        # is cancelled; the rest are left to the spawn deadline.
        for req in sorted(batch.keys() - replied.keys()):
            rid = batch[req][0]
            n_stuck += 1
            if n_stuck % 2:
                ok = c.request("cancel", id=rid, grace_ms=100, timeout=T(5))
                assert ok["type"] == "ok", ok
                stuck_cancelled.append([rid, time.monotonic(), None])
        for req in batch.keys() - replied.keys():
            # TimeoutError here: a wedged spawn (the bound is from the send: the deadline is 5 s).
            t, m = c.recv_req(req, timeout=max(0.01, batch[req][1] + bound - time.monotonic()),
                              timed=True)
            replied[req] = (m, t)
            for s in stuck_cancelled:
                if s[0] == batch[req][0]:
                    s[2] = t
        for req, (m, t) in replied.items():
            slowest = max(slowest, t - batch[req][1])
            if m["type"] == "started":
                outcomes["started"] = outcomes.get("started", 0) + 1
            else:
                assert m["type"] == "error" and m["code"] == "spawn_failed", m
                key = "%s/%s" % (m["stage"], m["errno_name"])
                outcomes[key] = outcomes.get(key, 0) + 1
        assert pinger.failed is None, pinger.failed

    print("runs: %d, outcomes %s, slowest reply %.2f s, slower than 0.5 s: %d (cancelled %d), "
          "ping worst %.3f s over %d" % (n, outcomes, slowest, n_stuck, len(stuck_cancelled),
                                         pinger.worst, pinger.count))
    for rid, sent, got in stuck_cancelled:
        # The cancel ended the start, not the 5 s deadline.
        assert got is not None and got - sent < T(3), (rid, got and got - sent)
        e = c.wait(rid, timeout=T(10))
        assert e["type"] == "end" or e.get("code") == "not_found", e  # or evicted since
    assert outcomes.get("started", 0) > n // 4, outcomes
    # Every outcome is typed, and no other kind of failure happened.
    assert set(outcomes) <= {"started", "exec/ETIMEDOUT"}, outcomes

    c.cancel("stopper")
    assert c.wait("stopper", timeout=T(10))["type"] == "end"
    assert wait_for(lambda: c.info()["runs_starting"] == 0, T(10)), c.info()
    pinger.stop.set()
    pinger.join(T(15))
    assert pinger.failed is None, pinger.failed
    assert pinger.worst < T(1.0), pinger.worst
    t0 = time.monotonic()
    os.kill(boxd_pid, signal.SIGTERM)
    # read_stat is None once the process is gone, even between the two checks.
    assert wait_for(lambda: (conftest.read_stat(boxd_pid) or ("gone",))[0] in ("gone", "Z"),
                    T(5)), "boxd hangs after SIGTERM"
    print("SIGTERM to exit: %.2f s" % (time.monotonic() - t0))


# ---- 8. max_rss_kb is the run's own peak ----------------------------------------------------------

GROW = "head -c 8000000 /dev/zero | tr '\\0' 'x' | fold -w 100"
HOG = "b = bytearray(50 << 20); b[::4096] = b'x' * len(b[::4096]); print('ok')"


def hwm(text):
    return int(text.split("VmHWM:")[1].split()[0])


def test_max_rss_is_the_runs_own_peak(start_boxd):
    # Retains no finished run's log for long: boxd grows during the stress, then shrinks.
    d = start_boxd("--max-finished", "1")
    c = d.client()
    res = c.exec_run("grep VmHWM /proc/self/status", timeout=T(20))
    own, end = hwm(res.stdout.decode()), res.end["max_rss_kb"]
    assert own // 2 <= end <= own + 8192, (own, end)

    # Grow boxd: eight runs' output held at once (8 MB each), then forgotten.
    reqs = [c.exec_start(cmd=GROW, id="grow%d" % i, output=False) for i in range(8)]
    for r in reqs:
        assert c.collect(r, timeout=T(60)).end["status"] == "completed"
    boxd_hwm = int(conftest.proc_status(d.pid)["VmHWM"].split()[0])
    assert boxd_hwm > 40 * 1024, boxd_hwm  # boxd's peak is far above any small run's

    for _ in range(3):
        # Without a cgroup memory.peak (PROTOCOL 4.3) the figure may be boxd's resident size at
        # the spawn (one 8 MB log is still retained), never its peak.
        rss = int(conftest.proc_status(d.pid)["VmRSS"].split()[0])
        res = c.exec_run("grep VmHWM /proc/self/status", timeout=T(20))
        own, end = hwm(res.stdout.decode()), res.end["max_rss_kb"]
        print("boxd peak %d kB, now %d kB; run's VmHWM %d kB, max_rss_kb %d"
              % (boxd_hwm, rss, own, end))
        assert end < boxd_hwm // 2 and end <= max(own, rss) + 4096, (own, end, rss, boxd_hwm)
        small = c.exec_run(argv=["true"], timeout=T(20)).end["max_rss_kb"]
        assert 0 < small < 12 * 1024 and small < boxd_hwm // 2, (small, boxd_hwm)
    big = c.exec_run(argv=["python3", "-c", HOG], timeout=T(30))
    assert big.end["status"] == "completed", big
    assert 50 * 1024 <= big.end["max_rss_kb"] <= 50 * 1024 + 40 * 1024, big.end
