"""boxd SIGKILLed and started again in the same cgroup (systemd's Restart=always with Delegate=yes,
a supervisor in a container): the new boxd serves runs normally, and what the dead boxd's runs
left behind (their cgroups, and processes still in them) is killed and removed at its start-up,
before it serves - their records died with the old boxd, so nothing is adopted (README, "Restarts").
"""

import os
import signal

import pytest

from conftest import T, cgroup2_available, marker, procs_with_env, wait_for

pytestmark = pytest.mark.skipif(not cgroup2_available(), reason="needs a writable cgroup2 hierarchy")


def run_dirs(fence):
    """The run cgroups (BASE/runs*/cN) below a fence, as paths relative to it."""
    out = []
    for root, dirs, _files in os.walk(fence):
        rel = os.path.relpath(root, fence)
        top = rel.split(os.sep)[0]
        if top.startswith("runs") and rel != top:
            out.append(rel)
    return sorted(out)


def leave_lingerer(d):
    """A run whose background process outlives it (in the run's cgroup); returns its marker."""
    c = d.client()
    m = marker()
    res = c.exec_run(cmd="sleep 1000 >/dev/null 2>&1 & echo bg", env={"BOXD_T_MARK": m})
    assert res.end["status"] == "completed", res.end
    assert wait_for(lambda: procs_with_env("BOXD_T_MARK", m), T(5)), "no background sleep"
    return m


def assert_serves(d, n=5):
    c = d.client()
    for i in range(n):
        res = c.exec_run(cmd="echo ok%d" % i)
        end = res.end
        assert end["status"] == "completed" and end["exit_code"] == 0 and end["signal"] is None, end
        assert res.stdout in ("ok%d\n" % i, b"ok%d\n" % i), res.stdout
    # A run that forks, waits and exits non-zero: an ordinary failure, not a kill.
    res = c.exec_run(cmd="sh -c 'sleep 0.05; exit 3'")
    assert res.end["status"] == "failed" and res.end["exit_code"] == 3, res.end


def restart_check(start_boxd, reap_first):
    d1 = start_boxd()
    assert_serves(d1, 2)
    m = leave_lingerer(d1)
    old_runs = "runs-%d" % d1.pid
    assert os.path.isdir(os.path.join(d1.cgroup, old_runs)), run_dirs(d1.cgroup)
    os.kill(d1.pid, signal.SIGKILL)
    if reap_first:
        d1.proc.wait(timeout=T(5))
    # The same fence: the new boxd finds the dead one's run cgroups beside it.
    fence, d1.stopped_rc = d1.cgroup, -9  # killed on purpose
    d2 = start_boxd(cgroup=fence)
    d1.cgroup = None  # the fence is d2's now: its teardown kills and removes it, after d2's SIGTERM
    # Dealt with before the new boxd serves: the leftover is gone and so are the old cgroups
    # (the short wait is only for the kernel to finish reaping what was killed).
    assert wait_for(lambda: not procs_with_env("BOXD_T_MARK", m), T(1)), \
        "the dead boxd's leftover still runs: %s" % procs_with_env("BOXD_T_MARK", m)
    left = [p for p in run_dirs(fence) if p.split(os.sep)[0] != "runs-%d" % d2.pid]
    assert not left, "the dead boxd's run cgroups are still there: %s" % left
    assert_serves(d2, 5)
    if not reap_first:
        d1.proc.wait(timeout=T(5))
    # And the new one still serves after its predecessor is reaped.
    assert_serves(d2, 2)


def test_restart_after_sigkill_same_cgroup(start_boxd):
    restart_check(start_boxd, reap_first=True)


def test_restart_while_dead_boxd_unreaped(start_boxd):
    # A supervisor that starts the new boxd before it has reaped the old one: the old pid is a
    # zombie (kill(pid, 0) still succeeds), but its runs are as dead as its loop.
    restart_check(start_boxd, reap_first=False)


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def dir_ids(fence):
    out = set()
    for rel in run_dirs(fence):
        st = os.stat(os.path.join(fence, rel))
        out.add((st.st_dev, st.st_ino))
    return out


def test_restart_same_pid_in_new_pid_namespace(start_boxd):
    # A container restarted (or boxd-pidns.sh run again) gives the new boxd the pid the old one
    # had, so its runs-<pid> is already there: a previous instance's, cleared like any other.
    import conftest
    here = os.path.dirname(os.path.abspath(__file__))
    real = conftest.BOXD_BIN

    def start(**kw):
        conftest.BOXD_BIN = os.path.join(here, "boxd-pidns.sh")
        try:
            d = start_boxd(env={"BOXD_REAL_BIN": real}, **kw)
        finally:
            conftest.BOXD_BIN = real
        sh = wait_for(lambda: children(d.pid), T(5))
        boxd = wait_for(lambda: children(sh[0]), T(5))
        assert boxd, "boxd not found under %d" % d.pid
        return d, boxd[0]

    d1, b1 = start()
    for _ in range(4):  # four cgroups kept by their leftovers: more than the new boxd makes early
        leave_lingerer(d1)
    old = dir_ids(d1.cgroup)
    assert any(p.startswith("runs-") for p in run_dirs(d1.cgroup)), run_dirs(d1.cgroup)
    names = {p.split(os.sep)[0] for p in run_dirs(d1.cgroup)}
    os.kill(b1, signal.SIGKILL)
    d1.proc.wait(timeout=T(5))
    fence, d1.stopped_rc = d1.cgroup, d1.proc.returncode
    d2, b2 = start(cgroup=fence)
    d1.cgroup = None
    try:
        check_cleared(fence, names, old, d2)
    finally:
        # unshare ignores SIGTERM: boxd itself is told to stop (sh exits with its status).
        os.kill(b2, signal.SIGTERM)
        d2.proc.wait(timeout=T(5))


def check_cleared(fence, names, old, d2):
    new_names = {p.split(os.sep)[0] for p in run_dirs(fence)}
    if not names & new_names:
        pytest.skip("the pids differ (%s, %s): nothing collides" % (names, new_names))
    assert not old & dir_ids(fence), "the previous instance's run cgroups are still there: %s" % (
        run_dirs(fence))
    assert_serves(d2, 5)
