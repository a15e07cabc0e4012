"""Framing, session start and error handling (PROTOCOL.md sections 1-3, 5, 6)."""

import re
import struct
import time

import pytest

from boxd_client import Client, ConnectionClosed, frame, pack
from conftest import T

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CAPABILITIES = ["exec", "stdin", "signal", "cancel", "attach", "wait", "logs", "list", "info",
                "ping", "argv", "run_id"]
LIMITS = ["max_frame", "max_event", "max_line", "max_runs", "max_finished", "max_conns",
          "log_bytes", "stdin_bytes", "max_subs"]


def assert_error(msg, code, req=None):
    assert msg["type"] == "error", msg
    assert msg["code"] == code, msg
    assert isinstance(msg.get("message"), str), msg
    if req is not None:
        assert msg.get("req") == req, msg


def assert_serving(boxd, c=None):
    """The daemon answers ping on a fresh connection (and on c, if given)."""
    assert boxd.alive(), boxd.stderr_text()
    with Client(boxd.sock) as fresh:
        assert fresh.hello()["type"] == "hello"
        assert fresh.ping()["type"] == "pong"
    if c is not None:
        assert c.ping()["type"] == "pong"


# ---- hello ---------------------------------------------------------------------------------------

def test_hello(boxd):
    c = boxd.client(hello=False)
    r = c.request("hello", req=7, version=1, client="tests/1")
    assert r["type"] == "hello"
    assert r["req"] == 7
    assert r["version"] == 1
    assert isinstance(r["agent"], str) and r["agent"].startswith("boxd"), r
    assert UUID_RE.match(r["boot_id"]), r["boot_id"]
    assert r["pid"] == boxd.pid
    assert set(CAPABILITIES) <= set(r["capabilities"]), r["capabilities"]
    limits = r["limits"]
    for k in LIMITS:
        assert isinstance(limits.get(k), int) and limits[k] > 0, (k, limits)
    assert limits["max_line"] <= limits["max_event"]
    # Defaults from the spec.
    assert limits["max_frame"] == 1 << 20
    assert limits["max_line"] == 64 << 10


def test_hello_again_same_answer(client):
    first = client.hello_reply
    again = client.hello()
    for k in ("version", "agent", "boot_id", "pid", "capabilities", "limits"):
        assert again[k] == first[k], k


def test_boot_id_differs_per_start(start_boxd):
    a = start_boxd().client().hello_reply["boot_id"]
    b = start_boxd().client().hello_reply["boot_id"]
    assert a != b


@pytest.mark.parametrize("version", [0, 2, 99])
def test_bad_version(boxd, version):
    c = boxd.client(hello=False)
    r = c.request("hello", req="v", version=version)
    assert_error(r, "bad_version", req="v")
    assert r["versions"] == [1]
    # Before hello the first error is the last (PROTOCOL.md 3): reconnect with a listed one.
    assert c.wait_closed(5)
    c = boxd.client(hello=False)
    assert c.hello()["type"] == "hello"
    assert c.ping()["type"] == "pong"


def test_need_hello(boxd):
    # Each on its own connection: before hello, the first error closes it.
    for req, typ, fields in ((1, "ping", {}), (2, "exec", {"cmd": "touch /tmp/should-not-run"}),
                             (3, "list", {})):
        c = boxd.client(hello=False)
        assert_error(c.request(typ, req=req, **fields), "need_hello", req=req)
        assert c.wait_closed(5)
    c = boxd.client(hello=False)
    assert c.hello()["type"] == "hello"
    assert c.ping()["type"] == "pong"


# ---- ping, info, unknown types, req ----------------------------------------------------------------

def test_ping(client):
    before = time.time_ns()
    r = client.request("ping", req=42)
    after = time.time_ns()
    assert r == {"type": "pong", "req": 42, "ts_ns": r["ts_ns"]}
    assert before - 10**9 <= r["ts_ns"] <= after + 10**9


def test_info(boxd, client):
    r = client.info()
    assert r["type"] == "info"
    assert r["version"] == 1
    assert r["boot_id"] == client.hello_reply["boot_id"]
    assert r["agent"] == client.hello_reply["agent"]
    assert r["pid"] == boxd.pid
    assert r["pid1"] is False  # the tests never run it as PID 1
    assert isinstance(r["subreaper"], bool)
    for k in ("uptime_ms", "runs_live", "runs_starting", "runs_finished", "conns", "reaped",
              "started_total"):
        assert isinstance(r[k], int) and r[k] >= 0, (k, r)
    assert isinstance(r["spawner"], bool)
    assert r["conns"] >= 1
    assert r["runs_live"] == 0 and r["started_total"] == 0 and r["runs_starting"] == 0
    assert r["limits"] == client.hello_reply["limits"]
    time.sleep(0.2)
    assert client.info()["uptime_ms"] >= r["uptime_ms"] + 150


def test_unknown_type(client):
    assert_error(client.request("frobnicate", req=5), "unknown_type", req=5)
    assert client.ping()["type"] == "pong"


def test_missing_or_bad_type(client):
    client.send({"req": 1})
    assert_error(client.recv(), "bad_request")
    client.send({"type": 17, "req": 2})
    assert_error(client.recv(), "bad_request")
    assert client.ping()["type"] == "pong"


@pytest.mark.parametrize("req", [0, 1, 2**31, 2**63 - 1, -5, "", "abc", "x" * 64, "ünï"])
def test_req_echoed(client, req):
    r = client.request("ping", req=req)
    assert r["type"] == "pong"
    assert r["req"] == req and type(r["req"]) is type(req)


def test_req_too_long(client):
    # The req is invalid, so the error need not (cannot usefully) echo it.
    client.send({"type": "ping", "req": "x" * 65})
    r = client.recv()
    assert r["type"] == "error" and r["code"] in ("bad_request", "too_large"), r
    assert client.ping()["type"] == "pong"


def test_unknown_keys_ignored(client):
    r = client.request("ping", req=3, future_field={"a": [1, 2]}, another=b"\x00")
    assert r["type"] == "pong"


def test_integer_encodings_accepted(client):
    # req 5 as uint64 (0xcf) and as int8 (0xd0): same value either way.
    body_u = b"\x82\xa4type\xa4ping\xa3req\xcf" + struct.pack(">Q", 5)
    body_i = b"\x82\xa4type\xa4ping\xa3req\xd0\x05"
    for body in (body_u, body_i):
        client.raw_send(frame(body))
        r = client.recv()
        assert r["type"] == "pong" and r["req"] == 5, r


# ---- framing ------------------------------------------------------------------------------------------

def test_byte_at_a_time(boxd):
    c = boxd.client(hello=False)
    data = frame(pack({"type": "hello", "req": 1, "version": 1})) + \
        frame(pack({"type": "ping", "req": 2}))
    for b in data:
        c.raw_send(bytes([b]))
        time.sleep(0.001)
    assert c.recv()["type"] == "hello"
    r = c.recv()
    assert r["type"] == "pong" and r["req"] == 2


def test_many_frames_in_one_write(client):
    data = b"".join(frame(pack({"type": "ping", "req": i})) for i in range(200))
    client.raw_send(data)
    got = [client.recv()["req"] for _ in range(200)]
    assert got == list(range(200))


def test_truncated_frame_then_close(boxd):
    c = boxd.client()
    c.raw_send(struct.pack(">I", 100) + b"\x82\xa4type")
    c.close()
    c2 = boxd.client()
    c2.raw_send(struct.pack(">I", 100))  # header only
    c2.close()
    assert_serving(boxd)


def test_close_before_hello_and_idle(boxd):
    for _ in range(20):
        Client(boxd.sock).close()
    assert_serving(boxd)


@pytest.mark.parametrize("length", ["max_frame+1", 0x7FFFFFFF, 0xFFFFFFFF])
def test_oversized_frame(boxd, length):
    other = boxd.client()
    c = boxd.client()
    before = boxd.counts()[1]
    if length == "max_frame+1":
        length = c.hello_reply["limits"]["max_frame"] + 1
    c.raw_send(struct.pack(">I", length))
    r = c.recv(timeout=T(5))
    assert_error(r, "too_large")
    assert c.wait_closed(T(5)), "connection not closed after too_large"
    assert boxd.counts()[1] - before < 4096, "RSS grew by more than 4 MiB"
    assert other.ping()["type"] == "pong"
    assert_serving(boxd)


def test_max_frame_exactly_is_accepted(client):
    max_frame = client.hello_reply["limits"]["max_frame"]
    # Build {"type":"ping","req":9,"pad": <str32 of n bytes>} with total body = max_frame.
    prefix = b"\x83\xa4type\xa4ping\xa3req\x09\xa3pad\xdb"
    n = max_frame - len(prefix) - 4
    body = prefix + struct.pack(">I", n) + b"a" * n
    assert len(body) == max_frame
    client.raw_send(frame(body))
    r = client.recv(timeout=T(10))
    assert r["type"] == "pong" and r["req"] == 9, r


MALFORMED = {
    "zero_length": b"",
    "reserved_byte": b"\xc1",
    "truncated_map": b"\x82\xa4type\xa4ping",
    "truncated_str": b"\x81\xa4type\xa8pi",
    "array": pack([1, 2, 3]),
    "str": pack("ping"),
    "int": pack(7),
    "nil": b"\xc0",
    "int_key": pack({"type": "ping", 1: "x"}),
    "bin_key": b"\x82\xa4type\xa4ping\xc4\x01k\x01",
    "nil_key": b"\x82\xa4type\xa4ping\xc0\x01",
    "map_key": b"\x82\xa4type\xa4ping\x81\xa1a\x01\x01",
    "trailing_byte": pack({"type": "ping"}) + b"\xc0",
    "two_maps": pack({"type": "ping"}) + pack({"type": "ping"}),
    "array32_4g": b"\x82\xa4type\xa4ping\xa1x\xdd\xff\xff\xff\xff",
    "top_array32_4g": b"\xdd\xff\xff\xff\xff",
    "map32_4g": b"\xdf\xff\xff\xff\xff",
    "nested_map32_4g": b"\x82\xa4type\xa4ping\xa1x\xdf\xff\xff\xff\xff",
    "str32_4g": b"\x82\xa4type\xa4ping\xa1x\xdb\xff\xff\xff\xff",
    "bin32_4g": b"\x82\xa4type\xa4ping\xa1x\xc6\xff\xff\xff\xff",
    "ext32_4g": b"\x82\xa4type\xa4ping\xa1x\xc9\xff\xff\xff\xff\x01",
    "array16_short": b"\x82\xa4type\xa4ping\xa1x\xdc\xff\xff\x01\x02",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_body(boxd, name):
    c = boxd.client()
    rss_before = boxd.counts()[1]
    c.raw_send(frame(MALFORMED[name]))
    r = c.recv(timeout=T(5))
    assert_error(r, "bad_request")
    # The framing is intact: the same connection keeps working.
    assert c.ping()["type"] == "pong"
    assert boxd.counts()[1] - rss_before < 4096, "RSS grew by more than 4 MiB"
    assert_serving(boxd)


def test_malformed_does_not_need_hello_state(boxd):
    # Before hello, a malformed frame is still a bad_request (not need_hello), and hello works.
    c = boxd.client(hello=False)
    c.raw_send(frame(b"\xc1"))
    assert_error(c.recv(), "bad_request")
    assert c.wait_closed(5)  # the first error before hello is the last
    assert boxd.client(hello=False).hello()["type"] == "hello"


def nested(levels):
    """A ping map whose total nesting depth (the top map counted as 1) is `levels`."""
    inner = b"\x90"  # an empty array is one level
    for _ in range(levels - 3):
        inner = b"\x91" + inner
    return b"\x82\xa4type\xa4ping\xa1x\x91" + inner if levels >= 3 else None


def test_nesting_32_accepted(client):
    body = nested(32)
    client.raw_send(frame(body))
    r = client.recv()
    assert r["type"] == "pong", r


@pytest.mark.parametrize("levels", [33, 1000, 200000])
def test_nesting_too_deep(boxd, levels):
    c = boxd.client()
    c.raw_send(frame(nested(levels)))
    assert_error(c.recv(timeout=T(5)), "bad_request")
    assert c.ping()["type"] == "pong"
    assert_serving(boxd)


def test_many_malformed_in_a_row(boxd):
    c = boxd.client()
    nfd, rss, thr, _ = boxd.counts()
    for i in range(300):
        c.raw_send(frame(MALFORMED[sorted(MALFORMED)[i % len(MALFORMED)]]))
    for _ in range(300):
        assert_error(c.recv(timeout=T(5)), "bad_request")
    assert c.ping()["type"] == "pong"
    nfd2, rss2, thr2, _ = boxd.counts()
    assert nfd2 == nfd and thr2 == thr
    assert rss2 - rss < 4096


# ---- field types ------------------------------------------------------------------------------------

BAD_EXEC = {
    "cmd_int": {"cmd": 5},
    "cmd_and_argv": {"cmd": "true", "argv": ["true"]},
    "neither": {},
    "argv_not_array": {"argv": "true"},
    "argv_int_elem": {"argv": ["echo", 5]},
    "env_not_map": {"cmd": "true", "env": ["A=1"]},
    "env_value_int": {"cmd": "true", "env": {"A": 1}},
    "env_key_empty": {"cmd": "true", "env": {"": "x"}},
    "env_key_eq": {"cmd": "true", "env": {"A=B": "x"}},
    "env_key_nul": {"cmd": "true", "env": {"A\0B": "x"}},
    "env_value_nul": {"cmd": "true", "env": {"A": "x\0y"}},
    "cmd_nul": {"cmd": "echo a\0b"},
    "argv_nul": {"argv": ["echo", "a\0b"]},
    "cwd_int": {"cmd": "true", "cwd": 3},
    "cwd_nul": {"cmd": "true", "cwd": "/tmp\0x"},
    "timeout_negative": {"cmd": "true", "timeout_ms": -1},
    "timeout_str": {"cmd": "true", "timeout_ms": "100"},
    "grace_negative": {"cmd": "true", "grace_ms": -5},
    "stdin_str": {"cmd": "true", "stdin": "yes"},
    "follow_int": {"cmd": "true", "follow": 1},
    "id_empty": {"cmd": "true", "id": ""},
    "id_space": {"cmd": "true", "id": "a b"},
    "id_slash": {"cmd": "true", "id": "a/b"},
    "id_65": {"cmd": "true", "id": "a" * 65},
    "id_int": {"cmd": "true", "id": 5},
}


@pytest.mark.parametrize("name", sorted(BAD_EXEC))
def test_exec_bad_fields(client, name):
    r = client.request("exec", req="bad-" + name, **BAD_EXEC[name])
    assert_error(r, "bad_request", req="bad-" + name)
    assert client.ping()["type"] == "pong"
    # Nothing was started.
    assert client.list()["runs"] == []


def test_exec_id_64_ok(client):
    rid = "A-z.0:9_" * 8
    assert len(rid) == 64
    res = client.exec_run(cmd="true", id=rid)
    assert res.error is None, res.error
    assert res.started["id"] == rid and res.end["id"] == rid


@pytest.mark.parametrize("typ", ["stdin", "signal", "cancel", "attach", "detach", "wait", "logs"])
def test_run_requests_missing_id(client, typ):
    extra = {"signal": {"signal": "TERM"}}.get(typ, {})
    assert_error(client.request(typ, req=typ, **extra), "bad_request", req=typ)


@pytest.mark.parametrize("typ", ["stdin", "signal", "cancel", "attach", "detach", "wait", "logs"])
def test_run_requests_unknown_id(client, typ):
    extra = {"signal": {"signal": "TERM"}}.get(typ, {})
    assert_error(client.request(typ, req=typ, id="nope", **extra), "not_found", req=typ)


def test_connection_closed_by_peer_midway_through_reply(boxd):
    # A client that sends a request and disconnects at once must not hurt the daemon.
    for _ in range(20):
        c = Client(boxd.sock)
        c.raw_send(frame(pack({"type": "hello", "version": 1})) +
                   frame(pack({"type": "info"})) + frame(pack({"type": "list"})))
        c.close()
    assert_serving(boxd)


def test_error_is_not_fatal_sequence(client):
    # Errors of several kinds in a row on one connection; each answered, none closes it.
    assert_error(client.request("nope"), "unknown_type")
    assert_error(client.request("wait", id="missing"), "not_found")
    assert_error(client.request("exec"), "bad_request")
    client.raw_send(frame(b"\xc1"))
    assert_error(client.recv(), "bad_request")
    assert client.ping()["type"] == "pong"
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.2)  # and nothing else arrives


def test_recv_after_close_raises(boxd):
    c = boxd.client()
    c.raw_send(struct.pack(">I", 0xFFFFFFFF))
    assert_error(c.recv(), "too_large")
    with pytest.raises(ConnectionClosed):
        for _ in range(10):
            c.recv(timeout=T(5))
