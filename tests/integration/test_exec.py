"""exec: statuses, spawn failures, the run's environment (PROTOCOL.md 4.1, 4.3, 4.6)."""

import os
import shutil
import time

import pytest

from conftest import T, read_stat, proc_status, wait_for

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
END_FIELDS = ("status", "exit_code", "signal", "reason", "started_ns", "ended_ns", "duration_ms",
              "cpu_user_us", "cpu_sys_us", "max_rss_kb", "next_seq", "first_seq",
              "dropped_records", "dropped_bytes", "id")


def ok(res):
    assert res.error is None, res.error
    assert res.started is not None and res.end is not None, res
    return res.end


def env_of(res):
    return dict(line.split("=", 1) for line in res.stdout.decode().splitlines() if "=" in line)


# ---- the SDK examples -------------------------------------------------------------------------

def test_echo_hello(client):
    res = client.exec_run("echo hello")
    end = ok(res)
    assert res.started["type"] == "started"
    assert res.started["existing"] is False
    assert isinstance(res.started["pid"], int) and res.started["pid"] > 1
    assert end["status"] == "completed"
    assert end["reason"] == "exit"
    assert end["exit_code"] == 0
    assert end["signal"] is None
    assert end["result"] == "hello"
    assert end["stdout"] == "hello\n"
    assert end["stderr"] == ""
    assert res.stdout == b"hello\n" and res.stderr == b""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_exit_1(client):
    end = ok(client.exec_run("node -e 'process.exit(1)'", timeout=T(30)))
    assert end["status"] == "failed"
    assert end["reason"] == "exit"
    assert end["exit_code"] == 1
    assert end["result"] == ""


def test_failed_result_is_stderr(client):
    end = ok(client.exec_run("echo out; echo oops >&2; exit 1"))
    assert end["status"] == "failed"
    assert end["exit_code"] == 1
    assert end["result"] == "oops"
    assert end["stdout"] == "out\n"
    assert end["stderr"] == "oops\n"


def test_shell_expression(client, tmp_path):
    cmd = "cd %s && echo a | tr a b > f && cat f && ls nope 2>/dev/null || echo fallback" % tmp_path
    res = client.exec_run(cmd)
    end = ok(res)
    assert res.stdout == b"b\nfallback\n"
    assert end["status"] == "completed"
    assert (tmp_path / "f").read_bytes() == b"b\n"


@pytest.mark.parametrize("code", [0, 1, 2, 127, 255])
def test_exit_codes(client, code):
    end = ok(client.exec_run("exit %d" % code))
    assert end["exit_code"] == code
    assert end["signal"] is None
    assert end["reason"] == "exit"
    assert end["status"] == ("completed" if code == 0 else "failed")


def test_command_not_found(client):
    end = ok(client.exec_run("definitely-not-a-command-xyz"))
    assert end["status"] == "failed" and end["exit_code"] == 127 and end["reason"] == "exit"
    assert b"not found" in client.exec_run("definitely-not-a-command-xyz").stderr


@pytest.mark.parametrize("sig", [9, 15, 6])
def test_death_by_signal(client, sig):
    end = ok(client.exec_run("kill -%d $$" % sig))
    assert end["status"] == "failed"
    assert end["reason"] == "signal"
    assert end["signal"] == sig
    assert end["exit_code"] == 128 + sig


# ---- argv ------------------------------------------------------------------------------------------

def test_argv(client):
    res = client.exec_run(argv=["printf", "%s|", "a b", "c'd", "$HOME", "*"])
    ok(res)
    assert res.stdout == b"a b|c'd|$HOME|*|"
    assert res.end["result"] == "a b|c'd|$HOME|*|"


def test_argv_absolute(client):
    res = client.exec_run(argv=["/bin/echo", "x"])
    assert ok(res)["result"] == "x"


def test_argv_nonexistent(client):
    req = client.exec_start(argv=["/nonexistent"], id="nx")
    r = client.recv_req(req)
    assert r["type"] == "error", r
    assert r["code"] == "spawn_failed"
    assert r["id"] == "nx"
    assert r["errno_name"] == "ENOENT"
    assert r["errno"] == 2
    assert r["stage"] == "exec"
    # No end event follows the error on this connection... the run is recorded as ended:
    w = client.wait("nx")
    assert w["type"] == "end", w
    assert w["status"] == "failed"
    assert w["reason"] == "spawn"
    assert w["exit_code"] == 127
    assert w["signal"] is None
    assert w["errno_name"] == "ENOENT" and w["stage"] == "exec"
    runs = {r["id"]: r for r in client.list()["runs"]}
    assert runs["nx"]["state"] == "ended"
    assert runs["nx"]["status"] == "failed" and runs["nx"]["reason"] == "spawn"


def test_argv_not_in_path(client):
    r = client.recv_req(client.exec_start(argv=["no-such-program-xyz"]))
    assert r["type"] == "error" and r["code"] == "spawn_failed", r
    assert r["errno_name"] == "ENOENT" and r["stage"] == "exec"
    assert client.wait(r["id"])["exit_code"] == 127


def test_argv_not_executable(client, tmp_path):
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\necho hi\n")
    os.chmod(f, 0o644)
    r = client.recv_req(client.exec_start(argv=[str(f)]))
    assert r["type"] == "error" and r["code"] == "spawn_failed", r
    assert r["errno_name"] == "EACCES" and r["stage"] == "exec"
    w = client.wait(r["id"])
    assert w["status"] == "failed" and w["reason"] == "spawn" and w["exit_code"] == 126


@pytest.mark.parametrize("form", ["cmd", "argv"])
def test_cwd_missing(client, form):
    kw = {"cmd": "pwd"} if form == "cmd" else {"argv": ["pwd"]}
    r = client.recv_req(client.exec_start(cwd="/nonexistent/dir", **kw))
    assert r["type"] == "error" and r["code"] == "spawn_failed", r
    assert r["stage"] == "chdir"
    assert r["errno_name"] == "ENOENT"
    w = client.wait(r["id"])
    assert w["status"] == "failed" and w["reason"] == "spawn" and w["exit_code"] == 127


def test_spawn_failures_do_not_leak(boxd, client):
    ok(client.exec_run("true"))
    time.sleep(0.1)
    nfd, _, thr, _ = boxd.counts()
    for _ in range(100):
        r = client.recv_req(client.exec_start(argv=["/nonexistent"]))
        assert r["code"] == "spawn_failed"
    assert wait_for(lambda: boxd.counts()[0] == nfd, T(3)), (boxd.counts(), nfd)
    assert boxd.counts()[2] == thr
    assert client.info()["runs_live"] == 0


# ---- environment and cwd ------------------------------------------------------------------------

def test_clean_environment(start_boxd):
    d = start_boxd(env={"BOXD_SECRET_TEST": "1", "LD_PRELOAD": "", "PATH": "/tmp/evil:" +
                        os.environ.get("PATH", "/usr/bin:/bin")})
    c = d.client()
    res = c.exec_run("env")
    ok(res)
    env = env_of(res)
    assert "BOXD_SECRET_TEST" not in env
    assert "LD_PRELOAD" not in env
    assert env["PATH"] == CLEAN_PATH
    assert env["LANG"] == "C.UTF-8"
    assert env["SHELL"] == "/bin/sh"
    uid = os.getuid()
    import pwd
    pw = pwd.getpwuid(uid)
    assert env["HOME"] == pw.pw_dir
    assert env["USER"] == pw.pw_name and env["LOGNAME"] == pw.pw_name
    assert env["PWD"] == (pw.pw_dir if os.path.isdir(pw.pw_dir) else "/")


def test_env_added_and_overriding(client):
    res = client.exec_run(argv=["env"], env={"FOO": "bar baz", "EMPTY": "", "LANG": "C",
                                             "UNI": "ünï ✓", "PATH": "/bin:/usr/bin"})
    ok(res)
    env = env_of(res)
    assert env["FOO"] == "bar baz"
    assert env["EMPTY"] == ""
    assert env["LANG"] == "C"
    assert env["UNI"] == "ünï ✓"
    assert env["PATH"] == "/bin:/usr/bin"
    assert [l for l in res.stdout.decode().splitlines() if l.startswith("LANG=")] == ["LANG=C"]


def test_default_cwd_is_home(client):
    import pwd
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert ok(client.exec_run("pwd"))["result"] == (home if os.path.isdir(home) else "/")


def test_cwd_respected(client, tmp_path):
    end = ok(client.exec_run("pwd; echo $PWD", cwd=str(tmp_path)))
    assert end["result"] == "%s\n%s" % (tmp_path, tmp_path)


# ---- stdin -------------------------------------------------------------------------------------------

def test_stdin_default_dev_null(client):
    t0 = time.monotonic()
    end = ok(client.exec_run("cat", timeout=T(5)))
    assert time.monotonic() - t0 < T(2)
    assert end["status"] == "completed" and end["stdout"] == ""
    assert ok(client.exec_run("readlink /proc/self/fd/0"))["result"] == "/dev/null"


def test_stdin_pipe(client):
    req = client.exec_start(cmd="wc -c", id="in1", stdin=True, output=True)
    started = client.recv_req(req)
    assert started["type"] == "started", started
    r = client.stdin("in1", data="hello\n")
    assert r["type"] == "ok" and r["id"] == "in1", r
    r = client.stdin("in1", data=bytes(range(256)) * 4)
    assert r["type"] == "ok", r
    r = client.stdin("in1", eof=True)
    assert r["type"] == "ok", r
    res = client.collect(req, timeout=T(10))
    assert res.end["status"] == "completed"
    assert res.end["result"].strip() == str(6 + 1024)
    # Stdin is closed now.
    r = client.stdin("in1", data="more")
    assert r["type"] == "error" and r["code"] == "run_ended", r


def test_stdin_data_with_eof_roundtrip(client):
    payload = os.urandom(200000)
    req = client.exec_start(cmd="cat", id="in2", stdin=True, output=False)
    assert client.recv_req(req)["type"] == "started"
    for i in range(0, len(payload), 50000):
        last = i + 50000 >= len(payload)
        r = client.stdin("in2", data=payload[i:i + 50000], eof=last or None)
        assert r["type"] == "ok", r
    res = client.collect(req, timeout=T(10))
    assert res.stdout == payload
    assert res.end["status"] == "completed"


def test_stdin_without_pipe_is_run_ended(client):
    req = client.exec_start(cmd="sleep 5", id="nopipe")
    assert client.recv_req(req)["type"] == "started"
    r = client.stdin("nopipe", data="x")
    assert r["type"] == "error" and r["code"] == "run_ended", r
    client.cancel("nopipe", grace_ms=100)
    client.collect(req, timeout=T(5))
    r = client.stdin("nopipe", data="x")
    assert r["type"] == "error" and r["code"] == "run_ended", r


def test_stdin_over_limit(client):
    limit = client.hello_reply["limits"]["stdin_bytes"]
    if limit > (8 << 20):
        pytest.skip("stdin_bytes %d is too large to exceed in a frame" % limit)
    req = client.exec_start(cmd="sleep 5", id="inlim", stdin=True)
    assert client.recv_req(req)["type"] == "started"
    # The run never reads; the pipe (64 KiB) fills, then the queue; past stdin_bytes: `limit`.
    chunk = b"x" * min(limit, client.hello_reply["limits"]["max_frame"] - 1024)
    got_limit = False
    client.send({"type": "stdin", "req": "s0", "id": "inlim", "data": chunk})
    for i in range(1, 4 + (2 * limit) // len(chunk)):
        client.send({"type": "stdin", "req": "s%d" % i, "id": "inlim", "data": chunk})
        try:
            r = client.recv_match(lambda m: m.get("type") == "error", timeout=0.3)
            assert r["code"] == "limit", r
            got_limit = True
            break
        except TimeoutError:
            continue
    assert got_limit, "queued more than stdin_bytes without a limit error"
    assert client.cancel("inlim", grace_ms=100)["type"] == "ok"
    client.collect(req, timeout=T(5))


# ---- what the run starts with ---------------------------------------------------------------------

def test_fds_only_012(client):
    # `; :` keeps dash from exec'ing ls in place of the shell, so $$ is the shell itself.
    res = client.exec_run("ls /proc/$$/fd; :")
    ok(res)
    assert res.stdout.split() == [b"0", b"1", b"2"], res.stdout


def test_fds_from_outside(client):
    req = client.exec_start(argv=["sleep", "5"], id="fds")
    s = client.recv_req(req)
    assert s["type"] == "started"
    pid = s["pid"]
    # `started` comes once the process has exec'd: its dynamic loader may still have a library
    # open (fd 3) for a moment. A descriptor leaked by the agent would stay.
    fds = lambda: sorted(int(x) for x in os.listdir("/proc/%d/fd" % pid))
    assert wait_for(lambda: fds() == [0, 1, 2], T(2)), fds()
    assert os.readlink("/proc/%d/fd/0" % pid) == "/dev/null"
    out, err = os.readlink("/proc/%d/fd/1" % pid), os.readlink("/proc/%d/fd/2" % pid)
    assert out.startswith("pipe:") and err.startswith("pipe:") and out != err
    st = proc_status(pid)
    assert int(st["SigBlk"], 16) == 0
    assert int(st["SigIgn"], 16) == 0
    client.cancel("fds", grace_ms=100)
    client.collect(req, timeout=T(5))


def test_signal_mask_and_ignored_zero(client):
    res = client.exec_run("grep -E '^Sig(Blk|Ign)' /proc/self/status")
    ok(res)
    lines = res.stdout.decode().split("\n")
    vals = {l.split(":")[0]: int(l.split(":")[1].strip(), 16) for l in lines if l}
    assert vals == {"SigBlk": 0, "SigIgn": 0}


def test_sigpipe_default(client):
    # With SIGPIPE at its default, `yes` dies of it when head exits.
    res = client.exec_run(argv=["bash", "-c", "yes | head -c 1 >/dev/null; echo ${PIPESTATUS[0]}"],
                          timeout=T(10))
    assert ok(res)["result"] == str(128 + 13)


def test_own_session_and_group(boxd, client):
    req = client.exec_start(argv=["sleep", "5"], id="sess")
    s = client.recv_req(req)
    pid = s["pid"]
    _, ppid, pgrp, sid = read_stat(pid)
    assert pgrp == pid and sid == pid
    _, _, dpgrp, dsid = read_stat(boxd.pid)
    assert pgrp != dpgrp and sid != dsid
    client.cancel("sess", grace_ms=100)
    client.collect(req, timeout=T(5))


def test_session_from_inside(client):
    res = client.exec_run("ps -o pid=,pgid=,sid= -p $$ 2>/dev/null || "
                          "awk '{print $1, $5, $6}' /proc/$$/stat; :")
    ok(res)
    pid, pgid, sid = res.stdout.split()
    assert pid == pgid == sid


def test_kill_0_does_not_hurt_daemon(boxd, client):
    end = ok(client.exec_run("kill -TERM 0; sleep 1; echo survived"))
    assert end["status"] == "failed"
    assert end["signal"] == 15
    assert end["reason"] == "signal"
    time.sleep(0.1)
    assert boxd.alive()
    assert client.ping()["type"] == "pong"


# ---- result and end fields ------------------------------------------------------------------------

@pytest.mark.parametrize("cmd,stdout,result", [
    ("printf 'a\\n\\n'", "a\n\n", "a\n"),
    ("printf 'abc'", "abc", "abc"),
    ("printf 'x\\r\\n'", "x\r\n", "x\r"),
    ("printf '\\n'", "\n", ""),
    ("printf '  sp  \\n'", "  sp  \n", "  sp  "),
    ("true", "", ""),
])
def test_result_rules(client, cmd, stdout, result):
    end = ok(client.exec_run(cmd))
    assert end["stdout"] == stdout
    assert end["result"] == result


def test_result_of_failure_keeps_stderr_exact(client):
    end = ok(client.exec_run("printf 'e1\\ne2\\n\\n' >&2; exit 4"))
    assert end["stderr"] == "e1\ne2\n\n"
    assert end["result"] == "e1\ne2\n"


def test_no_output_fields_without_output(client):
    end = ok(client.exec_run("echo hi", output=None))
    for k in ("result", "stdout", "stderr"):
        assert k not in end, end


def test_end_fields_and_timestamps(client):
    before = time.time_ns()
    res = client.exec_run("echo a; echo b >&2; sleep 0.2; echo c")
    after = time.time_ns()
    end = ok(res)
    for k in END_FIELDS:
        assert k in end, (k, end)
    for k in ("duration_ms", "cpu_user_us", "cpu_sys_us", "max_rss_kb", "started_ns", "ended_ns",
              "next_seq", "first_seq", "dropped_records", "dropped_bytes"):
        assert isinstance(end[k], int) and end[k] >= 0, (k, end)
    assert end["max_rss_kb"] > 0
    assert end["next_seq"] == 3 and end["first_seq"] == 0
    assert end["dropped_records"] == 0 and end["dropped_bytes"] == 0
    assert before - 10**9 <= end["started_ns"] <= end["ended_ns"] <= after + 10**9
    assert end["started_ns"] == res.started["started_ns"]
    assert abs(end["duration_ms"] - (end["ended_ns"] - end["started_ns"]) / 1e6) <= 2
    assert 150 <= end["duration_ms"] <= T(3000)
    seqs = [r[0] for r in res.records]
    assert seqs == [0, 1, 2]
    ts = [r[1] for r in res.records]
    assert ts == sorted(ts)
    assert end["started_ns"] <= ts[0] and ts[-1] <= end["ended_ns"]
    assert ts[2] - ts[1] >= 150 * 10**6  # `c` came after the sleep


@pytest.mark.serial
def test_cpu_accounting(client):  # a busy neighbour would take its CPU
    res = client.exec_run(argv=["awk", "BEGIN{for(i=0;i<4000000;i++)s+=i; print s}"],
                          timeout=T(30))
    end = ok(res)
    cpu_ms = (end["cpu_user_us"] + end["cpu_sys_us"]) / 1000
    assert cpu_ms > 0.2 * end["duration_ms"] and cpu_ms > 20, end


def test_max_rss(client):
    small = ok(client.exec_run(argv=["true"]))["max_rss_kb"]
    big = ok(client.exec_run(argv=["python3", "-c", "b = bytearray(64 << 20); b[::4096] = "
                                                    "b'x' * len(b[::4096])"], timeout=T(20)))
    assert big["status"] == "completed", big
    assert big["max_rss_kb"] > 60 * 1024 > small


def test_unicode_and_spaces_in_cwd_and_argv(client, tmp_path):
    d = tmp_path / "dir with späce ✓"
    d.mkdir()
    res = client.exec_run(argv=["sh", "-c", 'pwd; printf "%s\\n" "$1"', "_", "árgv ✓ 'q' \"dq\""],
                          cwd=str(d))
    assert res.end["status"] == "completed", res
    assert res.stdout.decode() == "%s\nárgv ✓ 'q' \"dq\"\n" % d
