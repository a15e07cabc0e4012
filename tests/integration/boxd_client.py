"""A small, synchronous boxd client written from protocol/PROTOCOL.md alone.

It shares no code with the agent or with boxctl, so the integration tests check the agent against
the spec rather than against another reading of the same C code.

Frames are a 4-byte big-endian length followed by exactly one msgpack map. Messages from the agent
are decoded with raw=False (str -> Python str) while bin stays bytes, so a test can tell which
encoding the agent chose for `data`.
"""

import itertools
import select
import socket
import struct
import time

import msgpack

# A frame from the agent larger than this is treated as a protocol violation by the client (the
# agent promises frames of at most max_event bytes, "far below 4 GiB").
CLIENT_MAX_FRAME = 64 << 20

STREAM_STDOUT = 1
STREAM_STDERR = 2


class ConnectionClosed(EOFError):
    """The agent closed the connection (EOF on the socket)."""


class ProtocolViolation(AssertionError):
    """The agent sent something the spec does not allow (a bad frame, a non-map body...)."""


def pack(obj):
    """msgpack-encodes obj with str as str and bytes as bin."""
    return msgpack.packb(obj, use_bin_type=True)


def frame(body):
    """Wraps an already-encoded body in a frame header."""
    return struct.pack(">I", len(body)) + body


def as_bytes(data):
    """Output `data` may be str (valid UTF-8) or bin; returns the bytes either way."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    raise ProtocolViolation("record data is neither str nor bin: %r" % (data,))


class ExecResult:
    """Everything one `exec` (or `attach`) produced on a connection, in arrival order."""

    def __init__(self):
        self.started = None  # the `started` reply (or `attached` for attach)
        self.error = None  # an `error` reply instead of `started`
        self.records = []  # [seq, ts_ns, stream, data as bytes]
        self.raw_records = []  # [seq, ts_ns, stream, data as sent (str or bytes)]
        self.end = None  # the `end` event
        self.gaps = []  # `gap` events
        self.events = []  # (monotonic arrival time, message) for every message of this req

    def _stream(self, stream):
        return b"".join(r[3] for r in sorted(self.records, key=lambda r: r[0]) if r[2] == stream)

    @property
    def stdout(self):
        return self._stream(STREAM_STDOUT)

    @property
    def stderr(self):
        return self._stream(STREAM_STDERR)

    @property
    def id(self):
        for m in (self.started, self.error, self.end):
            if m is not None and "id" in m:
                return m["id"]
        return None

    @property
    def pid(self):
        return None if self.started is None else self.started.get("pid")

    def output_events(self):
        return [m for _, m in self.events if m.get("type") == "output"]

    def __repr__(self):
        return "ExecResult(started=%r, error=%r, end=%r, stdout=%r, stderr=%r)" % (
            self.started, self.error, self.end, self.stdout[:200], self.stderr[:200])


class Client:
    """One connection to boxd. Not thread-safe: use one Client per thread."""

    def __init__(self, path, connect_timeout=5.0, default_timeout=10.0):
        self.path = path
        self.default_timeout = default_timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(connect_timeout)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self._rbuf = bytearray()
        self._pending = []  # messages read but not yet consumed, in arrival order
        self._pending_t = []  # their arrival times
        self._req = itertools.count(1)
        self.hello_reply = None
        self.eof = False

    # -- plumbing ----------------------------------------------------------------------------

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fileno(self):
        return self.sock.fileno()

    def next_req(self):
        return next(self._req)

    def raw_send(self, data):
        """Writes bytes as they are (for malformed-input tests)."""
        view = memoryview(bytes(data))
        deadline = time.monotonic() + 30
        while view:
            try:
                n = self.sock.send(view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("send blocked for 30 s")
                select.select([], [self.sock], [], 1.0)

    def send(self, msg):
        """Encodes and frames one message."""
        self.raw_send(frame(pack(msg)))

    def _fill(self, timeout):
        """Reads what is available, waiting at most timeout s. Returns False on timeout."""
        if self.eof:
            raise ConnectionClosed("connection closed by the agent")
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return False
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise ConnectionClosed("connection closed by the agent")
        self._rbuf += chunk
        return True

    def _try_parse(self):
        if len(self._rbuf) < 4:
            return None
        (n,) = struct.unpack(">I", self._rbuf[:4])
        if n == 0 or n > CLIENT_MAX_FRAME:
            raise ProtocolViolation("agent sent a frame of length %d" % n)
        if len(self._rbuf) < 4 + n:
            return None
        body = bytes(self._rbuf[4:4 + n])
        del self._rbuf[:4 + n]
        try:
            msg = msgpack.unpackb(body, raw=False)
        except Exception as e:  # noqa: BLE001 - any decode failure is the agent's fault
            raise ProtocolViolation("agent sent an undecodable body: %r (%r)" % (e, body[:100]))
        if not isinstance(msg, dict):
            raise ProtocolViolation("agent sent a non-map body: %r" % (msg,))
        if not isinstance(msg.get("type"), str):
            raise ProtocolViolation("agent message without str type: %r" % (msg,))
        return msg

    def _read_one(self, deadline):
        """Reads one message from the socket (not from the pending list)."""
        while True:
            msg = self._try_parse()
            if msg is not None:
                return msg, time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0 or not self._fill(left):
                raise TimeoutError("no message from boxd within the timeout")

    def recv(self, timeout=None):
        """Returns the next message; raises TimeoutError after timeout s, ConnectionClosed on EOF."""
        return self.recv_timed(timeout)[1]

    def recv_timed(self, timeout=None):
        """Like recv, but returns (arrival monotonic time, message)."""
        if self._pending:
            return self._pending_t.pop(0), self._pending.pop(0)
        timeout = self.default_timeout if timeout is None else timeout
        msg, t = self._read_one(time.monotonic() + timeout)
        return t, msg

    def recv_match(self, pred, timeout=None, timed=False):
        """Returns the first message (pending ones first) for which pred(msg) holds. Others are
        kept, in order, for later recv calls."""
        for i, m in enumerate(self._pending):
            if pred(m):
                t = self._pending_t.pop(i)
                self._pending.pop(i)
                return (t, m) if timed else m
        timeout = self.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            m, t = self._read_one(deadline)
            if pred(m):
                return (t, m) if timed else m
            self._pending.append(m)
            self._pending_t.append(t)

    def recv_req(self, req, timeout=None, timed=False):
        return self.recv_match(lambda m: m.get("req") == req, timeout, timed)

    def pending(self):
        """Messages read but not consumed yet."""
        return list(self._pending)

    def drain(self, quiet=0.2):
        """Reads everything until the connection has been quiet for `quiet` s; returns it."""
        out = list(self._pending)
        self._pending.clear()
        self._pending_t.clear()
        while True:
            try:
                out.append(self._read_one(time.monotonic() + quiet)[0])
            except TimeoutError:
                return out

    def wait_closed(self, timeout=5.0):
        """True if the agent closes the connection within timeout s (messages are discarded)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    self._read_one(deadline)
                except TimeoutError:
                    return False
        except ConnectionClosed:
            return True
        return False

    # -- requests ----------------------------------------------------------------------------

    def request(self, type_, timeout=None, **fields):
        """Sends {type, req, **fields} and returns the first message carrying that req."""
        req = fields.pop("req", None)
        if req is None:
            req = self.next_req()
        msg = {"type": type_, "req": req}
        msg.update(fields)
        self.send(msg)
        return self.recv_req(req, timeout)

    def hello(self, version=1, **fields):
        reply = self.request("hello", version=version, **fields)
        if reply.get("type") == "hello":
            self.hello_reply = reply
        return reply

    def ping(self, timeout=None):
        return self.request("ping", timeout=timeout)

    def info(self):
        return self.request("info")

    def list(self):
        return self.request("list")

    def exec_start(self, cmd=None, argv=None, req=None, **opts):
        """Sends an exec request and returns its req; the replies are read by collect()."""
        if req is None:
            req = self.next_req()
        msg = {"type": "exec", "req": req}
        if cmd is not None:
            msg["cmd"] = cmd
        if argv is not None:
            msg["argv"] = list(argv)
        msg.update(opts)
        self.send(msg)
        return req

    def collect(self, req, timeout=30.0, until_end=True, first="started"):
        """Collects the messages of one req: the first reply (`started`/`attached`, or an error),
        then output and gap events until `end` (or only the first reply if not until_end)."""
        res = ExecResult()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("req %r: no end within %.1f s; got %r" % (req, timeout, res))
            t, m = self.recv_req(req, left, timed=True)
            res.events.append((t, m))
            ty = m["type"]
            if ty == "error":
                res.error = m
                return res
            if ty in ("started", "attached"):
                res.started = m
                if not until_end:
                    return res
            elif ty == "output":
                for rec in m["lines"]:
                    res.raw_records.append(list(rec))
                    res.records.append([rec[0], rec[1], rec[2], as_bytes(rec[3])])
            elif ty == "gap":
                res.gaps.append(m)
            elif ty == "end":
                res.end = m
                return res
            else:
                raise ProtocolViolation("unexpected %r for req %r: %r" % (ty, req, m))

    def exec_run(self, cmd=None, argv=None, timeout=30.0, output=True, **opts):
        """Runs one command with follow and returns its ExecResult once `end` arrives (or at
        once with .error set if the agent answered `error`). output=True by default, so the
        end carries result/stdout/stderr."""
        if output is not None:
            opts["output"] = output
        req = self.exec_start(cmd=cmd, argv=argv, **opts)
        return self.collect(req, timeout=timeout)

    def attach(self, id_, from_seq=None, timeout=30.0, until_end=True, **opts):
        fields = {"id": id_}
        if from_seq is not None:
            fields["from_seq"] = from_seq
        fields.update(opts)
        req = self.next_req()
        self.send(dict(type="attach", req=req, **fields))
        return self.collect(req, timeout=timeout, until_end=until_end)

    def wait(self, id_, timeout=30.0, **opts):
        return self.request("wait", timeout=timeout, id=id_, **opts)

    def cancel(self, id_, **opts):
        return self.request("cancel", id=id_, **opts)

    def signal(self, id_, sig):
        return self.request("signal", id=id_, signal=sig)

    def stdin(self, id_, data=None, eof=None):
        fields = {"id": id_}
        if data is not None:
            fields["data"] = data
        if eof is not None:
            fields["eof"] = eof
        return self.request("stdin", **fields)

    def logs(self, id_, **opts):
        return self.request("logs", id=id_, **opts)

    def all_logs(self, id_, page=None, **opts):
        """Follows logs pages until `more` is false; returns (records as bytes, pages)."""
        pages, recs = [], []
        from_seq = opts.pop("from_seq", 0)
        for _ in range(100000):
            fields = dict(opts)
            if page is not None:
                fields["max_records"] = page
            p = self.logs(id_, from_seq=from_seq, **fields)
            assert p["type"] == "logs", p
            pages.append(p)
            for rec in p["lines"]:
                recs.append([rec[0], rec[1], rec[2], as_bytes(rec[3])])
            if not p["more"]:
                return recs, pages
            assert p["next_seq"] > from_seq, "logs paging made no progress: %r" % (p,)
            from_seq = p["next_seq"]
        raise AssertionError("logs paging did not end")


def connect(path, hello=True, **kw):
    """Connects and (by default) says hello; returns the Client."""
    c = Client(path, **kw)
    if hello:
        r = c.hello(client="boxd-integration-tests/1")
        if r.get("type") != "hello":
            c.close()
            raise ProtocolViolation("hello refused: %r" % (r,))
    return c
