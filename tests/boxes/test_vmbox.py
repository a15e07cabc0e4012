"""boxd as the init of the microVM box (packaging/vmbox), talked to over virtio-serial.

Two VMs per module, each booting in about 3.5-5 s under TCG. The first run also builds the VM's
kernel, initramfs and disk (about 10 s, cached in /var/cache/boxd/vm). Skipped with the reason
when the machine cannot (no QEMU and no apt, no kernel package, not root).

- `vm`: boxd with its default vsock policy (the host only) on vsock:5000 and per-run limits
  (`--run-memory-max 64 MiB --run-pids-max 64`); two of its eight virtio-serial ports are left out
  of portmux.py (`run.sh --direct 2`) for boxctl's `-s serial:PORT_SOCKET`. Its last test shuts it down (`reboot`, which
  QEMU's -no-reboot turns into an exit), so tests on it run in file order.
- `vm_any`: boxd with `--vsock-any-cid` and a 500 ms grace; its last test powers it off with runs
  still going.

Run alone:  /usr/bin/python3 -m pytest -m vm tests/boxes
Leave out:  -m "not vm"
"""

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import time

import msgpack
import pytest

import minibox
from boxtest import wait_for
from minibox import ok, text

pytestmark = [pytest.mark.boxes, pytest.mark.vm]

VMBOX = os.path.join(minibox.PACKAGING, "vmbox")
BOXD_BIN = os.environ.get("BOXD_BIN", os.path.join(minibox.REPO, "build", "boxd"))
BOXCTL_BIN = os.environ.get("BOXCTL_BIN", os.path.join(minibox.REPO, "build", "boxctl"))
DIRECT_PORTS = 2  # ports of `vm` left out of portmux.py for boxctl -s serial: (run.sh --direct)
VMS_DIR = os.environ.get("BOXD_VMS_DIR", "/run/boxd-vms")
VSOCK_PORT = 5000
MEMORY_MAX = 64 << 20
PIDS_MAX = 64

# Run inside the VM: connects over AF_VSOCK to (CID, PORT), sends a hand-made hello frame and
# prints what came back: "connect-error ERRNO", or "connected" then "reply HEX" with every byte
# received before EOF, an error or 5 s.
VSOCK_HELLO = r"""
import socket, struct, sys
cid, port = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect((cid, port))
except OSError as e:
    print("connect-error", e.errno)
    sys.exit(0)
print("connected")
# {type: "hello", version: 1}
hello = bytes.fromhex("82a474797065a568656c6c6fa776657273696f6e01")
data = b""
try:
    s.sendall(struct.pack(">I", len(hello)) + hello)
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError as e:
    print("io-error", e.errno)
print("reply", data.hex())
"""



@pytest.fixture(scope="module")
def vm_cache(rootfs):
    p = subprocess.run([os.path.join(VMBOX, "build.sh"), BOXD_BIN], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=900)
    if p.returncode != 0:
        pytest.skip("cannot build the microVM box:\n" +
                    "\n".join(p.stderr.decode("utf-8", "replace").splitlines()[-8:]))
    cache = p.stdout.decode().strip().splitlines()[-1]
    with open(os.path.join(cache, "boxd.help")) as f:
        if "virtio-port" not in f.read():
            pytest.skip("this boxd has no --listen virtio-port: the VM cannot be talked to")
    return cache


class Vm:
    def __init__(self, name, boxd_args, run_args=()):
        self.name = name
        self.state = os.path.join(VMS_DIR, name)
        p = subprocess.run([os.path.join(VMBOX, "run.sh"), "--name", name] + list(run_args) +
                           ["--"] + boxd_args,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
        self.socket = p.stdout.decode().strip()
        with open(os.path.join(self.state, "qemu.pid")) as f:
            self.qemu_pid = int(f.read())
        with open(os.path.join(self.state, "direct")) as f:
            self.direct = f.read().split()

    def console(self):
        with open(os.path.join(self.state, "console.log"), errors="replace") as f:
            return f.read()

    def qemu_alive(self):
        return minibox.proc_state(self.qemu_pid) not in (None, "Z")

    def sessions(self):
        """(sessions started, sessions ended) as boxd logged them on the console."""
        con = self.console()
        # run.sh gives the VM several ports (box.agent, box.agent.1, ...), one per host client.
        return (len(re.findall(r"listen virtio-port:box\.agent(?:\.\d+)?: host connected", con)),
                len(re.findall(r"listen virtio-port:box\.agent(?:\.\d+)?: host disconnected", con)))

    def client(self, timeout=60):
        """A new session. QEMU's chardev serves one client at a time, and a client that connects
        before boxd has seen the previous one leave can lose its first frames (see
        test_virtio_serial_immediate_reconnect): close clients with close_client."""
        c = minibox.Client(self.socket, timeout)
        c.hello()
        return c

    def close_client(self, c):
        """Closes c and waits until boxd has seen the session end and has none open (its
        console says so)."""
        n = self.sessions()[1]
        c.close()

        def idle():
            started, ended = self.sessions()
            return ended > n and started == ended

        assert wait_for(idle, 10), "boxd did not see the host leave: %r" % (self.sessions(),)

    @contextlib.contextmanager
    def session(self, timeout=60):
        c = self.client(timeout)
        try:
            yield c
        finally:
            self.close_client(c)

    def stop(self):
        p = subprocess.run([os.path.join(VMBOX, "run.sh"), "--stop", self.name],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
        assert not os.path.exists(self.state)


def boot(name, boxd_args, run_args=()):
    vm = Vm("%s%d" % (name, os.getpid()), boxd_args, run_args)
    try:
        yield vm
    finally:
        vm.stop()


@pytest.fixture(scope="module")
def vm(vm_cache):
    yield from boot("tv", ["--listen", "vsock:%d" % VSOCK_PORT, "--grace-ms", "500",
                           "--run-memory-max", str(MEMORY_MAX), "--run-pids-max", str(PIDS_MAX)],
                    ["--direct", str(DIRECT_PORTS)])


@pytest.fixture(scope="module")
def vm_any(vm_cache):
    yield from boot("ta", ["--listen", "vsock:%d" % VSOCK_PORT, "--vsock-any-cid",
                           "--grace-ms", "500"])


class Session:
    """One connection to a VM shared by the tests that do not reconnect (see Vm.client)."""

    def __init__(self, vm):
        self.vm = vm
        self.c = None

    def get(self):
        if self.c is None:
            self.c = self.vm.client()
        return self.c

    def close(self):
        if self.c is not None:
            self.vm.close_client(self.c)
            self.c = None


@pytest.fixture(scope="module")
def vsession(vm):
    s = Session(vm)
    yield s
    if s.c is not None:
        s.c.close()


@pytest.fixture
def vclient(vsession):
    return vsession.get()


def parse_mountinfo(text_):
    """{mount point: (fstype, mount options, superblock options)}; the last mount wins."""
    out = {}
    for line in text_.splitlines():
        f = line.split()
        sep = f.index("-")
        out[f[4]] = (f[sep + 1], f[5].split(","), f[sep + 3].split(","))
    return out


# ---- boxd as the VM's init ----------------------------------------------------------------------

def test_vm_boots_to_boxd_as_init(vm, vclient):
    assert re.search(r" ready( in [0-9.]+ ms)?: pid 1, mode vm,", vm.console())
    info = vclient.request({"type": "info"})
    assert info["pid"] == 1 and info["pid1"] is True
    assert info["mode"] == "vm"
    assert {"memory", "pids"} <= set(info["controllers"]), info
    assert ok(vclient.run("cat /proc/1/comm")) == "boxd"
    # PID 1 of the initial PID namespace: its pid namespace is the kernel's first one.
    assert ok(vclient.run("readlink /proc/1/ns/pid")) == "pid:[4026531836]"


def test_vm_is_a_real_debian_kernel(vclient):
    assert ok(vclient.run("uname -r")).endswith("-cloud-amd64")
    assert ok(vclient.run("apt-get --version")).startswith("apt 2.")
    # The full cgroup2 controller set, unlike the development host's hybrid hierarchy.
    controllers = ok(vclient.run("cat /sys/fs/cgroup/cgroup.controllers")).split()
    assert {"memory", "pids", "cpu"} <= set(controllers)


def test_vm_mounts(vm, vclient):
    mounts = parse_mountinfo(ok(vclient.run("cat /proc/self/mountinfo")))
    want = {"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs", "/dev/pts": "devpts",
            "/dev/shm": "tmpfs", "/run": "tmpfs", "/tmp": "tmpfs", "/sys/fs/cgroup": "cgroup2"}
    assert {mp: mounts.get(mp, ("missing",))[0] for mp in want} == want, mounts
    assert "ptmxmode=666" in mounts["/dev/pts"][2], mounts["/dev/pts"]
    assert "nsdelegate" in mounts["/sys/fs/cgroup"][2], mounts["/sys/fs/cgroup"]
    # /dev/fd and /dev/ptmx lead somewhere that works.
    assert ok(vclient.run("readlink /dev/fd")) == "/proc/self/fd"
    assert ok(vclient.run("ls /dev/fd/")).split() == ["0", "1", "2", "3"]
    assert ok(vclient.run("echo via-stdout > /dev/stdout")) == "via-stdout"
    assert ok(vclient.run("test -c /dev/ptmx && python3 -c 'import os; m, s = os.openpty(); "
                          "print(os.ttyname(s))'")).startswith("/dev/pts/")
    # The tmpfs mounts are writable and the cgroup2 mount has boxd's run tree.
    ok(vclient.run("touch /tmp/x /run/x /dev/shm/x"))
    assert "runs" in ok(vclient.run("ls /sys/fs/cgroup")).split()


def test_vm_hostname_and_loopback(vm, vclient):
    # boxd.hostname= on the kernel command line (run.sh sets it to the box's name) wins over
    # /etc/hostname ("box").
    assert "boxd.hostname=%s" % vm.name in ok(vclient.run("cat /proc/cmdline"))
    assert ok(vclient.run("cat /etc/hostname")) == "box"
    assert ok(vclient.run("hostname")) == vm.name
    assert "init: hostname %s" % vm.name in vm.console()
    link = ok(vclient.run("ip -o link show lo"))
    assert "UP" in link.split("<", 1)[1].split(">", 1)[0].split(","), link
    ok(vclient.run("python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); "
                   "s.listen(); socket.create_connection(s.getsockname(), timeout=2)'"))


def test_vm_orphans_are_reaped(vclient):
    reaped0 = vclient.request({"type": "info"})["reaped"]
    ok(vclient.run("for i in $(seq 30); do (sleep 0.$((i%5)) &) ; done"))
    ok(vclient.run("sleep 1"))
    out = ok(vclient.run("ps -e -o stat=,comm="))
    assert not [l for l in out.splitlines() if l.split()[0].startswith("Z")], out
    assert vclient.request({"type": "info"})["reaped"] >= reaped0 + 30


def test_vm_has_the_vsock_modules(vclient):
    mods = ok(vclient.run("cat /proc/modules")).splitlines()
    loaded = {m.split()[0] for m in mods}
    assert {"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
            "vsock_loopback", "virtio_console", "virtio_blk"} <= loaded
    # The same modules are on the root disk, with modules.dep, for modprobe.
    ok(vclient.run("modprobe vsock_loopback && test -c /dev/vsock"))


# ---- vsock ------------------------------------------------------------------------------------

def vsock_hello(client, port=VSOCK_PORT):
    ok(client.run("modprobe vsock_loopback"))
    out = ok(client.run(argv=["python3", "-c", VSOCK_HELLO, "1", str(port)])).splitlines()
    return out


def test_vsock_refuses_a_guest_peer_by_default(vm, vclient):
    # boxd listens on vsock:5000 but accepts only the host (CID 2): a guest process, connecting
    # through the loopback transport from CID 1, gets no hello reply.
    out = vsock_hello(vclient)
    assert out[0] == "connected", out
    assert out[-1].split() == ["reply"], out  # nothing came back
    assert wait_for(lambda: "listen vsock:%d: refused connection from cid 1" % VSOCK_PORT
                    in vm.console(), 3), vm.console()[-2000:]
    # A port nobody listens on is refused at connect: the listener above was really there.
    out = vsock_hello(vclient, VSOCK_PORT + 1)
    assert out[0].startswith("connect-error"), out


def test_vsock_any_cid_completes_a_hello(vm_any):
    with vm_any.session() as c:
        out = vsock_hello(c)
        assert out[0] == "connected", out
        reply = bytes.fromhex(out[-1].split()[1] if len(out[-1].split()) > 1 else "")
        assert len(reply) > 4, out
        (n,) = struct.unpack(">I", reply[:4])
        assert n == len(reply) - 4 and n < 4096, (n, len(reply))
        assert b"boot_id" in reply
        msg = msgpack.unpackb(reply[4:], raw=False)
        assert msg["type"] == "hello" and msg["boot_id"] == c.hello()["boot_id"], msg


# ---- limits -----------------------------------------------------------------------------------

def test_vm_run_limits_are_applied(vclient):
    assert ok(vclient.run("cat /proc/self/cgroup")).startswith("0::/runs/")
    limits = ok(vclient.run('d=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); '
                            'cat $d/memory.max $d/pids.max $d/memory.swap.max')).split()
    assert limits == [str(MEMORY_MAX), str(PIDS_MAX), "0"], limits
    # info lists them as enforced (issue 16: where they could not be, boxd would not start).
    run_limits = vclient.request({"type": "info"})["run_limits"]
    assert run_limits["memory_max"] == MEMORY_MAX and run_limits["swap_max"] == 0
    assert run_limits["pids_max"] == PIDS_MAX


def test_vm_memory_hog_ends_oom(vclient):
    """A run that eats memory meets its cgroup's OOM killer and ends `oom`; boxd answers ping
    throughout (p99 printed, and under 100 ms as issue 6 asks)."""
    t0 = time.monotonic()
    started = vclient.start(argv=["python3", "-c",
                                  "b = []\nwhile True: b.append(bytearray(1 << 20))"],
                            timeout_ms=30000)
    rid = started["id"]
    pings = []

    def ended():
        runs = {r["id"]: r for r in vclient.request({"type": "list"})["runs"]}
        return runs[rid]["state"] == "ended"

    while not ended() and time.monotonic() - t0 < 20:
        t = time.monotonic()
        assert vclient.request({"type": "ping"})["type"] == "pong"
        pings.append(time.monotonic() - t)
        time.sleep(0.01)
    end = vclient.wait_end(rid, 10)
    assert (end["status"], end["reason"]) == ("failed", "oom"), end
    assert end["signal"] == signal.SIGKILL, end
    assert time.monotonic() - t0 < 20
    assert pings, "the hog ended before a single ping"
    p99 = sorted(pings)[min(len(pings) - 1, int(len(pings) * 0.99))]
    print("memory hog: %d pings during %d ms, p99 %.1f ms, max %.1f ms"
          % (len(pings), end["duration_ms"], p99 * 1e3, max(pings) * 1e3))
    assert p99 < 0.1, sorted(pings)[-5:]
    assert vclient.request({"type": "ping"})["type"] == "pong"


def test_vm_fork_bomb_is_held_by_pids_max(vclient):
    # The bomb runs in a subshell; the run's main process (exec'd into sleep) never forks again,
    # so the run ends by its timeout and not because the shell could not fork.
    started = vclient.start("(f() { f | f & }; while :; do f; done) & exec sleep 1000",
                            timeout_ms=3000, grace_ms=500)
    rid = started["id"]
    t0 = time.monotonic()
    # Its cgroup, as `list` names it; pids.events counts from the cgroup's earlier runs too
    # (cgroups are reused), so the bomb must raise its `max` above what it was at the start.
    cg = [r for r in vclient.request({"type": "list"})["runs"] if r["id"] == rid][0]["cgroup"]

    def max_events():
        ev = vclient.run("cat /sys/fs/cgroup/runs/%s/pids.events 2>/dev/null || true" % cg)
        res = text(ev.get("result"))
        return int(res.split()[1]) if res.startswith("max ") else 0

    before = max_events()
    pings, hit_max = [], False
    while time.monotonic() - t0 < 2.5:
        t = time.monotonic()
        assert vclient.request({"type": "ping"})["type"] == "pong"
        pings.append(time.monotonic() - t)
        if max_events() > before:
            hit_max = True
        time.sleep(0.05)
    end = vclient.wait_end(rid, 15)
    assert hit_max, "the bomb never reached pids.max"
    assert max(pings) < 1.0, pings
    assert (end["status"], end["reason"]) == ("failed", "timeout"), end
    # Killed, so removed rather than kept for a later run.
    assert ok(vclient.run("ls /sys/fs/cgroup/runs")).split().count(cg) == 0
    out = ok(vclient.run("ps -e -o args="))
    assert not [l for l in out.splitlines() if l.startswith(("sh -c (f()", "sleep 1000"))], out


# ---- the transport ------------------------------------------------------------------------------

def test_virtio_serial_reconnects(vm, vsession):
    vsession.close()
    with vm.session() as c1:
        boot_id = c1.hello()["boot_id"]
        rid = c1.start("sleep 1000", follow=False)["id"]
    for _ in range(3):
        with vm.session() as c:
            assert c.hello()["boot_id"] == boot_id
            runs = {r["id"]: r for r in c.request({"type": "list"})["runs"]}
            assert runs[rid]["state"] == "running", runs.get(rid)
            assert ok(c.run("echo again")) == "again"
    with vm.session() as c:
        assert c.request({"type": "cancel", "id": rid, "grace_ms": 100})["ended"] is False
        assert c.request({"type": "wait", "id": rid})["status"] == "cancelled"


def test_virtio_serial_immediate_reconnect(vm, vsession):
    # A client that reconnects at once, as PROTOCOL.md allows ("each time the host side connects
    # starts a new session (send hello again)"), must get its hello answered. Each round: a
    # session that starts after boxd saw the previous one end, then one that starts the moment
    # that one is closed.
    vsession.close()
    for i in range(20):
        a = vm.client(timeout=10)
        assert a.request({"type": "ping"})["type"] == "pong"
        a.close()
        b = minibox.Client(vm.socket, 0.2)  # at once
        try:
            # The reconnect handshake of PROTOCOL.md 1 (virtio-serial): hello, resent after
            # 200 ms without a reply or after need_hello. It must succeed within a few tries.
            pong = None
            for attempt in range(10):
                try:
                    b.hello()
                    pong = b.request({"type": "ping"})
                    if pong.get("type") == "pong":
                        break
                except (socket.timeout, minibox.ProtocolError):
                    continue
            assert pong is not None and pong.get("type") == "pong", (
                "round %d: no session after 10 hellos; boxd's view:\n%s"
                % (i, "\n".join(vm.console().splitlines()[-6:])))
            assert attempt < 5, (i, attempt)
        finally:
            vm.close_client(b)


# ---- boxctl from the host: -s serial: on a raw port, -s unix: through portmux ---------------------

def boxctl(*args, timeout=60):
    return subprocess.run([BOXCTL_BIN] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)


def boxctl_popen(*args):
    return subprocess.Popen([BOXCTL_BIN] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_boxctl_serial_on_a_raw_port(vm):
    """boxctl opens QEMU's chardev socket of a port portmux does not serve (serial:): ping,
    exec with its output and exit code, and the same through portmux's agent.sock (unix:)."""
    assert len(vm.direct) == DIRECT_PORTS, vm.direct
    assert os.path.basename(vm.direct[0]) == "port-%d.sock" % (8 - DIRECT_PORTS), vm.direct
    for spec in ("serial:" + vm.direct[0], "unix:" + vm.socket):
        p = boxctl("-s", spec, "ping")
        assert p.returncode == 0 and b"pong" in p.stdout, (spec, p)
        p = boxctl("-s", spec, "exec", "echo out-$((6*7)); echo err >&2; exit 3")
        assert p.returncode == 3 and p.stdout == b"out-42\n" and p.stderr == b"err\n", (spec, p)
        p = boxctl("-s", spec, "exec", "--json", "seq 3")
        assert p.returncode == 0 and b'"stdout":"1\\n2\\n3\\n"' in p.stdout, (spec, p)


def test_boxctl_on_two_paths_at_once(vm):
    """While one boxctl follows a run on a raw port, others on the second raw port and through
    portmux answer at once: they finish while the first still runs."""
    long = boxctl_popen("-s", "serial:" + vm.direct[0], "exec",
                        "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done")
    try:
        # The follower's run has started (its first line is out) before the others go.
        assert long.stdout.readline() == b"tick 1\n"
        t0 = time.monotonic()
        others = [boxctl_popen("-s", "serial:" + vm.direct[1], "exec", "echo second-raw"),
                  boxctl_popen("-s", "unix:" + vm.socket, "exec", "echo via-mux"),
                  boxctl_popen("-s", vm.socket, "ping")]
        outs = [o.communicate(timeout=60) for o in others]
        dt = time.monotonic() - t0
        assert [o.returncode for o in others] == [0, 0, 0], outs
        assert outs[0][0] == b"second-raw\n" and outs[1][0] == b"via-mux\n", outs
        # They did not wait for the follower's 3 s run to end.
        assert long.poll() is None, "the follower ended first: the others waited %.1f s" % dt
        rest, err = long.communicate(timeout=60)
        assert long.returncode == 0, err
        assert rest.split(b"\n")[-2] == b"tick 6", rest
        print("three clients beside a follower on a raw port: %.0f ms" % (dt * 1000))
    finally:
        if long.poll() is None:
            long.kill()
            long.wait()


def test_boxctl_serial_reconnects_at_once(vm):
    """boxctl after boxctl on the same raw port, each connecting the moment the last has left:
    the agent may still hold the previous session when the new hello arrives, and answer it, and
    then end that session under the next request (need_hello). boxctl says hello again and
    resends; every command must succeed."""
    port = "serial:" + vm.direct[1]
    started0, ended0 = vm.sessions()
    for i in range(12):
        p = boxctl("-s", port, "exec", "echo round-%d" % i, timeout=60)
        assert p.returncode == 0 and p.stdout == b"round-%d\n" % i, (i, p)
        p = boxctl("-s", port, "ping", timeout=60)
        assert p.returncode == 0, (i, p)
    # Fewer sessions than boxctls: a boxctl that arrives before the agent saw the last one leave
    # is served by the old session (hello is answered in any session). None is left open.
    def left():
        started, ended = vm.sessions()
        return started - ended <= started0 - ended0  # ours closed; an older one may end too
    assert wait_for(left, 10), (started0, ended0, vm.sessions())
    print("24 boxctls back to back on one raw port: %d agent sessions"
          % (vm.sessions()[0] - started0))
    assert vm.sessions()[0] > started0


# ---- shutdown (each ends its VM: keep these last) ------------------------------------------------

def test_shutdown_reboot_exits_qemu(vm, vsession):
    # run.sh gives QEMU -no-reboot: a reboot of the guest ends QEMU.
    vsession.close()
    with vm.client() as c:
        rid = c.start("sleep 1000")["id"]
        assert c.request({"type": "shutdown", "action": "reboot"})["type"] == "ok"
        end = c.wait_end(rid, 20)
        assert end["status"] == "cancelled"
    # boxd unmounted and asked the kernel to reboot. QEMU then either exits (-no-reboot) or, as
    # -M microvm sometimes does despite it, resets the guest, which boots again: both are the
    # box rebooting.
    def rebooted():
        con = vm.console()
        return not vm.qemu_alive() or "reboot: Restarting system" in con
    assert wait_for(rebooted, 20), "no reboot:\n" + vm.console()[-3000:]
    assert "final: unmounting and rebooting" in vm.console(), vm.console()[-3000:]


def test_shutdown_powers_off_after_the_runs_end(vm_any):
    c = vm_any.client()
    cmds = ["sleep 1000", "trap '' TERM; sleep 1001", "setsid sleep 1002 & sleep 1003"]
    ids = [c.start(cmd)["id"] for cmd in cmds]
    ok(c.run("sleep 0.2"))
    t0 = time.monotonic()
    assert c.request({"type": "shutdown"})["type"] == "ok"
    ends = {rid: c.wait_end(rid, 20) for rid in ids}
    t_ends = time.monotonic() - t0
    assert {e["status"] for e in ends.values()} == {"cancelled"}, ends
    # The TERM-ignoring run lasted the 500 ms grace and was killed.
    assert ends[ids[1]]["signal"] == signal.SIGKILL, ends[ids[1]]
    with pytest.raises(minibox.ProtocolError):
        c.next_event(lambda ev: True, 20)
    c.close()
    assert wait_for(lambda: not vm_any.qemu_alive(), 20), "QEMU still runs after power-off"
    t_off = time.monotonic() - t0
    console = vm_any.console()
    assert re.search(r"shutting down \(.*\): 3 live runs", console), console[-3000:]
    assert "final: unmounting and powering off" in console
    assert "reboot: Power down" in console
    # Once the runs have ended and nothing else is left, the power-off is prompt: boxd does
    # not sit out its give-up deadline (grace + drain + 3 s).
    assert "shutdown: giving up waiting" not in console, \
        [l for l in console.splitlines() if "shutdown" in l or "final" in l]
    assert t_off - t_ends < 2.0, (t_ends, t_off)
