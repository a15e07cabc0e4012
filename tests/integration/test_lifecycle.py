"""Daemon start-up options, shutdown on SIGTERM/SIGINT, and reaping orphans (PROTOCOL.md 8)."""

import os
import signal
import subprocess
import time

import pytest

from conftest import BOXD_BIN, T, marker, new_workdir, procs_with_env, wait_for, zombie_children


def need_bin():
    if not os.access(BOXD_BIN, os.X_OK):
        pytest.skip("boxd binary not found at %s" % BOXD_BIN)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_ends_live_runs(start_boxd, sig):
    d = start_boxd()
    c = d.client()
    m = marker()
    reqs = []
    for i in range(5):
        req = c.exec_start(cmd="sleep 100", id="live%d" % i, env={"BOXD_MARK": m})
        reqs.append(req)
    for req in reqs:
        assert c.recv_req(req)["type"] == "started"
    # Each run is /bin/sh -c plus its sleep (dash does not exec the last command).
    assert wait_for(lambda: len(procs_with_env("BOXD_MARK", m)) >= 5, T(2))
    t0 = time.monotonic()
    os.kill(d.pid, sig)
    for req in reqs:
        res = c.collect(req, timeout=T(10))
        assert res.end is not None, res
        assert res.end["status"] in ("cancelled", "failed"), res.end
        assert res.end["signal"] == 15
    rc = d.terminate(timeout=T(5))
    assert rc == 0, "boxd exited with %r" % rc
    assert time.monotonic() - t0 < T(3)
    assert procs_with_env("BOXD_MARK", m) == []


def test_shutdown_grace_and_second_term(start_boxd):
    d = start_boxd()
    c = d.client()
    req = c.exec_start(cmd="trap '' TERM; echo ready; while :; do sleep 0.1; done", id="stubborn")
    assert c.recv_req(req)["type"] == "started"
    c.recv_req(req)  # ready
    t0 = time.monotonic()
    os.kill(d.pid, signal.SIGTERM)
    time.sleep(0.3)
    os.kill(d.pid, signal.SIGTERM)  # must not cut the grace period short
    # New runs are refused while stopping.
    r = c.request("exec", cmd="echo late", timeout=T(2))
    assert r["type"] == "error" and r["code"] == "shutting_down", r
    res = c.collect(req, timeout=T(10))
    dt = time.monotonic() - t0
    assert res.end["signal"] == 9
    assert 1.5 <= dt <= T(4), "killed %.2f s after SIGTERM (default grace is 2 s)" % dt
    assert d.terminate(timeout=T(5)) == 0


def test_shutdown_idle(start_boxd):
    d = start_boxd()
    d.client().ping()
    t0 = time.monotonic()
    assert d.terminate(timeout=T(5)) == 0
    assert time.monotonic() - t0 < T(1)


def test_shutdown_with_lingering_process(start_boxd):
    d = start_boxd()
    c = d.client()
    m = marker()
    res = c.exec_run("sleep 100 & echo bg", env={"BOXD_MARK": m})
    assert res.end["status"] == "completed"
    assert procs_with_env("BOXD_MARK", m)
    assert d.terminate(timeout=T(5)) == 0


def test_orphan_reaped(boxd, client):
    info = client.info()
    assert info["subreaper"] is True or info["pid1"] is True, info
    before = info["reaped"]
    res = client.exec_run("(sleep 0.2 &) ; exit 0")
    assert res.end["status"] == "completed"
    time.sleep(1)
    assert zombie_children(boxd.pid) == []
    assert client.info()["reaped"] >= before + 1


def test_100_orphans_random_exit(boxd, client):
    before = client.info()["reaped"]
    # Each sleep lasts 0.1-0.5 s, far longer than the subshell that forks it: a `sleep 0.0` could
    # exit first and be reaped by that subshell, not orphaned to boxd (1 run in 7 failed so).
    res = client.exec_run(argv=["bash", "-c",
                                "for i in $(seq 100); do (sleep 0.$((RANDOM % 5 + 1)) &); done"],
                          timeout=T(20))
    assert res.end["exit_code"] == 0
    time.sleep(2)
    assert wait_for(lambda: zombie_children(boxd.pid) == [], T(2)), zombie_children(boxd.pid)
    assert client.info()["reaped"] >= before + 100


def test_nested_background_no_zombie(boxd, client):
    res = client.exec_run(argv=["bash", "-c", "bash -c \"bash -c 'echo zombie' &\" & sleep 1"],
                          timeout=T(10))
    assert res.end["status"] == "completed"
    assert b"zombie\n" in res.stdout
    time.sleep(0.3)
    assert zombie_children(boxd.pid) == []
    zs = [p for p in os.listdir("/proc") if p.isdigit() and _state(int(p)) == "Z"
          and _ppid(int(p)) == boxd.pid]
    assert zs == []


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
        return s[s.rindex(")") + 2]
    except OSError:
        return None


def _ppid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
        return int(s[s.rindex(")") + 2:].split()[1])
    except OSError:
        return None


def test_statuses_not_stolen_by_reaper(boxd, client):
    # Orphans are mass-produced while runs exit with 7: every run still reports 7.
    prod = client.exec_start(argv=["bash", "-c", "for i in $(seq 300); do (true &); done"],
                             req="producer")
    for i in range(100):
        client.exec_start(cmd="exit 7", req=i)
    ends = {}
    deadline = time.monotonic() + T(30)
    while len(ends) < 101:
        m = client.recv(timeout=max(0.01, deadline - time.monotonic()))
        if m["type"] == "end":
            ends[m["req"]] = m
    assert ends[prod]["exit_code"] == 0
    for i in range(100):
        assert ends[i]["exit_code"] == 7 and ends[i]["reason"] == "exit", ends[i]
    assert wait_for(lambda: zombie_children(boxd.pid) == [], T(3))


def test_true_and_nonexistent_many(boxd, client):
    for i in range(150):
        if i % 2:
            r = client.recv_req(client.exec_start(argv=["/nonexistent"]))
            assert r["type"] == "error" and r["code"] == "spawn_failed"
        else:
            assert client.exec_run(argv=["/bin/true"], output=False).end["exit_code"] == 0
    # A spawn failure is answered from the exec helper's status record, which it writes just
    # before it exits: the last one may still be exiting, and is reaped a moment later.
    assert wait_for(lambda: zombie_children(boxd.pid) == [], T(2)), zombie_children(boxd.pid)


# ---- command line --------------------------------------------------------------------------------

def test_help_and_version():
    need_bin()
    for opt in ("--help", "--version"):
        p = subprocess.run([BOXD_BIN, opt], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=10)
        assert p.returncode == 0, (opt, p)
        assert (p.stdout + p.stderr).strip(), opt
    p = subprocess.run([BOXD_BIN, "--version"], stdout=subprocess.PIPE, timeout=10)
    assert b"boxd" in p.stdout and b"0.1.0" in p.stdout
    p = subprocess.run([BOXD_BIN, "--help"], stdout=subprocess.PIPE, timeout=10)
    assert b"--listen" in p.stdout


def test_bad_options_fail_fast(tmp_path):
    need_bin()
    for argv in ([BOXD_BIN, "--no-such-option"],
                 [BOXD_BIN, "--listen", "unix:%s/missing-dir/x.sock" % tmp_path],
                 [BOXD_BIN, "--listen", "bogus:whatever"]):
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10,
                           stdin=subprocess.DEVNULL)
        assert p.returncode != 0, argv
        assert p.stderr.strip(), argv


# ---- readiness and the fallback without cgroups (issue 3) -----------------------------------------

def test_ready_is_sent_to_notify_socket(start_boxd):
    import socket as _socket
    path = os.path.join(new_workdir(), "notify.sock")
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(T(5))
    try:
        d = start_boxd(env={"NOTIFY_SOCKET": path})
        msg = s.recv(4096).decode()
        assert "READY=1" in msg.split("\n"), msg
        # Ready means serving: a ping is answered.
        assert d.client().ping()["type"] == "pong"
    finally:
        s.close()


def test_tree_kill_without_cgroups(start_boxd):
    """Where cgroup v2 cannot be written, cancel still kills the tree: the process group plus a
    /proc walk (what escaped with setsid is found by its ancestry while the shell lives)."""
    import conftest
    wrapper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boxd-nocgroup.sh")
    if not os.access("/usr/bin/unshare", os.X_OK) or not conftest.cgroup2_available():
        pytest.skip("needs unshare and a cgroup2 mount to make read-only")
    real = conftest.BOXD_BIN
    conftest.BOXD_BIN = wrapper
    try:
        d = start_boxd(env={"BOXD_REAL_BIN": real})
    finally:
        conftest.BOXD_BIN = real
    c = d.client()
    assert c.info()["kill_mechanism"] == "pgroup"
    tag = marker()
    res = c.exec_start(cmd="setsid sleep 1001 & (sleep 1002 &); sleep 1003",
                       env={"BOXD_TREE": tag}, id="tree")
    assert wait_for(lambda: len(procs_with_env("BOXD_TREE", tag)) >= 4, T(5)), \
        procs_with_env("BOXD_TREE", tag)
    c.cancel("tree")
    end = c.collect(res, timeout=T(10)).end
    assert end["status"] == "cancelled", end
    assert wait_for(lambda: not procs_with_env("BOXD_TREE", tag), T(2)), \
        procs_with_env("BOXD_TREE", tag)


# ---- how runs are started: the spawner thread and the cgroup made ahead (issue 6) -------------

def thread_seccomp(pid):
    """{tid: Seccomp mode} for every thread of pid."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith("Seccomp:"):
                    out[int(tid)] = int(line.split()[1])
    return out


@pytest.mark.parametrize("profile", ["default", "strict", "none"])
def test_spawner_thread_is_filtered_and_boxd_is_not(start_boxd, profile):
    """Runs inherit the default filter from a spawner thread; boxd's own thread must stay
    unfiltered (as PID 1 it needs reboot(2), which the filter denies)."""
    d = start_boxd("--seccomp", profile)
    c = d.client()
    modes = thread_seccomp(d.pid)
    assert modes[d.pid] == 0, modes
    names = {int(t): open("/proc/%d/task/%s/comm" % (d.pid, t)).read().strip()
             for t in os.listdir("/proc/%d/task" % d.pid)}
    spawners = [m for t, m in modes.items() if names.get(t) == "boxd-spawn"]
    # Every run is started by the spawner thread; under none it carries no filter.
    assert spawners == [0 if profile == "none" else 2], (modes, names)
    # The file I/O threads are boxd's own code, unfiltered like its main thread (their
    # tids are guarded by the runs' filters instead: test_security.py).
    assert [m for t, m in modes.items() if names.get(t) == "boxd-io"] == [0] * 4, (modes, names)
    assert set(names.values()) <= {"boxd", "boxd-spawn", "boxd-io"}, names
    # The filter is the run's whatever thread started it, and the run still gets its profile.
    res = c.exec_run("grep -E '^Seccomp(_filters)?:' /proc/self/status", timeout=T(10))
    st = dict(l.split(":\t") for l in res.stdout.decode().splitlines())
    want = {"none": ("0", "0"), "default": ("2", "1"), "strict": ("2", "2")}[profile]
    assert (st["Seccomp"], st["Seccomp_filters"]) == want, st
    # Many runs later, still exactly these threads.
    for _ in range(20):
        assert c.exec_run("true", timeout=T(10)).end["status"] == "completed"
    assert thread_seccomp(d.pid) == modes


def run_cgroup(c, **kw):
    res = c.exec_run("cat /proc/self/cgroup", timeout=T(10), **kw)
    assert res.end["status"] == "completed", res
    line = [l for l in res.stdout.decode().splitlines() if l.startswith("0::")][0]
    return res, line[3:]


def test_cgroups_made_ahead_and_reused_only_when_clean(start_boxd):
    """A cgroup is made before the first run. A run that ended with its cgroup empty gives it
    back for the next run, whose CPU counts only its own; live runs never share one; a
    killed or lingering run's cgroup is removed, not reused; the pool of empty ones is
    bounded; stopping removes them all."""
    import conftest
    if not conftest.cgroup2_available():
        pytest.skip("needs cgroup v2")
    d = start_boxd()
    c = d.client()
    info = c.info()
    assert info["kill_mechanism"] == "cgroup", info
    runs_dir = os.path.join(info["cgroup"], "runs-%d" % d.pid)

    def dirs():
        return sorted(e for e in os.listdir(runs_dir) if os.path.isdir(os.path.join(runs_dir, e)))

    # Made ahead, before any run.
    assert wait_for(lambda: len(dirs()) == 1, T(2)), dirs()
    ahead = dirs()[0]
    # Runs one after another: all in that one.
    for _ in range(3):
        res, cg = run_cgroup(c)
        assert cg.endswith("/runs-%d/%s" % (d.pid, ahead)), (cg, ahead)
    assert dirs() == [ahead]
    base = d.counts()

    # CPU is per run: a busy run, then `true` in the same cgroup, which must not inherit it.
    busy = c.exec_run("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done", timeout=T(60))
    assert busy.end["status"] == "completed", busy
    assert busy.end["cpu_user_us"] + busy.end["cpu_sys_us"] >= 100000, busy.end
    res, cg = run_cgroup(c)
    assert cg.endswith("/" + ahead), cg
    assert res.end["cpu_user_us"] + res.end["cpu_sys_us"] < 50000, res.end

    # Live runs: a cgroup each, named in `list`.
    reqs = [c.exec_start("sleep 1") for _ in range(3)]
    ids = [c.collect(r, timeout=T(10), until_end=False).id for r in reqs]
    names = {r["id"]: r.get("cgroup") for r in c.list()["runs"] if r["id"] in ids}
    assert len(set(names.values())) == 3 and None not in names.values(), names
    for r in reqs:
        assert c.collect(r, timeout=T(10), first=None).end["status"] == "completed"

    # Killed: its cgroup goes.
    req = c.exec_start("sleep 30", timeout_ms=200)
    rid = c.collect(req, timeout=T(10), until_end=False).id
    killed = [r.get("cgroup") for r in c.list()["runs"] if r["id"] == rid][0]
    assert killed is not None
    end = c.collect(req, timeout=T(10), first=None).end
    assert end["reason"] == "timeout", end
    assert wait_for(lambda: killed not in dirs(), T(2)), (killed, dirs())
    res, cg = run_cgroup(c)
    assert not cg.endswith("/" + killed), (cg, killed)

    # Lingering: its cgroup goes once the background process is gone.
    req = c.exec_start("sleep 0.5 >/dev/null 2>&1 & echo bg")
    rid = c.collect(req, timeout=T(10), until_end=False).id
    lingered = [r.get("cgroup") for r in c.list()["runs"] if r["id"] == rid][0]
    assert c.collect(req, timeout=T(10), first=None).end["status"] == "completed"
    assert wait_for(lambda: lingered not in dirs(), T(5)), (lingered, dirs())

    # A burst of 12 leaves at most 8 empty ones behind.
    reqs = [c.exec_start("sleep 0.5") for _ in range(12)]
    for r in reqs:
        assert c.collect(r, timeout=T(10)).end["status"] == "completed"
    assert wait_for(lambda: 1 <= len(dirs()) <= 8, T(2)), dirs()
    assert wait_for(lambda: d.counts()[0] <= base[0], T(2)), (d.counts(), base)
    # Stopping removes them with the rest.
    assert d.terminate(timeout=T(5)) == 0
    assert not os.path.exists(runs_dir)
