"""Issue 11, items 2, 3 and 6: what a client without the token, a client with it, and a local
user can do to boxd's connections and its socket (PROTOCOL.md 1, 3 and 7).

- Memory: the reply-queue bound holds per request, not per read; before hello a connection gets
  a queue of a few KiB and is closed after its first error; a global queue_total caps every
  connection's unsent replies. The RSS figures are printed (pytest -s) for the notes.
- Slots: a hello deadline (--hello-timeout-ms), and connections before hello never lock a client
  with the token out.
- The socket: the whole path is checked (no symlinks, no directory others can write, the socket's
  own directory not even sticky), the socket is made under a private name and moved into place,
  and a path a live boxd serves is refused.

Each attack is sized so that the old tree (391aabb) fails clearly, and stopped as soon as its
daemon passes the threshold, so that the test stays fast and never takes the machine's memory.
"""

import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import pytest

import boxd_client
from boxd_client import frame, pack
from conftest import BOXD_BIN, Daemon, T, new_workdir, proc_status, wait_for

NOBODY = 65534
MiB = 1 << 20
# Growth of boxd's RSS an attack may cause; the old tree went to 1.04-1.64 GB.
BOUND = 64 * MiB
# An attack is stopped once the daemon has grown this much: the old tree is failing by then.
ABORT = 256 * MiB


def rss(pid):
    """VmRSS of pid, in bytes."""
    return int(proc_status(pid)["VmRSS"].split()[0]) * 1024


def raw_conn(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.setblocking(False)
    return s


def send_some(s, data):
    """Sends what the socket takes now (never blocks); returns the bytes sent."""
    try:
        return s.send(data)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        return -1


def closed_by_agent(s, timeout):
    """True if the agent closes s within timeout s (anything it sent is discarded)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([s], [], [], left)
        if r:
            try:
                if s.recv(65536) == b"":
                    return True
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return True


def connect_token(path, tok):
    c = boxd_client.Client(path)
    r = c.hello(token=tok)
    assert r["type"] == "hello", r
    return c


@pytest.fixture
def token_file():
    top = tempfile.mkdtemp(prefix="boxd-tokc-", dir="/tmp")
    path = os.path.join(top, "token")
    tok = "t0k-" + os.urandom(8).hex()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, tok.encode())
    os.close(fd)
    yield path, tok
    shutil.rmtree(top, ignore_errors=True)


# ---- 2. memory ---------------------------------------------------------------------------------

def test_pre_hello_invalid_frames_cost_bounded_memory(start_boxd):
    """250 connections that pipeline 5-byte invalid frames before hello and never read."""
    d = start_boxd("--log-level", "error")
    live = d.client()
    rss0 = peak = rss(d.pid)
    junk = frame(b"\xc1") * (64 * 1024 // 5)  # 5 bytes each: not msgpack
    socks, aborted = [], False
    try:
        for i in range(250):
            s = raw_conn(d.sock)
            socks.append(s)
            send_some(s, junk)
            if i % 10 == 9:
                time.sleep(0.05)
                peak = max(peak, rss(d.pid))
                if peak - rss0 > ABORT:
                    aborted = True
                    break
        wait_for(lambda: False, 0.5)
        peak = max(peak, rss(d.pid))
        print("pre-hello invalid frames: %d connections, boxd RSS %.1f MiB -> %.1f MiB "
              "(growth %.1f MiB%s)" % (len(socks), rss0 / MiB, peak / MiB, (peak - rss0) / MiB,
                                       ", attack aborted" if aborted else ""))
        assert not aborted and peak - rss0 < BOUND, (rss0, peak)
        # Each was answered once and closed (its first error is its last).
        assert sum(closed_by_agent(s, T(2)) for s in socks[-20:]) == 20
        assert live.ping(timeout=T(5))["type"] == "pong"
    finally:
        for s in socks:
            s.close()


def make_log(c, nbytes=8 * MiB):
    """A finished run with about nbytes of output retained (lines of 1000 bytes)."""
    res = c.exec_run("head -c %d /dev/zero | tr '\\0' a | fold -w 999" % nbytes, timeout=T(60))
    assert res.error is None and res.end["status"] == "completed", res
    return res.id


def read_frames(s, want, timeout):
    """Reads frames from s (a raw socket) without decoding their bodies; returns how many
    arrived and the types of the first and last (decoded)."""
    s.setblocking(True)
    s.settimeout(timeout)
    buf = bytearray()
    n, first, last = 0, None, None
    deadline = time.monotonic() + timeout
    while n < want and time.monotonic() < deadline:
        chunk = s.recv(4 * MiB)
        if not chunk:
            break
        buf += chunk
        at = 0
        while len(buf) - at >= 4:
            ln = struct.unpack(">I", buf[at:at + 4])[0]
            if len(buf) - at - 4 < ln:
                break
            if first is None or n == want - 1:
                import msgpack
                t = msgpack.unpackb(bytes(buf[at + 4:at + 4 + ln]), raw=False)["type"]
                first = first or t
                last = t
            n += 1
            at += 4 + ln
        del buf[:at]
    return n, first, last


def test_pipelined_logs_with_token_cost_bounded_memory(start_boxd, token_file):
    """1500 pipelined `logs` requests for an 8 MiB log, never read: the queue bound is checked
    before each reply, so boxd holds about conn_queue + max_event, not 1500 replies."""
    path, tok = token_file
    d = start_boxd("--token-file", path, "--user", "nobody", "--log-level", "error")
    c = connect_token(d.sock, tok)
    rid = make_log(c)
    time.sleep(0.2)
    rss0 = peak = rss(d.pid)
    s = raw_conn(d.sock)
    assert send_some(s, frame(pack({"type": "hello", "version": 1, "token": tok}))) > 0
    req = frame(pack({"type": "logs", "id": rid, "from_seq": 0, "max_records": 100000,
                      "max_bytes": 1 << 20}))
    sent, aborted = 0, False
    try:
        while sent < 1500:
            # 150 at a time: one read brings them all, and the old tree answered every request
            # of a read (150 MiB here), then the next 150 once it read again.
            batch = req * 150
            view = memoryview(batch)
            while view:
                n = send_some(s, view)
                if n <= 0:
                    break
                view = view[n:]
            sent += (len(batch) - len(view)) // len(req)
            time.sleep(0.03)
            peak = max(peak, rss(d.pid))
            if peak - rss0 > ABORT:
                aborted = True
                break
            if view:  # the agent stopped reading: what it holds is what it will hold
                break
        time.sleep(0.5)
        peak = max(peak, rss(d.pid))
        print("pipelined logs (token): %d requests sent, boxd RSS %.1f MiB -> %.1f MiB "
              "(growth %.1f MiB%s)" % (sent, rss0 / MiB, peak / MiB, (peak - rss0) / MiB,
                                       ", attack aborted" if aborted else ""))
        assert not aborted and peak - rss0 < BOUND, (rss0, peak)
        assert sent >= 1000, sent  # the requests fit in the socket's buffer: all were sent
        limits = c.hello_reply["limits"]
        assert c.ping(timeout=T(5))["type"] == "pong"  # others are served meanwhile
        # Nothing was dropped: the hello and every logs reply arrive once the client reads.
        n, first, last = read_frames(s, sent + 1, T(120))
        assert (n, first, last) == (sent + 1, "hello", "logs"), (n, first, last, sent)
        assert limits["conn_queue"] == 4 * MiB and limits["queue_total"] == 64 * MiB, limits
    finally:
        s.close()


def test_queue_total_pauses_every_connection_and_drops_nothing(start_boxd):
    d = start_boxd("--queue-total", str(MiB), "--log-level", "error")
    c = d.client()
    assert c.hello_reply["limits"]["queue_total"] == MiB
    rid = make_log(c, 2 * MiB)
    req = frame(pack({"type": "logs", "id": rid, "max_bytes": 256 * 1024}))
    socks = []
    for _ in range(4):
        s = raw_conn(d.sock)
        send_some(s, frame(pack({"type": "hello", "version": 1})) + req * 100)
        socks.append(s)
    time.sleep(0.5)
    # Every reply comes, in order, once the clients read.
    for s in socks:
        n, first, last = read_frames(s, 101, T(30))
        assert (n, first, last) == (101, "hello", "logs"), (n, first, last)
        s.close()
    assert c.ping(timeout=T(5))["type"] == "pong"


def test_pre_hello_first_error_closes(boxd):
    c = boxd.client(hello=False)
    r = c.request("ping", req=5)
    assert r["type"] == "error" and r["code"] == "need_hello", r
    assert c.wait_closed(T(3))
    c = boxd.client(hello=False)
    c.raw_send(b"\0\0\0\0")  # an empty frame
    assert c.recv()["code"] == "bad_request"
    assert c.wait_closed(T(3))


def test_limits_report_queue_bounds_and_hello_deadline(start_boxd):
    d = start_boxd()
    lim = d.client().hello_reply["limits"]
    assert (lim["conn_queue"], lim["queue_total"], lim["hello_timeout_ms"]) == \
        (4 * MiB, 64 * MiB, 5000), lim
    d = start_boxd("--conn-queue", str(MiB), "--queue-total", str(32 * MiB),
                   "--hello-timeout-ms", "0")
    lim = d.client().info()["limits"]
    assert (lim["conn_queue"], lim["queue_total"], lim["hello_timeout_ms"]) == \
        (MiB, 32 * MiB, 0), lim


# ---- 3. connection slots -----------------------------------------------------------------------

def test_pre_hello_connections_never_lock_out_the_token(start_boxd, token_file):
    path, tok = token_file
    d = start_boxd("--token-file", path, "--user", "nobody", "--log-level", "error")
    socks = []
    try:
        for _ in range(300):  # more than max_conns (256), none says hello
            socks.append(raw_conn(d.sock))
        time.sleep(0.3)
        for _ in range(20):  # again, once slots freed meanwhile (wait_ready's) are free
            socks.append(raw_conn(d.sock))
        time.sleep(0.2)
        c = connect_token(d.sock, tok)
        assert c.hello_reply["type"] == "hello"
        assert c.ping(timeout=T(5))["type"] == "pong"
        info = c.info()
        # The oldest were closed to make room; those before hello hold at most 248 slots.
        assert info["conns"] <= 249, info["conns"]
        closed = sum(closed_by_agent(s, 0.05) for s in socks)
        assert closed >= len(socks) - 248, closed
        # And once more while they are at their limit.
        c2 = connect_token(d.sock, tok)
        assert c2.ping(timeout=T(5))["type"] == "pong" and c.ping()["type"] == "pong"
        c.close()
        c2.close()
    finally:
        for s in socks:
            s.close()


def test_hello_deadline_closes_idle_connections(start_boxd):
    d = start_boxd("--hello-timeout-ms", "300")
    ok = d.client()
    t0 = time.monotonic()
    idle = raw_conn(d.sock)
    half = raw_conn(d.sock)
    half.send(frame(pack({"type": "hello", "version": 1}))[:6])  # a hello never finished
    assert closed_by_agent(idle, T(3)) and closed_by_agent(half, T(3))
    took = time.monotonic() - t0
    assert 0.25 <= took < T(2), took
    time.sleep(0.5)
    assert ok.ping()["type"] == "pong"  # past hello: no deadline
    idle.close()
    half.close()


# ---- 6. the socket -----------------------------------------------------------------------------

def start_fails(args, timeout=5):
    """Runs boxd with args expecting a start-up refusal; returns (rc, stderr)."""
    p = subprocess.run([BOXD_BIN] + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=T(timeout))
    return p.returncode, p.stdout.decode("utf-8", "replace")


@pytest.fixture
def top():
    t = tempfile.mkdtemp(prefix="boxd-sq-", dir="/tmp")
    os.chmod(t, 0o755)
    yield t
    shutil.rmtree(t, ignore_errors=True)


SQUATTER = r"""
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(8)
print("bound", flush=True)
s.settimeout(3)
try:
    c, _ = s.accept()
    c.settimeout(2)
    print("got", c.recv(4096).hex(), flush=True)
except OSError:
    print("nothing", flush=True)
"""


def as_nobody():
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def test_socket_in_sticky_world_writable_dir_refused(top):
    sticky = os.path.join(top, "tmp")
    os.mkdir(sticky)
    os.chmod(sticky, 0o1777)
    sock = os.path.join(sticky, "boxd.sock")
    rc, text = start_fails(["--listen", "unix:" + sock])
    assert rc != 0 and "not writable by others" in text and sticky in text, (rc, text)
    assert not os.path.exists(sock)
    # A local user who bound the name first gets nothing: boxd refuses before any of it.
    sq = subprocess.Popen(["/usr/bin/python3", "-c", SQUATTER, sock], stdout=subprocess.PIPE,
                          preexec_fn=as_nobody)
    try:
        assert sq.stdout.readline().strip() == b"bound"
        rc, text = start_fails(["--listen", "unix:" + sock])
        assert rc != 0 and "not writable by others" in text, (rc, text)
    finally:
        sq.kill()
        sq.wait()


def test_second_boxd_refused_and_first_keeps_serving(start_boxd):
    d = start_boxd()
    ino = os.stat(d.sock).st_ino
    rc, text = start_fails(["--listen", "unix:" + d.sock])
    assert rc != 0, text
    assert "another boxd is serving %s (pid %d)" % (d.sock, d.pid) in text, text
    assert os.stat(d.sock).st_ino == ino
    c = d.client()  # a new connection reaches the first boxd
    assert c.info()["pid"] == d.pid


def test_stale_socket_replaced_and_non_socket_refused(top):
    work = os.path.join(top, "w")
    os.mkdir(work, 0o700)
    sock = os.path.join(work, "boxd.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock)
    s.close()  # a socket file no one listens on: a boxd that died
    d = Daemon(new_workdir(), ["--listen", "unix:" + sock], None)
    try:
        d.sock = sock
        d.wait_ready()
        assert boxd_client.connect(sock).ping()["type"] == "pong"
    finally:
        assert d.shutdown() == [], d.stderr_text()
    assert not os.path.exists(sock)  # ours, removed at the end
    with open(sock, "w") as f:
        f.write("keep")
    rc, text = start_fails(["--listen", "unix:" + sock])
    assert rc != 0 and "not a socket" in text, text
    assert open(sock).read() == "keep"


def test_whole_path_checked_without_links(top):
    cases = []
    theirs = os.path.join(top, "theirs")  # 0755, another uid's: it could swap what is inside
    os.mkdir(theirs)
    os.mkdir(os.path.join(theirs, "mine"), 0o700)
    os.chown(theirs, NOBODY, NOBODY)
    cases.append((os.path.join(theirs, "mine", "s.sock"), "owned by uid %d" % NOBODY))
    open_ = os.path.join(top, "open")  # world-writable, not sticky, above a private dir
    os.mkdir(open_)
    os.chmod(open_, 0o777)
    os.mkdir(os.path.join(open_, "mine"), 0o700)
    cases.append((os.path.join(open_, "mine", "s.sock"), "writable by others"))
    real = os.path.join(top, "real")
    os.mkdir(real, 0o700)
    os.symlink(real, os.path.join(top, "link"))
    cases.append((os.path.join(top, "link", "s.sock"), "symbolic link"))
    for sock, why in cases:
        rc, text = start_fails(["--listen", "unix:" + sock])
        assert rc != 0 and why in text and "must be owned by root" in text, (sock, rc, text)
        assert not os.path.exists(sock) and not os.listdir(real)
    # A sticky ancestor (like /tmp) above a directory of ours is fine: only its owner can
    # rename or remove that directory.
    sticky = os.path.join(top, "sticky")
    os.mkdir(sticky)
    os.chmod(sticky, 0o1777)
    os.mkdir(os.path.join(sticky, "mine"), 0o700)
    sock = os.path.join(sticky, "mine", "s.sock")
    d = Daemon(new_workdir(), ["--listen", "unix:" + sock], None)
    try:
        d.sock = sock
        d.wait_ready()
        assert boxd_client.connect(sock).ping()["type"] == "pong"
        # Nothing else was left in the directory: the private name was moved into place.
        assert os.listdir(os.path.dirname(sock)) == ["s.sock"]
    finally:
        assert d.shutdown() == [], d.stderr_text()


def test_listener_failure_exits_nonzero_with_message(top):
    rc, text = start_fails(["--listen", "unix:" + os.path.join(top, "missing", "s.sock")])
    assert rc == 1 and "listen unix:" in text and "No such file or directory" in text, (rc, text)
