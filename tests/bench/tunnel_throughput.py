#!/usr/bin/env python3
"""Tunnel throughput: BENCH_TUNNEL_MB (256) MiB through `boxctl forward` against a direct TCP
connection to the same server on the same host, in one run, as ratios.

Both directions are measured: up (the client sends, the server in the box reads until EOF and
answers one byte) and down (the server sends, the client reads until EOF). The server is a
separate process (so it does not share the client's interpreter lock), listening on 127.0.0.1;
the baseline connects to it directly, the tunnel goes client -> boxctl forward -> boxd (unix
socket, msgpack frames, per-tunnel credit) -> the server. Each pair alternates, baseline first,
BENCH_TUNNEL_ROUNDS (3) times; medians are reported. The ratio is baseline seconds / tunnel
seconds (1.0: as fast as direct TCP; the target is >= 0.7x). The CPU time boxd and boxctl spent
on each tunnelled transfer is reported too: on a loaded machine it says more than the wall time.
So is the CPU the direct transfer's two ends (this client and the server) spent: a tunnel adds
boxd's and boxctl's to theirs, so when the CPUs are the limit (both ends and both relays busy,
more processes than CPUs) the ratio is about direct CPU / (direct CPU + boxd and boxctl's CPU),
the "CPU ratio" column, which varies less with the machine's load than the wall times.

usage: tests/bench/tunnel_throughput.py       (BOXD_BIN, BOXCTL_BIN: default build/)
  BENCH_TUNNEL_MB=256  BENCH_TUNNEL_ROUNDS=3
"""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOXD = os.environ.get("BOXD_BIN", os.path.join(ROOT, "build", "boxd"))
BOXCTL = os.environ.get("BOXCTL_BIN", os.path.join(ROOT, "build", "boxctl"))
MB = int(os.environ.get("BENCH_TUNNEL_MB", "256"))
ROUNDS = int(os.environ.get("BENCH_TUNNEL_ROUNDS", "3"))
BUF = 1 << 20


def serve(port_file):
    """The server: 'u' + data until EOF -> answers b'k'; 'd' + 8-byte size -> sends that much."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(ls.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    block = os.urandom(BUF)
    view = memoryview(bytearray(BUF))
    while True:
        c, _ = ls.accept()
        mode = c.recv(1)
        if mode == b"u":
            while c.recv_into(view):
                pass
            c.sendall(b"k")
        elif mode == b"d":
            want = b""
            while len(want) < 8:
                want += c.recv(8 - len(want))
            left = int.from_bytes(want, "big")
            while left > 0:
                n = min(left, BUF)
                c.sendall(block[:n])
                left -= n
        c.close()


def up(port, nbytes):
    block = os.urandom(BUF)
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"u")
    left = nbytes
    while left > 0:
        n = min(left, BUF)
        s.sendall(block[:n])
        left -= n
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b"k"
    s.close()
    return time.monotonic() - t0


def down(port, nbytes):
    view = memoryview(bytearray(BUF))
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"d" + nbytes.to_bytes(8, "big"))
    got = 0
    while True:
        n = s.recv_into(view)
        if not n:
            break
        got += n
    s.close()
    assert got == nbytes, (got, nbytes)
    return time.monotonic() - t0


def cpu_s(pid):
    """User + system CPU seconds of process pid so far."""
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_s():
    """User + system CPU seconds of this process (the client) so far."""
    t = os.times()
    return t.user + t.system


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return 0
    work = tempfile.mkdtemp(prefix="boxd-bench-tunnel-")
    sock = os.path.join(work, "boxd.sock")
    procs = []
    try:
        boxd = subprocess.Popen([BOXD, "--listen", "unix:" + sock, "--log-level", "error"],
                                stderr=open(os.path.join(work, "boxd.log"), "wb"))
        procs.append(boxd)
        port_file = os.path.join(work, "port")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve",
                                       port_file]))
        for _ in range(200):
            if os.path.exists(sock) and os.path.exists(port_file):
                break
            time.sleep(0.05)
        port = int(open(port_file).read())
        fw = subprocess.Popen([BOXCTL, "-s", sock, "forward", "0:127.0.0.1:%d" % port],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(fw)
        line = fw.stdout.readline().decode()
        fport = int(line.split("listening on 127.0.0.1:", 1)[1].split(",", 1)[0])
        nbytes = MB << 20
        res = {"up": ([], []), "down": ([], [])}
        cpu = {"up": [], "down": []}  # CPU seconds of boxd + boxctl per tunnelled transfer
        direct_cpu = {"up": [], "down": []}  # CPU seconds of the client + server, direct
        server = procs[1]
        for _ in range(ROUNDS):
            for name, fn in (("up", up), ("down", down)):
                d0 = self_cpu_s() + cpu_s(server.pid)
                res[name][0].append(fn(port, nbytes))
                direct_cpu[name].append(self_cpu_s() + cpu_s(server.pid) - d0)
                c0 = cpu_s(boxd.pid) + cpu_s(fw.pid)
                res[name][1].append(fn(fport, nbytes))
                cpu[name].append(cpu_s(boxd.pid) + cpu_s(fw.pid) - c0)
        print("tunnel throughput, %d MiB, %d rounds (medians)" % (MB, ROUNDS))
        print("load average (1 min) after the rounds: %s" % open("/proc/loadavg").read().split()[0])
        print("| direction | direct TCP | boxctl forward | ratio (target >= 0.7x) "
              "| CPU of boxd + boxctl | CPU of the direct ends | CPU ratio |")
        print("|---|---|---|---|---|---|---|")
        for name in ("up", "down"):
            d = statistics.median(res[name][0])
            t = statistics.median(res[name][1])
            c = statistics.median(cpu[name])
            dc = statistics.median(direct_cpu[name])
            bound = dc / (dc + c) if dc + c > 0 else 1.0
            print("| %s | %.3f s (%.0f MiB/s) | %.3f s (%.0f MiB/s) | %.2fx | %.2f s (%.2f ms/MiB) "
                  "| %.2f s (%.2f ms/MiB) | %.2fx |"
                  % (name, d, MB / d, t, MB / t, d / t, c, c * 1000 / MB, dc, dc * 1000 / MB,
                     bound))
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
