#!/usr/bin/python3
"""portmux.py LISTEN PORT_SOCKET...: serves many host clients of one microVM box at once.

QEMU's socket chardev takes one connection at a time, so a VM with a single virtio-serial port
makes a second host client wait, silently, until the first leaves. vmbox/run.sh therefore gives
the VM several ports (box.agent, box.agent.1, ...), each with a chardev socket of its own and
boxd listening on each (--listen virtio-port:NAME), and starts this relay on the box's one
public socket, agent.sock.

Each client accepted on LISTEN gets a port of its own for the whole connection: the free port
released longest ago (never one released less than REUSE_S ago, so boxd sees the previous
session end before a new one starts on it - PROTOCOL.md 1, virtio-serial). Bytes are relayed
unchanged both ways; when either side closes, both are closed. No framing is added: every
session is still exactly the boxd protocol on a stream of its own. When every port is taken,
new clients wait in order, accepted but unserved, until one frees (logged once per client).

Memory is bounded: at most BUF bytes are held per direction of a connection; reading pauses
while they wait to be written. Logs go to stderr (run.sh sends them to portmux.log). Stops on
SIGTERM or SIGINT, and when QEMU's sockets refuse (the VM is gone). Python 3 standard
library only.
"""

import collections
import os
import selectors
import signal
import socket
import sys
import time

BUF = 1 << 20          # bytes held per direction of a connection
REUSE_S = 0.1          # a released port rests this long before its next session
MAX_WAITING = 256      # clients queued while every port is taken; more are refused


def log(msg):
    sys.stderr.write("portmux: %s\n" % msg)
    sys.stderr.flush()


class Pair:
    """A client and the port it was given."""

    def __init__(self, mux, client, port):
        self.mux = mux
        self.port = port
        self.a = client
        self.b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.b.connect(mux.ports[port])
        self.a.setblocking(False)
        self.b.setblocking(False)
        self.out = {self.a: bytearray(), self.b: bytearray()}   # bytes waiting to go to key
        self.eof = {self.a: False, self.b: False}
        self.closed = False
        self.update()

    def other(self, s):
        return self.b if s is self.a else self.a

    def update(self):
        for s in (self.a, self.b):
            ev = 0
            if not self.eof[s] and len(self.out[self.other(s)]) < BUF:
                ev |= selectors.EVENT_READ
            if self.out[s]:
                ev |= selectors.EVENT_WRITE
            try:
                key = self.mux.sel.get_key(s)
            except KeyError:
                key = None
            if ev and key is None:
                self.mux.sel.register(s, ev, self)
            elif ev and key.events != ev:
                self.mux.sel.modify(s, ev, self)
            elif not ev and key is not None:
                self.mux.sel.unregister(s)

    def ready(self, s, mask):
        try:
            if mask & selectors.EVENT_READ:
                data = s.recv(65536)
                if not data:
                    self.eof[s] = True
                else:
                    self.out[self.other(s)] += data
            if mask & selectors.EVENT_WRITE and self.out[s]:
                n = s.send(self.out[s])
                del self.out[s][:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close()
            return
        # A session ends when either side is done and what it said has been passed on.
        if (self.eof[self.a] and not self.out[self.b]) or (self.eof[self.b] and not self.out[self.a]):
            self.close()
            return
        self.update()

    def close(self):
        if self.closed:
            return
        self.closed = True
        for s in (self.a, self.b):
            try:
                self.mux.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self.mux.release(self.port)


class Mux:
    def __init__(self, listen, ports):
        self.ports = ports
        self.free = collections.deque((i, 0.0) for i in range(len(ports)))
        self.waiting = collections.deque()
        self.sel = selectors.DefaultSelector()
        tmp = "%s.%d.tmp" % (listen, os.getpid())
        self.ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ls.bind(tmp)
        os.chmod(tmp, 0o600)
        self.ls.listen(128)
        os.rename(tmp, listen)   # the path never names a socket nobody listens on
        self.ls.setblocking(False)
        self.sel.register(self.ls, selectors.EVENT_READ, None)
        self.timer = None

    def release(self, port):
        self.free.append((port, time.monotonic()))
        self.serve_waiting()

    def take(self):
        """The free port released longest ago, if it has rested REUSE_S."""
        if self.free and time.monotonic() - self.free[0][1] >= REUSE_S:
            return self.free.popleft()[0]
        return None

    def serve_waiting(self):
        while self.waiting:
            port = self.take()
            if port is None:
                return
            self.start(self.waiting.popleft(), port)

    def start(self, client, port):
        try:
            Pair(self, client, port)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            # QEMU is gone (the guest powered off or rebooted under -no-reboot): so is the box.
            log("port %d: QEMU's socket %s: %s; the VM is gone, exiting" % (port, self.ports[port], e))
            client.close()
            raise SystemExit(1)
        except OSError as e:
            log("port %d: cannot reach QEMU's socket %s: %s" % (port, self.ports[port], e))
            client.close()
            self.free.append((port, time.monotonic()))

    def accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log("accept: %s" % e)
                return
            if not self.waiting:
                port = self.take()
                if port is not None:
                    self.start(c, port)
                    continue
            if len(self.waiting) >= MAX_WAITING:
                log("%d clients already wait for a port: refusing one" % MAX_WAITING)
                c.close()
                continue
            log("all %d ports busy (or resting): a client waits" % len(self.ports))
            self.waiting.append(c)

    def run(self):
        def stop(*_):
            raise SystemExit(0)
        # Raising from the handler ends a select() in progress (PEP 475 would resume it).
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log("serving %d ports" % len(self.ports))
        while True:
            timeout = None
            if self.waiting and self.free:
                timeout = max(0.0, REUSE_S - (time.monotonic() - self.free[0][1]))
            for key, mask in self.sel.select(timeout):
                if key.data is None:
                    self.accept()
                else:
                    key.data.ready(key.fileobj, mask)
            self.serve_waiting()


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    Mux(argv[1], argv[2:]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
