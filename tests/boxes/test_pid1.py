"""boxd's PID 1 duties in a namespace box (PRIOR_ART.md's PID 1 scenarios), on a real Debian rootfs.

Most tests share one box (module scope): they leave it as they found it, and each measures only
the counters it moved. The box is started with `nsbox.sh --no-mounts --net`, so boxd itself has to
mount sysfs, cgroup2, devpts, /dev/shm and /run, and to bring up a loopback device that starts
down. Tests that end the box (SIGTERM to PID 1) get one of their own.

Run alone:  /usr/bin/python3 -m pytest -m "boxes and not vm" tests/boxes/test_pid1.py
"""

import ctypes
import os
import signal
import socket
import threading
import time

import pytest

import minibox
from boxtest import wait_for
from conftest import started_box
from minibox import ok, text

pytestmark = pytest.mark.boxes

PR_SET_CHILD_SUBREAPER = 36



@pytest.fixture(scope="module")
def sbox(rootfs):
    with started_box(extra_args=["--no-mounts", "--net"]) as b:
        yield b


@pytest.fixture
def c(sbox):
    with sbox.client(timeout=30) as cl:
        yield cl


def run_cgroup(box, client, run_id):
    """The host's path of a live run's cgroup: info.cgroup (as the box names it) + /runs/ + the
    name `list` gives it."""
    info = client.request({"type": "info"})
    assert info["kill_mechanism"] == "cgroup", info
    runs = [r for r in client.request({"type": "list"})["runs"] if r["id"] == run_id]
    assert runs and "cgroup" in runs[0], runs
    return box.host_cgroup(info["cgroup"] + "/runs/" + runs[0]["cgroup"])


def box_sleeps(box, numbers):
    """Processes of the box that are `sleep N` for N in numbers (host pids), zombies included."""
    return [(pid, st, argv) for pid, st, argv in box.processes()
            if argv[:1] == ["sleep"] and len(argv) == 2 and argv[1] in numbers]


def nspid(pid):
    """The pid as the box numbers it (the last NSpid field of a host pid)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise AssertionError("no NSpid for %d" % pid)


def zombies_inside(client):
    out = ok(client.run("ps -e -o stat=,pid=,ppid=,args="))
    return [l for l in out.splitlines() if l.split()[0].startswith("Z")]


# ---- start-up -------------------------------------------------------------------------------------

def test_getpid_is_1_and_mode_is_container(sbox, c):
    info = c.request({"type": "info"})
    assert info["pid"] == 1 and info["pid1"] is True
    assert info["mode"] == "container"
    assert ok(c.run("cat /proc/1/comm")) == "boxd"
    # The host's view of the same process: the second level of its NSpid is 1.
    with open("/proc/%d/status" % sbox.pid) as f:
        ns = [l.split()[1:] for l in f if l.startswith("NSpid:")][0]
    assert ns == [str(sbox.pid), "1"]


def parse_mountinfo(text_):
    """{mount point: (fstype, mount options, superblock options)}; the last mount wins."""
    out = {}
    for line in text_.splitlines():
        f = line.split()
        sep = f.index("-")
        out[f[4]] = (f[sep + 1], f[5].split(","), f[sep + 3].split(","))
    return out


def test_mounts_what_is_missing(sbox, c):
    mounts = parse_mountinfo(ok(c.run("cat /proc/self/mountinfo")))
    assert mounts["/sys"][0] == "sysfs", mounts
    assert mounts["/sys/fs/cgroup"][0] == "cgroup2", mounts
    assert mounts["/dev/pts"][0] == "devpts", mounts
    assert "ptmxmode=666" in mounts["/dev/pts"][2], mounts["/dev/pts"]
    assert mounts["/dev/shm"][0] == "tmpfs", mounts
    assert mounts["/run"][0] == "tmpfs", mounts
    for mp in ("/sys", "/sys/fs/cgroup", "/dev/pts"):
        assert {"nosuid", "noexec"} <= set(mounts[mp][1]), (mp, mounts[mp])
    # boxd made them (nsbox.sh was told not to), and each works: a pty, a shm file, the socket.
    console = sbox.console()
    for fs, mp in (("sysfs", "/sys"), ("cgroup2", "/sys/fs/cgroup"), ("devpts", "/dev/pts"),
                   ("tmpfs", "/dev/shm"), ("tmpfs", "/run")):
        assert "init: mounted %s on %s" % (fs, mp) in console, console
    assert ok(c.run("python3 -c 'import os; m, s = os.openpty(); print(os.ttyname(s))'")) \
        .startswith("/dev/pts/")
    ok(c.run("echo x > /dev/shm/probe && rm /dev/shm/probe && test -S /run/boxd.sock"))
    assert ok(c.run("head -c 11 /sys/fs/cgroup/cgroup.events")) == "populated 1"


def test_loopback_is_up(sbox, c):
    # The box has a network namespace of its own: lo is its only device and started down.
    links = ok(c.run("ip -o link show")).splitlines()
    assert len(links) == 1 and links[0].split()[1] == "lo:", links
    flags = links[0].split("<", 1)[1].split(">", 1)[0].split(",")
    assert "UP" in flags, links
    assert "init: lo up" in sbox.console()
    ok(c.run("python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); "
             "s.listen(); socket.create_connection(s.getsockname(), timeout=2)'"))


# ---- reaping ----------------------------------------------------------------------------------

def test_zombie_storm_is_reaped(sbox, c):
    reaped0 = c.request({"type": "info"})["reaped"]
    # 200 orphans (each sleep's parent subshell exits at once) that exit at random-ish times,
    # the last of them at most 0.8 s after the run ends.
    ok(c.run(argv=["bash", "-c", "for i in $(seq 200); do (sleep 0.$((i%9)) &) ; done"]))
    time.sleep(2)
    assert zombies_inside(c) == []
    assert [p for p in sbox.processes() if p[1] == "Z"] == []
    assert "sleep" not in ok(c.run("ps -e -o comm="))
    info = c.request({"type": "info"})
    assert info["reaped"] >= reaped0 + 200, (reaped0, info["reaped"])


def test_1000_runs_exit_7_while_orphans_are_mass_produced(sbox, c):
    reaped0 = c.request({"type": "info"})["reaped"]
    # The orphan factory: each (true &) leaves a forked shell whose parent has already gone.
    storm = c.start("while :; do (true &); done", grace_ms=200)
    assert wait_for(lambda: c.request({"type": "info"})["reaped"] > reaped0 + 20, 10)

    n_conns, per_conn = 4, 250
    results, errors = [], []

    def batch():
        try:
            with sbox.client(timeout=60) as cl:
                frames = []
                for req in range(1, per_conn + 1):
                    frames.append({"type": "exec", "req": req, "cmd": "exit 7"})
                for m in frames:  # pipelined: every exec is sent before any reply is read
                    cl.send(m)
                started, ends = {}, {}
                while len(ends) < per_conn:
                    ev = cl.recv()
                    if ev["type"] == "started":
                        started[ev["req"]] = ev["id"]
                    elif ev["type"] == "end":
                        ends[ev["id"]] = ev
                    elif ev["type"] == "error":
                        raise AssertionError("exec refused: %r" % (ev,))
                results.append((started, ends))
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=batch) for _ in range(n_conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - t0
    assert errors == [], errors
    assert len(results) == n_conns
    ids = set()
    for started, ends in results:
        assert len(started) == per_conn and set(started.values()) == set(ends)
        ids |= set(ends)
        bad = [e for e in ends.values()
               if (e["status"], e["reason"], e["exit_code"], e["signal"]) != ("failed", "exit", 7, None)]
        assert bad == [], bad[:3]
    assert len(ids) == n_conns * per_conn
    info = c.request({"type": "info"})
    # The storm really ran alongside: it went on making orphans the whole time.
    assert info["reaped"] > reaped0 + 100, (reaped0, info["reaped"], elapsed)
    assert c.request({"type": "cancel", "id": storm["id"]})["type"] == "ok"
    end = c.wait_end(storm["id"], 15)
    assert end["status"] == "cancelled"
    assert wait_for(lambda: zombies_inside(c) == [], 3), zombies_inside(c)


# ---- cancel -----------------------------------------------------------------------------------

CANCEL_CASES = {
    # name: (command, the sleeps it leaves, whether its shell ends up stopped)
    "setsid-and-double-fork": ("setsid sleep 1001 & (sleep 1002 &); sleep 1003",
                               {"1001", "1002", "1003"}, False),
    "fork-loop": ("while :; do sleep 1000 & done", {"1000"}, False),
    "term-ignored-and-stopped": ("trap '' TERM; sleep 1004 & kill -STOP $$; sleep 1005",
                                 {"1004"}, True),
}


@pytest.mark.parametrize("case", sorted(CANCEL_CASES))
def test_cancel_kills_the_whole_tree(sbox, c, case):
    cmd, sleeps, stopped = CANCEL_CASES[case]
    numbers = {"1000", "1001", "1002", "1003", "1004", "1005"}
    started = c.start(cmd, grace_ms=500)
    rid = started["id"]
    cg = run_cgroup(sbox, c, rid)

    def ready():
        found = {argv[1] for _pid, _st, argv in box_sleeps(sbox, numbers)}
        if not sleeps <= found:
            return False
        if stopped:
            return minibox.proc_state(host_pid_of(sbox, started["pid"])) == "T"
        return True

    assert wait_for(ready, 5), (case, sbox.processes())
    if case == "fork-loop":
        time.sleep(0.3)  # let it pile up sleeps
    t0 = time.monotonic()
    rep = c.request({"type": "cancel", "id": rid, "grace_ms": 500})
    assert rep["type"] == "ok" and rep["ended"] is False, rep
    end = c.wait_end(rid, 15)
    took = time.monotonic() - t0
    # Checked the moment `end` arrives: nothing of the run is left.
    left = box_sleeps(sbox, numbers)
    cg_state = minibox.cgroup_state(cg)
    assert left == [], (case, left)
    assert cg_state is None or cg_state == (False, []), (case, cg, cg_state)
    assert end["status"] == "cancelled" and end["reason"] == "cancel", end
    if stopped:
        # TERM was ignored: only the KILL at the end of the grace period ended it.
        assert end["signal"] == signal.SIGKILL, end
        assert took >= 0.45, took
    assert took < 5, took
    out = ok(c.run("ps -e -o args="))
    assert not [l for l in out.splitlines() if l.startswith("sleep 100")], out


def host_pid_of(box, inner_pid):
    for pid in box.cgroup_pids():
        try:
            if nspid(pid) == inner_pid:
                return pid
        except (FileNotFoundError, ProcessLookupError):
            pass
    return None


def test_cancel_of_an_ended_run_signals_nothing(sbox, c):
    first = c.run("echo $$ > /tmp/p; exit 0")
    assert first["status"] == "completed"
    old_pid = first["started"]["pid"]
    assert int(open(os.path.join(sbox.root, "tmp/p")).read()) == old_pid
    # A new run whose sleep gets the ended run's pid (ns_last_pid) and is a session and process
    # group leader: a kill(pid) or a kill(-pid) from the agent would reach it.
    try:
        os.unlink(os.path.join(sbox.root, "tmp/q"))
    except FileNotFoundError:
        pass
    new = c.start("echo $(( $(cat /tmp/p) - 1 )) > /proc/sys/kernel/ns_last_pid; "
                  "setsid sleep 1006 & echo $! > /tmp/q.tmp; mv /tmp/q.tmp /tmp/q; wait")
    q = os.path.join(sbox.root, "tmp/q")
    assert wait_for(lambda: os.path.exists(q), 5)
    assert int(open(q).read()) == old_pid, "the pid was not reused; the test proves nothing"
    sleeper = host_pid_of(sbox, old_pid)
    assert sleeper is not None
    # (Until setsid has exec'd sleep, the process has another command line.)
    assert wait_for(lambda: [p[0] for p in box_sleeps(sbox, {"1006"})] == [sleeper], 5)

    rep = c.request({"type": "cancel", "id": first["id"]})
    assert rep["type"] == "ok" and rep["ended"] is True, rep
    rep = c.request({"type": "signal", "id": first["id"], "signal": "KILL"})
    assert rep["type"] == "error" and rep["code"] == "run_ended", rep
    with pytest.raises(socket.timeout):
        c.wait_end(new["id"], 0.5)
    assert minibox.proc_state(sleeper) in ("S", "R"), minibox.proc_state(sleeper)
    runs = {r["id"]: r for r in c.request({"type": "list"})["runs"]}
    assert runs[new["id"]]["state"] == "running"

    assert c.request({"type": "cancel", "id": new["id"], "grace_ms": 200})["type"] == "ok"
    end = c.wait_end(new["id"], 10)
    assert end["status"] == "cancelled"
    assert box_sleeps(sbox, {"1006"}) == []


# ---- what a run starts with ---------------------------------------------------------------------

def test_run_starts_clean(c):
    # fds: 0 1 2, and ls's own directory fd.
    assert ok(c.run("ls /proc/self/fd")).split() == ["0", "1", "2", "3"]
    assert ok(c.run(argv=["ls", "/proc/self/fd"])).split() == ["0", "1", "2", "3"]
    # The shell's own fds, not ls's: exactly 0 1 2.
    assert ok(c.run("ls /proc/$$/fd")).split() == ["0", "1", "2"]
    fds = ok(c.run("readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2")).split()
    assert fds[0] == "/dev/null" and fds[1].startswith("pipe:") and fds[2].startswith("pipe:")
    assert fds[1] != fds[2]
    # Signals: nothing blocked, nothing ignored (SIGPIPE included), nothing pending.
    status = ok(c.run(argv=["grep", "-E", "^Sig(Blk|Ign|Pnd)", "/proc/self/status"]))
    assert {l.split()[0]: l.split()[1] for l in status.splitlines()} == {
        "SigPnd:": "0" * 16, "SigBlk:": "0" * 16, "SigIgn:": "0" * 16}, status
    # Its own session and process group, not boxd's.
    pid, pgid, sid = ok(c.run("ps -o pid=,pgid=,sid= -p $$")).split()
    assert pid == pgid == sid and pid != "1"
    assert ok(c.run("ps -o sid= -p 1")).strip() != sid
    # An argv run too (no shell in between): /proc/self/stat's pid, pgrp and session agree.
    stat = ok(c.run(argv=["cat", "/proc/self/stat"]))
    f = stat[stat.rindex(")") + 2:].split()
    assert f[2] == f[3] and int(f[2]) == int(stat.split()[0]) and f[1] == "1", stat


def test_apt_get_works(c):
    assert ok(c.run("apt-get --version")).startswith("apt 2.")
    # The rootfs ships without package lists and the box has no network: give apt a local
    # file: repository that offers `hello`, and let it resolve and simulate the install.
    repo = ("mkdir -p /tmp/repo /tmp/no-parts && cd /tmp/repo && printf '%s\\n' "
            "'Package: hello' 'Version: 2.10-3' 'Architecture: amd64' "
            "'Maintainer: nobody <nobody@example.org>' 'Depends: libc6 (>= 2.34)' "
            "'Filename: ./hello_2.10-3_amd64.deb' 'Size: 1000' "
            "'SHA256: " + "0" * 64 + "' 'Description: greeting' '' > Packages && "
            "echo 'deb [trusted=yes] file:/tmp/repo ./' > /tmp/repo.list")
    ok(c.run(repo))
    opts = "-o Dir::Etc::SourceList=/tmp/repo.list -o Dir::Etc::SourceParts=/tmp/no-parts"
    ok(c.run("apt-get %s update" % opts))
    out = ok(c.run("apt-get %s -s install hello" % opts))
    assert "Inst hello (2.10-3" in out and "Conf hello (2.10-3" in out, out
    end = c.run("apt-get %s -s install no-such-package-here" % opts)
    assert end["status"] == "failed" and "Unable to locate package" in text(end["stderr"])


# ---- SIGTERM to PID 1 ---------------------------------------------------------------------------

def prctl_subreaper(on):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def waitpid_timeout(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p, st = os.waitpid(pid, os.WNOHANG)
        if p == pid:
            return st
        time.sleep(0.01)
    return None


def test_sigterm_to_pid1_ends_runs_and_exits_0(rootfs):
    # The box's launcher (unshare, whose exit status is its PID 1's) is orphaned when nsbox.sh
    # exits; as a child subreaper for the start, this test adopts it and can wait for it.
    prctl_subreaper(True)
    try:
        cm = started_box(boxd_args=["--grace-ms", "500"])
        box = cm.__enter__()
    finally:
        prctl_subreaper(False)
    launcher = None
    try:
        with open("/proc/%d/status" % box.pid) as f:
            launcher = int([l.split()[1] for l in f if l.startswith("PPid:")][0])
        assert os.waitpid(launcher, os.WNOHANG) == (0, 0), "the launcher is not this test's child"
        c = box.client(timeout=20)
        cmds = ["sleep 1000", "trap '' TERM; sleep 1001", "setsid sleep 1002 & sleep 1003",
                "while :; do sleep 1004; done", "trap '' TERM; kill -STOP $$"]
        ids = [c.start(cmd)["id"] for cmd in cmds]
        assert wait_for(lambda: len(box_sleeps(box, {"1000", "1001", "1002", "1003",
                                                      "1004"})) == 5, 5), box.processes()
        pids = box.cgroup_pids()
        assert len(pids) >= 8

        t0 = time.monotonic()
        os.kill(box.pid, signal.SIGTERM)
        ends = {}
        for rid in ids:
            ends[rid] = c.wait_end(rid, 15)
        took = time.monotonic() - t0
        assert {e["status"] for e in ends.values()} == {"cancelled"}, ends
        # The TERM-ignoring ones were killed at the grace deadline, not before.
        assert ends[ids[1]]["signal"] == signal.SIGKILL and took >= 0.45, (ends[ids[1]], took)
        # Then boxd closes the connection and exits 0.
        with pytest.raises(minibox.ProtocolError):
            c.next_event(lambda ev: True, 10)
        c.close()
        st = waitpid_timeout(launcher, 10)
        launcher = None if st is not None else launcher
        assert st is not None, "the box's PID 1 did not exit"
        assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0, "PID 1 ended with status %#x" % st
        assert [p for p in pids if minibox.proc_state(p) not in (None, "Z")] == []
        assert box.cgroup_pids() == []
        assert minibox.cgroup_state(box.cgroup)[0] is False
        console = box.console()
        assert "shutting down (Terminated): 5 live runs" in console, console
        assert "giving up" not in console, console
    finally:
        if launcher is not None:
            try:
                os.kill(launcher, signal.SIGKILL)
                os.waitpid(launcher, 0)
            except ChildProcessError:
                pass
        cm.__exit__(None, None, None)
