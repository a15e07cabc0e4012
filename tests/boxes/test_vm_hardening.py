"""Issue 11 in the microVM box, where what these tests do is safe: a sysctl that weakens the whole
kernel, and a boxd that cannot start as the VM's init.

- test_ptrace_race_never_reaches_boxd_memory (item 1): with fs.suid_dumpable=1, a run as boxd's
  run user hammers the next pid of every spawn with PTRACE_ATTACH, PTRACE_SEIZE and
  open(/proc/PID/mem, O_RDWR) while the control plane keeps starting runs. Whatever it manages to
  attach to must never share boxd's memory, and boxd's memory must be unchanged afterwards.
- test_startup_failure_powers_off_cleanly (the issue's design review): a boxd whose --listen
  cannot work (or whose --user does not exist) takes the fatal path as PID 1 - its message, then
  a clean power-off - and never returns from main (which panics the kernel).

Each boots its own VM (about 4-6 s under TCG). Run alone:
  /usr/bin/python3 -m pytest tests/boxes/test_vm_hardening.py
"""

import gzip
import os
import re
import shutil
import subprocess
import time

import pytest

from minibox import ok, text
from test_vmbox import VMBOX, Vm, vm_cache  # noqa: F401 (vm_cache is a fixture)

pytestmark = [pytest.mark.boxes, pytest.mark.vm]

HERE = os.path.dirname(os.path.abspath(__file__))
ATTACKER_C = os.path.join(HERE, "vm_ptrace_attacker.c")
ATTACKER = "/var/tmp/boxd-ptrace-attacker"
ATTACK_SECONDS = 25
MARKER = bytes.fromhex("b0ed0badc0dedead")

# Run in the VM as root before the attack: where boxd's AT_RANDOM bytes are (16 random bytes
# the kernel put on its stack: a process with those bytes at that address shares boxd's memory)
# and a word of boxd's own writable memory that nothing ever writes - the tail of the page that
# holds the end of its .bss (a heap word could be reused by malloc, and the check below would
# fail for nothing). Prints "RANDOM_ADDR RANDOM_HEX MARKER_ADDR WORD_HEX".
BOXD_MEMORY = r"""
import struct
aux = open("/proc/1/auxv", "rb").read()
rnd = dict(struct.iter_unpack("<QQ", aux))[25]           # AT_RANDOM
elf = open("/proc/1/exe", "rb").read(4096)
assert elf[:4] == b"\x7fELF" and elf[4] == 2, "not an ELF64 boxd"
phoff, = struct.unpack_from("<Q", elf, 32)
phentsize, phnum = struct.unpack_from("<HH", elf, 54)
ends = []
for i in range(phnum):
    p_type, p_flags, _off, vaddr, _pa, _fsz, memsz, _al = struct.unpack_from(
        "<IIQQQQQQ", elf, phoff + i * phentsize)
    if p_type == 1 and p_flags & 2:                          # PT_LOAD, writable
        ends.append(vaddr + memsz)
end = max(ends)
assert (-end) % 4096 >= 8, "no room after .bss in its page"
exe = __import__("os").readlink("/proc/1/exe")
base = min(int(l.split("-")[0], 16) for l in open("/proc/1/maps") if l.rstrip().endswith(exe))
marker = base + ((end + 4095) & ~4095) - 8
with open("/proc/1/mem", "rb") as m:
    m.seek(rnd); r = m.read(16)
    m.seek(marker); w = m.read(8)
print("%#x %s %#x %s" % (rnd, r.hex(), marker, w.hex()))
"""

READ_WORD = r"""
import sys
with open("/proc/1/mem", "rb") as m:
    m.seek(int(sys.argv[1], 0)); print(m.read(8).hex())
"""


@pytest.fixture(scope="module")
def attacker_bin(tmp_path_factory):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the attacker")
    out = str(tmp_path_factory.mktemp("attacker") / "attacker")
    p = subprocess.run([cc, "-static", "-O2", "-s", "-o", out, ATTACKER_C],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if p.returncode != 0:
        pytest.skip("cannot build a static attacker (no static libc?):\n" +
                    p.stderr.decode("utf-8", "replace")[-2000:])
    with open(out, "rb") as f:
        return f.read()


def boxd_help(cache):
    with open(os.path.join(cache, "boxd.help")) as f:
        return f.read()


def root_run(c, code_or_cmd, *args, python=True, **fields):
    """A run as root (the request names the user), returning its stdout."""
    argv = ["python3", "-c", code_or_cmd] + list(args) if python else ["sh", "-c", code_or_cmd]
    return ok(c.run(argv=argv, user="root", **fields))


def upload(c, data, path):
    """Writes data to path in the VM (as root, mode 0755), gzipped through a run's stdin."""
    rid = c.start(argv=["sh", "-c", "gunzip > %s.tmp && chmod 755 %s.tmp && mv %s.tmp %s"
                        % (path, path, path, path)],
                  user="root", stdin=True)["id"]
    z = gzip.compress(data, 6)
    chunk = 128 * 1024
    for i in range(0, len(z), chunk):
        rep = c.request({"type": "stdin", "id": rid, "data": z[i:i + chunk],
                         "eof": i + chunk >= len(z)})
        assert rep["type"] == "ok", rep
    end = c.wait_end(rid, 60)
    assert end["status"] == "completed" and end["exit_code"] == 0, end


def test_ptrace_race_never_reaches_boxd_memory(vm_cache, attacker_bin):  # noqa: F811
    # Runs as nobody; the test's own reads of boxd's memory are root runs, which the request
    # names (a newer boxd takes the allowed users as the flag's argument).
    allow = (["--allow-request-user", "root"] if "--allow-request-user USER" in boxd_help(vm_cache)
             else ["--allow-request-user"])
    vm = Vm("th%d" % os.getpid(), ["--user", "nobody"] + allow + ["--grace-ms", "500"])
    try:
        c = vm.client(timeout=60)
        assert ok(c.run("id -un")) == "nobody"
        # The weakened image: suid_dumpable 1 keeps a process that changed its uid traceable by
        # that uid; Yama (if built in) must not restrict ptrace to descendants.
        root_run(c, "sysctl -q -w fs.suid_dumpable=1; "
                    "if [ -e /proc/sys/kernel/yama/ptrace_scope ]; then "
                    "echo 0 > /proc/sys/kernel/yama/ptrace_scope; fi", python=False)
        assert root_run(c, "cat /proc/sys/fs/suid_dumpable", python=False) == "1"
        rnd_addr, rnd_hex, marker_addr, word0 = root_run(c, BOXD_MEMORY).split()
        assert len(bytes.fromhex(rnd_hex)) == 16 and rnd_hex != "00" * 16
        assert bytes.fromhex(word0) != MARKER
        upload(c, attacker_bin, ATTACKER)

        # The attacker, as the run user, followed on this connection.
        att = c.start(argv=[ATTACKER, rnd_addr, rnd_hex, marker_addr, MARKER.hex(),
                            str(ATTACK_SECONDS)], output=True,
                      timeout_ms=(ATTACK_SECONDS + 60) * 1000)["id"]
        # The control plane: `true` runs (found in PATH, so a spawn's window holds a few
        # execs), four requests in flight at a time, until the attacker ends.
        spawned, failed, t0 = 0, [], time.monotonic()
        att_end = None
        while att_end is None:
            reqs = []
            for _ in range(4):
                req = next(c._req)
                c.send({"type": "exec", "req": req, "argv": ["true"], "follow": False})
                reqs.append(req)
            for req in reqs:
                rep = c.next_event(lambda ev, r=req: ev.get("req") == r, 60)
                if rep["type"] == "started":
                    spawned += 1
                else:
                    failed.append(rep)
            for i, ev in enumerate(c.backlog):
                if ev["type"] == "end" and ev.get("id") == att:
                    att_end = c.backlog.pop(i)
                    break
            assert time.monotonic() - t0 < ATTACK_SECONDS + 90, "the attacker never ended"
        report = text(att_end.get("result"))
        print("control plane: %d runs started in %.1f s, %d refused; attacker:\n%s"
              % (spawned, time.monotonic() - t0, len(failed), report))
        assert att_end["status"] == "completed" and att_end["exit_code"] == 0, att_end
        summary = [l for l in report.splitlines() if l.startswith("summary ")]
        assert summary, report
        stats = dict(kv.split("=") for kv in summary[0].split()[1:])

        # boxd is alive, answers, and its memory is what it was.
        assert c.request({"type": "ping"})["type"] == "pong"
        after = root_run(c, READ_WORD, marker_addr)
        hits = [l for l in report.splitlines() if l.startswith("HIT ")]
        attached = [l.split()[1] for l in report.splitlines() if l.startswith("ok ")]
        # What the attacker attached to, or opened the memory of, was never boxd, the spawn's
        # child while it shares boxd's memory, or the exec helper; and boxd's memory is as it
        # was (both said at once: on a tree with the race, each shows it).
        problems = []
        if hits:
            problems.append("the run user reached boxd's memory %d times" % int(stats["hits"]))
        if after != word0:
            problems.append("boxd's memory at %s changed: %s -> %s" % (marker_addr, word0, after))
        if [k for k in attached if re.search(r"boxd|memfd:", k.split("|")[0])]:
            problems.append("the run user traced boxd or the exec helper")
        assert not problems, "; ".join(problems) + "\n" + report
        # And the attack was real: many spawns went by, and it did trace the runs themselves.
        assert spawned >= 100 and not failed, (spawned, failed[:3])
        assert int(stats["done"]) > 0, report
        assert c.request({"type": "info"})["pid"] == 1
        vm.close_client(c)
    finally:
        vm.stop()


# ---- start-up failure as the VM's init -----------------------------------------------------------

@pytest.mark.parametrize("listen,extra,message", [
    ("unix:/no/such/dir/boxd.sock", [], "listen unix:/no/such/dir/boxd.sock"),
    ("virtio-port:no.such.port", [], "no virtio port named no.such.port"),
    ("virtio-port:box.agent", ["--user", "no-such-user"], "--user no-such-user: no such user"),
], ids=["unix-missing-dir", "virtio-missing-port", "no-such-user"])
def test_startup_failure_powers_off_cleanly(vm_cache, listen, extra, message):  # noqa: F811
    """A boxd that cannot start as the VM's init says why on the console and powers the VM off
    cleanly: it never returns from main, which would make the kernel panic ("Attempted to kill
    init"). QEMU runs in the foreground (run.sh --fg), so its exit status is seen: 0, as for any
    guest power-off under -no-reboot."""
    name = "tf%d" % os.getpid()
    env = dict(os.environ, BOXD_VM_LISTEN=listen)
    t0 = time.monotonic()
    try:
        p = subprocess.run([os.path.join(VMBOX, "run.sh"), "--fg", "--name", name, "--"] + extra,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=env, timeout=120)
    finally:
        subprocess.run([os.path.join(VMBOX, "run.sh"), "--stop", name], timeout=60)
    console = p.stdout.decode("utf-8", "replace")
    print("QEMU exited %d after %.1f s; console tail:\n%s"
          % (p.returncode, time.monotonic() - t0, "\n".join(console.splitlines()[-8:])))
    assert "Kernel panic" not in console and "Attempted to kill init" not in console, \
        console[-3000:]
    assert message in console, console[-3000:]
    assert "fatal: start-up failed" in console, console[-3000:]
    assert "fatal: unmounting and powering off" in console, console[-3000:]
    assert "reboot: Power down" in console, console[-3000:]
    assert p.returncode == 0, (p.returncode, console[-3000:])
