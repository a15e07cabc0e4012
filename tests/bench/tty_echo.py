#!/usr/bin/python3
"""Benchmark row: keystroke-to-echo latency through `boxctl shell` against `ssh -tt` to localhost.

A person types into a terminal and waits for the character to show. Both clients get a real
pseudo-terminal of their own (tests/lib/ptyterm.py) and make it raw; on the far side `cat` runs
on a pseudo-terminal whose line discipline echoes each key at once. One keystroke is one byte
written to our terminal's master; its latency is the time until that byte has come back. The
clients take turns keystroke by keystroke, so drift on the machine lands on both:

- boxctl: `boxctl -s SOCK shell cat`, against a boxd this script starts (BOXD_BIN) on a
  temporary socket;
- ssh (the baseline): `ssh -tt root@127.0.0.1 cat` over an already open ControlMaster, to a
  private sshd this script starts on a free high port with a temporary host key and a temporary
  authorized key (as root; the row says why it is missing when sshd cannot run);
- local pty: `cat` on a local pseudo-terminal, the floor neither can beat.

usage: BOXD_BIN=build/boxd BOXCTL_BIN=build/boxctl /usr/bin/python3 tests/bench/tty_echo.py
       [--keys N] [--socket PATH] [--rows]
Prints one table of p50/p99 in µs and the ratios against ssh; the target is boxctl within 1.2x.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

from ptyterm import PtyTerm  # noqa: E402

BOXD_BIN = os.environ.get("BOXD_BIN", os.path.join(REPO, "build", "boxd"))
BOXCTL_BIN = os.environ.get("BOXCTL_BIN", os.path.join(REPO, "build", "boxctl"))
TARGET = 1.2
KEYS = b"abcdefghijklmnopqrstuvwxyz0123456789"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_boxd(tmp):
    sock = os.path.join(tmp, "boxd.sock")
    log = open(os.path.join(tmp, "boxd.log"), "wb")
    p = subprocess.Popen([BOXD_BIN, "--listen", "unix:" + sock], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("boxd did not start; see %s" % log.name)
        time.sleep(0.02)
    time.sleep(0.2)
    return p, sock


class Sshd:
    """A private sshd for root on 127.0.0.1:PORT, and a ControlMaster connection to it."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.proc = None
        self.why = None
        self.ctl = os.path.join(tmp, "cm")
        self.port = free_port()

    def _ssh_opts(self):
        return ["-i", os.path.join(self.tmp, "userkey"), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=" + os.path.join(self.tmp, "known_hosts"),
                "-o", "LogLevel=ERROR", "-p", str(self.port)]

    def start(self):
        if os.geteuid() != 0:
            self.why = "not root: a private sshd for root needs root"
            return False
        sshd, ssh = "/usr/sbin/sshd", shutil.which("ssh")
        if not os.access(sshd, os.X_OK) or ssh is None or shutil.which("ssh-keygen") is None:
            self.why = "openssh-server or openssh-client is not installed"
            return False
        t = self.tmp
        for k in ("hostkey", "userkey"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            os.path.join(t, k)], check=True)
        shutil.copy(os.path.join(t, "userkey.pub"), os.path.join(t, "authorized_keys"))
        os.chmod(os.path.join(t, "authorized_keys"), 0o600)
        conf = os.path.join(t, "sshd_config")
        with open(conf, "w") as f:
            f.write("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\n"
                    "PidFile %s\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                    "PrintMotd no\nPrintLastLog no\nLogLevel ERROR\n"
                    % (self.port, os.path.join(t, "hostkey"), os.path.join(t, "authorized_keys"),
                       os.path.join(t, "sshd.pid")))
        os.makedirs("/run/sshd", exist_ok=True)  # its privilege separation directory
        log = open(os.path.join(t, "sshd.log"), "wb")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", conf], stdout=log, stderr=log,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.why = "sshd did not start: %s" % open(log.name).read().strip()[-300:]
                    return False
                time.sleep(0.05)
        r = subprocess.run([ssh] + self._ssh_opts() + [
            "-o", "ControlMaster=yes", "-o", "ControlPath=" + self.ctl,
            "-o", "ControlPersist=600", "-fN", "root@127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
        if r.returncode != 0:
            self.why = "ssh to the private sshd failed: %s" % r.stdout.decode()[-300:]
            return False
        return True

    def argv(self, *cmd):
        return [shutil.which("ssh"), "-tt", "-S", self.ctl] + self._ssh_opts() + [
            "root@127.0.0.1"] + list(cmd)

    def stop(self):
        if self.proc is None:
            return
        subprocess.run([shutil.which("ssh"), "-S", self.ctl, "-O", "exit", "-p", str(self.port),
                        "root@127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc.terminate()
        self.proc.wait(timeout=10)


def ready(term, name):
    """Waits until `cat` on the far side echoes: types a probe until it comes back."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        term.send(b"R")
        try:
            term.expect(rb"R", timeout=1)
            term.read_for(0.2)
            return
        except AssertionError:
            continue
    raise RuntimeError("%s: no echo within 20 s; its screen:\n%r" % (name, bytes(term.output)))


def keystroke(term, ch):
    """Types ch; returns the µs until it is echoed."""
    term.mark()
    t0 = time.perf_counter()
    term.send(bytes([ch]))
    term.expect(bytes([ch]).replace(b".", rb"\."), timeout=10)
    return (time.perf_counter() - t0) * 1e6


def print_rows(times, keys, why):
    """The rows for tests/bench/run.sh's table: ROW, metric, boxd, baseline, ratio, target."""
    b50, b99 = statistics.median(times["boxctl"]), pct(times["boxctl"], 0.99)
    l50, l99 = statistics.median(times["local pty"]), pct(times["local pty"], 0.99)
    if "ssh" in times:
        s50, s99 = statistics.median(times["ssh"]), pct(times["ssh"], 0.99)
        met = "met" if b50 <= TARGET * s50 else "missed"
        print("ROW\tkeystroke echo through `boxctl shell cat` p50 / p99, µs (%d keys); baseline: "
              "`ssh -tt` over an open ControlMaster to a private sshd\t%.0f / %.0f\t%.0f / %.0f\t"
              "%.2fx / %.2fx\t≤ %.1fx: %s" % (keys, b50, b99, s50, s99, b50 / s50, b99 / s99,
                                               TARGET, met))
    else:
        print("ROW\tkeystroke echo through `boxctl shell cat` p50 / p99, µs (%d keys)\t%.0f / "
              "%.0f\t-\tn/a\t≤ %.1fx vs ssh" % (keys, b50, b99, TARGET))
        print("NOTE\tssh row skipped: %s" % why)
    print("ROW\tkeystroke echo on a local pty (`cat`, the floor) p50 / p99, µs\t%.0f / %.0f\t-"
          "\t-\t-" % (l50, l99))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=int(os.environ.get("BENCH_TTY_KEYS", "300")))
    ap.add_argument("--socket", help="an already running boxd (default: start one)")
    ap.add_argument("--rows", action="store_true",
                    help="print run.sh's ROW/NOTE lines (tests/bench/bench.h) instead of a table")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="boxd-tty-bench.")
    boxd = None
    sshd = Sshd(tmp)
    terms = {}
    try:
        sock = args.socket
        if sock is None:
            boxd, sock = start_boxd(tmp)
        terms["boxctl"] = PtyTerm([BOXCTL_BIN, "-s", sock, "shell", "cat"])
        if sshd.start():
            terms["ssh"] = PtyTerm(sshd.argv("cat"))
        terms["local pty"] = PtyTerm(["cat"])
        for name, t in terms.items():
            ready(t, name)
            # The echo must come from the far side: boxctl and ssh have made ours raw.
            if name != "local pty":
                deadline = time.monotonic() + 10
                while t.is_canonical() and time.monotonic() < deadline:
                    time.sleep(0.01)
                if t.is_canonical():
                    raise RuntimeError("%s left its terminal canonical: the echo would be local"
                                       % name)
                t.read_for(0.2)
        times = {name: [] for name in terms}
        for _ in range(20):  # warm up
            for t in terms.values():
                keystroke(t, KEYS[0])
        for i in range(args.keys):
            for name, t in terms.items():
                times[name].append(keystroke(t, KEYS[i % len(KEYS)]))
                if i % 36 == 35:
                    t.send(b"\r")  # a new line now and then, so cat's line stays short
                    t.read_for(0.01)
    finally:
        for t in terms.values():
            t.close()
        sshd.stop()
        if boxd is not None:
            boxd.terminate()
            boxd.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    if args.rows:
        print_rows(times, args.keys, sshd.why)
        return
    print("keystroke-to-echo latency, %d keystrokes each, interleaved, µs" % args.keys)
    print("| client | p50 | p99 | p50 ratio vs ssh | p99 ratio | target |")
    print("|---|---:|---:|---:|---:|---|")
    base = times.get("ssh")
    for name in terms:
        p50, p99 = statistics.median(times[name]), pct(times[name], 0.99)
        if base:
            r50 = "%.2fx" % (p50 / statistics.median(base))
            r99 = "%.2fx" % (p99 / pct(base, 0.99))
        else:
            r50 = r99 = "n/a"
        target = "<= %.1fx" % TARGET if name == "boxctl" else "-"
        print("| %s | %.0f | %.0f | %s | %s | %s |" % (name, p50, p99, r50, r99, target))
    if base is None:
        print("| ssh -tt (ControlMaster) | - | - | skipped: %s | | |" % sshd.why)


if __name__ == "__main__":
    main()
