"""Requests that reach a run while it is still being started (PROTOCOL.md 4.1).

boxd starts runs on its spawner thread while the event loop goes on, so a run exists - with pid 0
- from its exec until the spawner is done. Frames written in one send are read and handled in
one go, before the loop can learn that the spawn is done: a request sent together with its exec
meets the run while it is starting. `list` in the same send proves it (pid 0)."""

import os
import signal
import time

from boxd_client import frame, pack
from conftest import T, marker, procs_with_env, wait_for


def send_together(c, *msgs):
    """Writes every message in one send, so boxd handles them in one read."""
    c.raw_send(b"".join(frame(pack(m)) for m in msgs))


def list_entry(c, req, run_id):
    m = c.recv_req(req, timeout=T(10))
    assert m["type"] == "list", m
    return [r for r in m["runs"] if r["id"] == run_id][0]


def test_list_shows_a_starting_run_with_pid_0(client):
    c = client
    assert c.info()["spawner"] is True
    send_together(c, {"type": "exec", "req": 1, "id": "s1", "cmd": "echo hi", "output": True},
                  {"type": "list", "req": 2}, {"type": "info", "req": 3})
    e = list_entry(c, 2, "s1")
    assert e["state"] == "running" and e["pid"] == 0, e
    info = c.recv_req(3, timeout=T(10))
    assert info["runs_starting"] == 1 and info["runs_live"] == 1, info
    res = c.collect(1, timeout=T(10))
    assert res.started["pid"] > 0, res
    assert res.end["status"] == "completed" and res.end["result"] == "hi", res.end
    assert c.info()["runs_starting"] == 0


def test_cancel_while_starting(client):
    c = client
    m = marker()
    send_together(c, {"type": "exec", "req": 1, "id": "s2", "cmd": "sleep 100",
                      "env": {"BOXD_MARK": m}},
                  {"type": "list", "req": 2},
                  {"type": "cancel", "req": 3, "id": "s2", "grace_ms": 200})
    assert list_entry(c, 2, "s2")["pid"] == 0
    ok = c.recv_req(3, timeout=T(10))
    assert ok["type"] == "ok" and ok["ended"] is False, ok
    res = c.collect(1, timeout=T(10))
    # It was started, then cancelled at once: TERM, so the sleep never runs its 100 s.
    assert res.started is not None, res
    assert res.end["status"] == "cancelled" and res.end["reason"] == "cancel", res.end
    assert res.end["duration_ms"] < T(5) * 1000, res.end
    assert wait_for(lambda: not procs_with_env("BOXD_MARK", m), T(2))


def test_signal_while_starting_is_delivered_once_started(client):
    c = client
    send_together(c, {"type": "exec", "req": 1, "id": "s3", "cmd": "sleep 100"},
                  {"type": "list", "req": 2},
                  {"type": "signal", "req": 3, "id": "s3", "signal": "TERM"})
    assert list_entry(c, 2, "s3")["pid"] == 0
    ok = c.recv_req(3, timeout=T(10))
    assert ok["type"] == "ok", ok
    res = c.collect(1, timeout=T(10))
    assert res.end["status"] == "failed" and res.end["signal"] == signal.SIGTERM, res.end


def test_stdin_while_starting(client):
    c = client
    send_together(c, {"type": "exec", "req": 1, "id": "s4", "cmd": "cat", "stdin": True,
                      "output": True},
                  {"type": "list", "req": 2},
                  {"type": "stdin", "req": 3, "id": "s4", "data": b"before it ran\n",
                   "eof": True})
    assert list_entry(c, 2, "s4")["pid"] == 0
    assert c.recv_req(3, timeout=T(10))["type"] == "ok"
    res = c.collect(1, timeout=T(10))
    assert res.end["status"] == "completed", res.end
    assert res.end["result"] == "before it ran", res.end


def test_spawn_failure_while_starting_is_the_reply(client):
    """A spawn that fails on the spawner thread answers the exec with spawn_failed, and a
    follower attached meanwhile gets the end (reason spawn)."""
    c = client
    send_together(c, {"type": "exec", "req": 1, "id": "s5", "argv": ["/nonexistent/prog"]},
                  {"type": "wait", "req": 2, "id": "s5"})
    r = c.recv_req(1, timeout=T(10))
    assert r["type"] == "error" and r["code"] == "spawn_failed", r
    assert r["stage"] == "exec" and r["errno_name"] == "ENOENT", r
    end = c.recv_req(2, timeout=T(10))
    assert end["type"] == "end" and end["reason"] == "spawn", end
    assert end["exit_code"] == 127, end


def test_requester_gone_before_the_run_started(boxd):
    """The connection that asked closes before the spawn is done: the run goes on, its end is
    there for anyone, and nothing leaks."""
    c0 = boxd.client()
    base = boxd.counts()
    for i in range(20):
        c = boxd.client()
        send_together(c, {"type": "exec", "req": 1, "id": "g%d" % i, "cmd": "exit 3"})
        c.close()
    c0.ping()
    for i in range(20):
        end = c0.wait("g%d" % i, timeout=T(10))
        assert end["type"] == "end" and end["exit_code"] == 3, end
    assert wait_for(lambda: boxd.counts()[0] == base[0], T(5)), (boxd.counts(), base)
    assert boxd.counts()[3] == 0  # no zombies


def test_many_runs_pipelined_all_get_their_status(boxd):
    """200 execs in one send: the spawner's queue, the reaper matching children it reaps
    before their spawn is done, and every status right."""
    c = boxd.client()
    n = 200
    msgs = [{"type": "exec", "req": i + 1, "id": "p%d" % i, "cmd": "exit %d" % (i % 7),
             "output": True} for i in range(n)]
    send_together(c, *msgs)
    for i in range(n):
        res = c.collect(i + 1, timeout=T(30))
        assert res.error is None, res
        assert res.end["exit_code"] == i % 7, (i, res.end)
        assert res.end["status"] == ("completed" if i % 7 == 0 else "failed"), res.end
    assert boxd.counts()[3] == 0


def test_shutdown_with_runs_queued_to_the_spawner(start_boxd):
    """SIGTERM right after 50 execs in one send: each gets its reply and its end, nothing of
    theirs is left, and boxd exits 0."""
    d = start_boxd()
    c = d.client()
    m = marker()
    n = 50
    send_together(c, *[{"type": "exec", "req": i + 1, "id": "q%d" % i, "cmd": "sleep 100",
                        "env": {"BOXD_MARK": m}} for i in range(n)])
    os.kill(d.pid, signal.SIGTERM)
    for i in range(n):
        res = c.collect(i + 1, timeout=T(20))
        if res.error is not None:
            assert res.error["code"] == "spawn_failed", res
        else:
            assert res.end["status"] in ("cancelled", "failed"), res.end
    assert d.terminate(timeout=T(10)) == 0
    assert wait_for(lambda: not procs_with_env("BOXD_MARK", m), T(2))
