"""Ping latency while runs abuse the box: a fork bomb under a pids limit, and a run that fills
/tmp (issue 6, 7). No memory hog: this host cannot protect boxd from its OOM killer.

Fenced: the fork bomb runs under a cgroup v1 pids group of its own (test_security.py's fixture,
pids.max 300); /tmp is filled only inside the daemon's own mount namespace, on a 64 MiB tmpfs
(conftest.start_boxd_tmpfs), after a run has shown that its /tmp is that tmpfs."""

import os
import shutil
import threading
import time

import pytest

from conftest import (T, mount_of, p99, pids_current, ping_latencies, report, v1_pids_path,
                      wait_for)

N_PINGS = 100


def summary(lats):
    s = sorted(lats)
    return "p50 %.2f ms, p99 %.2f ms, max %.2f ms over %d pings" % (
        s[len(s) // 2] * 1e3, p99(s) * 1e3, s[-1] * 1e3, len(s))


class Pinger(threading.Thread):
    """Pings on its own connection, interval s apart, until stopped; keeps the round trips."""

    def __init__(self, c, interval=0.01):
        super().__init__(daemon=True)
        self.c, self.interval = c, interval
        self.lats, self.error = [], None
        self.stop = threading.Event()

    def run(self):
        try:
            while not self.stop.is_set():
                self.lats += ping_latencies(self.c, 1, interval=self.interval)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def finish(self):
        self.stop.set()
        self.join(T(10))
        assert self.error is None, self.error
        return self.lats


def test_ping_during_fork_bomb(pids_cgroup, start_boxd):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    cg = pids_cgroup
    d = start_boxd()
    with open(os.path.join(cg, "pids.max"), "w") as f:
        f.write("300")
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(str(d.pid))  # its runs inherit it
    assert v1_pids_path(d.pid) == "/" + os.path.basename(cg)
    c = d.client()
    c2 = d.client()
    # The bomb's shell stays (exec sleep needs no fork), so the timeout ends the run and kills
    # the whole tree; the pings all fall inside its 5 s.
    req = c.exec_start(argv=["bash", "-c", ":(){ :|:& };:; exec sleep 60"], timeout_ms=5000,
                       grace_ms=300)
    st = c.recv_req(req, timeout=T(10))
    assert st["type"] == "started", st
    assert wait_for(lambda: pids_current(cg) >= 200, T(3)), pids_current(cg)
    peak = pids_current(cg)
    t0 = time.monotonic()
    lats = ping_latencies(c2, N_PINGS, interval=0.01)
    t_pings = time.monotonic() - t0
    peak = max(peak, pids_current(cg))
    end = None
    while end is None:
        m = c.recv_req(req, timeout=T(20))
        if m["type"] == "end":
            end = m
    report("abuse", "fork bomb (pids.max 300, peak %d): ping %s, during %.1f s of the bomb's "
           "%d ms" % (peak, summary(lats), t_pings, end["duration_ms"]))
    assert end["status"] == "failed" and end["reason"] == "timeout", end
    assert end["ended_ns"] > end["started_ns"] + int(t_pings * 1e9)  # the pings were all inside
    assert p99(lats) < T(0.1), sorted(lats)[-5:]
    # boxd alone: its threads (the loop's and the spawner's) are tasks of the pids cgroup.
    alone = d.counts()[2]
    assert wait_for(lambda: pids_current(cg) == alone, T(5)), pids_current(cg)
    assert c2.info()["runs_live"] == 0
    assert c2.exec_run("echo ok").end["result"] == "ok"


TMPFS_MB = 64


def test_ping_while_tmp_fills(start_boxd_tmpfs):
    d = start_boxd_tmpfs("%dm" % TMPFS_MB)
    c = d.client()
    c2 = d.client()
    # Guards first: boxd's /tmp is the small tmpfs, in its own namespace, never the host's.
    m = mount_of(d.pid, "/tmp")
    assert m is not None and m[0] == "tmpfs" and "size=%dk" % (TMPFS_MB * 1024) in m[1], m
    host = mount_of(os.getpid(), "/tmp")
    assert host is None or "size=%dk" % (TMPFS_MB * 1024) not in host[1], host
    res = c.exec_run("stat -f -c '%T %b %S' /tmp && findmnt -n -o FSTYPE,SOURCE /tmp")
    assert res.end["status"] == "completed", res
    kind, blocks, bsize = res.stdout.split(b"\n")[0].split()
    assert kind == b"tmpfs" and int(blocks) * int(bsize) == TMPFS_MB << 20, res.stdout
    assert b"boxd-load-tmp" in res.stdout, res.stdout

    pinger = Pinger(c2)
    pinger.start()
    t0 = time.monotonic()
    # dd fails with ENOSPC when the tmpfs is full; the run then holds /tmp full for a moment
    # (pings go on) and exits with dd's status.
    fill = c.exec_run("sleep 0.3; dd if=/dev/zero of=/tmp/fill bs=1M; rc=$?; "
                      "df -k /tmp >&2; sleep 1; exit $rc", timeout=T(30))
    # While /tmp is full: a shell run still works; a code run cannot write its snippet.
    still = c.exec_run("echo still ok")
    n_runs = len(c.list()["runs"])
    code = c.request("code", lang="sh", code="echo hi", output=True)
    held = time.monotonic() - t0
    time.sleep(max(0.0, 1.5 - held))
    lats = pinger.finish()
    report("abuse", "/tmp (tmpfs %d MiB) filled by dd: ping %s, during %.1f s" % (
        TMPFS_MB, summary(lats), time.monotonic() - t0))
    assert fill.end["status"] == "failed" and fill.end["reason"] == "exit", fill
    assert fill.end["exit_code"] == 1, fill.end
    assert b"No space left on device" in fill.stderr, fill.stderr[-500:]
    assert still.end["status"] == "completed" and still.end["result"] == "still ok", still
    # PROTOCOL.md 6: `internal` when the snippet cannot be written under /tmp; no effect.
    assert code["type"] == "error" and code["code"] == "internal", code
    assert len(c.list()["runs"]) == n_runs
    assert len(lats) >= 50, len(lats)
    assert p99(lats) < T(0.1), sorted(lats)[-5:]
    # No snippet directory was left behind, and /tmp works again once the file goes.
    ls = c.exec_run("ls -A /tmp; rm -f /tmp/fill")
    names = ls.stdout.split()
    assert [n for n in names if n.startswith(b"boxd-code-")] == [], names
    res = c.exec_run(cmd=None, argv=["df", "-k", "/tmp"])
    assert res.end["status"] == "completed", res
    ok = c.request("code", lang="sh", code="echo hi", output=True)
    assert ok["type"] == "started", ok
    end = c.collect(ok["req"], timeout=T(20)).end
    assert end["status"] == "completed" and end["result"] == "hi", end
