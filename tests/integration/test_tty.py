"""Terminal runs (issue 14, PROTOCOL.md 4.9): a pty as controlling terminal and fds 0-2, raw
stream-3 output, stdin to the master, resize, job control through the line discipline, and the
same retention, flow control, cancel, timeout and leak guarantees as any run.

Every test drives a real boxd over its socket with real processes on real pseudo-terminals.
Typed input is echoed by the terminal, so the output a test waits for is never spelled the way
it was typed (`echo ali''ve` prints `alive`; the echo shows the quotes)."""

import os
import pwd
import re
import shutil
import time

import pytest

import boxd_client
from conftest import T, marker, procs_with_env, wait_for

TTY = 3


class Term:
    """One terminal run on a connection: its output as it arrives, and typing into it."""

    def __init__(self, c, req, started):
        self.c, self.req, self.started = c, req, started
        self.id = started["id"]
        self.out = b""
        self.records = []
        self.end = None
        self.gaps = []

    def _take(self, m):
        if m["type"] == "output":
            for rec in m["lines"]:
                self.records.append(rec)
                self.out += boxd_client.as_bytes(rec[3])
        elif m["type"] == "end":
            self.end = m
        elif m["type"] == "gap":
            self.gaps.append(m)
        else:
            raise AssertionError("unexpected %r" % (m,))

    def expect(self, pattern, timeout=None):
        """Reads until the output (all of it so far) matches the regex pattern (bytes)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + (timeout or T(10))
        while not rx.search(self.out):
            left = deadline - time.monotonic()
            if left <= 0 or self.end is not None:
                raise AssertionError("no %r in the terminal's output (end %r): %r"
                                     % (pattern, self.end, self.out[-2000:]))
            try:
                self._take(self.c.recv_req(self.req, left))
            except TimeoutError:
                raise AssertionError("no %r in the terminal's output: %r"
                                     % (pattern, self.out[-2000:])) from None
        return rx.search(self.out)

    def type(self, data):
        r = self.c.stdin(self.id, data=data)
        assert r["type"] == "ok", r

    def wait_end(self, timeout=None):
        deadline = time.monotonic() + (timeout or T(20))
        while self.end is None:
            left = deadline - time.monotonic()
            assert left > 0, "no end: %r" % self.out[-2000:]
            self._take(self.c.recv_req(self.req, left))
        return self.end


def start(c, rows=24, cols=80, **opts):
    req = c.exec_start(tty={"rows": rows, "cols": cols}, **opts)
    r = c.recv_req(req, T(10))
    assert r["type"] == "started", r
    return Term(c, req, r)


def shell(c, argv=("sh", "-i"), **opts):
    """An interactive shell with a known prompt, ready for input."""
    t = start(c, argv=list(argv), env={"PS1": "PROMPT> ", "HOME": "/tmp"}, **opts)
    t.expect(rb"PROMPT> ")
    return t


# ---- the terminal itself ----------------------------------------------------------------------

def test_terminal_is_the_runs_stdio_and_ctty(shared_client):
    c = shared_client
    assert "tty" in c.hello_reply["capabilities"]
    t = start(c, rows=33, cols=101, output=True,
              cmd="tty; stty size; echo TERM=$TERM; test -t 0 -a -t 1 -a -t 2 && echo all-ttys;"
                  " ps -o sid=,pgid=,tpgid= -p $$; echo pid=$$; exit 3")
    end = t.wait_end()
    out = t.out.decode()
    assert re.search(r"^/dev/pts/\d+\r$", out, re.M), out
    assert "33 101\r\n" in out and "TERM=xterm-256color\r\n" in out and "all-ttys\r\n" in out
    # The shell is the session leader and its group the terminal's foreground group.
    sid, pgid, tpgid = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*\r$", out, re.M).groups()
    pid = re.search(r"pid=(\d+)", out).group(1)
    assert sid == pgid == tpgid == pid == str(t.started["pid"]), out
    assert end["exit_code"] == 3 and end["status"] == "failed" and end["reason"] == "exit"
    # One stream, raw: the terminal's \r\n, not split into lines; end carries it as stdout.
    assert {rec[2] for rec in t.records} == {TTY}, t.records
    assert boxd_client.as_bytes(end["stdout"]) == t.out and end["stderr"] == ""
    assert boxd_client.as_bytes(end["result"]) == t.out[:-1]


def test_request_env_sets_term_and_the_run_keeps_its_guarantees(shared_client):
    c = shared_client
    res = c.exec_run(cmd="echo TERM=$TERM; ls /proc/self/fd; grep Seccomp: /proc/self/status",
                     tty={"rows": 5, "cols": 40}, env={"TERM": "vt100"})
    out = b"".join(r[3] for r in res.records)
    assert b"TERM=vt100\r\n" in out, out
    # fds 0, 1, 2 and ls's own directory fd: nothing of boxd's leaks into a terminal run.
    fds = re.search(rb"TERM=vt100\r\n((?:\d+\s+)+)", out).group(1).split()
    assert fds == [b"0", b"1", b"2", b"3"], out
    assert re.search(rb"Seccomp:\s+2", out), out  # the filter, as for every run


def test_code_run_with_a_terminal(shared_client):
    c = shared_client
    req = c.next_req()
    c.send({"type": "code", "req": req, "lang": "sh", "code": "tty; stty size",
            "tty": {"rows": 7, "cols": 9}, "output": True})
    res = c.collect(req, timeout=T(20))
    assert res.end["exit_code"] == 0, res
    out = b"".join(r[3] for r in res.records)
    assert re.match(rb"/dev/pts/\d+\r\n7 9\r\n$", out), out
    assert {r[2] for r in res.records} == {TTY}


def test_login_shell(shared_client):
    c = shared_client
    pw = pwd.getpwuid(os.getuid())  # boxd's run user is its own here
    t = start(c, login=True)
    t.type("echo \"[$0|$SHELL|$PWD]\"; exit 4\n")
    t.expect(re.escape(("[-%s|%s|%s]" % (os.path.basename(pw.pw_shell), pw.pw_shell,
                                         pw.pw_dir)).encode()))
    assert t.wait_end()["exit_code"] == 4
    entry = [e for e in c.list()["runs"] if e["id"] == t.id][0]
    assert entry["argv"] == ["-" + os.path.basename(pw.pw_shell)], entry


def test_run_user_owns_its_terminal(start_boxd):
    d = start_boxd("--user", "nobody")
    c = d.client()
    res = c.exec_run(cmd="id -un; stat -c '%U %a' $(tty); test -t 0 && echo ok",
                     tty={"rows": 24, "cols": 80})
    out = b"".join(r[3] for r in res.records)
    assert out == b"nobody\r\nnobody 620\r\nok\r\n", out
    assert res.end["exit_code"] == 0


# ---- window size ------------------------------------------------------------------------------

def test_resize_reaches_the_foreground_group(shared_client):
    c = shared_client
    t = start(c, rows=24, cols=80,
              argv=["sh", "-c", 'trap "stty size" WINCH; echo ready; while :; do sleep 0.05; done'])
    t.expect(rb"ready")
    r = c.request("resize", id=t.id, rows=40, cols=120)
    assert r == {"type": "ok", "req": r["req"], "id": t.id}, r
    t.expect(rb"40 120\r\n")
    entry = [e for e in c.list()["runs"] if e["id"] == t.id][0]
    assert entry["tty"] == {"rows": 40, "cols": 120}, entry
    assert c.request("resize", id=t.id, rows=1, cols=4096)["type"] == "ok"
    t.expect(rb"1 4096\r\n")
    assert c.cancel(t.id, grace_ms=200)["type"] == "ok"
    assert t.wait_end()["status"] == "cancelled"
    r = c.request("resize", id=t.id, rows=10, cols=10)
    assert r["type"] == "error" and r["code"] == "run_ended" and r["id"] == t.id, r


def test_resize_errors(shared_client):
    c = shared_client
    r = c.request("resize", id="tty-no-such-run", rows=10, cols=10)
    assert r["code"] == "not_found", r
    plain = c.request("exec", cmd="sleep 30", id="tty-plain", follow=False)
    assert plain["type"] == "started", plain
    r = c.request("resize", id="tty-plain", rows=10, cols=10)
    assert r["code"] == "bad_request" and "no terminal" in r["message"], r
    c.cancel("tty-plain", grace_ms=100)
    t = start(c, argv=["sleep", "30"])
    for rows, cols in [(0, 10), (10, 0), (4097, 10), (10, 4097), (-1, 10), ("10", 10),
                       (None, 10), (10.0, 10)]:
        fields = {"rows": rows, "cols": cols}
        fields = {k: v for k, v in fields.items() if v is not None}
        r = c.request("resize", id=t.id, **fields)
        assert r["code"] == "bad_request" and r["id"] == t.id, (rows, cols, r)
    assert [e for e in c.list()["runs"] if e["id"] == t.id][0]["tty"] == {"rows": 24, "cols": 80}
    c.cancel(t.id, grace_ms=100)
    t.wait_end()


def test_bad_tty_values(shared_client):
    c = shared_client
    bad = [{"rows": 0, "cols": 80}, {"rows": 24, "cols": 4097}, {"rows": -1, "cols": 80},
           {"rows": "24", "cols": 80}, {"rows": 24}, {}, [24, 80], "24x80", 24, True,
           {"rows": 24.0, "cols": 80}]
    for v in bad:
        for typ, extra in (("exec", {"argv": ["true"]}), ("code", {"lang": "sh", "code": "true"})):
            r = c.request(typ, tty=v, **extra)
            assert r["type"] == "error" and r["code"] == "bad_request", (typ, v, r)
            assert "tty" in r["message"], r
    for fields in ({"login": True}, {"login": True, "cmd": "true", "tty": {"rows": 2, "cols": 2}},
                   {"login": True, "argv": ["sh"], "tty": {"rows": 2, "cols": 2}},
                   {"login": 1, "tty": {"rows": 2, "cols": 2}}):
        r = c.request("exec", **fields)
        assert r["type"] == "error" and r["code"] == "bad_request", (fields, r)
    # The edges are accepted.
    for v in ({"rows": 1, "cols": 1}, {"rows": 4096, "cols": 4096}):
        res = c.exec_run(cmd="stty size", tty=v)
        assert b"".join(r[3] for r in res.records) == b"%d %d\r\n" % (v["rows"], v["cols"])


# ---- input and job control ---------------------------------------------------------------------

def test_ctrl_c_interrupts_the_foreground_job_only(shared_client):
    c = shared_client
    t = shell(c)
    t.type("sleep 100\n")
    t.expect(rb"sleep 100\r\n")
    # The sleep is the terminal's foreground group: wait until it runs.
    assert wait_for(lambda: any(_cmdline(p) == b"sleep\x00100\x00" for p in os.listdir("/proc")
                                if p.isdigit() and _ppid(p) == t.started["pid"]), T(5))
    began = time.monotonic()
    t.type("\x03")
    t.type("echo ali''ve\n")
    t.expect(rb"alive\r\n")  # after the prompt or on a line of its own
    assert time.monotonic() - began < T(10)
    assert not any(_cmdline(p) == b"sleep\x00100\x00" for p in os.listdir("/proc")
                   if p.isdigit() and _ppid(p) == t.started["pid"])  # the job is gone
    t.type("exit 0\n")
    assert t.wait_end()["exit_code"] == 0


def _cmdline(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ppid(pid):
    try:
        with open("/proc/%s/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_ctrl_z_and_fg_in_bash(shared_client):
    c = shared_client
    t = shell(c, argv=("bash", "--norc", "--noprofile", "-i"))
    t.type("sleep 2\n")
    t.expect(rb"sleep 2\r\n")
    time.sleep(0.3)
    t.type("\x1a")
    t.expect(rb"Stopped\s+sleep 2")
    t.type("echo stop''ped-$?\n")
    t.expect(rb"stopped-148\r\n")  # 128 + SIGTSTP
    t.type("fg; echo resu''med-$?\n")
    t.expect(rb"resumed-0\r\n", T(10))
    t.type("exit 7\n")
    assert t.wait_end()["exit_code"] == 7


def test_eof_writes_veof_and_the_terminal_stays_open(shared_client):
    c = shared_client
    t = start(c, output=True, argv=["sh", "-c", "cat; echo after-cat; read x; echo got-$x"])
    t.type("abc\n")
    t.expect(rb"abc\r\nabc\r\n")  # the echo, then cat's copy
    r = c.stdin(t.id, eof=True)
    assert r["type"] == "ok", r
    t.expect(rb"after-cat\r\n")
    t.type("q\n")
    t.expect(rb"got-q\r\n")
    end = t.wait_end()
    assert end["exit_code"] == 0
    r = c.stdin(t.id, data="late\n")
    assert r["type"] == "error" and r["code"] == "run_ended", r


def test_stdin_limit_applies(start_boxd):
    d = start_boxd("--stdin-bytes", "16")
    c = d.client()
    t = start(c, argv=["sleep", "30"])
    r = c.stdin(t.id, data="x" * 17)
    assert r["code"] == "limit" and r["limit"] == "stdin_bytes", r
    assert c.stdin(t.id, data="x" * 16)["type"] == "ok"
    c.cancel(t.id, grace_ms=100)
    t.wait_end()


# ---- the end: exit, cancel, timeout --------------------------------------------------------------

def test_cancel_kills_the_whole_tree(shared_client):
    c = shared_client
    t = start(c, cmd="sleep 100 & echo bg=$!; sh -c 'echo inner=$$; sleep 100'")
    m = t.expect(rb"bg=(\d+)\r\n(?:.*\r\n)*?inner=(\d+)\r\n")
    pids = [int(m.group(1)), int(m.group(2))]
    assert all(os.path.exists("/proc/%d" % p) for p in pids)
    assert c.cancel(t.id, grace_ms=500)["type"] == "ok"
    end = t.wait_end()
    assert end["status"] == "cancelled" and end["reason"] == "cancel", end
    # The end comes once the tree is gone (4.3).
    assert wait_for(lambda: not any(os.path.exists("/proc/%d" % p) for p in pids), T(3)), pids


def _lingering_tty_run_is_cancelled(d):
    c = d.client()
    tag = marker()
    # What escaped the session keeps the terminal open: the run ends (drain window) and lingers.
    # (HUP ignored: the session leader's exit sends it to the foreground group, which the sleep
    # is still in until its setsid has run.)
    r = c.request("exec", id="tty-linger", tty={"rows": 24, "cols": 80}, env={"BOXD_TTY": tag},
                  cmd="trap '' HUP; setsid sleep 1001 & echo left")
    assert r["type"] == "started", r
    end = c.wait("tty-linger", timeout=T(10))
    assert end["status"] == "completed", end
    assert wait_for(lambda: len(procs_with_env("BOXD_TTY", tag)) == 1, T(5))
    entry = [e for e in c.list()["runs"] if e["id"] == "tty-linger"][0]
    assert entry["lingering"] is True, entry
    # Cancel of the ended run finds it by the terminal it holds (4.4), cgroup or not.
    assert c.cancel("tty-linger")["ended"] is True
    assert wait_for(lambda: not procs_with_env("BOXD_TTY", tag), T(5)), procs_with_env("BOXD_TTY", tag)
    assert wait_for(lambda: not [e for e in c.list()["runs"] if e["id"] == "tty-linger"][0]
                    ["lingering"], T(5))


def test_cancel_of_a_lingering_terminal_run(start_boxd):
    _lingering_tty_run_is_cancelled(start_boxd())


def test_cancel_of_a_lingering_terminal_run_without_cgroup(start_boxd):
    import conftest
    wrapper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boxd-nocgroup.sh")
    if not os.access("/usr/bin/unshare", os.X_OK) or not conftest.cgroup2_available():
        pytest.skip("needs unshare and a cgroup2 mount to make read-only")
    real = conftest.BOXD_BIN
    conftest.BOXD_BIN = wrapper
    try:
        d = start_boxd(env={"BOXD_REAL_BIN": real})
    finally:
        conftest.BOXD_BIN = real
    assert d.client().info()["kill_mechanism"] == "pgroup"
    _lingering_tty_run_is_cancelled(d)


def test_timeout(shared_client):
    c = shared_client
    began = time.monotonic()
    t = start(c, argv=["sleep", "100"], timeout_ms=300, grace_ms=200)
    end = t.wait_end()
    assert end["reason"] == "timeout" and end["status"] == "failed", end
    assert time.monotonic() - began < T(5)


def test_ten_terminal_runs_at_once(shared_client):
    c = shared_client
    terms = [start(c, rows=10 + i, cols=50 + i, output=True,
                   argv=["sh", "-c", "sleep 0.3; stty size; tty; echo n$0", str(i)])
             for i in range(10)]
    names = set()
    for i, t in enumerate(terms):
        end = t.wait_end()
        assert end["exit_code"] == 0, end
        m = re.match(rb"(\d+) (\d+)\r\n(/dev/pts/\d+)\r\nn(\d+)\r\n$", t.out)
        assert m and m.groups()[0:2] == (b"%d" % (10 + i), b"%d" % (50 + i)), t.out
        assert m.group(4) == b"%d" % i
        names.add(m.group(3))
    assert len(names) == 10, names  # each its own terminal


# ---- detach, attach, retention -------------------------------------------------------------------

def test_detach_and_attach_from_another_connection_replays_history(boxd):
    a = boxd.client()
    t = start(a, argv=["sh", "-c", "echo first-words; read x; echo got-$x; exit 5"])
    t.expect(rb"first-words\r\n")
    assert a.request("detach", id=t.id)["type"] == "ok"
    a.close()
    b = boxd.client()
    req = b.next_req()
    b.send({"type": "attach", "req": req, "id": t.id, "output": True})
    att = b.recv_req(req, T(5))
    assert att["type"] == "attached" and att["tty"] == {"rows": 24, "cols": 80}, att
    assert att["ended"] is False and att["next_seq"] >= 1
    u = Term(b, req, att)
    u.id = t.id
    u.expect(rb"^first-words\r\n")  # the history comes first, from seq 0
    assert u.records[0][0] == 0
    u.type("zz\n")
    u.expect(rb"got-zz\r\n")
    end = u.wait_end()
    assert end["exit_code"] == 5 and boxd_client.as_bytes(end["stdout"]) == u.out


def test_unread_output_past_log_bytes_gives_a_gap(start_boxd):
    d = start_boxd("--log-bytes", "65536")
    c = d.client()
    c.exec_run(cmd="true", tty={"rows": 2, "cols": 2})  # warm-up
    _, rss0, _, _ = d.counts()
    # Nobody reads: about 7 MB through the terminal, 100 times log_bytes.
    r = c.request("exec", id="tty-flood", follow=False, tty={"rows": 24, "cols": 80},
                  cmd="seq 1 1000000")
    assert r["type"] == "started", r
    end = c.wait("tty-flood", timeout=T(60))
    assert end["exit_code"] == 0 and end["dropped_records"] > 0, end
    assert d.alive()
    res = c.attach("tty-flood", from_seq=0, timeout=T(20))
    assert res.started["first_seq"] > 0
    assert res.gaps and res.gaps[0]["from_seq"] == 0
    assert res.gaps[0]["to_seq"] == res.started["first_seq"] == res.records[0][0]
    kept = b"".join(r[3] for r in res.records)
    assert len(kept) <= 2 * 65536 and kept.endswith(b"999999\r\n1000000\r\n"), len(kept)
    # Retention bounded boxd's memory.
    _, rss1, _, _ = d.counts()
    assert rss1 - rss0 < 16 * 1024, (rss0, rss1)


def test_a_follower_that_does_not_read_holds_the_run_back(start_boxd):
    d = start_boxd("--log-bytes", "262144")
    c = d.client()
    c.exec_run(cmd="true", tty={"rows": 2, "cols": 2})
    _, rss0, _, _ = d.counts()
    stuck = d.client()
    stuck.exec_start(id="tty-stuck", tty={"rows": 24, "cols": 80}, cmd="yes tty-output-line")
    time.sleep(T(2))  # the follower reads nothing meanwhile
    entry = [e for e in c.list()["runs"] if e["id"] == "tty-stuck"][0]
    # (What went into the connection's queue, at most conn_queue, is no longer owed: retention
    # may drop it from the log, as for pipes.)
    assert entry["state"] == "running", entry
    _, rss1, _, _ = d.counts()
    assert rss1 - rss0 < 16 * 1024, (rss0, rss1)
    # The run is held back (its writes block), so its log stays near the bound.
    n1 = entry["next_seq"]
    time.sleep(0.5)
    n2 = [e for e in c.list()["runs"] if e["id"] == "tty-stuck"][0]["next_seq"]
    assert n2 == n1, (n1, n2)
    assert c.cancel("tty-stuck", grace_ms=100)["type"] == "ok"
    assert c.wait("tty-stuck", timeout=T(10))["status"] == "cancelled"
    assert d.alive()


# ---- no leaks --------------------------------------------------------------------------------------

def test_no_fd_leak_after_50_terminal_runs(boxd):
    c = boxd.client()
    c.exec_run(cmd="tty", tty={"rows": 24, "cols": 80})
    time.sleep(0.1)
    fds, _, threads, _ = boxd.counts()
    for batch in range(5):
        terms = [start(c, argv=["sh", "-c", "echo $0; read x; echo $x", "b%d-%d" % (batch, i)])
                 for i in range(10)]
        for i, t in enumerate(terms):
            t.expect(b"b%d-%d" % (batch, i))
            if i % 2:
                t.type("bye\n")  # half end by themselves, half are cancelled
            else:
                assert c.cancel(t.id, grace_ms=100)["type"] == "ok"
        for t in terms:
            t.wait_end()
    ok = wait_for(lambda: boxd.counts()[0] <= fds and boxd.counts()[3] == 0, T(3))
    nfd, _, thr, zombies = boxd.counts()
    assert ok, "fds %d (baseline %d), zombies %d" % (nfd, fds, zombies)
    assert thr == threads
    assert c.info()["runs_live"] == 0
