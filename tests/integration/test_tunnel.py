"""Tunnels (PROTOCOL.md 13) against the real daemon: byte streams to TCP addresses and unix
sockets in the box, their windows, half-closes, limits, the user they connect as, leaks; and
boxctl tunnel (as ssh's ProxyCommand to a real sshd) and boxctl forward (to python's
http.server started in the box with an exec)."""

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

from conftest import BOXCTL_BIN, T, wait_for
from test_protocol_doc import SCHEMAS, TUNNEL_CODES, TUNNEL_REPLIES, Checker, bad, rclient

WINDOW = 262144
CHUNK = 65536


# ---- servers in the box (threads of the test, on the same host) -----------------------------

class Server:
    """A listening socket served by one thread per connection. mode: "echo" (echo until EOF,
    then shut down writing), "late" (the same, sending "late" 0.5 s after the EOF), "half" (send a banner, shut down writing, keep what it reads until
    EOF), "source" (send `size` bytes, then close), "sink" (accept and never read)."""

    def __init__(self, mode="echo", path=None, size=0, backlog=128):
        self.mode, self.size = mode, size
        if path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(path)
            self.addr = {"path": path}
        else:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
            self.addr = {"host": "127.0.0.1", "port": self.port}
        self.sock.listen(backlog)
        self.received = []   # per "half" connection: the bytes it read
        self.eofs = 0        # connections that saw EOF from the tunnel
        self.accepted = 0
        self.conns = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _eof(self):
        with self.lock:
            self.eofs += 1

    def _serve(self, c):
        try:
            if self.mode in ("echo", "late"):
                while True:
                    d = c.recv(1 << 20)
                    if not d:
                        self._eof()
                        if self.mode == "late":
                            time.sleep(0.5)
                            c.sendall(b"late")
                        c.shutdown(socket.SHUT_WR)
                        return
                    c.sendall(d)
            elif self.mode == "half":
                c.sendall(b"banner\n")
                c.shutdown(socket.SHUT_WR)
                got = bytearray()
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    got += d
                with self.lock:
                    self.received.append(bytes(got))
                self._eof()
            elif self.mode == "source":
                block = os.urandom(65536)
                left = self.size
                while left > 0:
                    n = min(left, len(block))
                    c.sendall(block[:n])
                    left -= n
                c.close()
            elif self.mode == "sink":
                time.sleep(3600)
        except OSError:
            self._eof()

    def close(self):
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def servers():
    made = []

    def make(*a, **kw):
        s = Server(*a, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


# ---- the client side --------------------------------------------------------------------------

def open_tunnel(c, **addr):
    r = c.request("tunnel_open", **addr)
    assert r["type"] == "tunnel_opened", r
    assert r["window"] == WINDOW, r
    return r["tunnel"]


def of(tid, *types):
    return lambda m: m.get("tunnel") == tid and (not types or m["type"] in types)


def transfer(c, tid, data, expect=None, close_write=True, timeout=None, already_sent=0):
    """Sends data through tunnel tid within its credit, acks what comes back, and returns
    (bytes received, the messages that ended it: tunnel_eof/tunnel_closed). already_sent:
    bytes the caller sent before, whose acks may still come."""
    timeout = T(60) if timeout is None else timeout
    sent = acked = 0
    acked = -already_sent
    got = bytearray()
    ends = []
    shut = False
    deadline = time.monotonic() + timeout
    while True:
        while sent < len(data) and sent - acked < WINDOW:
            n = min(CHUNK, len(data) - sent, WINDOW - (sent - acked))
            c.send({"type": "tunnel_data", "tunnel": tid, "data": data[sent:sent + n]})
            sent += n
        if sent == len(data) and close_write and not shut:
            c.send({"type": "tunnel_close", "tunnel": tid, "how": "write"})
            shut = True
        if expect is not None and len(got) >= expect and not close_write:
            return bytes(got), ends
        m = c.recv_match(of(tid), timeout=max(0.1, deadline - time.monotonic()))
        if m["type"] == "tunnel_ack":
            acked += m["bytes"]
            assert acked <= sent, (acked, sent)
        elif m["type"] == "tunnel_data":
            got += m["data"]
            c.send({"type": "tunnel_ack", "tunnel": tid, "bytes": len(m["data"])})
        elif m["type"] == "tunnel_eof":
            ends.append(m)
        elif m["type"] == "tunnel_closed":
            ends.append(m)
            return bytes(got), ends
        else:
            raise AssertionError(m)


# ---- the protocol -----------------------------------------------------------------------------

def test_every_tunnel_message_matches_its_schema(start_boxd, servers, tmp_path):
    ck = Checker()
    d = start_boxd()
    c = rclient(d, ck)
    assert "tunnel" in c.hello_reply["capabilities"]
    lim = c.hello_reply["limits"]
    assert lim["max_tunnels"] == 64 and lim["tunnel_window"] == WINDOW, lim
    echo = servers("echo")
    tid = open_tunnel(c, **echo.addr)
    got, ends = transfer(c, tid, b"hello tunnel")
    assert got == b"hello tunnel"
    assert [m["type"] for m in ends] == ["tunnel_eof", "tunnel_closed"], ends
    assert ends[-1]["reason"] == "closed" and "req" in ends[-1], ends
    # reset: the box side closes with bytes unread (RST), and the write after fails.
    src = servers("source", size=10)
    tid = open_tunnel(c, **src.addr)
    closed = None
    for _ in range(200):
        c.send({"type": "tunnel_data", "tunnel": tid, "data": b"x" * 1000})
        try:
            m = c.recv_match(of(tid, "tunnel_closed"), timeout=0.05)
            closed = m
            break
        except TimeoutError:
            pass
    assert closed is not None and closed["reason"] == "reset", closed
    assert closed["errno_name"] in ("ECONNRESET", "EPIPE"), closed
    # connect_failed, with errno and errno_name.
    r = c.request("tunnel_open", host="127.0.0.1", port=free_port())
    assert r["code"] == "connect_failed" and r["errno_name"] == "ECONNREFUSED", r
    assert r["errno"] == 111, r
    # Errors of the requests.
    assert bad(c, "tunnel_open", host="h")["code"] == "bad_request"
    assert bad(c, "tunnel_open", path="relative.sock")["code"] == "bad_request"
    assert c.request("tunnel_data", tunnel=999, data=b"x")["code"] == "not_found"
    assert c.request("tunnel_open", path="/x.sock", user="daemon")["code"] == "denied"
    # A request on a closed tunnel is ignored (the ping's pong is the next reply).
    c.send({"type": "tunnel_data", "tunnel": 1, "data": b"late", "req": 900})
    assert c.request("ping")["type"] == "pong"
    assert not [m for m in c.pending() if m.get("req") == 900]

    assert TUNNEL_REPLIES <= ck.seen_types, TUNNEL_REPLIES - ck.seen_types
    assert TUNNEL_CODES <= ck.seen_codes, ck.seen_codes
    assert not ck.problems, "\n".join(ck.problems)
    unseen = []
    for (kind, name), fields in SCHEMAS.items():
        if kind != "agent" or name not in TUNNEL_REPLIES:
            continue
        got = ck.seen_fields.get((kind, name), set())
        unseen += ["%s.%s" % (name, f) for f in fields if f not in got]
    assert not unseen, "documented but never sent: %s" % unseen


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_16mib_round_trip_exactly(boxd, servers):
    c = boxd.client()
    echo = servers("echo")
    data = os.urandom(16 << 20)
    tid = open_tunnel(c, **echo.addr)
    got, ends = transfer(c, tid, data, timeout=T(120))
    assert len(got) == len(data)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert ends[-1]["reason"] == "closed", ends


def test_unix_socket_round_trip(boxd, servers, tmp_path):
    c = boxd.client()
    echo = servers("echo", path=str(tmp_path / "echo.sock"))
    data = os.urandom(1 << 20)
    got, ends = transfer(c, open_tunnel(c, **echo.addr), data)
    assert got == data and ends[-1]["reason"] == "closed"


def test_half_close_from_the_box_side(boxd, servers):
    """The server stops writing first: tunnel_eof, and the client may still send."""
    c = boxd.client()
    half = servers("half")
    tid = open_tunnel(c, **half.addr)
    got = bytearray()
    while True:
        m = c.recv_match(of(tid))
        if m["type"] == "tunnel_data":
            got += m["data"]
            c.send({"type": "tunnel_ack", "tunnel": tid, "bytes": len(m["data"])})
        else:
            assert m["type"] == "tunnel_eof", m
            break
    assert got == b"banner\n"
    c.send({"type": "tunnel_data", "tunnel": tid, "data": b"after eof"})
    assert c.recv_match(of(tid))["type"] == "tunnel_ack"
    c.send({"type": "tunnel_close", "tunnel": tid, "how": "write"})
    m = c.recv_match(of(tid))
    assert m["type"] == "tunnel_closed" and m["reason"] == "closed", m
    assert wait_for(lambda: half.received == [b"after eof"], T(5)), half.received


def test_half_close_from_the_client_side(boxd, servers):
    """The client stops writing first: the server reads EOF, then still answers."""
    c = boxd.client()
    echo = servers("late")
    tid = open_tunnel(c, **echo.addr)
    c.send({"type": "tunnel_data", "tunnel": tid, "data": b"ping"})
    c.send({"type": "tunnel_close", "tunnel": tid, "how": "write"})
    assert wait_for(lambda: echo.eofs == 1, T(5))
    r = c.request("tunnel_data", tunnel=tid, data=b"more")
    assert r["code"] == "bad_request" and "closed for writing" in r["message"], r
    got, ends = transfer(c, tid, b"", close_write=False, already_sent=4)
    assert got == b"pinglate"
    assert [m["type"] for m in ends] == ["tunnel_eof", "tunnel_closed"], ends


def test_stalled_tunnel_stalls_nothing_else(boxd, servers):
    c = boxd.client()
    src = servers("source", size=64 << 20)
    stalled = open_tunnel(c, **src.addr)
    # Its window fills and it is read no further: at most the window arrives unacked.
    time.sleep(0.5)
    echo = servers("echo")
    other = open_tunnel(c, **echo.addr)
    data = os.urandom(4 << 20)
    got, _ = transfer(c, other, data)
    assert got == data
    res = c.exec_run(cmd="seq 1 200000 | tail -n 1", output=True)
    assert res.end["status"] == "completed" and res.end["stdout"] == "200000\n", res.end
    held = [m for m in c.pending() if m.get("tunnel") == stalled and m["type"] == "tunnel_data"]
    assert sum(len(m["data"]) for m in held) == WINDOW, sum(len(m["data"]) for m in held)
    # Acked, it goes on.
    c.send({"type": "tunnel_ack", "tunnel": stalled, "bytes": WINDOW})
    total = 0
    while total <= WINDOW:
        total += len(c.recv_match(of(stalled, "tunnel_data"))["data"])


def test_over_the_window_is_limit(boxd, servers, tmp_path):
    """A client that ignores its credit, to a server that does not read: limit, then closed."""
    c = boxd.client()
    sink = servers("sink", path=str(tmp_path / "sink.sock"))
    tid = open_tunnel(c, **sink.addr)
    err = None
    for _ in range(1000):
        c.send({"type": "tunnel_data", "tunnel": tid, "data": b"\0" * CHUNK, "req": "d"})
        try:
            err = c.recv_match(lambda m: m["type"] == "error", timeout=0.01)
            break
        except TimeoutError:
            pass
    assert err is not None and err["code"] == "limit" and err["limit"] == "tunnel_window", err
    m = c.recv_match(of(tid, "tunnel_closed"))
    assert m["reason"] == "limit", m
    assert c.request("ping")["type"] == "pong"


def test_max_tunnels(boxd, servers):
    c = boxd.client()
    echo = servers("echo")
    tids = [open_tunnel(c, **echo.addr) for _ in range(64)]
    r = c.request("tunnel_open", **echo.addr)
    assert r["code"] == "limit" and r["limit"] == "max_tunnels", r
    # Another connection shares the limit.
    c2 = boxd.client()
    assert c2.request("tunnel_open", **echo.addr)["code"] == "limit"
    c.send({"type": "tunnel_close", "tunnel": tids[0]})
    assert c.recv_match(of(tids[0], "tunnel_closed"))["reason"] == "closed"
    open_tunnel(c2, **echo.addr)


def test_connect_refused(boxd):
    c = boxd.client()
    r = c.request("tunnel_open", host="127.0.0.1", port=free_port())
    assert r["type"] == "error" and r["code"] == "connect_failed", r
    assert r["errno_name"] == "ECONNREFUSED" and "nothing listens" in r["message"], r
    r = c.request("tunnel_open", path="/nonexistent-dir/x.sock")
    assert r["code"] == "connect_failed" and r["errno_name"] == "ENOENT", r
    r = c.request("tunnel_open", host="no-such-host.invalid", port=80)
    assert r["code"] == "connect_failed" and r["errno_name"] == "EHOSTUNREACH", r
    assert "/etc/hosts" in r["message"], r


def test_names_come_from_etc_hosts(boxd, servers):
    c = boxd.client()
    echo = servers("echo")
    got, _ = transfer(c, open_tunnel(c, host="localhost", port=echo.port), b"by name")
    assert got == b"by name"
    six = socket.socket(socket.AF_INET6)
    try:
        six.bind(("::1", 0))
    except OSError:
        return  # no IPv6 loopback here
    six.listen(1)
    tid = open_tunnel(c, host="::1", port=six.getsockname()[1])
    conn, _ = six.accept()
    conn.sendall(b"v6")
    m = c.recv_match(of(tid, "tunnel_data"))
    assert m["data"] == b"v6"
    conn.close()
    six.close()


def test_unix_socket_the_user_cannot_write_is_refused(start_boxd, servers):
    d = start_boxd("--user", "nobody")
    c = d.client()
    t = tempfile.mkdtemp(prefix="boxd-tun-", dir="/tmp")
    try:
        os.chmod(t, 0o755)
        path = os.path.join(t, "root.sock")
        echo = servers("echo", path=path)
        os.chmod(path, 0o600)  # root's, and boxd is root: only the user's rights may count
        r = c.request("tunnel_open", path=path)
        assert r["code"] == "connect_failed" and r["errno_name"] == "EACCES", r
        assert "acting user" in r["message"], r
        os.chmod(path, 0o666)
        got, _ = transfer(c, open_tunnel(c, path=path), b"as nobody")
        assert got == b"as nobody"
        assert echo.accepted == 1
    finally:
        shutil.rmtree(t, ignore_errors=True)


def test_tcp_socket_belongs_to_the_user(start_boxd, servers):
    """The box-side socket is made as the user: its owner (sock_i_uid, /proc/net/tcp) is."""
    d = start_boxd("--user", "nobody")
    c = d.client()
    echo = servers("echo")
    tid = open_tunnel(c, **echo.addr)
    got, _ = transfer(c, tid, b"x", close_write=False, expect=1)
    assert got == b"x"
    nobody = 65534
    port_hex = ":%04X" % echo.port
    owners = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[2].endswith(port_hex):  # remote address is the echo server
                owners.append(int(parts[7]))
    assert owners == [nobody], owners


def test_connection_drop_closes_the_box_side(boxd, servers):
    c = boxd.client()
    echo = servers("echo")
    tids = [open_tunnel(c, **echo.addr) for _ in range(3)]
    for tid in tids:
        got, _ = transfer(c, tid, b"x", close_write=False, expect=1)
    connecting = c.next_req()
    c.send({"type": "tunnel_open", "req": connecting, **echo.addr})  # maybe still connecting
    c.close()
    assert wait_for(lambda: echo.eofs >= 3, T(5)), echo.eofs
    # The slots come back: 64 can be opened again.
    c2 = boxd.client()
    assert wait_for(lambda: c2.request("info")["type"] == "info", T(1))
    for _ in range(64):
        open_tunnel(c2, **echo.addr)


def test_no_fd_leak_after_100_tunnels(boxd, servers):
    c = boxd.client()
    echo = servers("echo")
    transfer(c, open_tunnel(c, **echo.addr), b"warm")
    time.sleep(0.2)
    base_fds = boxd.counts()[0]
    for i in range(100):
        tid = open_tunnel(c, **echo.addr)
        if i % 2:
            got, _ = transfer(c, tid, b"%d" % i)
            assert got == b"%d" % i
        else:
            c.send({"type": "tunnel_close", "tunnel": tid})
            assert c.recv_match(of(tid, "tunnel_closed"))["reason"] == "closed"
    for _ in range(20):
        assert c.request("tunnel_open", host="127.0.0.1", port=free_port())["code"] == \
            "connect_failed"
    assert wait_for(lambda: boxd.counts()[0] <= base_fds, T(3)), (boxd.counts(), base_fds)


def test_shutdown_closes_every_tunnel(start_boxd, servers):
    d = start_boxd("--grace-ms", "200")
    c = d.client()
    echo = servers("echo")
    tid = open_tunnel(c, **echo.addr)
    assert c.request("shutdown")["type"] == "ok"
    m = c.recv_match(of(tid, "tunnel_closed"))
    assert m["reason"] == "closed", m
    assert wait_for(lambda: echo.eofs == 1, T(5))


# ---- boxctl -----------------------------------------------------------------------------------

def boxctl(d, *args, **kw):
    return subprocess.run([BOXCTL_BIN, "-s", d.sock] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=T(30), **kw)


def test_boxctl_tunnel_relays_stdin_and_stdout(boxd, servers):
    echo = servers("echo")
    data = os.urandom(3 << 20)
    p = boxctl(boxd, "tunnel", "127.0.0.1:%d" % echo.port, input=data)
    assert p.returncode == 0, p.stderr
    assert p.stdout == data
    r = boxctl(boxd, "tunnel", "127.0.0.1:%d" % free_port(), input=b"")
    assert r.returncode == 1 and b"ECONNREFUSED" in r.stderr, r.stderr
    r = boxctl(boxd, "tunnel", "nonsense", input=b"")
    assert r.returncode == 2 and b"HOST:PORT" in r.stderr, r.stderr


def test_boxctl_tunnel_unix(boxd, servers, tmp_path):
    echo = servers("echo", path=str(tmp_path / "e.sock"))
    p = boxctl(boxd, "tunnel", "unix:" + echo.addr["path"], input=b"over unix\n")
    assert p.returncode == 0 and p.stdout == b"over unix\n", p.stderr


SSHD = "/usr/sbin/sshd"


def test_ssh_through_boxctl_tunnel(boxd, tmp_path):
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh") is None or \
            shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server/client not installed (%s, ssh, ssh-keygen)" % SSHD)
    k = tmp_path / "ssh"
    k.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k / "host")],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k / "user")],
                   check=True)
    shutil.copy(k / "user.pub", k / "authorized_keys")
    os.chmod(k / "authorized_keys", 0o600)
    port = free_port()
    cfg = k / "sshd_config"
    cfg.write_text("\n".join([
        "Port %d" % port, "ListenAddress 127.0.0.1", "HostKey %s" % (k / "host"),
        "AuthorizedKeysFile %s" % (k / "authorized_keys"), "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "PidFile %s" % (k / "sshd.pid"), "PermitRootLogin prohibit-password", ""]))
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: _listening(port), T(10)), "sshd did not listen"
        proxy = "%s -s %s tunnel 127.0.0.1:%d" % (BOXCTL_BIN, boxd.sock, port)
        p = subprocess.run(
            ["ssh", "-F", "/dev/null", "-i", str(k / "user"), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ProxyCommand=" + proxy, "root@box", "echo", "ok"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=T(30))
        assert p.returncode == 0 and p.stdout == b"ok\n", p.stderr
    finally:
        sshd.terminate()
        sshd.wait(5)


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def test_boxctl_forward_reaches_http_server_in_the_box(boxd, tmp_path):
    c = boxd.client()
    port = free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_bytes(b"hello from the box\n")
    big = os.urandom(2 << 20)
    (www / "big.bin").write_bytes(big)
    req = c.exec_start(argv=["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1",
                             "--directory", str(www), str(port)], id="tun-http")
    assert c.recv_req(req)["type"] == "started"
    assert wait_for(lambda: _listening(port), T(10))
    lport = free_port()
    fw = subprocess.Popen([BOXCTL_BIN, "-s", boxd.sock, "forward",
                           "%d:127.0.0.1:%d" % (lport, port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = fw.stdout.readline().decode()
        assert "127.0.0.1:%d" % lport in line, line
        url = "http://127.0.0.1:%d/" % lport
        assert urllib.request.urlopen(url + "hello.txt", timeout=T(10)).read() == \
            b"hello from the box\n"
        # Many at once over the one agent connection.
        results = [None] * 8

        def get(i):
            results[i] = urllib.request.urlopen(url + "big.bin", timeout=T(30)).read()
        th = [threading.Thread(target=get, args=(i,)) for i in range(8)]
        for x in th:
            x.start()
        for x in th:
            x.join()
        assert all(r == big for r in results), [len(r or b"") for r in results]
    finally:
        fw.terminate()
        fw.wait(5)
        c.cancel("tun-http")
    assert fw.returncode in (0, -15, 143), fw.stderr.read()
