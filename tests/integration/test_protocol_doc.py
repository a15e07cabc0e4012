"""PROTOCOL.md against the agent: the schema tables (section 10), the error codes (section 6),
the orderings (section 9) and the example frames (section 11).

The tables are parsed out of the document, a real boxd is driven to produce every reply and event
type, and each message it sends is checked field by field: every field it carries is documented
with a matching type, and every field documented as `always` is there. Fields the document
promises but the agent never sent in any scenario are reported too, so the document cannot
describe phantom fields.
"""

import json
import os
import re
import socket
import struct
import time

import msgpack
import pytest

import boxd_client
from boxd_client import Client, frame, pack
from conftest import REPO, T

DOC = os.path.join(REPO, "protocol", "PROTOCOL.md")
AGENT_DIR = os.path.join(REPO, "agent")

# Documented optional fields that only some boxes produce (cgroup v2 present or not).
# and those that only a run's aftermath produces (4.4).
ENV_DEPENDENT = {"cgroup", "controllers", "controllers[]", "runs[].cgroup",
                 "runs[].background_killed", "runs[].slot_released",
                 # Only with --run-memory-max / --run-pids-max, which need cgroup controllers
                 # (boxd refuses them elsewhere): test_run_limits.py covers both outcomes.
                 "run_limits.memory_max", "run_limits.swap_max", "run_limits.pids_max"}


# ---- the document --------------------------------------------------------------------------------

def doc_text():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def split_row(line):
    """The cells of one markdown table row; `\\|` inside a cell is not a separator."""
    line = line.strip()
    assert line.startswith("|") and line.endswith("|"), line
    cells = re.split(r"(?<!\\)\|", line[1:-1])
    return [c.strip().replace("\\|", "|") for c in cells]


def unquote(cell):
    return cell.replace("`", "").strip()


HEADING = re.compile(r"^#### (request|reply|event) `([a-z_]+)`\s*$")
TYPES = {"str", "bin", "int", "uint", "bool", "nil", "map", "array", "any"}


def parse_schemas(text):
    """{(kind, name): {field: {"types": set, "presence": str, "cells": [...]}}}, kind being
    "request" or "agent" (replies and events)."""
    schemas = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = HEADING.match(lines[i])
        i += 1
        if not m:
            continue
        kind = "request" if m.group(1) == "request" else "agent"
        name = m.group(2)
        assert (kind, name) not in schemas, "two schemas for %s %s" % (kind, name)
        while i < len(lines) and not lines[i].startswith("|"):
            assert not lines[i].startswith("#"), "no table under %s %s" % (kind, name)
            i += 1
        header = split_row(lines[i])
        assert header[:3] == ["field", "type", "presence"] and len(header) == 5, header
        i += 2  # the header and the |---| line
        fields = {}
        while i < len(lines) and lines[i].startswith("|"):
            cells = split_row(lines[i])
            assert len(cells) == 5, (name, lines[i])
            field = unquote(cells[0])
            types = {t.strip() for t in cells[1].split(" or ")}
            assert types <= TYPES, (name, field, types)
            presence = cells[2]
            allowed = {"required", "optional"} if kind == "request" else {"always", "optional"}
            assert presence in allowed, (name, field, presence)
            assert field not in fields, (name, field)
            fields[field] = {"types": types, "presence": presence, "cells": cells}
            i += 1
        schemas[(kind, name)] = fields
    # info's limits are hello's.
    info = schemas.get(("agent", "info"))
    hello = schemas.get(("agent", "hello"))
    if info is not None and hello is not None:
        for f, v in hello.items():
            if f.startswith("limits."):
                info.setdefault(f, v)
    return schemas


def doc_error_codes(text):
    """The codes of section 6's table."""
    sec = text.split("\n## 6. Errors", 1)[1].split("\n## 7.", 1)[0]
    codes = []
    for line in sec.splitlines():
        if line.startswith("| `"):
            codes.append(unquote(split_row(line)[0]))
    return set(codes)


SCHEMA_H = os.path.join(REPO, "protocol", "schema", "schema.h")


def schema_error_names():
    """protocol/schema/schema.h's BOX_ERRORS: {"BAD_REQUEST": "bad_request", ...}."""
    with open(SCHEMA_H, encoding="utf-8") as f:
        src = f.read()
    block = src.split("#define BOX_ERRORS(X)", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r'X\((\w+), "([a-z_]+)"\)', block))


def agent_error_codes():
    """Every error code the agent's sources can send: string literals, and the schema's
    BOX_ERR_* constants they use."""
    codes = set()
    names = schema_error_names()
    assert names, "no error codes in protocol/schema/schema.h"
    pats = [
        re.compile(r'\berror\(\s*&?\w+,\s*"([a-z_]+)"'),
        re.compile(r'ev_error\(\s*&?\w+,\s*[^,]+,\s*"([a-z_]+)"'),
        re.compile(r'send_error_close\(\s*\w+,\s*"([a-z_]+)"'),
    ]
    kv = re.compile(r'msg_kv_str\([^,]+,\s*"code",([^;]*)\);')
    table = re.compile(r'\{E[A-Z0-9_]+,\s*"([a-z_]+)"\}')  # errno -> code tables
    sources = []
    for root, _dirs, files in os.walk(AGENT_DIR):
        sources += [os.path.join(root, n) for n in files if n.endswith(".c")]
    for path in sorted(sources):
        with open(path, encoding="utf-8") as f:
            src = f.read()
        codes.update(table.findall(src))
        for p in pats:
            codes.update(p.findall(src))
        for tail in kv.findall(src):
            codes.update(re.findall(r'"([a-z_]+)"', tail))
        for name in re.findall(r"\bBOX_ERR_([A-Z_]+)\b", src):
            if name != "_COUNT":
                codes.add(names[name])
    return codes


SCHEMAS = parse_schemas(doc_text())

# The file requests (PROTOCOL.md 10.4 and 12): test_files_doc.py drives them and checks their
# messages; the run-centred test below leaves them out.
FILE_REQUESTS = {"file_write", "file_data", "file_abort", "file_read", "file_stat", "file_list",
                 "file_mkdir", "file_remove", "file_rename", "file_chmod", "file_symlink",
                 "file_watch", "file_unwatch"}
FILE_REPLIES = {"file_ack", "file_written", "file_info", "file_chunk", "file_end", "file_stat",
                "file_list", "file_watching", "file_event"}
FILE_CODES = {"not_a_directory", "is_a_directory", "exists", "permission_denied", "no_space",
              "refused", "checksum_mismatch", "unsupported", "io_error"}


# ---- checking one message ----------------------------------------------------------------------

def type_ok(v, types):
    if "any" in types:
        return True
    for t in types:
        if t == "str" and isinstance(v, str):
            return True
        if t == "bin" and isinstance(v, (bytes, bytearray)):
            return True
        if t == "bool" and isinstance(v, bool):
            return True
        if t == "int" and isinstance(v, int) and not isinstance(v, bool):
            return True
        if t == "uint" and isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return True
        if t == "nil" and v is None:
            return True
        if t == "map" and isinstance(v, dict):
            return True
        if t == "array" and isinstance(v, list):
            return True
    return False


class Checker:
    """Checks messages against the schemas and remembers what it saw."""

    def __init__(self):
        self.problems = []
        self.seen_fields = {}  # (kind, name) -> set of paths seen
        self.seen_types = set()
        self.seen_codes = set()

    def _walk(self, kind, name, schema, prefix, value, seen):
        if isinstance(value, dict):
            for k, v in value.items():
                path = k if not prefix else prefix + "." + k
                key = path if path in schema else (prefix + ".*" if prefix else None)
                if key is None or key not in schema:
                    self.problems.append("%s %s: field %r is not documented (value %r)"
                                         % (kind, name, path, v))
                    continue
                self._field(kind, name, schema, key, v, seen)
            for f, d in schema.items():
                if d["presence"] not in ("always", "required"):
                    continue
                parent, _, leaf = f.rpartition(".")
                if parent != prefix or "[" in leaf or leaf == "*":
                    continue
                if leaf not in value:
                    self.problems.append("%s %s: documented field %r (%s) is missing: %r"
                                         % (kind, name, f, d["presence"], value))
        elif isinstance(value, list):
            positional = [f for f in schema if re.fullmatch(re.escape(prefix) + r"\[\d+\]", f)]
            if positional:
                if len(value) != len(positional):
                    self.problems.append("%s %s: %s has %d elements, documented %d"
                                         % (kind, name, prefix, len(value), len(positional)))
                for i, v in enumerate(value):
                    key = "%s[%d]" % (prefix, i)
                    if key in schema:
                        self._field(kind, name, schema, key, v, seen)
            else:
                key = prefix + "[]"
                for v in value:
                    if key not in schema:
                        self.problems.append("%s %s: elements of %s are not documented"
                                             % (kind, name, prefix))
                        break
                    self._field(kind, name, schema, key, v, seen)

    def _field(self, kind, name, schema, key, v, seen):
        seen.add(key)
        if not type_ok(v, schema[key]["types"]):
            self.problems.append("%s %s: field %r is %r, documented as %s"
                                 % (kind, name, key, v, " or ".join(sorted(schema[key]["types"]))))
        if isinstance(v, (dict, list)):
            self._walk(kind, name, schema, key, v, seen)

    def check(self, msg, kind="agent"):
        name = msg.get("type")
        schema = SCHEMAS.get((kind, name))
        if schema is None:
            self.problems.append("%s message type %r has no schema: %r" % (kind, name, msg))
            return
        seen = self.seen_fields.setdefault((kind, name), set())
        self._walk(kind, name, schema, "", msg, seen)
        if kind == "agent":
            self.seen_types.add(name)
            if name == "error":
                self.seen_codes.add(msg.get("code"))


class RecordingClient(Client):
    """A Client whose every received message is checked against the schema."""

    checker = None
    check_requests = True  # off while a test sends a request that is wrong on purpose

    def _try_parse(self):
        msg = super()._try_parse()
        if msg is not None and self.checker is not None:
            self.checker.check(msg)
        return msg

    def send(self, msg):
        if self.checker is not None and self.check_requests and \
                msg.get("type") in {n for k, n in SCHEMAS if k == "request"}:
            self.checker.check(msg, "request")
        super().send(msg)


def rclient(daemon, checker, hello=True, **fields):
    c = RecordingClient(daemon.sock)
    c.checker = checker
    daemon._clients.append(c)
    if hello:
        r = c.hello(client="doc-test/1", **fields)
        assert r["type"] == "hello", r
    return c


def bad(c, type_, **fields):
    """Sends a request that breaks its schema on purpose, and returns its reply."""
    c.check_requests = False
    try:
        return c.request(type_, **fields)
    finally:
        c.check_requests = True


def bad_send(c, msg):
    c.check_requests = False
    try:
        c.send(msg)
    finally:
        c.check_requests = True


def run_to_end(c, req, timeout=30.0):
    """Messages of one req until its end (or error), checking the orderings of section 9.2."""
    msgs = []
    deadline = time.monotonic() + T(timeout)
    while True:
        m = c.recv_req(req, max(0.1, deadline - time.monotonic()))
        msgs.append(m)
        if m["type"] in ("end", "error"):
            break
    kinds = [m["type"] for m in msgs]
    if kinds[0] in ("started", "attached"):
        assert all(k not in ("started", "attached") for k in kinds[1:]), kinds
    expect = None
    for m in msgs:
        if m["type"] == "gap":
            assert expect is None or m["from_seq"] >= expect, msgs
            expect = m["to_seq"]
        elif m["type"] == "output":
            assert m["lines"], m
            for rec in m["lines"]:
                if expect is not None:
                    assert rec[0] == expect, ("records out of order", rec[0], expect)
                expect = rec[0] + 1
        elif m["type"] == "end" and expect is not None:
            assert m["next_seq"] == expect, (m, expect)
    return msgs


# ---- the test ------------------------------------------------------------------------------------

def test_schema_tables_parse():
    requests = {n for k, n in SCHEMAS if k == "request"}
    agent = {n for k, n in SCHEMAS if k == "agent"}
    assert requests == {"hello", "ping", "info", "shutdown", "exec", "code", "stdin", "signal",
                        "cancel", "attach", "detach", "wait", "logs", "list", "resize"} | FILE_REQUESTS, \
        requests
    assert agent == {"hello", "pong", "info", "ok", "started", "error", "attached", "output",
                     "gap", "end", "logs", "list"} | FILE_REPLIES, agent
    for (kind, name), fields in SCHEMAS.items():
        assert "type" in fields and "req" in fields, (kind, name)


def test_error_codes_table_matches_agent():
    doc = doc_error_codes(doc_text())
    agent = agent_error_codes()
    assert agent, "no error codes found in the agent's sources"
    assert doc == agent, "documented only: %s; sent only: %s" % (sorted(doc - agent),
                                                                  sorted(agent - doc))


def test_spawn_stages_documented():
    """Every stage the agent can report is in 4.6's table."""
    text = doc_text()
    sec = text.split("### 4.6", 1)[1].split("### 4.7", 1)[0]
    doc = {unquote(split_row(l)[0]) for l in sec.splitlines() if l.startswith("| `")}
    srcs = ""
    for name in ("spawn.c", "run.c", "request.c", "request_run.c", "sandbox.c"):
        with open(os.path.join(AGENT_DIR, name), encoding="utf-8") as f:
            srcs += f.read()
    stages = set(re.findall(r'\bfail\(\s*[^,]+,\s*"([a-z_]+)"', srcs))
    stages |= set(re.findall(r'run_spawn(?:ed|_failed)\([^;]*?"([a-z_]+)"', srcs))
    stages |= set(re.findall(r'stage\s*=\s*"([a-z_]+)"', srcs))
    stages |= set(re.findall(r'pre_stage\s*=[^;]*"([a-z_]+)"', srcs))
    stages.discard("fuzz")  # the fuzzing build's stand-in for a spawn, never in boxd itself
    assert stages, "no stages found"
    assert stages <= doc, "stages sent but not in 4.6: %s" % sorted(stages - doc)


def example_blocks(text):
    sec = text.split("\n## 11. Example frames", 1)[1].split("\n## 12.", 1)[0]
    hexes = re.findall(r"```hex\n(.*?)```", sec, re.S)
    jsons = re.findall(r"```json\n(.*?)```", sec, re.S)
    tables = re.findall(r"((?:^\|.*\|\n)+)", sec, re.M)
    return sec, [bytes.fromhex(h.replace("\n", " ")) for h in hexes], jsons, tables


def split_frames(data):
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        out.append(data[4:4 + n])
        assert len(data) >= 4 + n, "truncated example frame"
        data = data[4 + n:]
    return out


def table_bytes(table):
    """The hex bytes of a breakdown table's first column, concatenated."""
    out = b""
    for line in table.splitlines()[2:]:
        cell = split_row(line)[0]
        for group in re.findall(r"`([0-9a-f ]+)`", cell):
            out += bytes.fromhex(group)
    return out


def test_example_frames_decode_as_documented(boxd):
    sec, hexes, jsons, tables = example_blocks(doc_text())
    assert len(hexes) == 2 and len(jsons) == 1 and len(tables) == 2, (len(hexes), len(tables))
    requests = hexes[0]
    bodies = split_frames(requests)
    expected = [json.loads(l) for l in jsons[0].strip().splitlines()]
    assert [msgpack.unpackb(b, raw=False) for b in bodies] == expected
    # The breakdown tables spell out exactly the bytes of the hex blocks.
    assert table_bytes(tables[0]) == requests
    assert table_bytes(tables[1]) == hexes[1]
    for line in tables[0].splitlines()[2:]:
        cell, meaning = split_row(line)[0], split_row(line)[1]
        m = re.match(r"frame length: (\d+) bytes", meaning)
        if m:
            assert int(m.group(1)) == struct.unpack(">I", bytes.fromhex(unquote(cell)))[0]

    # The documented pong: a map32, and the same bytes as the agent's, but for ts_ns.
    doc_pong = split_frames(hexes[1])[0]
    assert msgpack.unpackb(doc_pong, raw=False)["type"] == "pong"

    # The bytes, sent as they are, get the documented answers.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(T(5))
    s.connect(boxd.sock)
    try:
        s.sendall(requests)
        buf = b""
        got = []
        deadline = time.monotonic() + T(5)
        while len(got) < 2 and time.monotonic() < deadline:
            buf += s.recv(65536)
            while len(buf) >= 4:
                (n,) = struct.unpack(">I", buf[:4])
                if len(buf) < 4 + n:
                    break
                got.append(buf[4:4 + n])
                buf = buf[4 + n:]
    finally:
        s.close()
    assert len(got) == 2, got
    hello = msgpack.unpackb(got[0], raw=False)
    assert hello["type"] == "hello" and hello["req"] == 1, hello
    pong = got[1]
    assert msgpack.unpackb(pong, raw=False)["req"] == 2
    assert len(pong) == len(doc_pong)
    assert pong[:-8] == doc_pong[:-8], (pong.hex(" "), doc_pong.hex(" "))


def bounds(kind, name, field):
    return SCHEMAS[(kind, name)][field]["cells"][3]


def test_every_message_matches_its_schema(start_boxd, tmp_path):
    ck = Checker()
    d = start_boxd("--log-bytes", "65536", "--stdin-bytes", "16")
    c = rclient(d, ck)
    assert c.request("ping")["type"] == "pong"
    info = c.request("info")
    assert info["type"] == "info"
    have_python = any(l["name"] == "python" for l in info["languages"])

    # exec: started, output, end (failed, with output).
    req = c.exec_start(cmd="echo out; echo err >&2; exit 3", id="doc-1", output=True)
    msgs = run_to_end(c, req)
    assert msgs[0]["type"] == "started" and msgs[-1]["type"] == "end", msgs
    end = msgs[-1]
    assert end["status"] == "failed" and end["result"] == "err", end
    # argv runs, completed.
    msgs = run_to_end(c, c.exec_start(argv=["/bin/echo", "hi"], id="doc-argv", output=True))
    assert msgs[-1]["status"] == "completed"

    # A retry: started with existing true, then the whole run again.
    msgs = run_to_end(c, c.exec_start(cmd="exit 99", id="doc-1"))
    assert msgs[0]["type"] == "started" and msgs[0]["existing"] is True, msgs
    assert msgs[-1]["type"] == "end" and msgs[-1]["exit_code"] == 3

    # A spawn failure, and a retry of it (4.1): the same spawn_failed, existing, and no end.
    msgs = run_to_end(c, c.exec_start(argv=["/nonexistent/doc"], id="doc-sf"))
    assert len(msgs) == 1 and msgs[0]["code"] == "spawn_failed", msgs
    assert msgs[0]["id"] == "doc-sf" and msgs[0]["stage"] == "exec", msgs
    assert msgs[0]["existing"] is False, msgs
    msgs = run_to_end(c, c.exec_start(argv=["/nonexistent/doc"], id="doc-sf"))
    assert len(msgs) == 1 and msgs[0]["code"] == "spawn_failed", msgs
    assert msgs[0]["existing"] is True and msgs[0]["errno_name"] == "ENOENT", msgs
    # `wait` gives its end, with the spawn's errno and stage.
    wreq = c.next_req()
    c.send({"type": "wait", "req": wreq, "id": "doc-sf"})
    msgs = run_to_end(c, wreq)
    assert msgs[-1]["type"] == "end" and msgs[-1]["reason"] == "spawn", msgs
    assert msgs[-1]["stage"] == "exec" and msgs[-1]["errno_name"] == "ENOENT", msgs

    # stdin: ok with data, ok for eof, limit over stdin_bytes, run_ended afterwards.
    req = c.exec_start(cmd="cat", id="doc-cat", stdin=True, output=True)
    assert c.recv_req(req)["type"] == "started"
    assert c.stdin("doc-cat", data="abc\n")["type"] == "ok"
    lim = c.stdin("doc-cat", data="x" * 17)
    assert lim["type"] == "error" and lim["code"] == "limit" and lim["id"] == "doc-cat", lim
    assert c.stdin("doc-cat", eof=True)["type"] == "ok"
    msgs = run_to_end(c, req)
    assert msgs[-1]["stdout"] == "abc\n", msgs
    r = c.stdin("doc-cat", data="late")
    assert r["type"] == "error" and r["code"] == "run_ended", r

    # signal by name; then run_ended, and every documented name is a name.
    req = c.exec_start(cmd="sleep 30", id="doc-sig")
    assert c.recv_req(req)["type"] == "started"
    assert c.signal("doc-sig", "sigterm")["type"] == "ok"
    msgs = run_to_end(c, req)
    assert msgs[-1]["reason"] == "signal" and msgs[-1]["signal"] == 15, msgs
    names = re.search(r"one of the names `([A-Z0-9 ]+)`", bounds("request", "signal", "signal"))
    assert names, bounds("request", "signal", "signal")
    for n in names.group(1).split() + ["SIG" + n.lower() for n in names.group(1).split()] + [1, 64]:
        r = c.signal("doc-sig", n)
        assert r["type"] == "error" and r["code"] == "run_ended", (n, r)
    for n in ["NOPE", 0, 65, -1, "SIG", ""]:
        r = bad(c, "signal", id="doc-sig", signal=n)
        assert r["type"] == "error" and r["code"] == "bad_request", (n, r)

    # cancel: ok ended false before the end; then ok ended true.
    req = c.exec_start(cmd="sleep 30", id="doc-cancel")
    assert c.recv_req(req)["type"] == "started"
    creq = c.next_req()
    c.send({"type": "cancel", "req": creq, "id": "doc-cancel", "grace_ms": 100})
    both = []
    while len(both) < 2:
        both.append(c.recv_match(lambda m: m.get("req") in (req, creq)))
    assert both[0]["type"] == "ok" and both[0]["ended"] is False, both
    assert both[1]["type"] == "end" and both[1]["status"] == "cancelled", both
    again = c.cancel("doc-cancel")
    assert again["type"] == "ok" and again["ended"] is True, again

    # attach, detach, wait, logs, list.
    areq = c.next_req()
    c.send({"type": "attach", "req": areq, "id": "doc-1", "output": True})
    msgs = run_to_end(c, areq)
    assert msgs[0]["type"] == "attached" and msgs[0]["ended"] is True, msgs
    assert [m["type"] for m in msgs][-1] == "end"
    assert c.request("detach", id="doc-1")["type"] == "ok"
    w = c.wait("doc-1", output=True)
    assert w["type"] == "end" and w["stderr"] == "err\n", w
    lg = c.logs("doc-1")
    assert lg["type"] == "logs" and len(lg["lines"]) == 2, lg
    past = c.logs("doc-1", from_seq=1000)
    assert past["lines"] == [] and past["next_seq"] == 1000, past
    lst = c.list()
    assert lst["type"] == "list" and {"doc-1", "doc-argv"} <= {r["id"] for r in lst["runs"]}

    # A gap: more than log_bytes of output nobody followed, attached from 0.
    req = c.exec_start(cmd="seq 1 40000", id="doc-big", follow=False)
    assert c.recv_req(req)["type"] == "started"
    assert c.wait("doc-big")["type"] == "end"
    areq = c.next_req()
    c.send({"type": "attach", "req": areq, "id": "doc-big"})
    msgs = run_to_end(c, areq)
    kinds = [m["type"] for m in msgs]
    assert kinds[0] == "attached" and kinds[1] == "gap" and kinds[2] == "output", kinds[:3]
    assert msgs[1]["from_seq"] == 0 and msgs[1]["to_seq"] == msgs[0]["first_seq"] > 0

    # A terminal run (4.9): stream 3, tty in attached and list, resize, its errors.
    req = c.exec_start(argv=["/bin/cat"], id="doc-tty", tty={"rows": 24, "cols": 80})
    assert c.recv_req(req)["type"] == "started"
    assert c.request("resize", id="doc-tty", rows=30, cols=100)["type"] == "ok"
    r = c.request("resize", id="doc-tty", rows=0, cols=100)
    assert r["code"] == "bad_request", r
    assert c.request("resize", id="doc-1", rows=30, cols=100)["code"] == "bad_request"
    lst = [e for e in c.list()["runs"] if e["id"] == "doc-tty"][0]
    assert lst["tty"] == {"rows": 30, "cols": 100}, lst
    areq = c.next_req()
    c.send({"type": "attach", "req": areq, "id": "doc-tty", "output": True})  # replaces req's
    att = c.recv_req(areq)
    assert att["type"] == "attached" and att["tty"] == {"rows": 30, "cols": 100}, att
    assert c.stdin("doc-tty", data="hi\n")["type"] == "ok"
    assert c.stdin("doc-tty", eof=True)["type"] == "ok"
    msgs = run_to_end(c, areq)
    assert msgs[-1]["type"] == "end" and msgs[-1]["stderr"] == "", msgs
    assert any(rec[2] == 3 for m in msgs if m["type"] == "output" for rec in m["lines"]), msgs
    r = c.request("resize", id="doc-tty", rows=30, cols=100)
    assert r["code"] == "run_ended", r

    # code runs, and code's errors.
    if have_python:
        msgs = run_to_end(c, _send(c, {"type": "code", "lang": "python", "code": "print(6*7)",
                                       "output": True}))
        assert msgs[-1]["type"] == "end" and msgs[-1]["result"] == "42", msgs
    r = c.request("code", lang="no-such-lang", code="x")
    assert r["code"] == "unknown_lang" and isinstance(r["available"], list), r
    r = bad(c, "code", lang="python", code="#" * (256 * 1024 + 1))
    assert r["code"] == "too_large", r

    # Errors: unknown_type, not_found, denied, bad_version (and a hello without version).
    assert c.request("frobnicate")["code"] == "unknown_type"
    assert c.request("wait", id="no-such-run")["code"] == "not_found"
    assert c.request("exec", cmd="true", seccomp="none")["code"] == "denied"
    r = c.request("hello", version=2)
    assert r["code"] == "bad_version" and r["versions"] == [1], r
    r = bad(c, "hello")
    assert r["code"] == "bad_request" and r["versions"] == [1], r
    # Errors without req: a bad req, an empty frame.
    bad_send(c, {"type": "ping", "req": [1]})
    r = c.recv(T(5))
    assert r["type"] == "error" and r["code"] == "bad_request" and "req" not in r, r
    c.raw_send(b"\0\0\0\0")
    r = c.recv(T(5))
    assert r["type"] == "error" and r["code"] == "bad_request" and "req" not in r, r
    # need_hello, and too_large for a frame over max_frame (the connection then closes).
    n = rclient(d, ck, hello=False)
    assert n.request("ping")["code"] == "need_hello"
    t = rclient(d, ck)
    t.raw_send(struct.pack(">I", (1 << 20) + 1))
    r = t.recv(T(5))
    assert r["code"] == "too_large" and "req" not in r, r
    assert t.wait_closed(T(5))

    # A daemon with a token: unauthorized; shutdown's ok; shutting_down.
    tok = tmp_path / "token"
    tok.write_bytes(b"s3cret-token")
    os.chmod(tok, 0o600)
    d2 = start_boxd("--token-file", str(tok), "--user", "nobody", "--grace-ms", "300")
    wrong = rclient(d2, ck, hello=False)
    r = wrong.request("hello", version=1, token="wrong")
    assert r["code"] == "unauthorized", r
    c2 = rclient(d2, ck, token=b"s3cret-token")
    req = c2.exec_start(cmd="trap '' TERM; sleep 5", id="doc-stay")
    assert c2.recv_req(req)["type"] == "started"
    assert c2.request("shutdown")["type"] == "ok"
    r = c2.request("exec", cmd="true")
    assert r["code"] == "shutting_down", r
    assert run_to_end(c2, req)[-1]["status"] == "cancelled"

    # Every reply and event type was produced, and every message matched its schema.
    agent_types = {n for k, n in SCHEMAS if k == "agent"} - FILE_REPLIES
    assert ck.seen_types == agent_types, agent_types - ck.seen_types
    # out of memory is not produced here; the file codes are test_files_doc.py's
    codes = doc_error_codes(doc_text()) - {"internal"} - FILE_CODES
    assert codes <= ck.seen_codes, codes - ck.seen_codes
    assert not ck.problems, "\n".join(ck.problems)

    # No phantom fields: everything documented for the agent's messages was seen at least once.
    unseen = []
    for (kind, name), fields in SCHEMAS.items():
        if kind != "agent" or name in FILE_REPLIES:
            continue
        got = ck.seen_fields.get((kind, name), set())
        for f in fields:
            if f not in got and f not in ENV_DEPENDENT:
                unseen.append("%s.%s" % (name, f))
    assert not unseen, "documented but never sent: %s" % unseen


def _send(c, msg):
    req = c.next_req()
    msg = dict(msg, req=req)
    c.send(msg)
    return req


# (request type, field, extra fields, a value accepted, a value refused, the code, text in the
# documented bounds). The accepted value must not be answered with the refusal's code.
BOUNDS = [
    ("exec", "id", {"cmd": "true"}, "a" * 64, "a" * 65, "bad_request", "1-64 bytes"),
    ("exec", "id", {"cmd": "true"}, "A.b_c:d-9", "a/b", "bad_request", "[A-Za-z0-9._:-]"),
    ("exec", "argv", {}, ["/bin/true"] * 4096, ["/bin/true"] * 4097, "bad_request", "1-4096"),
    ("exec", "argv", {}, ["/bin/true"], [], "bad_request", "1-4096"),
    ("exec", "timeout_ms", {"cmd": "true"}, 4294967295000, 4294967295001, "bad_request",
     "4294967295000"),
    ("exec", "timeout_ms", {"cmd": "true"}, 0, -1, "bad_request", "default 0"),
    ("exec", "grace_ms", {"cmd": "true"}, 3600000, 3600001, "bad_request", "3600000"),
    ("exec", "cwd", {"cmd": "true"}, "/", "", "bad_request", "non-empty"),
    ("exec", "env", {"cmd": "true"}, {"K": "v"}, {"K=": "v"}, "bad_request", "without `=`",
     "env.*"),
    ("exec", "env", {"cmd": "true"}, {"K": "v"}, {"K": b"v"}, "bad_request", "value: a `str`",
     "env.*"),
    ("exec", "env", {"cmd": "true"}, {"K%d" % i: "v" for i in range(4096)},
     {"K%d" % i: "v" for i in range(4097)}, "bad_request", "4096 entries"),
    ("exec", "user", {"cmd": "true"}, None, "a" * 64, "bad_request", "1-63 bytes"),
    ("exec", "seccomp", {"cmd": "true"}, "strict", "Strict", "bad_request", "exactly"),
    ("exec", "follow", {"cmd": "true"}, False, 1, "bad_request", "default `true`"),
    ("logs", "max_records", {"id": "b-run"}, 100000, 100001, "bad_request", "0 to 100000"),
    ("logs", "max_bytes", {"id": "b-run"}, 1 << 62, -1, "bad_request", "262144"),
    ("cancel", "grace_ms", {"id": "b-run"}, 3600000, 3600001, "bad_request", "3600000"),
    ("shutdown", "action", {}, None, "halt", "bad_request", "`\"reboot\"`"),
    ("code", "code", {"lang": "sh"}, "true", "#" * (256 * 1024 + 1), "too_large", "262144"),
    ("code", "lang", {"code": "true"}, "SH", "x" * 33, "unknown_lang", "1-32 bytes"),
    ("exec", "tty", {"cmd": "true"}, {"rows": 4096, "cols": 1}, {"rows": 4097, "cols": 1},
     "bad_request", "1 to 4096", "tty.rows"),
    ("exec", "tty", {"cmd": "true"}, {"rows": 1, "cols": 4096}, {"rows": 1, "cols": 0},
     "bad_request", "1 to 4096", "tty.cols"),
    ("exec", "login", {"tty": {"rows": 24, "cols": 80}, "argv": ["/bin/true"]}, False, True,
     "bad_request", "without `cmd` and `argv`"),
    ("code", "tty", {"lang": "sh", "code": "true"}, None, [24, 80], "bad_request", "4.9"),
]


@pytest.mark.parametrize("case", BOUNDS, ids=["%s.%s-%d" % (c[0], c[1], i)
                                              for i, c in enumerate(BOUNDS)])
def test_documented_bounds(boxd_shared, case):
    typ, field, extra, good, bad, code, text = case[:7]
    row = case[7] if len(case) > 7 else field
    assert text in bounds("request", typ, row), (typ, row, bounds("request", typ, row))
    c = boxd_shared.client()
    if "id" in extra and extra["id"] == "b-run":
        r = c.request("exec", id="b-run", cmd="true", follow=False)
        assert r["type"] in ("started",), r
        c.wait("b-run")
    try:
        if good is not None:
            r = c.request(typ, **dict(extra, **{field: good}))
            assert not (r["type"] == "error" and r["code"] == code), (good, r)
        r = c.request(typ, **dict(extra, **{field: bad}))
        assert r["type"] == "error" and r["code"] == code, (bad, r)
    finally:
        c.close()


def test_req_bounds(boxd_shared):
    text = doc_text().split("### 10.1", 1)[1].split("### 10.2", 1)[0]
    row = [l for l in text.splitlines() if l.startswith("| `req`")][0]
    assert "0-64 bytes" in row and "int or str" in row, row
    c = boxd_shared.client()
    try:
        for good in ["x" * 64, "", -5, 2 ** 64 - 1]:
            r = c.request("ping", req=good)
            assert r["type"] == "pong" and r["req"] == good, r
        for bad in ["x" * 65, None, 1.5, [1], b"bin"]:
            c.send({"type": "ping", "req": bad})
            r = c.recv(T(5))
            assert r["type"] == "error" and r["code"] == "bad_request" and "req" not in r, r
    finally:
        c.close()


# ---- behaviour the document now states explicitly -----------------------------------------------

def test_capped_output_keeps_the_end(start_boxd):
    """4.3: end.stdout/stderr keep the last max_event / 4 bytes of each stream."""
    d = start_boxd("--max-event", "65536", "--max-line", "1024")
    c = d.client()
    res = c.exec_run(cmd="for i in $(seq 1 4000); do echo line$i; done >&2; echo LAST WORDS >&2; exit 1")
    cap = 65536 // 4
    err = boxd_client.as_bytes(res.end["stderr"])
    assert res.end["output_truncated"] is True
    assert len(err) == cap and res.stderr.endswith(err), (len(err), err[:40])
    assert err.endswith(b"LAST WORDS\n")
    assert boxd_client.as_bytes(res.end["result"]) == err[:-1]


def test_capped_output_starts_at_a_character(start_boxd):
    """4.3: a cut inside a multi-byte character drops its continuation bytes: the value stays str."""
    d = start_boxd("--max-event", "65536", "--max-line", "1024")
    c = d.client()
    # 3-byte characters, so the cut lands inside one for two of every three offsets.
    res = c.exec_run(cmd="/usr/bin/python3 -c \"import sys; sys.stdout.write('\u20ac' * 6001 + 'x')\"", output=True)
    out = res.end["stdout"]
    assert isinstance(out, str), type(out)
    assert out.endswith("\u20acx") and 65536 // 4 - 3 <= len(out.encode()) <= 65536 // 4
    assert res.end["output_truncated"] is True


def test_logs_max_bytes_counts_encoded_lines(shared_client):
    c = shared_client
    res = c.exec_run(cmd="seq 1 2000", id="doc-mb")
    assert res.end["status"] == "completed"
    for mb in (200, 1000, 5000):
        p = c.logs("doc-mb", max_bytes=mb)
        # The encoded records (the array's own header aside).
        enc = sum(len(msgpack.packb(rec, use_bin_type=True)) for rec in p["lines"])
        assert p["more"] is True and enc <= mb, (mb, enc)
        nxt = c.logs("doc-mb", from_seq=p["next_seq"], max_records=1)["lines"][0]
        # One more record would not have fitted: its data and 32 bytes on top.
        assert enc + len(nxt[3]) + 32 > mb, (mb, enc, nxt)
    assert len(c.logs("doc-mb", max_bytes=0)["lines"]) == 1
    assert len(c.logs("doc-mb", max_records=0)["lines"]) == 1


def test_stdin_refused_chunk_leaves_a_hole(start_boxd):
    """9.3: a stdin request over stdin_bytes is refused whole; the others are written."""
    d = start_boxd("--stdin-bytes", "16")
    c = d.client()
    req = c.exec_start(cmd="cat", id="doc-hole", stdin=True, output=True)
    assert c.recv_req(req)["type"] == "started"
    reqs = []
    for data in ("ab", "x" * 17, "cd\n"):
        r = c.next_req()
        c.send({"type": "stdin", "req": r, "id": "doc-hole", "data": data})
        reqs.append(r)
    replies = [c.recv_req(r) for r in reqs]
    assert [m["type"] for m in replies] == ["ok", "error", "ok"], replies
    assert replies[1]["code"] == "limit"
    assert c.stdin("doc-hole", eof=True)["type"] == "ok"
    end = c.collect(req).end
    assert end["stdout"] == "abcd\n", end


def test_error_without_req_is_answered_in_order(shared_client):
    """Section 6 / 9.1: an error without req comes between the at-once replies around it."""
    c = shared_client
    c.send({"type": "ping", "req": 1001})
    c.raw_send(frame(b"\xc1"))
    c.send({"type": "ping", "req": 1002})
    got = [c.recv(T(5)) for _ in range(3)]
    assert [m.get("req") for m in got] == [1001, None, 1002], got
    assert got[1]["code"] == "bad_request"


def test_cancel_defaults_to_the_runs_grace(shared_client):
    """4.7: cancel without grace_ms waits the run's own grace_ms, not the agent's 2000 ms."""
    c = shared_client
    req = c.exec_start(cmd="trap '' TERM; sleep 30", id="doc-grace", grace_ms=200)
    assert c.recv_req(req)["type"] == "started"
    time.sleep(0.2)  # let the shell set its trap
    t0 = time.monotonic()
    assert c.cancel("doc-grace")["ended"] is False
    end = c.collect(req).end
    took = time.monotonic() - t0
    assert end["status"] == "cancelled" and took < 1.5, (end, took)


def test_retry_that_already_follows_is_not_subscribed_twice(shared_client):
    c = shared_client
    req = c.exec_start(cmd="sleep 0.5; echo once", id="doc-twice")
    assert c.recv_req(req)["type"] == "started"
    r2 = c.exec_start(cmd="sleep 0.5; echo once", id="doc-twice")
    assert c.recv_req(r2)["existing"] is True
    msgs = c.drain(quiet=1.5)
    records = [rec for m in msgs if m["type"] == "output" for rec in m["lines"]]
    ends = [m for m in msgs if m["type"] == "end"]
    assert len(records) == 1 and len(ends) == 1, msgs


def test_retry_over_max_subs_is_limit(start_boxd):
    d = start_boxd("--max-subs", "1")
    c = d.client()
    other = d.client()
    req = other.exec_start(cmd="sleep 5", id="doc-subs", follow=False)
    assert other.recv_req(req)["type"] == "started"
    r = c.exec_start(cmd="sleep 5", id="doc-held")
    assert c.recv_req(r)["type"] == "started"
    r = c.request("exec", cmd="sleep 5", id="doc-subs")
    assert r["type"] == "error" and r["code"] == "limit" and r["id"] == "doc-subs", r
