"""Fixtures for the boxd load and fault tests (issue 6).

One source of truth: the daemon fixtures and /proc helpers are the integration suite's
(tests/integration/conftest.py, loaded here as the module `boxd_it_conftest` and re-exported), so
every daemon is fenced exactly as there: its own cgroup v2 directory, killed whole at teardown,
teardown failing on a non-zero exit or a sanitizer report. The fork bomb's cgroup v1 pids fixture
and the ping helpers are tests/lib/boxtest.py's. What is added here:

- start_boxd_tmpfs: a daemon in its own mount namespace whose /tmp is a small tmpfs;
- FrameReader: a fast reader for big output streams (one msgpack.Unpacker over raw socket reads);
- report(): measured figures, printed and appended to build-load/results.txt.

Environment (besides the integration suite's BOXD_BIN and BOXD_TEST_SLOW):
  BOXD_SANITIZED=1       the binary has ASan: RSS figures are recorded but not asserted
  BOXD_LOAD_SEQ_RUNS     sequential runs of test_sequential_runs (default 100000)
  BOXD_LOAD_FLOOD_SECS   duration of the two-stream flood (default 30)
  BOXD_LOAD_FLOOD_BYTES  size of the paused flood (default 2147483648)
  BOXD_LOAD_RESULTS      where figures go (default <repo>/build-load/results.txt)
"""

import importlib.util
import os
import select
import sys
import time

import msgpack
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")
sys.path.insert(0, INTEGRATION)


def _load_integration_conftest():
    # Not imported as `conftest`: that name is this module's while pytest imports it.
    name = "boxd_it_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(INTEGRATION, "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


it = _load_integration_conftest()

# Re-exported: the fixtures (pytest registers fixtures found in a conftest's namespace) and the
# helpers the tests import with `from conftest import ...`.
from boxd_it_conftest import (  # noqa: E402,F401
    REPO, SLOW, T, Daemon, all_pids, boxd_option, marker, new_workdir, proc_counts,
    proc_status, procs_with_env, read_stat, start_boxd, wait_for, zombie_children)
import boxd_client  # noqa: E402,F401
from boxtest import (  # noqa: E402,F401
    p99, pids_cgroup, ping_latencies, pids_current, v1_pids_path)

SANITIZED = os.environ.get("BOXD_SANITIZED") == "1"
SEQ_RUNS = int(os.environ.get("BOXD_LOAD_SEQ_RUNS", "100000"))
FLOOD_SECS = float(os.environ.get("BOXD_LOAD_FLOOD_SECS", "30"))
FLOOD_BYTES = int(os.environ.get("BOXD_LOAD_FLOOD_BYTES", str(2 << 30)))
RESULTS = os.environ.get("BOXD_LOAD_RESULTS", os.path.join(REPO, "build-load", "results.txt"))
TMPFS_WRAPPER = os.path.join(HERE, "boxd-tmpfs.sh")


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.load)


def pytest_sessionstart(session):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write("# boxd load suite, %s\n# BOXD_BIN=%s BOXD_TEST_SLOW=%g BOXD_SANITIZED=%d\n"
                % (time.strftime("%Y-%m-%d %H:%M:%S"), it.BOXD_BIN, SLOW, SANITIZED))


def report(test, text):
    """Prints one measured figure and appends it to the results file."""
    line = "%s: %s" % (test, text)
    print(line)
    with open(RESULTS, "a") as f:
        f.write(line + "\n")


# ---- a daemon whose /tmp is a small tmpfs of its own ------------------------------------------

@pytest.fixture
def start_boxd_tmpfs(start_boxd):
    """Factory: start_boxd_tmpfs(size, *args, env=None) -> Daemon. Like start_boxd (same fence,
    same teardown), but boxd runs in a private mount namespace with a tmpfs of `size` (e.g.
    "64m") on /tmp, through boxd-tmpfs.sh. The integration fixture has no wrapper option, so the
    module's BOXD_BIN is pointed at the wrapper for the duration of the start only."""
    if not os.access("/usr/bin/unshare", os.X_OK):
        pytest.skip("unshare (util-linux) is not installed")

    def start(size, *args, env=None):
        full_env = dict(env or {})
        full_env.update(BOXD_LOAD_REAL_BIN=it.BOXD_BIN, BOXD_LOAD_TMPFS_SIZE=size)
        real = it.BOXD_BIN
        it.BOXD_BIN = TMPFS_WRAPPER
        try:
            return start_boxd(*args, env=full_env)
        finally:
            it.BOXD_BIN = real

    return start


def mount_of(pid, mountpoint):
    """(fstype, super options) of the mount at mountpoint as process pid sees it, or None."""
    found = None
    with open("/proc/%d/mountinfo" % pid) as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            if left.split()[4] == mountpoint:
                r = right.split()
                found = (r[0], r[2] if len(r) > 2 else "")  # the last one is the visible one
    return found


# ---- fast reading of big streams ----------------------------------------------------------------

class FrameReader:
    """Reads the agent's frames from a Client's socket without per-frame copies: raw recv_into a
    big buffer, each body fed to one streaming msgpack.Unpacker, the 4-byte headers parsed by
    hand. Takes over the socket (and whatever the Client had already read); use only this from
    then on. Checks the framing as boxd_client does: no empty or oversized frame, exactly one
    map per body."""

    def __init__(self, client, bufsize=1 << 20):
        self.sock = client.sock
        self.msgs = list(client._pending)
        client._pending.clear()
        client._pending_t.clear()
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=boxd_client.CLIENT_MAX_FRAME)
        self.buf = bytearray(bufsize)
        self.view = memoryview(self.buf)
        self.hdr = bytearray()
        self.body_left = 0
        self.fed = 0  # bytes fed to the unpacker so far
        self.bytes_in = 0  # raw bytes read from the socket
        self.eof = False
        leftover = bytes(client._rbuf)
        client._rbuf.clear()
        if leftover:
            self._feed(memoryview(leftover))

    def _feed(self, mv):
        pos, n = 0, len(mv)
        while pos < n:
            if self.body_left == 0:
                take = min(4 - len(self.hdr), n - pos)
                self.hdr += mv[pos:pos + take]
                pos += take
                if len(self.hdr) == 4:
                    size = int.from_bytes(self.hdr, "big")
                    self.hdr.clear()
                    if size == 0 or size > boxd_client.CLIENT_MAX_FRAME:
                        raise boxd_client.ProtocolViolation("agent sent a frame of length %d"
                                                            % size)
                    self.body_left = size
                continue
            take = min(self.body_left, n - pos)
            self.unpacker.feed(mv[pos:pos + take])
            self.fed += take
            self.body_left -= take
            pos += take
            if self.body_left == 0:
                try:
                    msg = self.unpacker.unpack()
                except msgpack.OutOfData:
                    raise boxd_client.ProtocolViolation("a frame body holds a truncated value")
                if self.unpacker.tell() != self.fed:
                    raise boxd_client.ProtocolViolation("a frame body has trailing bytes")
                if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                    raise boxd_client.ProtocolViolation("agent sent %r" % (msg,))
                self.msgs.append(msg)

    def fill(self, timeout):
        """Reads what the socket has, waiting at most timeout s. False on timeout."""
        if self.eof:
            raise boxd_client.ConnectionClosed("connection closed by the agent")
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return False
        try:
            n = self.sock.recv_into(self.buf)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            n = 0
        if n == 0:
            self.eof = True
            raise boxd_client.ConnectionClosed("connection closed by the agent")
        self.bytes_in += n
        self._feed(self.view[:n])
        return True

    def take(self, timeout):
        """Returns every message available, waiting at most timeout s for the first one."""
        deadline = time.monotonic() + timeout
        while not self.msgs:
            if not self.fill(deadline - time.monotonic()) and time.monotonic() >= deadline:
                raise TimeoutError("no message from boxd within %.1f s" % timeout)
        out, self.msgs = self.msgs, []
        return out


def raise_nofile(n):
    """Raises this process's soft RLIMIT_NOFILE to at least n (up to the hard limit)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
