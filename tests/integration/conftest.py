"""Fixtures for the boxd integration tests.

Each daemon a test starts is fenced in a fresh cgroup v2 directory (under the host's cgroup2
mount: /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on a pure cgroup2 one), so whatever it or its runs leave behind is killed at
teardown with cgroup.kill. Without cgroup v2 the daemon gets its own session and its process
group is killed instead.

Environment:
  BOXD_BIN            the daemon (default <repo>/build/boxd)
  BOXCTL_BIN          the CLI (default <repo>/build/boxctl)
  BOXD_TEST_SLOW      multiplier for time limits (e.g. 3 under ASan; default 1)
  BOXD_SANITIZED      1: boxd is built with a sanitizer (RSS figures are not asserted)
  BOXD_TSAN           1: with ThreadSanitizer, whose instrumented I/O threads load the CPUs
                      the loop shares with them, so latency figures measure the scheduler
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import boxd_client  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BOXD_BIN = os.environ.get("BOXD_BIN", os.path.join(REPO, "build", "boxd"))
BOXCTL_BIN = os.environ.get("BOXCTL_BIN", os.path.join(REPO, "build", "boxctl"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

# The shared helpers (tests/lib/boxtest.py), re-exported: tests here import them from conftest.
from boxtest import (  # noqa: E402,F401
    CGROOT, SANITIZER_MARKERS, SLOW, T, _find_cgroup2, all_pids, cgroup2_available, fence_kill,
    fence_new, fence_preexec, fence_remove, p99,
    ping_latencies, proc_counts, proc_status, procs_in_pgrp, procs_with_env, read_stat,
    wait_for, zombie_children)


def marker():
    """A unique value to tag a run's processes through its environment."""
    return "m" + secrets.token_hex(8)


# ---- the daemon ---------------------------------------------------------------------------------

_help_cache = {}


def boxd_help():
    """The daemon's --help text (stdout + stderr), cached."""
    if "text" not in _help_cache:
        if not os.access(BOXD_BIN, os.X_OK):
            _help_cache["text"] = ""
        else:
            p = subprocess.run([BOXD_BIN, "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=10)
            _help_cache["text"] = p.stdout.decode("utf-8", "replace")
    return _help_cache["text"]


def boxd_option(*candidates):
    """The first of the candidate long options that `boxd --help` mentions, or None."""
    text = boxd_help()
    for c in candidates:
        if re.search(re.escape(c) + r"(?![A-Za-z0-9-])", text):
            return c
    return None


def new_workdir():
    """A private directory for one daemon's socket and stderr. Not under pytest's basetemp: its
    path stays short (sun_path is 108 bytes) and other pytest sessions cannot clean it away."""
    return tempfile.mkdtemp(prefix="boxd-it-", dir="/tmp")


class Daemon:
    def __init__(self, workdir, args, env, cgroup=None):
        self.workdir = workdir
        self.sock = os.path.join(workdir, "boxd.sock")
        self.stderr_path = os.path.join(workdir, "boxd.stderr")
        self.args = [BOXD_BIN, "--listen", "unix:" + self.sock] + list(args)
        self.cgroup = None
        self.stopped_rc = None
        self._clients = []
        full_env = dict(os.environ)
        # Sanitizers, when the binary has them: fail loudly and make leaks an error.
        full_env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        full_env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        # A loop that still holds handles at exit is a failure: boxd exits 70 and says which.
        full_env.setdefault("BOXD_STRICT_EXIT", "1")
        full_env.update(env or {})

        preexec = None
        start_new_session = True
        if cgroup2_available():
            # cgroup: an existing fence to start in (a restart in the same cgroup), else a new one.
            self.cgroup = cgroup or fence_new("boxd-test-")
            preexec = fence_preexec(self.cgroup)

        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                     stdout=self._stderr, stderr=self._stderr,
                                     env=full_env, preexec_fn=preexec,
                                     start_new_session=start_new_session, close_fds=True)
        self.pid = self.proc.pid

    def wait_ready(self):
        deadline = time.monotonic() + T(5)
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stopped_rc = self.proc.returncode  # reported here, not again at teardown
                raise RuntimeError("boxd exited with %s at start-up:\n%s"
                                   % (self.proc.returncode, self.stderr_text()))
            if os.path.exists(self.sock):
                try:
                    c = boxd_client.Client(self.sock, connect_timeout=1)
                    c.close()
                    self._settle()
                    return
                except OSError as e:
                    last = e
            time.sleep(0.01)
        raise RuntimeError("boxd did not accept on %s within 5 s (%r):\n%s"
                           % (self.sock, last, self.stderr_text()))

    def _settle(self):
        """Waits for the agent's start-up interpreter probes (asynchronous runs of its own: `info`
        waits for them), so that a test measuring fds or cgroups from here sees none of theirs.
        Best effort: a daemon that wants a token, or any other failure, is not waited for."""
        try:
            c = boxd_client.connect(self.sock, hello=True, connect_timeout=1)
            try:
                c.info()
            finally:
                c.close()
        except Exception:
            pass

    def stderr_text(self):
        if getattr(self, "stderr_saved", None) is not None:
            return self.stderr_saved
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def client(self, hello=True, **kw):
        c = boxd_client.connect(self.sock, hello=hello, **kw)
        self._clients.append(c)
        return c

    def counts(self):
        return proc_counts(self.pid)

    def alive(self):
        return self.proc.poll() is None

    def terminate(self, sig=signal.SIGTERM, timeout=None):
        """Signals the daemon and waits for it; returns its exit status (None if it hung)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=T(5) if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            return None

    def _kill_fence(self):
        if self.cgroup:
            fence_kill(self.cgroup)
            if not fence_remove(self.cgroup):
                print("warning: could not remove %s" % self.cgroup)
        else:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def shutdown(self):
        """Teardown: SIGTERM, wait, kill the fence. Returns a list of problems found."""
        for c in self._clients:
            c.close()
        problems = []
        if self.proc.poll() is not None:
            rc = self.proc.returncode
        else:
            rc = self.terminate()
            if rc is None:
                problems.append("boxd did not exit within 5 s of SIGTERM")
        self._kill_fence()
        self._stderr.close()
        self.stderr_saved = self.stderr_text()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if rc is not None and rc != 0 and self.stopped_rc is None:
            problems.append("boxd exited with status %r (expected 0 after SIGTERM)" % rc)
        text = self.stderr_saved
        if "still open at exit" in text or "still busy after its handles" in text:
            problems.append("boxd's loop still held handles at exit: %s" % " | ".join(
                l for l in text.splitlines() if "at exit" in l or "still busy" in l)[:2000])
        for m in SANITIZER_MARKERS:
            if m in text:
                problems.append("sanitizer report in boxd stderr (%s)" % m)
                break
        return problems


@pytest.fixture
def start_boxd():
    """Factory: start_boxd(*extra_args, env={...}, cgroup=None) -> Daemon. All are stopped at
    teardown. cgroup: start in that existing fence (another daemon's .cgroup) instead of a new one."""
    if not os.access(BOXD_BIN, os.X_OK):
        pytest.skip("boxd binary not found at %s (set BOXD_BIN)" % BOXD_BIN)
    daemons = []

    def start(*args, env=None, cgroup=None):
        d = Daemon(new_workdir(), args, env, cgroup)
        daemons.append(d)
        d.wait_ready()
        return d

    yield start
    problems = []
    for d in daemons:
        p = d.shutdown()
        text = d.stderr_text()
        if p or text:
            print("---- boxd stderr (%s) ----\n%s" % (" ".join(d.args), text[-20000:]))
        problems += p
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def boxd(start_boxd):
    """A fresh daemon for this test."""
    return start_boxd()


@pytest.fixture
def client(boxd):
    """A connection to `boxd` that has said hello."""
    return boxd.client()


@pytest.fixture(scope="module")
def boxd_shared():
    """One daemon for a whole module, for tests that do not care about isolation."""
    if not os.access(BOXD_BIN, os.X_OK):
        pytest.skip("boxd binary not found at %s (set BOXD_BIN)" % BOXD_BIN)
    d = Daemon(new_workdir(), [], None)
    try:
        d.wait_ready()
    except Exception:
        d.shutdown()
        raise
    yield d
    problems = d.shutdown()
    text = d.stderr_text()
    if problems or text:
        print("---- boxd stderr (shared) ----\n%s" % text[-20000:])
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def shared_client(boxd_shared):
    c = boxd_shared.client()
    yield c
    c.close()


# ---- boxctl ---------------------------------------------------------------------------------------

class Boxctl:
    def __init__(self, sock):
        self.sock = sock

    def argv(self, *args, sock=True):
        return [BOXCTL_BIN] + (["-s", self.sock] if sock else []) + list(args)

    def run(self, *args, timeout=None, sock=True, env=None, input=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run(self.argv(*args, sock=sock), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=T(15) if timeout is None else timeout,
                              env=full_env, input=input)

    def popen(self, *args, sock=True, env=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.Popen(self.argv(*args, sock=sock), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=full_env,
                                stdin=subprocess.DEVNULL)


@pytest.fixture
def boxctl(boxd):
    if not os.access(BOXCTL_BIN, os.X_OK):
        pytest.skip("boxctl binary not found at %s (set BOXCTL_BIN)" % BOXCTL_BIN)
    return Boxctl(boxd.sock)
