"""boxctl's -s forms for reaching a box from its host: unix:PATH, serial:PATH (QEMU's
virtio-serial chardev socket), fc:UDS:PORT (Firecracker / Cloud Hypervisor hybrid vsock) and
vsock:CID:PORT. The hybrid handshake is tested against a relay written here that speaks it."""

import os
import socket
import struct
import threading

import pytest

from conftest import T


class Relay:
    """A unix socket server in front of boxd's socket. mode:
    - "fc": read "CONNECT PORT\\n", answer "OK 1\\n" (when PORT is `port`), then relay;
    - "fc-refuse": read the CONNECT line, then close without a word (no listener on the port);
    - "fc-garble": answer "HELLO?\\n" instead of OK;
    - "serial-drop-first": relay, but swallow the client's first frame (a hello read by the old
      session of a virtio-serial port), so only a re-sent hello is answered;
    - "serial-reset": the first hello is answered by one boxd connection, which then ends (the
      old session's end seen late), and the port goes on with a new one each time boxd closes
      the current one: the next request meets need_hello, as a virtio-serial port can do;
    - "serial-reset-at": relays frame by frame and, before the client's frame number `at` (1 is
      the hello), ends the boxd session and hands that frame to a new one, which answers
      need_hello and closes (an `at` that is a request type: before every frame of that type);
      each later boxd close is followed by a new session. `sent` lists
      (session number, request type) of every frame passed on."""

    def __init__(self, path, target, mode, port=5000, at=None):
        self.path, self.target, self.mode, self.port = path, target, mode, port
        self.at = at if isinstance(at, (list, tuple, set)) else [at]
        self.lines = []
        self.sent = []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(8)
        self.threads = []
        self.stop = False
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def close(self):
        self.stop = True
        self.srv.close()

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self, c):
        with c:
            if self.mode.startswith("fc"):
                line = b""
                while not line.endswith(b"\n") and len(line) < 100:
                    d = c.recv(1)
                    if not d:
                        return
                    line += d
                self.lines.append(line)
                if self.mode == "fc-refuse":
                    return
                if self.mode == "fc-garble":
                    c.sendall(b"HELLO?\n")
                    return
                if line != b"CONNECT %d\n" % self.port:
                    return
                c.sendall(b"OK 1\n")
            if self.mode == "serial-reset":
                self._serve_reset(c)
                return
            if self.mode == "serial-reset-at":
                self._serve_reset_at(c)
                return
            b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            b.connect(self.target)
            with b:
                if self.mode == "serial-drop-first":
                    hdr = self._recv_exact(c, 4)
                    self._recv_exact(c, struct.unpack(">I", hdr)[0])
                    self.lines.append(b"dropped")
                t = threading.Thread(target=self._pipe, args=(b, c), daemon=True)
                t.start()
                self._pipe(c, b)
                t.join(5)

    def _frame(self, s):
        hdr = self._recv_exact(s, 4)
        return hdr + self._recv_exact(s, struct.unpack(">I", hdr)[0])

    def _serve_reset(self, c):
        import select
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        first.connect(self.target)
        with first:
            first.sendall(self._frame(c))
            c.sendall(self._frame(first))
        self.lines.append(b"reset")
        b = None
        try:
            while True:
                if b is None:
                    b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    b.connect(self.target)
                r, _, _ = select.select([c, b], [], [], 10)
                if not r:
                    return
                if c in r:
                    d = c.recv(65536)
                    if not d:
                        return
                    try:
                        b.sendall(d)
                    except OSError:
                        # The session ended under these bytes: they go to the next one (what
                        # boxd dropped unread is recovered by the client's hello resend).
                        b.close()
                        self.lines.append(b"session ended")
                        b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        b.connect(self.target)
                        b.sendall(d)
                if b in r:
                    try:
                        d = b.recv(65536)
                    except OSError:
                        d = b""
                    if not d:
                        b.close()
                        b = None
                        self.lines.append(b"session ended")
                        continue
                    c.sendall(d)
        except OSError:
            pass
        finally:
            if b is not None:
                b.close()

    def _serve_reset_at(self, c):
        import select
        import msgpack
        session, nframes, inbuf, b = 0, 0, b"", None
        try:
            while True:
                if b is None:
                    b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    b.connect(self.target)
                    session += 1
                r, _, _ = select.select([c, b], [], [], 10)
                if not r:
                    return
                if c in r:
                    d = c.recv(65536)
                    if not d:
                        return
                    inbuf += d
                    while len(inbuf) >= 4 and len(inbuf) >= 4 + struct.unpack(">I", inbuf[:4])[0]:
                        n = 4 + struct.unpack(">I", inbuf[:4])[0]
                        frame, inbuf = inbuf[:n], inbuf[n:]
                        nframes += 1
                        typ = msgpack.unpackb(frame[4:], raw=False)["type"]
                        if nframes in self.at or typ in self.at:
                            # The session this client had ends; its next frame starts a new one.
                            b.close()
                            self.lines.append(b"reset")
                            b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                            b.connect(self.target)
                            session += 1
                        self.sent.append((session, typ))
                        try:
                            b.sendall(frame)
                        except OSError:
                            pass  # boxd closed that session: the frame is lost, as on a port
                if b in r:
                    try:
                        d = b.recv(65536)
                    except OSError:
                        d = b""
                    if not d:
                        b.close()
                        b = None
                        continue
                    c.sendall(d)
        except OSError as e:
            self.lines.append(repr(e).encode())  # a relay that failed says why
        finally:
            if b is not None:
                b.close()

    @staticmethod
    def _recv_exact(c, n):
        out = b""
        while len(out) < n:
            d = c.recv(n - len(out))
            if not d:
                raise OSError("eof")
            out += d
        return out


@pytest.fixture
def relay(boxd):
    made = []

    def make(mode, port=5000, at=None):
        r = Relay(os.path.join(boxd.workdir, "relay%d.sock" % len(made)), boxd.sock, mode, port,
                  at)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def test_unix_prefix(boxctl, boxd):
    p = boxctl.run("-s", "unix:" + boxd.sock, "exec", "echo via-unix", sock=False)
    assert p.returncode == 0 and p.stdout == b"via-unix\n", p


def test_fc_hybrid_vsock_handshake(boxctl, relay):
    r = relay("fc", 5000)
    p = boxctl.run("-s", "fc:%s:5000" % r.path, "exec", "echo via-fc", sock=False)
    assert p.returncode == 0 and p.stdout == b"via-fc\n", p
    assert r.lines == [b"CONNECT 5000\n"]
    # A streaming command works through it as well.
    p = boxctl.run("-s", "fc:%s:5000" % r.path, "exec", "--json", "seq 3", sock=False)
    assert p.returncode == 0 and b'"stdout":"1\\n2\\n3\\n"' in p.stdout, p


def test_fc_refused_says_nothing_listens(boxctl, relay):
    r = relay("fc-refuse")
    p = boxctl.run("-s", "fc:%s:5001" % r.path, "ping", sock=False, timeout=T(15))
    assert p.returncode == 1, p
    err = p.stderr.decode()
    assert "CONNECT 5001" in err and "nothing listens on guest port 5001" in err, err
    assert "--listen vsock:5001" in err, err


def test_fc_garbled_answer_is_quoted(boxctl, relay):
    r = relay("fc-garble")
    p = boxctl.run("-s", "fc:%s:5000" % r.path, "ping", sock=False)
    assert p.returncode == 1, p
    err = p.stderr.decode()
    assert "'HELLO?'" in err and "instead of 'OK ...'" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_fc_not_a_socket(boxctl, boxd):
    p = boxctl.run("-s", "fc:%s/none.sock:5000" % boxd.workdir, "ping", sock=False)
    assert p.returncode == 1
    assert "not the hypervisor's vsock socket" in p.stderr.decode(), p.stderr


def test_serial_resends_hello(boxctl, relay):
    """A virtio-serial port may hand the first hello to the old session: boxctl sends hello
    again after 200 ms until one is answered."""
    r = relay("serial-drop-first")
    p = boxctl.run("-s", "serial:" + r.path, "exec", "echo via-serial", sock=False)
    assert p.returncode == 0 and p.stdout == b"via-serial\n", p
    assert r.lines == [b"dropped"]


def test_serial_says_hello_again_after_need_hello(boxctl, relay):
    """The hello was answered by a session that then ended: the first request meets need_hello,
    and boxctl says hello again on the port and goes on."""
    r = relay("serial-reset")
    p = boxctl.run("-s", "serial:" + r.path, "exec", "echo after-reset", sock=False)
    assert p.returncode == 0 and p.stdout == b"after-reset\n", p
    assert r.lines[:2] == [b"reset", b"session ended"], r.lines


@pytest.mark.parametrize("spec,needle", [
    ("vsock:3", "vsock:CID:PORT"),
    ("vsock:x:5000", "vsock:CID:PORT"),
    ("vsock:3:99999999999", "vsock:CID:PORT"),
    ("vsock:0:5000", "CID 0"),
    ("fc:/tmp/x.sock", "fc:UDS:PORT"),
    ("fc::5000", "empty"),
    ("unix:", "empty"),
    ("serial:" + "x" * 200, "longer than"),
])
def test_bad_endpoint_forms(boxctl, spec, needle):
    p = boxctl.run("-s", spec, "ping", sock=False)
    assert p.returncode == 2, p
    assert needle in p.stderr.decode(), p.stderr


def test_vsock_connect_error_names_the_fix(boxctl):
    """No vsock transport reaches CID 3 here (or nothing listens on it): the message says
    which, and what to do."""
    p = boxctl.run("-s", "vsock:3:5999", "ping", sock=False, timeout=T(20))
    assert p.returncode == 1, p
    err = p.stderr.decode()
    assert err.startswith("boxctl: cannot connect to vsock:3:5999: "), err
    assert ("vhost_vsock" in err) or ("--listen vsock:5999" in err), err


def test_connect_failure_says_what_to_do(boxctl, boxd):
    p = boxctl.run("-s", boxd.workdir + "/nope.sock", "ping", sock=False)
    err = p.stderr.decode()
    assert p.returncode == 1
    for needle in ("-s", "$BOXD_SOCKET", "scripts/local-box.sh"):
        assert needle in err, err


def exec_sessions(sent, kind="exec"):
    return [n for n, t in sent if t == kind]


@pytest.mark.parametrize("json", [False, True])
def test_serial_resends_a_request_met_by_need_hello(boxctl, boxd, relay, json):
    """The session restarts under a request after hello and the confirming ping have passed
    (frame 3, the exec): boxd answers it need_hello, and boxctl says hello again and sends that
    exec once more. It runs once: need_hello means the first copy did nothing."""
    r = relay("serial-reset-at", at=3)
    tag = "resent-%d" % json
    args = ["exec", "--id", tag] + (["--json"] if json else []) + ["echo %s; seq 2" % tag]
    p = boxctl.run("-s", "serial:" + r.path, *args, sock=False, timeout=T(20))
    assert p.returncode == 0, (p, r.lines, r.sent)
    if json:
        assert b'"stdout":"%s\\n1\\n2\\n"' % tag.encode() in p.stdout, p
    else:
        assert p.stdout == b"%s\n1\n2\n" % tag.encode(), p
    assert r.lines == [b"reset"], r.lines
    # The exec went to the new session (need_hello), then after a hello to the next one.
    assert [t for _, t in r.sent][:3] == ["hello", "ping", "exec"], r.sent
    ex = exec_sessions(r.sent)
    assert len(ex) == 2 and ex[1] > ex[0], r.sent
    assert ("hello" in [t for n, t in r.sent if n == ex[1]]), r.sent
    # One run, not two.
    q = boxctl.run("list", "--json")
    assert q.returncode == 0, q
    assert q.stdout.count(b'"id":"%s"' % tag.encode()) == 1, q.stdout


@pytest.mark.parametrize("cmd,at", [
    (["info"], 3), (["list"], 3), (["ping"], 3), (["wait", "--json", "RID"], 3),
    (["logs", "RID"], 3), (["cancel", "RID"], 3)])
def test_serial_every_request_survives_need_hello(boxctl, relay, cmd, at):
    """Every boxctl command's request is resent after the need_hello of a restarted session."""
    rid = "every-%s" % cmd[0]
    p = boxctl.run("exec", "--id", rid, "--detach", "echo x; sleep %d" % (30 if cmd[0] == "cancel" else 0))
    assert p.returncode == 0, p
    if cmd[0] in ("wait", "logs"):
        assert boxctl.run("wait", rid).returncode == 0
    r = relay("serial-reset-at", at=at)
    p = boxctl.run("-s", "serial:" + r.path, *[rid if a == "RID" else a for a in cmd],
                   sock=False, timeout=T(20))
    assert p.returncode == 0, (cmd, p)
    assert r.lines == [b"reset"], r.lines
    types = [t for _, t in r.sent]
    assert types[2:].count(types[2]) >= 2, r.sent  # the request, then the same again
    if cmd[0] == "logs":
        assert p.stdout == b"x\n", p


def test_serial_need_hello_twice_is_an_error_not_a_loop(boxctl, relay):
    """A request resent once and met by need_hello again is reported, not sent a third time."""
    r = relay("serial-reset-at", at="exec")  # the exec, and (after the re-hello) its resend
    p = boxctl.run("-s", "serial:" + r.path, "exec", "--id", "twice", "echo no",
                   sock=False, timeout=T(20))
    assert p.returncode != 0, (p, r.sent)
    assert b"need_hello" in p.stderr, p
    assert len(exec_sessions(r.sent)) == 2, r.sent
