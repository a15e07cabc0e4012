"""boxctl, the CLI, against the real daemon."""

import json
import re
import signal
import time

from conftest import T, wait_for

RFC3339_NS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")


def test_exec_prints_and_exits_0(boxctl):
    p = boxctl.run("exec", "echo hello")
    assert p.returncode == 0, p
    assert p.stdout == b"hello\n"


def test_exec_stderr_and_exit_code(boxctl):
    p = boxctl.run("exec", "echo out; echo err >&2; exit 3")
    assert p.returncode == 3, p
    assert p.stdout == b"out\n"
    assert b"err\n" in p.stderr


def test_exec_exit_3(boxctl):
    assert boxctl.run("exec", "exit 3").returncode == 3


def test_exec_binary_exact(boxctl, tmp_path):
    data = bytes(range(256)) * 100
    f = tmp_path / "b"
    f.write_bytes(data)
    p = boxctl.run("exec", "cat %s" % f)
    assert p.returncode == 0 and p.stdout == data


def test_exec_json(boxctl):
    p = boxctl.run("exec", "--json", "echo hello")
    assert p.returncode == 0, p
    j = json.loads(p.stdout)
    assert j["result"] == "hello"
    assert j["status"] == "completed"
    assert j["exit_code"] == 0


def test_exec_json_failed(boxctl):
    p = boxctl.run("exec", "--json", "echo oops >&2; exit 1")
    j = json.loads(p.stdout)
    assert j["status"] == "failed" and j["exit_code"] == 1 and j["result"] == "oops"


def test_detach_then_wait(boxctl):
    p = boxctl.run("exec", "--detach", "sleep 0.3; echo later")
    assert p.returncode == 0, p
    rid = p.stdout.decode().strip()
    assert re.match(r"^[A-Za-z0-9._:-]{1,64}$", rid), p.stdout
    w = boxctl.run("wait", "--json", rid)
    assert w.returncode == 0, w
    j = json.loads(w.stdout)
    assert j["status"] == "completed" and j["result"] == "later"


def test_logs_json(boxctl):
    rid = boxctl.run("exec", "--detach", "echo one; sleep 0.1; echo two >&2; sleep 0.1; printf three").stdout
    rid = rid.decode().strip()
    assert boxctl.run("wait", rid).returncode == 0
    p = boxctl.run("logs", "--json", rid)
    assert p.returncode == 0, p
    arr = json.loads(p.stdout)
    assert isinstance(arr, list) and len(arr) == 3
    for i, e in enumerate(arr):
        assert RFC3339_NS.match(e["timestamp"]), e
        assert e["seq"] == i
    assert [e["message"] for e in arr] == ["one", "two", "three"]
    assert [e["level"] for e in arr] == ["info", "error", "info"]
    assert [e["stream"] for e in arr] in (["stdout", "stderr", "stdout"], [1, 2, 1])


def test_cancel(boxctl):
    rid = boxctl.run("exec", "--detach", "sleep 30").stdout.decode().strip()
    p = boxctl.run("cancel", rid)
    assert p.returncode == 0, p
    w = boxctl.run("wait", "--json", rid)
    assert json.loads(w.stdout)["status"] == "cancelled"


def test_list_info_ping(boxctl):
    rid = boxctl.run("exec", "--detach", "true").stdout.decode().strip()
    boxctl.run("wait", rid)
    p = boxctl.run("list")
    assert p.returncode == 0 and rid.encode() in p.stdout, p
    p = boxctl.run("info")
    assert p.returncode == 0 and p.stdout.strip(), p
    p = boxctl.run("ping")
    assert p.returncode == 0, p


def test_bad_socket(boxctl, tmp_path):
    p = boxctl.run("-s", str(tmp_path / "nope.sock"), "ping", sock=False)
    assert p.returncode != 0
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1, p.stderr


def test_unknown_run(boxctl):
    p = boxctl.run("wait", "no-such-run")
    assert p.returncode != 0
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "not_found" in lines[0], p.stderr


def test_ctrl_c_cancels(boxctl, boxd):
    proc = boxctl.popen("exec", "sleep 30")
    c = boxd.client()
    runs = wait_for(lambda: [r for r in c.list()["runs"] if r["state"] == "running"], T(5))
    assert runs, "boxctl exec did not start a run"
    rid = runs[0]["id"]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=T(5))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert time.monotonic() - t0 < T(3)
    w = c.wait(rid, timeout=T(5))
    assert w["status"] == "cancelled", w


def test_boxd_socket_env(boxctl, boxd):
    p = boxctl.run("exec", "echo via-env", sock=False, env={"BOXD_SOCKET": boxd.sock})
    assert p.returncode == 0 and p.stdout == b"via-env\n", p
