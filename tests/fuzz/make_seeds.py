#!/usr/bin/python3
"""Writes the seed inputs of the fuzz corpora from the examples in protocol/PROTOCOL.md.

    /usr/bin/python3 tests/fuzz/make_seeds.py

Uses Debian's python3 and its msgpack module (python3-msgpack). Writes corpus/msg/seed-* (frame
bodies) and corpus/frame/seed-* (the same as frames, plus byte streams of several frames). Seeds
are rewritten on every run and only ever named seed-*: inputs found by fuzzing (hash names) and
regression inputs (regress-*) are left alone.
"""

import os
import struct
import sys

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
TS = 1700000000123456789  # a CLOCK_REALTIME timestamp in ns, as the agent sends them

LIMITS = {
    "max_frame": 1048576, "max_event": 262144, "max_line": 65536, "max_runs": 64,
    "max_finished": 256, "max_conns": 256, "log_bytes": 8388608, "stdin_bytes": 1048576,
    "max_subs": 64,
}

MESSAGES = [
    ("hello", {"type": "hello", "req": 1, "version": 1, "client": "boxctl/0.1"}),
    ("hello-reply", {
        "type": "hello", "req": 1, "version": 1, "agent": "boxd 0.1.0",
        "boot_id": "8f14e45f-ceea-467f-a0e6-9b7c3c2a1d5e", "pid": 1,
        "capabilities": ["exec", "stdin", "signal", "cancel", "attach", "wait", "logs", "list",
                         "info", "ping", "argv", "run_id"],
        "limits": LIMITS}),
    ("exec-cmd", {
        "type": "exec", "req": "build-1", "id": "build", "cmd": "cd /work && npm test",
        "env": {"CI": "1", "NODE_ENV": "test"}, "cwd": "/work", "timeout_ms": 30000,
        "grace_ms": 2000, "stdin": False, "follow": True, "output": False}),
    ("exec-argv", {"type": "exec", "req": 2, "argv": ["/usr/bin/env", "x"], "stdin": True,
                   "output": True}),
    ("started", {"type": "started", "req": 2, "id": "r1", "pid": 4242, "started_ns": TS,
                 "existing": False}),
    ("output", {"type": "output", "req": 2, "id": "r1", "lines": [
        [0, TS, 1, "hello\n"], [1, TS + 1, 2, b"\xff\xfe not utf-8"], [2, TS + 2, 1, "prompt> "]]}),
    ("end", {
        "type": "end", "req": 2, "id": "r1", "status": "failed", "exit_code": None, "signal": 9,
        "reason": "timeout", "started_ns": TS, "ended_ns": TS + 30000000000,
        "duration_ms": 30000, "cpu_user_us": 1200, "cpu_sys_us": 300, "max_rss_kb": 5120,
        "next_seq": 3, "first_seq": 0, "dropped_records": 0, "dropped_bytes": 0,
        "result": "", "stdout": "hello\n", "stderr": b"\xff\xfe", "output_truncated": False}),
    ("stdin", {"type": "stdin", "req": 3, "id": "r1", "data": b"line one\n\x00\x01", "eof": True}),
    ("signal", {"type": "signal", "req": 4, "id": "r1", "signal": "TERM"}),
    ("signal-num", {"type": "signal", "id": "r1", "signal": 15}),
    ("cancel", {"type": "cancel", "req": -7, "id": "r1", "grace_ms": 500}),
    ("attach", {"type": "attach", "req": 5, "id": "r1", "from_seq": 0, "output": True}),
    ("logs", {"type": "logs", "id": "r1", "from_seq": 10, "max_records": 1000,
              "max_bytes": 262144}),
    ("list-reply", {"type": "list", "req": 6, "runs": [
        {"id": "r1", "pid": 4242, "state": "ended", "status": "completed", "exit_code": 0,
         "reason": "exit", "argv": ["/bin/true"], "started_ns": TS, "ended_ns": TS + 5,
         "next_seq": 0, "late_bytes": 0, "lingering": False}]}),
    ("ping", {"type": "ping"}),
    ("info-reply", {"type": "info", "agent": "boxd 0.1.0", "version": 1, "boot_id": "x",
                    "pid": 1, "pid1": True, "subreaper": False, "uptime_ms": 12345,
                    "runs_live": 0, "runs_finished": 1, "conns": 1, "reaped": 2,
                    "started_total": 1, "limits": LIMITS}),
    ("error", {"type": "error", "req": 2, "code": "spawn_failed", "message": "exec: not found",
               "id": "r9", "errno": 2, "errno_name": "ENOENT", "stage": "exec"}),
    ("gap", {"type": "gap", "id": "r1", "from_seq": 0, "to_seq": 17}),
]

# Hand-encoded bodies: integers in wide forms (which the agent must accept), a float and an ext
# (which it must at least parse and ignore), and nesting right at the limit of 32 levels.
RAW = [
    ("exec-wide-ints",
     b"\x84\xa4type\xa4exec\xa3cmd\xa4true"
     b"\xaatimeout_ms\xcf" + struct.pack(">Q", 30000) +
     b"\xa3req\xd0\x05"),
    ("float-ext", b"\x83\xa4type\xa4ping\xa1f\xcb" + struct.pack(">d", 1.5) +
     b"\xa1x\xc7\x03\x01abc"),
    ("str8-keys", b"\x82\xd9\x04type\xda\x00\x04ping\xdb\x00\x00\x00\x03req\xc0"),
    ("depth-32", b"\x81\xa1k" * 31 + b"\x91\x01"),
]


def frame(body):
    return struct.pack(">I", len(body)) + body


def write(directory, name, data):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    msg_dir = os.path.join(HERE, "corpus", "msg")
    frame_dir = os.path.join(HERE, "corpus", "frame")
    bodies = {}
    for name, obj in MESSAGES:
        bodies[name] = msgpack.packb(obj, use_bin_type=True)
    for name, body in RAW:
        bodies[name] = body
    for name, body in bodies.items():
        # Check each seed against a second decoder before writing it.
        msgpack.unpackb(body, raw=False, strict_map_key=False)
        write(msg_dir, name, body)
        write(frame_dir, name, frame(body))

    # Byte streams as a connection sees them.
    write(frame_dir, "stream-hello-exec-ping",
          frame(bodies["hello"]) + frame(bodies["exec-cmd"]) + frame(bodies["ping"]))
    write(frame_dir, "stream-empty-frame-then-ping", b"\x00\x00\x00\x00" + frame(bodies["ping"]))
    write(frame_dir, "stream-too-large", struct.pack(">I", 1048577) + bodies["ping"])
    write(frame_dir, "stream-partial-body", frame(bodies["exec-argv"])[:20])
    # One connection's requests with the allocation fault armed (fuzz_conn.c: the last byte,
    # high bit set, fails allocation 1 + (its low 7 bits) after the hello): every out of
    # memory branch on the way of an exec that is followed, attached to, waited for and listed.
    conn_dir = os.path.join(HERE, "corpus", "conn")
    reqs = [{"type": "exec", "req": 1, "id": "oom", "cmd": "echo hi", "follow": True, "output": True},
            {"type": "attach", "req": 2, "id": "oom", "from_seq": 0},
            {"type": "wait", "req": 3, "id": "oom", "output": True},
            {"type": "logs", "req": 4, "id": "oom"},
            {"type": "list", "req": 5},
            {"type": "ping", "req": 6}]
    stream = b"".join(frame(msgpack.packb(r, use_bin_type=True)) for r in reqs)
    n_oom = 16
    for k in range(n_oom):
        write(conn_dir, "oom-%02d" % k, bytes([0x01 | (63 << 1)]) + stream + bytes([0x80 | k]))
    # File requests (PROTOCOL.md section 12), one connection's worth each: an upload opened,
    # fed, resumed and aborted; a download whole and by range; every one-shot operation; a
    # watch; and the malformed forms (missing path, relative path, wrong types, an offset that
    # is not the one expected, data past the window). The fuzzer starts no I/O thread, so these
    # reach the dispatch, the hello gate and the "not available" reply; boxd's own tests
    # (tests/integration/test_files*.py) drive the handlers behind it.
    file_reqs = {
        "upload": [
            {"type": "file_write", "req": 1, "path": "/tmp/fz/a.txt", "mode": 0o644,
             "mkdir": True, "overwrite": True, "atomic": True, "mtime_ns": TS,
             "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
            {"type": "file_data", "req": 2, "upload_id": "u1", "offset": 0, "data": b"ab"},
            {"type": "file_data", "req": 3, "upload_id": "u1", "offset": 2, "data": b"c",
             "eof": True},
            {"type": "file_write", "req": 4, "path": "/tmp/fz/a.txt", "upload_id": "u1"},
            {"type": "file_abort", "req": 5, "upload_id": "u1"}],
        "upload-bad": [
            {"type": "file_write", "req": 1, "path": "relative"},
            {"type": "file_write", "req": 2},
            {"type": "file_write", "req": 3, "path": 7, "mode": "rw"},
            {"type": "file_data", "req": 4, "upload_id": "nope", "offset": 5, "data": "str"},
            {"type": "file_data", "req": 5, "offset": -1, "data": b"\x00" * 300},
            {"type": "file_write", "req": 6, "path": "/tmp/fz/b", "atomic": False,
             "overwrite": False, "user": "nobody"}],
        "download": [
            {"type": "file_read", "req": 1, "path": "/etc/hostname"},
            {"type": "file_read", "req": 2, "path": "/etc/hostname", "offset": 1, "length": 3},
            {"type": "file_read", "req": 3, "path": "/proc/self/environ"},
            {"type": "file_read", "req": 4, "path": "", "offset": "x", "user": 0}],
        "ops": [
            {"type": "file_stat", "req": 1, "path": "/tmp"},
            {"type": "file_list", "req": 2, "path": "/tmp/fz", "depth": 64},
            {"type": "file_mkdir", "req": 3, "path": "/tmp/fz/d/e", "parents": True},
            {"type": "file_rename", "req": 4, "path": "/tmp/fz/d", "to": "/tmp/fz/f",
             "overwrite": True},
            {"type": "file_chmod", "req": 5, "path": "/tmp/fz/f", "mode": 0o755,
             "mtime_ns": TS},
            {"type": "file_symlink", "req": 6, "path": "/tmp/fz/l", "target": "../../etc"},
            {"type": "file_remove", "req": 7, "path": "/tmp/fz", "recursive": True},
            {"type": "file_list", "req": 8, "path": "/tmp", "depth": 1000000},
            {"type": "file_stat", "req": 9, "path": "/tmp/\u00e9 space/\U0001f600"}],
        "tree": [
            {"type": "file_tree_read", "req": 1, "path": "/tmp", "max_entries": 10,
             "max_bytes": 1 << 20, "max_depth": 2},
            {"type": "file_tree_write", "req": 2, "path": "/tmp/fz/t", "tree_id": "t1",
             "fsync": False, "mkdir": True, "entries": [
                 {"name": ".", "kind": "dir", "mode": 0o755, "mtime_ns": TS},
                 {"name": "a b/\u00e9", "kind": "file", "data": b"ab", "more": True}]},
            {"type": "file_tree_data", "req": 3, "tree_id": "t1", "entries": [
                {"data": b"c"}, {"name": "l", "kind": "symlink", "target": "../x"},
                {"name": "p", "kind": "fifo"}], "eof": True}],
        "tree-bad": [
            {"type": "file_tree_read", "req": 1, "path": "/tmp", "max_entries": -1},
            {"type": "file_tree_write", "req": 2, "path": "/tmp/fz/u", "tree_id": "a b"},
            {"type": "file_tree_write", "req": 3, "path": "/tmp/fz/u", "entries": {"x": 1}},
            {"type": "file_tree_write", "req": 4, "path": "/tmp/fz/u", "entries": [
                {"data": b"orphan"}, {"name": "../up", "kind": "file"}, 7], "eof": True},
            {"type": "file_tree_data", "req": 5, "tree_id": "nope", "entries": []}],
        "watch": [
            {"type": "file_watch", "req": 1, "path": "/tmp", "recursive": True},
            {"type": "file_unwatch", "req": 2, "watch": 1},
            {"type": "file_unwatch", "req": 3, "watch": "x"}],
    }
    for name, rs in file_reqs.items():
        stream = b"".join(frame(msgpack.packb(r, use_bin_type=True)) for r in rs)
        write(conn_dir, "file-" + name, bytes([0x01 | (63 << 1)]) + stream)
        # The same split into 3-byte chunks, and without the hello (need_hello for each).
        write(conn_dir, "file-" + name + "-split", bytes([0x01 | (2 << 1)]) + stream)
        write(conn_dir, "file-" + name + "-nohello", bytes([63 << 1]) + stream)
    # Tunnel requests (PROTOCOL.md 13): an open by address and by path, data, acks and
    # closes on it (ids the connection never had: not_found), and the malformed forms. With
    # no I/O thread the opens are answered "not available"; test_tunnel.py drives the rest.
    tunnel_reqs = {
        "open": [
            {"type": "tunnel_open", "req": 1, "host": "127.0.0.1", "port": 22},
            {"type": "tunnel_open", "req": 2, "path": "/run/x.sock", "user": "nobody"},
            {"type": "tunnel_data", "req": 3, "tunnel": 1, "data": b"SSH-2.0-x\r\n"},
            {"type": "tunnel_ack", "req": 4, "tunnel": 1, "bytes": 10},
            {"type": "tunnel_close", "req": 5, "tunnel": 1, "how": "write"},
            {"type": "tunnel_close", "req": 6, "tunnel": 1}],
        "bad": [
            {"type": "tunnel_open", "req": 1},
            {"type": "tunnel_open", "req": 2, "host": "h", "port": 0},
            {"type": "tunnel_open", "req": 3, "host": "h", "port": 22, "path": "/s"},
            {"type": "tunnel_open", "req": 4, "path": "rel", "port": 1},
            {"type": "tunnel_open", "req": 5, "host": "", "port": 70000},
            {"type": "tunnel_data", "req": 6, "tunnel": -1, "data": 5},
            {"type": "tunnel_ack", "req": 7, "tunnel": 1, "bytes": -3},
            {"type": "tunnel_close", "req": 8, "tunnel": "1", "how": "read"}],
    }
    for name, rs in tunnel_reqs.items():
        stream = b"".join(frame(msgpack.packb(r, use_bin_type=True)) for r in rs)
        write(conn_dir, "tunnel-" + name, bytes([0x01 | (63 << 1)]) + stream)
        write(conn_dir, "tunnel-" + name + "-split", bytes([0x01 | (2 << 1)]) + stream)
    print("wrote %d msg seeds, %d frame seeds and %d conn seeds"
          % (len(bodies), len(bodies) + 4, n_oom + 3 * len(file_reqs) + 2 * len(tunnel_reqs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
