"""boxctl shell, exec -t and attach on terminal runs, driven through a real pseudo-terminal the
way a person uses them: keys typed into boxctl's terminal, the screen read back, window resizes,
Ctrl-C, Ctrl-Z, detach and reattach, and boxctl killed with SIGKILL mid-session.

Each test starts its own daemon. They need the agent's terminal runs: without the capability
"tty" in hello they are skipped (and say so)."""

import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import pytest

from conftest import BOXCTL_BIN, T, wait_for

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from ptyterm import PtyTerm  # noqa: E402

# A prompt no command output contains, so expect() finds the shell waiting for a key. PS1 says
# it as \100P> (bash expands \100 to @), so the typed command line never matches it.
PROMPT = rb"@P> "
SHELL = ["-e", "PS1=\\100P> ", "--", "bash", "--norc", "--noprofile", "-i"]


def require_tty(d):
    """Skips the test unless daemon d has terminal runs and boxctl is built."""
    c = d.client()
    caps = (c.hello_reply or {}).get("capabilities", [])
    if "tty" not in caps:
        pytest.skip("this boxd has no terminal runs (hello capabilities %r lack \"tty\")" % caps)
    if not os.access(BOXCTL_BIN, os.X_OK):
        pytest.skip("boxctl binary not found at %s (set BOXCTL_BIN)" % BOXCTL_BIN)
    return d


@pytest.fixture
def tty_boxd(boxd):
    return require_tty(boxd)


def boxctl_argv(d, *args):
    return [BOXCTL_BIN, "-s", d.sock] + list(args)


def bash(d, rows=24, cols=80, extra=()):
    """boxctl shell running an interactive bash with PROMPT, on a fresh terminal."""
    t = PtyTerm(boxctl_argv(d, "shell", *extra, *SHELL), rows=rows, cols=cols)
    t.expect(PROMPT, timeout=T(10))
    return t


def run_cmd(t, line, until=PROMPT, timeout=10):
    """Types line and Enter; returns the screen bytes up to the next prompt."""
    t.send(line.encode() + b"\r")
    start = t.pos
    t.expect(until, timeout=T(timeout))
    return bytes(t.output[start:t.pos])


def boxctl_procs():
    """Pids of live boxctl processes of this build (boxctl or its terminal guard)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            exe = os.readlink("/proc/%s/exe" % p)
            with open("/proc/%s/stat" % p) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if exe == os.path.realpath(BOXCTL_BIN) and state != "Z":
            out.append(int(p))
    return out


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_login_shell_has_a_terminal_and_exit_code(tty_boxd):
    # No CMD: the run user's login shell from passwd, as a login shell (argv[0] "-bash").
    with PtyTerm(boxctl_argv(tty_boxd, "shell")) as t:
        time.sleep(0.2)
        t.send(b"echo zero=$0; tty; echo term=$TERM; echo done-$((6*7))\r")
        t.expect(rb"zero=-\w+", timeout=T(10))
        t.expect(rb"/dev/pts/\d+\r\n")
        t.expect(rb"term=xterm-256color\r\n")
        t.expect(rb"done-42")
        # boxctl's own terminal is raw while the shell runs...
        assert not t.is_canonical()
        t.send(b"exit 3\r")
        assert t.wait(timeout=T(10)) == 3
        # ...and cooked again afterwards.
        assert t.is_canonical()


def stty_size_becomes(t, rows, cols):
    """`stty size` in the box until it says rows cols: the SIGWINCH goes to boxctl, which sends
    `resize`, so the new size lands a moment after the local one. Returns the last answer."""
    want = b"%d %d\r\n" % (rows, cols)
    deadline = time.monotonic() + T(5)
    while True:
        # The echo of $((...)) marks the end of this answer: bash also redraws its prompt on
        # SIGWINCH, so the prompt alone does not.
        out = run_cmd(t, "stty size; echo size-$((1+1))", until=rb"size-2\r\n")
        if want in out or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def test_stty_size_follows_resize(tty_boxd):
    with bash(tty_boxd, rows=24, cols=80) as t:
        assert b"24 80\r\n" in run_cmd(t, "stty size")
        t.resize(40, 123)
        out = stty_size_becomes(t, 40, 123)
        assert b"40 123\r\n" in out, out
        t.resize(10, 33)
        out = stty_size_becomes(t, 10, 33)
        assert b"10 33\r\n" in out, out
        t.send(b"exit\r")
        assert t.wait(timeout=T(10)) == 0


def test_less_and_top_interactively(tty_boxd):
    with bash(tty_boxd, rows=24, cols=80) as t:
        assert b"xterm-256color" in run_cmd(t, "echo $TERM")
        run_cmd(t, "seq 1 500 > /tmp/boxctl-tty-less.txt")
        # less fills the screen (23 lines and its prompt), then pages on space, quits on q.
        t.send(b"less /tmp/boxctl-tty-less.txt\r")
        t.expect(rb"23\r?\n", timeout=T(10))
        t.expect(rb"boxctl-tty-less\.txt|:")
        t.send(b" ")
        t.expect(rb"46")
        t.send(b"G")
        t.expect(rb"500")
        t.expect(rb"\(END\)")
        t.send(b"q")
        t.expect(PROMPT, timeout=T(5))
        # top, interactive: its header, then q leaves it.
        t.send(b"top\r")
        t.expect(rb"top - \d+:\d+:\d+", timeout=T(10))
        t.expect(rb"Tasks:")
        t.expect(rb"PID")
        t.send(b"q")
        t.expect(PROMPT, timeout=T(5))
        assert b"still-here" in run_cmd(t, "echo still-here")
        t.send(b"exit 0\r")
        assert t.wait(timeout=T(10)) == 0


def test_ctrl_c_interrupts_the_foreground_job_only(tty_boxd):
    with bash(tty_boxd) as t:
        t.send(b"sleep 100; echo after-sleep-$?\r")
        t.read_for(0.5)
        t0 = time.monotonic()
        t.send(b"\x03")
        t.expect(PROMPT, timeout=T(5))
        assert time.monotonic() - t0 < T(5)
        # The sleep died of SIGINT; the list after it was abandoned as bash does; the shell lives.
        assert not re.search(rb"after-sleep-\d", t.output)
        assert b"alive-7" in run_cmd(t, "echo alive-$((3+4))")
        assert b"130" in run_cmd(t, "sleep 100 & kill -INT %1; wait %1; echo $?")
        t.send(b"exit 0\r")
        assert t.wait(timeout=T(10)) == 0


def test_ctrl_z_then_fg(tty_boxd):
    with bash(tty_boxd) as t:
        t.send(b"sleep 100\r")
        t.read_for(0.5)
        t.send(b"\x1a")
        t.expect(rb"Stopped\s+sleep 100", timeout=T(5))
        t.expect(PROMPT)
        assert re.search(rb"\[1\]\+\s+Stopped", run_cmd(t, "jobs"))
        t.send(b"fg\r")
        t.expect(rb"sleep 100\r\n", timeout=T(5))
        t.read_for(0.3)
        t.send(b"\x03")
        t.expect(PROMPT, timeout=T(5))
        assert run_cmd(t, "jobs").count(b"sleep") == 0
        t.send(b"exit 0\r")
        assert t.wait(timeout=T(10)) == 0


def test_exit_status_is_the_shells(tty_boxd):
    with bash(tty_boxd) as t:
        t.send(b"exit 3\r")
        assert t.wait(timeout=T(10)) == 3
        assert t.is_canonical()
    with bash(tty_boxd) as t:
        t.send(b"kill -KILL $$\r")
        assert t.wait(timeout=T(10)) == 128 + 9
    with PtyTerm(boxctl_argv(tty_boxd, "exec", "-t", "tty; exit 4")) as t:
        t.expect(rb"/dev/pts/\d+", timeout=T(10))
        assert t.wait(timeout=T(10)) == 4
    with PtyTerm(boxctl_argv(tty_boxd, "shell", "no-such-program-here")) as t:
        assert t.wait(timeout=T(10)) == 127


def test_terminal_restored_after_boxctl_is_sigkilled(tty_boxd):
    # A wrapper shell on the terminal runs boxctl, as a person would; boxctl is killed with
    # SIGKILL mid-session: nothing in boxctl runs, its guard puts the modes back.
    wrapper_env = {"PS1": "wrapper$ ", "ENV": ""}
    with PtyTerm(["/bin/sh", "-i"], env=wrapper_env) as t:
        t.expect(rb"wrapper\$ ", timeout=T(5))
        assert t.is_canonical()
        cmd = " ".join("'%s'" % a for a in boxctl_argv(tty_boxd, "shell", *SHELL))
        t.send(cmd.encode() + b"\r")
        t.expect(PROMPT, timeout=T(10))
        assert not t.is_canonical(), "boxctl did not make the terminal raw"
        kids = [p for p in children(t.proc.pid) if p in boxctl_procs()]
        assert len(kids) == 1, kids
        ctl = kids[0]
        guards = children(ctl)
        assert len(guards) == 1, "boxctl has no guard child: %r" % guards
        os.kill(ctl, signal.SIGKILL)
        t.expect(rb"wrapper\$ ", timeout=T(5))
        assert wait_for(t.is_canonical, T(5)), "the terminal stayed raw after boxctl died"
        t.send(b"stty -a\r")
        t.expect(rb"wrapper\$ ", timeout=T(5))
        out = t.output[-3000:]
        assert re.search(rb"(?<!-)icanon", out), out
        assert re.search(rb"(?<![-\w])echo(?!\w)", out), out
        # The guard has exited too: no boxctl process is left.
        assert wait_for(lambda: guards[0] not in boxctl_procs(), T(5)), "the guard is still there"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_restores_and_leaves_the_run(tty_boxd, sig):
    with bash(tty_boxd) as t:
        run_cmd(t, "echo before-term")
        assert not t.is_canonical()
        t.proc.send_signal(sig)
        rc = t.wait(timeout=T(5))
        assert rc == 128 + sig
        assert t.is_canonical()
        m = re.search(rb"left run (\S+) going; boxctl attach (\S+) to return", t.output)
        assert m, t.output[-500:]
        rid = m.group(1).decode()
    with PtyTerm(boxctl_argv(tty_boxd, "attach", rid)) as t2:
        t2.expect(rb"before-term", timeout=T(10))
        t2.send(b"exit 6\r")
        assert t2.wait(timeout=T(10)) == 6


def test_ten_shells_at_once(tty_boxd):
    base_fds = tty_boxd.counts()[0]
    terms = []
    try:
        for i in range(10):
            terms.append(PtyTerm(boxctl_argv(tty_boxd, "shell", *SHELL)))
        for t in terms:
            t.expect(PROMPT, timeout=T(20))
        for i, t in enumerate(terms):
            t.send(("echo shell-$((%d*1000)); tty\r" % i).encode())
        ptys = set()
        for i, t in enumerate(terms):
            t.expect(("shell-%d\r\n" % (i * 1000)).encode(), timeout=T(10))
            ptys.add(t.expect(rb"/dev/pts/\d+").group(0))
        assert len(ptys) == 10, ptys
        for i, t in enumerate(terms):
            t.send(("exit %d\r" % (i + 10)).encode())
        for i, t in enumerate(terms):
            assert t.wait(timeout=T(15)) == i + 10
            assert t.is_canonical()
    finally:
        for t in terms:
            t.close()
    # Ten pseudo-terminals, ten connections: boxd holds none of their fds afterwards and has
    # reaped every shell.
    assert wait_for(lambda: tty_boxd.counts()[0] <= base_fds and tty_boxd.counts()[3] == 0,
                    T(5)), (tty_boxd.counts(), base_fds)


def test_detach_then_reattach_with_history(tty_boxd):
    with bash(tty_boxd) as t:
        run_cmd(t, "echo history-$((20+3))")
        t.send(b"\x10\x11")  # Ctrl-P Ctrl-Q
        m = t.expect(rb"boxctl: detached from (\S+); boxctl attach (\S+) to return", timeout=T(5))
        assert m.group(1) == m.group(2)
        rid = m.group(1).decode()
        assert t.wait(timeout=T(5)) == 0
        assert t.is_canonical()
    # The run is still going.
    p = subprocess.run(boxctl_argv(tty_boxd, "list"), stdout=subprocess.PIPE, timeout=T(10))
    assert re.search((r"^%s\s+running" % re.escape(rid)).encode(), p.stdout, re.M), p.stdout
    with PtyTerm(boxctl_argv(tty_boxd, "attach", rid), rows=30, cols=90) as t2:
        t2.expect(rb"history-23", timeout=T(10))  # the retained screen output, replayed
        assert not t2.is_canonical()
        # The run's terminal takes the new window's size on attach.
        t2.mark()
        t2.send(b"stty size\r")
        t2.expect(rb"30 90\r\n", timeout=T(5))
        t2.expect(PROMPT)
        t2.send(b"exit 5\r")
        assert t2.wait(timeout=T(10)) == 5
        assert t2.is_canonical()


def test_detach_keys_are_held_then_sent_and_configurable(tty_boxd):
    # cat -v shows what reached the run: a lone Ctrl-P followed by another key arrives as both.
    with PtyTerm(boxctl_argv(tty_boxd, "shell", "cat", "-v")) as t:
        time.sleep(0.3)
        t.send(b"\x10a\r")
        t.expect(rb"\^Pa\r\n", timeout=T(10))
        t.send(b"\x10\x11")
        m = t.expect(rb"detached from (\S+);", timeout=T(5))
        assert t.wait(timeout=T(5)) == 0
        rid = m.group(1).decode()
    # Other keys: Ctrl-P is a plain key then (Ctrl-Q is the run terminal's XON: not shown).
    with PtyTerm(boxctl_argv(tty_boxd, "attach", "--detach-keys", "ctrl-a,d", rid)) as t:
        t.expect(rb"\^Pa", timeout=T(10))
        t.mark()
        t.send(b"\x10\x10x\r")
        t.expect(rb"\^P\^Px\r\n", timeout=T(5))
        t.send(b"\x01d")
        t.expect(rb"detached from", timeout=T(5))
        assert t.wait(timeout=T(5)) == 0
    with PtyTerm(boxctl_argv(tty_boxd, "attach", rid)) as t:
        t.expect(rb"\^P\^Px", timeout=T(10))
        t.send(b"\x04")  # Ctrl-D at a line's start: cat reads end-of-file
        assert t.wait(timeout=T(10)) == 0


def test_stdin_not_a_terminal(tty_boxd):
    # Piped input is typed in as it comes; its end sends ^D once; the size is 24x80.
    p = subprocess.run(boxctl_argv(tty_boxd, "shell", "sh", "-c", "stty size; cat"),
                       input=b"piped-line\n", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=T(15))
    assert p.returncode == 0, p
    assert b"24 80" in p.stdout
    assert b"piped-line" in p.stdout


def test_no_boxctl_process_left_behind(tty_boxd):
    before = set(boxctl_procs())
    with bash(tty_boxd) as t:
        t.send(b"exit 0\r")
        assert t.wait(timeout=T(10)) == 0
    assert wait_for(lambda: set(boxctl_procs()) <= before, T(5)), "boxctl or its guard is left"

    def running():
        out = subprocess.run(boxctl_argv(tty_boxd, "list"), stdout=subprocess.PIPE).stdout
        return [l for l in out.splitlines() if b" running " in l]

    assert wait_for(lambda: not running(), T(5)), running()


def test_exec_t_detach_then_attach_and_ctrl_c(tty_boxd):
    p = subprocess.run(boxctl_argv(tty_boxd, "exec", "-t", "--detach",
                                   "echo started-$((5*5)); sleep 100"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=T(10))
    assert p.returncode == 0, p
    rid = p.stdout.decode().strip()
    with PtyTerm(boxctl_argv(tty_boxd, "attach", rid)) as t:
        t.expect(rb"started-25\r\n", timeout=T(10))
        t.read_for(0.2)
        # On a terminal run Ctrl-C is a key: the line discipline sends SIGINT to the sleep.
        t.send(b"\x03")
        assert t.wait(timeout=T(10)) == 128 + signal.SIGINT
        assert t.is_canonical()


def test_ended_terminal_run_replays_and_logs(tty_boxd):
    with bash(tty_boxd) as t:
        run_cmd(t, "echo kept-$((2*21))")
        t.send(b"\x10\x11")
        rid = t.expect(rb"detached from (\S+);", timeout=T(5)).group(1).decode()
        t.wait(timeout=T(5))
    # End it from elsewhere, then attach: the history, then the end, then boxctl's exit code.
    p = subprocess.run(boxctl_argv(tty_boxd, "stdin", rid, "exit 9\r"), timeout=T(10))
    assert p.returncode == 0
    w = subprocess.run(boxctl_argv(tty_boxd, "wait", rid), stdout=subprocess.PIPE, timeout=T(10))
    assert w.returncode == 9, w
    with PtyTerm(boxctl_argv(tty_boxd, "attach", rid)) as t:
        t.expect(rb"kept-42", timeout=T(10))
        assert t.wait(timeout=T(10)) == 9
        assert t.is_canonical()
    # logs prints the screen bytes as they came; --json marks them stream "tty".
    p = subprocess.run(boxctl_argv(tty_boxd, "logs", rid), stdout=subprocess.PIPE, timeout=T(10))
    assert p.returncode == 0 and b"kept-42\r\n" in p.stdout
    p = subprocess.run(boxctl_argv(tty_boxd, "logs", "--json", rid), stdout=subprocess.PIPE,
                       timeout=T(10))
    assert b'"stream":"tty"' in p.stdout


def test_lost_connection_restores_the_terminal(start_boxd):
    d = require_tty(start_boxd())
    with PtyTerm(boxctl_argv(d, "shell", *SHELL)) as t:
        t.expect(PROMPT, timeout=T(10))
        assert not t.is_canonical()
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait(timeout=T(5))
        d.stopped_rc = d.proc.returncode  # killed on purpose: not a failure of the daemon
        rc = t.wait(timeout=T(10))
        assert rc == 1
        assert t.is_canonical()
        assert b"connection to the agent lost" in t.output


def test_a_long_paste_arrives_whole(tty_boxd):
    # 2000 lines typed in one go: boxctl sends them a chunk per stdin request, each after the
    # last was written, while the echo streams back; nothing is lost or reordered.
    lines = [("line-%04d-" % i).encode() + b"x" * 60 for i in range(2000)]
    with bash(tty_boxd) as t:
        t.send(b"stty -echo; cat > /tmp/boxctl-tty-paste.txt\r")
        t.read_for(0.5)
        t.send(b"\r".join(lines) + b"\r")
        t.send(b"\x04")
        t.expect(PROMPT, timeout=T(30))
        t.send(b"stty echo\r")
        t.expect(PROMPT)
        out = run_cmd(t, "wc -l < /tmp/boxctl-tty-paste.txt; md5sum < /tmp/boxctl-tty-paste.txt")
        assert b"2000\r\n" in out, out
        want = hashlib.md5(b"\n".join(lines) + b"\n").hexdigest().encode()
        assert want in out, out
        t.send(b"exit 0\r")
        assert t.wait(timeout=T(10)) == 0


class NoTtyRelay:
    """A unix socket in front of boxd that takes "tty" out of hello's capabilities (an agent
    from before terminal runs) and relays everything else unchanged."""

    def __init__(self, path, target):
        self.path, self.target = path, target
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.srv.close()

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            b.connect(self.target)
            threading.Thread(target=self._pipe, args=(c, b, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(b, c, True), daemon=True).start()

    @staticmethod
    def _recv_exact(s, n):
        buf = b""
        while len(buf) < n:
            d = s.recv(n - len(buf))
            if not d:
                raise EOFError
            buf += d
        return buf

    def _pipe(self, a, b, rewrite_first):
        try:
            if rewrite_first:
                n = struct.unpack(">I", self._recv_exact(a, 4))[0]
                m = msgpack.unpackb(self._recv_exact(a, n), raw=False)
                m["capabilities"] = [c for c in m.get("capabilities", []) if c != "tty"]
                body = msgpack.packb(m, use_bin_type=True)
                b.sendall(struct.pack(">I", len(body)) + body)
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except (OSError, EOFError):
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_an_agent_without_terminal_runs_is_said_so(tty_boxd, tmp_path):
    relay = NoTtyRelay(str(tmp_path / "old.sock"), tty_boxd.sock)
    try:
        for args in (["shell"], ["exec", "-t", "true"], ["exec", "-t", "--detach", "true"]):
            with PtyTerm([BOXCTL_BIN, "-s", relay.path] + args) as t:
                assert t.wait(timeout=T(10)) == 1, t.output
                assert b'capability "tty"' in t.output, t.output
                assert t.is_canonical()
        # Nothing was started on the agent.
        p = subprocess.run(boxctl_argv(tty_boxd, "list"), stdout=subprocess.PIPE, timeout=T(10))
        assert p.stdout.count(b"\n") <= 1, p.stdout
    finally:
        relay.close()


def test_no_detach_keys(tty_boxd):
    # --detach-keys '': Ctrl-P Ctrl-Q are keys like any other (the run's terminal takes ^Q as
    # XON, cat -v shows the ^P) and boxctl stays until the run ends.
    with PtyTerm(boxctl_argv(tty_boxd, "shell", "--detach-keys", "", "cat", "-v")) as t:
        time.sleep(0.3)
        t.send(b"\x10\x11z\r")
        t.expect(rb"\^Pz\r\n", timeout=T(10))
        assert b"detached" not in t.output
        t.send(b"\x04")
        assert t.wait(timeout=T(10)) == 0
    p = subprocess.run(boxctl_argv(tty_boxd, "shell", "--detach-keys", "ctrl-", "true"),
                       stderr=subprocess.PIPE, timeout=T(10))
    assert p.returncode == 2 and b"--detach-keys" in p.stderr


def test_reattach_past_retention_says_what_was_dropped(start_boxd):
    # With 64 KiB kept per run, a reattach after 1 MB of screen output gets a gap: boxctl says
    # which records are gone (on the raw terminal, a line of its own), then the newest screen.
    d = require_tty(start_boxd("--log-bytes", "65536"))
    with PtyTerm(boxctl_argv(d, "shell", *SHELL)) as t:
        t.expect(PROMPT, timeout=T(10))
        run_cmd(t, "seq 1 150000; echo last-$((7*7))", until=rb"last-49\r\n", timeout=30)
        t.expect(PROMPT)
        t.send(b"\x10\x11")
        rid = t.expect(rb"detached from (\S+);", timeout=T(5)).group(1).decode()
        assert t.wait(timeout=T(5)) == 0
    with PtyTerm(boxctl_argv(d, "attach", rid)) as t:
        t.expect(rb"\r\nboxctl: warning: run %s: records 0 to \d+ were dropped by the agent's "
                 rb"log retention\r\n" % re.escape(rid).encode(), timeout=T(10))
        t.expect(rb"149999\r\n150000\r\n")
        t.expect(rb"last-49")
        t.send(b"exit 2\r")
        assert t.wait(timeout=T(10)) == 2
        assert t.is_canonical()


@pytest.fixture
def open_dir():
    """A directory every user may enter (pytest's tmp_path is under a 0700 one)."""
    path = tempfile.mkdtemp(prefix="boxctl-tty-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_shell_as_another_user_in_a_directory(start_boxd, open_dir):
    # --user picks that user's passwd shell, as a login shell; --cwd where it starts; -e adds
    # to its environment. nobody's shell is often nologin: so a CMD for the user, and the
    # login shell for the agent's own user below.
    d = require_tty(start_boxd("--allow-request-user", "nobody"))
    with PtyTerm(boxctl_argv(d, "shell", "--user", "nobody", "--cwd", open_dir, "-e",
                             "GREETING=hi-there", "sh", "-c",
                             "id -un; pwd; echo $GREETING; tty")) as t:
        t.expect(rb"nobody\r\n", timeout=T(10))
        t.expect(re.escape(open_dir.encode()) + rb"\r\n")
        t.expect(rb"hi-there\r\n")
        t.expect(rb"/dev/pts/\d+\r\n")
        assert t.wait(timeout=T(10)) == 0
    with PtyTerm(boxctl_argv(d, "shell", "--cwd", open_dir)) as t:
        time.sleep(0.2)
        t.send(b"pwd; echo shell=$SHELL; exit 7\r")
        t.expect(re.escape(open_dir.encode()) + rb"\r\n", timeout=T(10))
        t.expect(rb"shell=/\S+\r\n")
        assert t.wait(timeout=T(10)) == 7
