"""Connections: 500 open at once, and a follower killed mid-stream (issue 6, 3-4)."""

import os
import signal
import subprocess
import sys
import time

import boxd_client
from conftest import HERE, INTEGRATION, T, raise_nofile, report, wait_for

# ---- 3. 500 connections held open at once ------------------------------------------------------

N_HELD = 500


def test_500_connections(start_boxd):
    assert raise_nofile(N_HELD + 200) >= N_HELD + 100, "this process cannot open enough sockets"
    d = start_boxd("--max-conns", "600")
    c = d.client()
    assert c.hello_reply["limits"]["max_conns"] == 600
    time.sleep(0.1)
    base_fds, _, threads, _ = d.counts()
    t0 = time.monotonic()
    conns = []
    try:
        for _ in range(N_HELD):
            conns.append(boxd_client.Client(d.sock, connect_timeout=T(5)))
        # All open: each says hello, then pings (sent on all before any reply is read).
        for k, cl in enumerate(conns):
            cl.send({"type": "hello", "req": k, "version": 1, "client": "load/%d" % k})
        for k, cl in enumerate(conns):
            r = cl.recv_req(k, timeout=T(10))
            assert r["type"] == "hello", (k, r)
        for k, cl in enumerate(conns):
            cl.send({"type": "ping", "req": "p%d" % k})
        lat = []
        for k, cl in enumerate(conns):
            r = cl.recv_req("p%d" % k, timeout=T(10))
            assert r["type"] == "pong", (k, r)
        t_all = time.monotonic() - t0
        info = c.info()
        assert info["conns"] == N_HELD + 1, info["conns"]
        nfd_open = d.counts()[0]
        assert nfd_open >= base_fds + N_HELD, (nfd_open, base_fds)
        # A ping on each again, one at a time, all still open: none was starved or dropped.
        for k, cl in enumerate(conns):
            t = time.perf_counter()
            assert cl.ping(timeout=T(5))["type"] == "pong", k
            lat.append(time.perf_counter() - t)
    finally:
        for cl in conns:
            cl.close()
    lat.sort()
    report("conns", "%d connections opened, hello and ping on each in %.2f s; boxd fds %d "
           "(idle %d); one-by-one ping p50 %.2f ms, max %.2f ms"
           % (N_HELD, t_all, nfd_open, base_fds, lat[len(lat) // 2] * 1e3, lat[-1] * 1e3))
    assert wait_for(lambda: c.info()["conns"] == 1, T(5)), c.info()["conns"]
    assert wait_for(lambda: d.counts()[0] == base_fds, T(5)), (d.counts(), base_fds)
    assert d.counts()[2] == threads
    assert c.ping()["type"] == "pong"


# ---- 4. a follower SIGKILLed mid-stream; another takes over from its last recorded seq -------

LINES = 20000
# Paced (a short sleep every 200 lines, about 2.5 s in all) so the kill lands mid-stream.
PACED = ('for i in $(seq 1 %d); do echo "line $i"; '
         'if [ $((i %% 200)) -eq 0 ]; then sleep 0.02; fi; done' % LINES)


def read_journal(path):
    """The child's journal: ("id", run id), then per event its records and a commit line. Only
    committed records count (a kill may tear the last write). Returns (id, records, last)."""
    with open(path, "rb") as f:
        data = f.read()
    run_id, recs, pending, last = None, [], [], -1
    for line in data.split(b"\n")[:-1]:  # the last piece has no newline: torn or empty
        kind, _, rest = line.partition(b" ")
        if kind == b"I":
            run_id = rest.decode()
        elif kind == b"R":
            seq, stream, hexdata = rest.split(b" ")
            pending.append((int(seq), int(stream), bytes.fromhex(hexdata.decode())))
        elif kind == b"C":
            recs += pending
            pending = []
            last = int(rest)
        elif kind == b"E":
            raise AssertionError("the follower saw the end before it was killed: pace the run")
        else:
            raise AssertionError("bad journal line %r" % line)
    return run_id, recs, last


def test_follower_killed_mid_stream(start_boxd, tmp_path):
    d = start_boxd()
    c = d.client()
    journal = str(tmp_path / "journal")
    child = subprocess.Popen([sys.executable, os.path.join(HERE, "follow_child.py"), d.sock,
                              journal, PACED], env=dict(os.environ, PYTHONPATH=INTEGRATION),
                             stdin=subprocess.DEVNULL)
    try:
        def progress():
            if child.poll() is not None:
                raise AssertionError("the follower exited early (%s)" % child.returncode)
            return read_journal(journal)[2] if os.path.exists(journal) else -1
        assert wait_for(lambda: progress() >= 4000, T(20)), progress()
        child.send_signal(signal.SIGKILL)
        child.wait(T(5))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    run_id, recs1, last = read_journal(journal)
    assert run_id is not None
    assert wait_for(lambda: c.info()["conns"] == 1, T(5))  # the dead peer's connection is gone
    mid = [r for r in c.list()["runs"] if r["id"] == run_id]
    assert mid and mid[0]["state"] == "running", "the run was over before the kill: %r" % mid

    c2 = d.client()
    res = c2.attach(run_id, from_seq=last + 1, timeout=T(30))
    assert res.error is None, res
    assert res.started["first_seq"] == 0, res.started
    assert res.gaps == [], res.gaps
    assert res.end is not None and res.end["status"] == "completed", res.end
    recs = recs1 + [(r[0], r[2], r[3]) for r in res.records]
    seqs = [r[0] for r in recs]
    assert seqs == list(range(len(recs))), "seqs not contiguous across the two followers"
    assert res.end["next_seq"] == len(recs) == LINES, (res.end, len(recs))
    assert all(r[1] == 1 for r in recs)
    want = [b"line %d\n" % i for i in range(1, LINES + 1)]
    got = [r[2] for r in recs]
    if got != want:
        i = next(k for k in range(min(len(got), len(want))) if got[k] != want[k])
        raise AssertionError("line %d: got %r, want %r" % (i, got[i], want[i]))
    report("killed-follower", "killed with seq %d recorded of %d; the second follower took "
           "%d records from seq %d" % (last, LINES, len(res.records), last + 1))
