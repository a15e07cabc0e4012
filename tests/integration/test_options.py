"""Daemon options from `boxd --help` change what the protocol promises (limits in hello, and the
behaviour behind them). Each test skips, with the reason, when the option is not offered."""

import struct
import time

import msgpack
import pytest

from conftest import T, boxd_option, marker, procs_with_env


def opt(name):
    o = boxd_option(name)
    if o is None:
        pytest.skip("boxd --help shows no %s option" % name)
    return o


def test_max_line(start_boxd):
    d = start_boxd(opt("--max-line"), "100")
    c = d.client()
    assert c.hello_reply["limits"]["max_line"] == 100
    res = c.exec_run("printf '%0250d\\n' 0")
    assert res.stdout == b"0" * 250 + b"\n"
    assert [len(r[3]) for r in res.records] == [100, 100, 51]


def test_max_frame(start_boxd):
    d = start_boxd(opt("--max-frame"), "65536")
    c = d.client()
    assert c.hello_reply["limits"]["max_frame"] == 65536
    ok = msgpack.packb({"type": "ping", "req": 1, "pad": "x" * 65000})
    assert len(ok) <= 65536
    c.raw_send(struct.pack(">I", len(ok)) + ok)
    assert c.recv()["type"] == "pong"
    c.raw_send(struct.pack(">I", 65537))
    r = c.recv()
    assert r["type"] == "error" and r["code"] == "too_large", r
    assert c.wait_closed(T(5))


def test_max_event(start_boxd):
    # The agent requires max_line <= max_event / 4.
    d = start_boxd(opt("--max-event"), "65536", opt("--max-line"), "16384")
    c = d.client()
    limits = c.hello_reply["limits"]
    assert limits["max_event"] == 65536 and limits["max_line"] == 16384
    res = c.exec_run("seq 1 20000", output=False, timeout=T(30))
    assert res.stdout == b"".join(b"%d\n" % i for i in range(1, 20001))
    for _, m in res.events:
        assert len(msgpack.packb(m, use_bin_type=True)) <= 65536
    res = c.exec_run("head -c 300000 /dev/zero | tr '\\0' z", output=False)
    assert res.stdout == b"z" * 300000
    assert all(len(r[3]) <= limits["max_line"] for r in res.records)


def test_flush_ms(start_boxd):
    d = start_boxd(opt("--flush-ms"), "400")
    c = d.client()
    res = c.exec_run("printf 'prompt> '; sleep 1; echo done", timeout=T(10))
    assert [r[3] for r in res.records] == [b"prompt> ", b"done\n"]
    # The piece was held for the flush delay (not sent after the default 20 ms).
    delay_ms = (res.records[0][1] - res.started["started_ns"]) / 1e6
    assert 300 <= delay_ms <= T(900), delay_ms


def test_drain_ms(start_boxd):
    d = start_boxd(opt("--drain-ms"), "600")
    c = d.client()
    m = marker()
    t0 = time.monotonic()
    res = c.exec_run("sleep 30 & echo started", env={"BOXD_MARK": m}, timeout=T(10))
    dt = time.monotonic() - t0
    assert res.end["result"] == "started"
    assert 0.5 <= dt <= T(2), dt
    assert procs_with_env("BOXD_MARK", m)


def test_grace_ms(start_boxd):
    d = start_boxd(opt("--grace-ms"), "400")
    c = d.client()
    req = c.exec_start(cmd="trap '' TERM; echo ready; while :; do sleep 0.05; done", id="g")
    assert c.recv_req(req)["type"] == "started"
    c.recv_req(req)
    t0 = time.monotonic()
    assert c.cancel("g")["type"] == "ok"
    res = c.collect(req, timeout=T(10))
    dt = time.monotonic() - t0
    assert res.end["signal"] == 9
    assert 0.35 <= dt <= T(1.5), dt


def test_max_subs(start_boxd):
    d = start_boxd(opt("--max-subs"), "2")
    c = d.client()
    assert c.hello_reply["limits"]["max_subs"] == 2
    for i in range(2):
        assert c.recv_req(c.exec_start(argv=["sleep", "10"], id="s%d" % i))["type"] == "started"
    # A third followed run on the same connection exceeds max_subs.
    r = c.request("attach", id="s0")  # re-attaching replaces: still 2
    assert r["type"] == "attached", r
    c.exec_start(argv=["sleep", "10"], id="s2", follow=False)
    r = c.request("attach", id="s2")
    assert r["type"] == "error" and r["code"] == "limit", r
    # Another connection has its own allowance.
    other = d.client()
    assert other.request("attach", id="s2")["type"] == "attached"
    for i in range(3):
        other.cancel("s%d" % i, grace_ms=100)


def test_stdin_bytes(start_boxd):
    d = start_boxd(opt("--stdin-bytes"), "100000")
    c = d.client()
    assert c.hello_reply["limits"]["stdin_bytes"] == 100000
    req = c.exec_start(cmd="sleep 10", id="in", stdin=True)
    assert c.recv_req(req)["type"] == "started"
    # 180000 bytes: more than the pipe (64 KiB) plus 100000 queued, whichever way it counts.
    c.send({"type": "stdin", "req": "a", "id": "in", "data": b"x" * 90000})
    c.send({"type": "stdin", "req": "b", "id": "in", "data": b"x" * 90000})
    r = c.recv_match(lambda m: m.get("type") == "error", timeout=T(3))
    assert r["code"] == "limit" and r["req"] == "b", r
    c.cancel("in", grace_ms=100)
