"""A real boxd for the Python SDK tests, and socket relays to break connections on purpose.

Self-contained (the patterns of tests/integration/conftest.py, reduced): the daemon listens on
a unix socket in a private /tmp directory and is fenced in a cgroup v2 directory of its own
when the host allows it (else its own session and process group), killed whole at teardown.

Environment: BOXD_BIN (default <repo>/build/boxd), BOXD_TEST_SLOW (time multiplier, through
tests/lib/boxtest.py, whose helpers this suite shares).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

from boxtest import (  # noqa: E402
    SANITIZER_MARKERS, T, fence_kill, fence_new, fence_preexec, fence_remove, wait_for)

wait_until = wait_for

BOXD_BIN = os.environ.get("BOXD_BIN", os.path.join(REPO, "build", "boxd"))
SDK_DIR = os.path.join(REPO, "protocol", "sdk", "python")


class Daemon:
    """One boxd on <workdir>/boxd.sock. start() may be called again after kill() (same path)."""

    def __init__(self, args=(), workdir=None):
        self.workdir = workdir or tempfile.mkdtemp(prefix="boxd-sdk-", dir="/tmp")
        self.sock = os.path.join(self.workdir, "boxd.sock")
        self.args = list(args)
        self.proc = None
        self.cgroup = None
        self._err = open(os.path.join(self.workdir, "boxd.stderr"), "ab")

    def start(self):
        preexec = None
        if self.cgroup is None:
            # A fresh fence each start: a restarted agent gets a clean cgroup, as after a boot.
            self.cgroup = fence_new("boxd-sdk-test-")
        if self.cgroup:
            preexec = fence_preexec(self.cgroup)
        self.proc = subprocess.Popen([BOXD_BIN, "--listen", "unix:" + self.sock] + self.args,
                                     stdin=subprocess.DEVNULL, stdout=self._err,
                                     stderr=self._err, preexec_fn=preexec,
                                     start_new_session=True, close_fds=True)
        deadline = time.monotonic() + T(5)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("boxd exited with %s: %s" % (self.proc.returncode,
                                                               self.stderr_text()))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.sock)
                return self
            except OSError:
                time.sleep(0.01)
            finally:
                s.close()
        raise RuntimeError("boxd did not listen on %s within 5 s" % self.sock)

    def sanitizer_report(self):
        """The first sanitizer marker in boxd's stderr, or None."""
        text = self.stderr_text()
        return next((m for m in SANITIZER_MARKERS if m in text), None)

    def stderr_text(self):
        try:
            with open(os.path.join(self.workdir, "boxd.stderr"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self):
        """SIGKILL the daemon (no end events, connections reset); its runs are killed too."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._kill_fence()
        self._remove_fence()

    def _remove_fence(self):
        if self.cgroup and fence_remove(self.cgroup):
            self.cgroup = None

    def _kill_fence(self):
        if self.cgroup and os.path.isdir(self.cgroup):
            fence_kill(self.cgroup)
        elif self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self):
        """Teardown: SIGTERM, then kill the fence; returns boxd's exit status."""
        rc = None
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                rc = self.proc.wait(T(5))
            except subprocess.TimeoutExpired:
                pass
        self._kill_fence()
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._remove_fence()
        self._err.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return rc


class Relay:
    """A unix-socket relay in front of boxd: every connection accepted on `path` gets its own
    upstream connection. kill_connections() resets every live pair, as a network drop would;
    the relay keeps accepting, so a client can reconnect through it.

    With fc_port set, it plays a Firecracker/Cloud Hypervisor hybrid-vsock socket: each client
    must first send `CONNECT <fc_port>\\n`, and gets `OK 1073741824\\n` before the relay starts.
    """

    def __init__(self, upstream, path, fc_port=None):
        self.upstream = upstream
        self.path = path
        self.fc_port = fc_port
        self.handshakes = []
        self.accepted = 0
        self._pairs = []
        self._lock = threading.Lock()
        self._lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lsock.bind(path)
        self._lsock.listen(16)
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        while not self._closed:
            try:
                c, _ = self._lsock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        if self.fc_port is not None:
            line = b""
            while not line.endswith(b"\n") and len(line) < 64:
                b = c.recv(1)
                if not b:
                    c.close()
                    return
                line += b
            self.handshakes.append(line)
            if line != b"CONNECT %d\n" % self.fc_port:
                c.close()
                return
            c.sendall(b"OK 1073741824\n")
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            u.connect(self.upstream)
        except OSError:
            c.close()
            return
        with self._lock:
            self._pairs.append((c, u))
        t = threading.Thread(target=self._pump, args=(c, u), daemon=True)
        t.start()
        self._pump(u, c)
        t.join()
        with self._lock:
            if (c, u) in self._pairs:
                self._pairs.remove((c, u))
        c.close()
        u.close()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def kill_connections(self):
        """Resets every connection through the relay (both sides); returns how many."""
        with self._lock:
            pairs = list(self._pairs)
        for c, u in pairs:
            for s in (c, u):
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return len(pairs)

    def close(self):
        self._closed = True
        self.kill_connections()
        try:
            self._lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._lsock.close()
