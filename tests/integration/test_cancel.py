"""cancel, signal and timeout_ms (PROTOCOL.md 4.1, 4.3, 4.7)."""

import time

import pytest

from conftest import T, marker, procs_in_pgrp, procs_with_env, wait_for


def start_and_wait_ready(client, cmd, id_, **opts):
    """Starts a run that prints `ready` once set up; returns (req, started, records so far)."""
    req = client.exec_start(cmd=cmd, id=id_, **opts)
    started = client.recv_req(req)
    assert started["type"] == "started", started
    deadline = time.monotonic() + T(5)
    while True:
        m = client.recv_req(req, timeout=max(0.01, deadline - time.monotonic()))
        assert m["type"] == "output", m
        if any(rec[3] in ("ready\n", b"ready\n") for rec in m["lines"]):
            return req, started


def cancel_and_collect(client, id_, req, **opts):
    t0 = time.monotonic()
    r = client.cancel(id_, **opts)
    assert r["type"] == "ok" and r["id"] == id_ and r["ended"] is False, r
    res = client.collect(req, timeout=T(10))
    return res, time.monotonic() - t0


def test_cancel_sleep(client):
    req = client.exec_start(cmd="sleep 10", id="c1")
    assert client.recv_req(req)["type"] == "started"
    time.sleep(0.1)
    res, dt = cancel_and_collect(client, "c1", req)
    end = res.end
    assert end["status"] == "cancelled"
    assert end["reason"] == "cancel"
    assert end["signal"] == 15
    assert end["exit_code"] == 128 + 15
    assert dt < T(1.0), "cancel took %.2f s" % dt


def test_cancel_term_ignored_gets_kill_after_grace(client):
    req, _ = start_and_wait_ready(
        client, "trap '' TERM; echo ready; while :; do sleep 0.1; done", "c2")
    res, dt = cancel_and_collect(client, "c2", req, grace_ms=300)
    end = res.end
    assert end["status"] == "cancelled" and end["reason"] == "cancel"
    assert end["signal"] == 9 and end["exit_code"] == 137
    assert 0.25 <= dt <= T(1.5), "killed after %.2f s with grace 300 ms" % dt


def test_cancel_default_grace(boxd, client):
    # Without grace_ms the agent's default (2000 ms unless --grace says otherwise) applies.
    req, _ = start_and_wait_ready(client, "trap '' TERM; echo ready; while :; do sleep 0.1; done",
                                  "c2d")
    res, dt = cancel_and_collect(client, "c2d", req)
    assert res.end["signal"] == 9
    assert 1.5 <= dt <= T(4), dt


def test_second_cancel_does_not_restart_or_shorten_grace(client):
    req, _ = start_and_wait_ready(client, "trap '' TERM; echo ready; while :; do sleep 0.1; done",
                                  "c3")
    t0 = time.monotonic()
    assert client.cancel("c3", grace_ms=800)["ended"] is False
    time.sleep(0.3)
    r = client.cancel("c3", grace_ms=5000)
    assert r["type"] == "ok", r
    r = client.cancel("c3", grace_ms=0)
    assert r["type"] == "ok", r
    res = client.collect(req, timeout=T(10))
    dt = time.monotonic() - t0
    assert res.end["signal"] == 9 and res.end["status"] == "cancelled"
    assert 0.7 <= dt <= T(2.0), "second cancel changed the grace period (%.2f s)" % dt


def test_cancel_stopped_process(client):
    req, _ = start_and_wait_ready(client, "echo ready; kill -STOP $$; echo never", "c4")
    time.sleep(0.2)
    res, dt = cancel_and_collect(client, "c4", req, grace_ms=3000)
    assert res.end["status"] == "cancelled"
    assert b"never" not in res.stdout
    assert dt < T(1.5)


def test_cancel_stopped_process_gets_cont(client):
    # The TERM is caught; its handler can only run if the agent also sends CONT.
    req, _ = start_and_wait_ready(
        client, "trap 'echo got-term; exit 7' TERM; echo ready; kill -STOP $$; sleep 100", "c5")
    time.sleep(0.2)
    res, dt = cancel_and_collect(client, "c5", req, grace_ms=3000)
    assert b"got-term\n" in res.stdout, "no SIGCONT: the handler never ran"
    assert res.end["status"] == "cancelled"
    assert res.end["exit_code"] == 7 and res.end["signal"] is None
    assert dt < T(1.5)


def test_timeout(client):
    t0 = time.monotonic()
    res = client.exec_run("sleep 10", timeout_ms=300, timeout=T(10))
    dt = time.monotonic() - t0
    end = res.end
    assert end["status"] == "failed"
    assert end["reason"] == "timeout"
    assert end["signal"] == 15 and end["exit_code"] == 143
    assert 0.25 <= dt <= T(1.2), dt
    assert 250 <= end["duration_ms"] <= T(1200)


def test_timeout_term_ignored(client):
    t0 = time.monotonic()
    res = client.exec_run("trap '' TERM; while :; do sleep 0.05; done", timeout_ms=300,
                          grace_ms=300, timeout=T(10))
    dt = time.monotonic() - t0
    assert res.end["status"] == "failed" and res.end["reason"] == "timeout"
    assert res.end["signal"] == 9
    assert 0.55 <= dt <= T(1.8), dt


def test_timeout_not_hit(client):
    end = client.exec_run("sleep 0.2; echo fine", timeout_ms=3000).end
    assert end["status"] == "completed" and end["result"] == "fine"


def test_timeout_zero_means_none(client):
    end = client.exec_run("sleep 0.3; echo fine", timeout_ms=0).end
    assert end["status"] == "completed"


def test_cancel_ended_run(client):
    res = client.exec_run("echo x", id="done1")
    assert res.end["status"] == "completed"
    r = client.cancel("done1")
    assert r["type"] == "ok" and r["ended"] is True, r
    # The run is unchanged and no second end arrives.
    assert client.wait("done1")["status"] == "completed"
    assert [m for m in client.drain(0.2) if m.get("type") == "end"] == []


def test_cancel_after_cancel_ended(client):
    req = client.exec_start(cmd="sleep 10", id="cc")
    client.recv_req(req)
    cancel_and_collect(client, "cc", req, grace_ms=100)
    r = client.cancel("cc")
    assert r["type"] == "ok" and r["ended"] is True
    assert client.wait("cc")["status"] == "cancelled"


@pytest.mark.parametrize("sig", ["USR1", "SIGUSR1", 10])
def test_signal_forms(client, sig):
    req, _ = start_and_wait_ready(
        client, "trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.05; done", "s1")
    r = client.signal("s1", sig)
    assert r["type"] == "ok" and r["id"] == "s1", r
    # The group gets the signal: the shell's `sleep` child may die of it first (the shell then
    # reports it on stderr); the trap's line must follow.
    deadline = time.monotonic() + T(3)
    seen = []
    while not any(l[3] == "got-usr1\n" for l in seen):
        m = client.recv_req(req, timeout=max(0.01, deadline - time.monotonic()))
        assert m["type"] == "output", m
        seen += m["lines"]
    res, _ = cancel_and_collect(client, "s1", req, grace_ms=200)
    assert res.end["status"] == "cancelled"


def test_signal_term_kills(client):
    req = client.exec_start(cmd="sleep 10", id="s2")
    client.recv_req(req)
    assert client.signal("s2", "TERM")["type"] == "ok"
    res = client.collect(req, timeout=T(5))
    assert res.end["signal"] == 15 and res.end["exit_code"] == 143
    assert res.end["status"] == "failed"


@pytest.mark.parametrize("sig", ["FOO", "SIGFOO", 999, -1, "", 3.5])
def test_signal_bad(client, sig):
    req = client.exec_start(cmd="sleep 10", id="s3")
    client.recv_req(req)
    r = client.signal("s3", sig)
    assert r["type"] == "error" and r["code"] == "bad_request", r
    res, _ = cancel_and_collect(client, "s3", req, grace_ms=100)
    assert res.end["signal"] == 15  # the bad request did not signal anything


def test_signal_ended_run(client):
    client.exec_run("true", id="s4")
    r = client.signal("s4", "TERM")
    assert r["type"] == "error" and r["code"] == "run_ended", r


def test_unknown_id(client):
    for r in (client.cancel("nope"), client.signal("nope", "TERM")):
        assert r["type"] == "error" and r["code"] == "not_found", r


def test_cancel_kills_the_whole_group(client):
    m = marker()
    req, started = start_and_wait_ready(
        client, "sleep 100 & sleep 100 & (sleep 100; :) & echo ready; wait", "g1",
        env={"BOXD_MARK": m})
    pgid = started["pid"]
    assert wait_for(lambda: len(procs_with_env("BOXD_MARK", m)) >= 5, T(2))
    res, _ = cancel_and_collect(client, "g1", req, grace_ms=500)
    assert res.end["status"] == "cancelled"
    assert wait_for(lambda: not procs_in_pgrp(pgid), T(2)), procs_in_pgrp(pgid)
    assert wait_for(lambda: not procs_with_env("BOXD_MARK", m), T(2))


def test_cancel_kills_children_of_term_ignoring_group(client):
    m = marker()
    req, started = start_and_wait_ready(
        client, "trap '' TERM; sleep 100 & sleep 100 & echo ready; wait; wait", "g2",
        env={"BOXD_MARK": m})
    res, dt = cancel_and_collect(client, "g2", req, grace_ms=300)
    assert res.end["signal"] == 9
    assert wait_for(lambda: not procs_in_pgrp(started["pid"]), T(2))


def test_timeout_kills_the_whole_group(client):
    m = marker()
    res = client.exec_run("sleep 100 & sleep 100 & wait", timeout_ms=200, env={"BOXD_MARK": m},
                          timeout=T(10))
    assert res.end["reason"] == "timeout"
    assert wait_for(lambda: not procs_with_env("BOXD_MARK", m), T(2))


def test_cancel_reaches_escaped_processes(client):
    """PRIOR_ART: cancel that kills only the group leaves `setsid` children behind (dumb-init#191,
    E2B#1034). PROTOCOL.md 4.7 names the process group; this agent also kills processes that left
    it, and this test keeps it that way."""
    m = marker()
    req, _ = start_and_wait_ready(
        client, "setsid sleep 1001 & (sleep 1002 &); echo ready; sleep 1003", "esc",
        env={"BOXD_MARK": m})
    assert wait_for(lambda: len(procs_with_env("BOXD_MARK", m)) >= 4, T(2))
    res, _ = cancel_and_collect(client, "esc", req, grace_ms=500)
    assert res.end["status"] == "cancelled"
    left = wait_for(lambda: not procs_with_env("BOXD_MARK", m), T(3))
    assert left, "left behind: %r" % procs_with_env("BOXD_MARK", m)


def test_cancel_fork_loop(client):
    m = marker()
    req, started = start_and_wait_ready(
        client, "echo ready; while :; do sleep 1000 & done", "forky", env={"BOXD_MARK": m})
    time.sleep(0.05)
    res, dt = cancel_and_collect(client, "forky", req, grace_ms=500)
    assert res.end["status"] == "cancelled"
    assert dt < T(2)
    assert wait_for(lambda: not procs_with_env("BOXD_MARK", m), T(3)), \
        "%d processes left" % len(procs_with_env("BOXD_MARK", m))
