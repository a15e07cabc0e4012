"""A minimal boxd client and namespace-box handle for the box tests.

The client speaks protocol/PROTOCOL.md from scratch (frames: a 4-byte big-endian length and one
msgpack map), so these tests check the agent and the box, not a shared client library.
"""

import itertools
import os
import socket
import struct
import subprocess
import time

import msgpack

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PACKAGING = os.path.join(REPO, "packaging")
NSBOX = os.path.join(PACKAGING, "nsbox.sh")
ROOTFS_SH = os.path.join(PACKAGING, "rootfs.sh")
BOXES_DIR = os.environ.get("BOXD_BOXES_DIR", "/run/boxd-boxes")


class ProtocolError(Exception):
    pass


class Client:
    """One connection to boxd. Blocking, with a timeout on every read."""

    def __init__(self, path, timeout=10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._buf = b""
        self._req = itertools.count(1)
        # Events read while looking for something else, oldest first: next_event looks here
        # before it reads the socket, so nothing is lost when several runs are followed.
        self.backlog = []

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, msg):
        body = msgpack.packb(msg, use_bin_type=True)
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def _fill(self, n):
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError("connection closed by boxd")
            self._buf += chunk

    def recv(self):
        # Nothing is consumed until the whole frame is there: a read that times out half way
        # leaves the stream in step for the next call.
        self._fill(4)
        (n,) = struct.unpack(">I", self._buf[:4])
        self._fill(4 + n)
        body, self._buf = self._buf[4:4 + n], self._buf[4 + n:]
        msg = msgpack.unpackb(body, raw=False)
        if not isinstance(msg, dict) or "type" not in msg:
            raise ProtocolError("not a message: %r" % (msg,))
        return msg

    def next_event(self, pred, timeout=None):
        """The first event (from the backlog, then the socket) for which pred is true; the
        others are kept in the backlog. timeout: seconds (the socket's own timeout if None)."""
        for i, ev in enumerate(self.backlog):
            if pred(ev):
                return self.backlog.pop(i)
        old = self.sock.gettimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise socket.timeout("no matching event within %.1f s" % timeout)
                    self.sock.settimeout(left)
                ev = self.recv()
                if pred(ev):
                    return ev
                self.backlog.append(ev)
        finally:
            self.sock.settimeout(old)

    def request(self, msg):
        """Sends msg with a fresh req and returns the reply carrying that req."""
        req = next(self._req)
        self.send(dict(msg, req=req))
        return self.next_event(lambda ev: ev.get("req") == req)

    def start(self, cmd=None, **fields):
        """Starts a run (cmd, or argv=[...] in fields) and returns its `started` reply (an
        `error` reply raises). With follow (the default) its events then arrive on this
        connection: wait_end collects them."""
        msg = dict({"type": "exec"}, **fields)
        if cmd is not None:
            msg["cmd"] = cmd
        rep = self.request(msg)
        if rep["type"] != "started":
            raise ProtocolError("exec %r: %r" % (cmd or fields.get("argv"), rep))
        return rep

    def wait_end(self, run_id, timeout=None):
        """The `end` event of a run this connection follows."""
        return self.next_event(lambda ev: ev["type"] == "end" and ev.get("id") == run_id,
                               timeout)

    def hello(self):
        reply = self.request({"type": "hello", "version": 1, "client": "tests/boxes"})
        if reply["type"] != "hello":
            raise ProtocolError("hello answered with %r" % (reply,))
        return reply

    def run(self, cmd=None, **fields):
        """Runs cmd (a shell expression; or argv=[...] in fields) and returns its `end` event,
        with the output it streamed collected in `streamed` ({1: bytes, 2: bytes})."""
        req = next(self._req)
        msg = dict({"type": "exec", "req": req, "output": True}, **fields)
        if cmd is not None:
            msg["cmd"] = cmd
        self.send(msg)
        streamed = {1: b"", 2: b""}
        started = None
        while True:
            ev = self.next_event(lambda e: e.get("req") == req)
            t = ev["type"]
            if t == "error":
                raise ProtocolError("exec %r: %r" % (cmd, ev))
            if t == "started":
                started = ev
            elif t == "output":
                for _seq, _ts, stream, data in ev["lines"]:
                    streamed[stream] += data.encode() if isinstance(data, str) else data
            elif t == "end":
                if started is None:
                    raise ProtocolError("end before started: %r" % (ev,))
                ev["streamed"] = streamed
                ev["started"] = started
                return ev


def text(v):
    """A str|bin field of an event as str."""
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def ok(end):
    """Asserts a run completed with exit 0 and returns its result as str."""
    assert end["status"] == "completed" and end["exit_code"] == 0, (
        "run failed: status %s exit %s stderr %r" % (end["status"], end["exit_code"],
                                                     text(end.get("stderr"))))
    return text(end.get("result"))


def proc_state(pid):
    """The state letter of a host pid (R, S, T, Z...), or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
        return s[s.rindex(")") + 2]
    except (FileNotFoundError, ProcessLookupError):
        return None


def cgroup_state(path):
    """None when the cgroup directory is gone, else (populated, [pids])."""
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            populated = "populated 1" in f.read().splitlines()
        with open(os.path.join(path, "cgroup.procs")) as f:
            pids = [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return None
    return populated, pids


def cgroup_root():
    for d in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        try:
            with open("/proc/self/mounts") as f:
                if any(l.split()[1:3] == [d, "cgroup2"] for l in f):
                    return d
        except OSError:
            pass
    return None


def mount_table():
    """The host's mount table as this process sees it (mount ids included: a mount that was
    replaced by an identical one still shows as a change)."""
    with open("/proc/self/mountinfo") as f:
        return f.read()


class NsBox:
    """A namespace box started with packaging/nsbox.sh."""

    def __init__(self, name, extra_args=(), boxd_args=(), timeout=20, boxd_bin=None):
        self.name = name
        self.state = os.path.join(BOXES_DIR, name)
        cg = cgroup_root()
        self.cgroup = os.path.join(cg, "boxd-box-" + name) if cg else None
        env = dict(os.environ)
        if boxd_bin:
            env["BOXD_BIN"] = boxd_bin
        t0 = time.monotonic()
        p = subprocess.run([NSBOX, "--name", name] + list(extra_args) + ["--"] + list(boxd_args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, env=env)
        self.start_s = time.monotonic() - t0
        self.start_stderr = p.stderr.decode("utf-8", "replace")
        if p.returncode != 0:
            raise RuntimeError("nsbox.sh failed (%d): %s" % (p.returncode, self.start_stderr))
        self.socket = p.stdout.decode().strip()
        with open(os.path.join(self.state, "pid")) as f:
            self.pid = int(f.read())
        self.root = os.path.join(self.state, "root")

    def client(self, timeout=10.0):
        c = Client(self.socket, timeout)
        c.hello()
        return c

    def cgroup_pids(self):
        """Every pid in the box's cgroup tree, as the host numbers them."""
        pids = []
        for d, _dirs, _files in os.walk(self.cgroup):
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    pids += [int(x) for x in f.read().split()]
            except FileNotFoundError:
                pass
        return pids

    def processes(self):
        """[(pid, state, argv)] of every process in the box's cgroup tree, as the host sees
        them (processes that exit while this looks are left out)."""
        out = []
        for pid in self.cgroup_pids():
            st = proc_state(pid)
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if st is not None:
                out.append((pid, st, argv))
        return out

    def host_cgroup(self, inside):
        """The host's path of a cgroup the box names INSIDE (a path under its /sys/fs/cgroup,
        the root of its cgroup namespace)."""
        assert inside == "/sys/fs/cgroup" or inside.startswith("/sys/fs/cgroup/"), inside
        return self.cgroup + inside[len("/sys/fs/cgroup"):]

    def console(self):
        try:
            with open(os.path.join(self.state, "console.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self, grace=5):
        """nsbox.sh --stop; once it succeeded, a later call does nothing and returns (0, "")
        (nsbox.sh refuses to stop a box that no longer exists)."""
        if getattr(self, "stopped", False):
            return 0, ""
        p = subprocess.run([NSBOX, "--stop", self.name, "--grace", str(grace)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=grace + 20)
        self.stopped = p.returncode == 0
        return p.returncode, p.stderr.decode("utf-8", "replace")
