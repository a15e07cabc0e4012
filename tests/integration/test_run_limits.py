"""Run limits are enforced or refused, never silently ignored (issue 16): --run-memory-max and
--run-pids-max live in each run's cgroup, so where cgroup2 has no memory or pids controller for
the runs boxd refuses to start, saying why and what to do; where it has them, `info.run_limits`
lists them and a run cannot exceed them. Each test takes the branch this machine allows and
asserts it."""

import os
import subprocess

import pytest

import boxd_client
from conftest import BOXD_BIN, Daemon, new_workdir


def controllers_for_runs(d):
    """The controllers a plain daemon's runs get here (its info.controllers)."""
    c = d.client()
    info = c.info()
    return info.get("controllers") or [], info


def start_refused(*args):
    """Starts boxd expecting a start-up refusal; returns its stderr."""
    d = Daemon(new_workdir(), list(args), None)
    try:
        rc = d.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        d.shutdown()
        raise AssertionError("boxd %s started instead of refusing" % " ".join(args))
    text = d.stderr_text()
    d.shutdown()
    assert rc == 1, (rc, text)
    return text


def test_info_lists_the_run_limits(start_boxd):
    d = start_boxd("--run-nofile", "4096", "--run-core", "0", "--run-oom-score-adj", "300")
    _ctl, info = controllers_for_runs(d)
    assert info["run_limits"] == {"nofile": 4096, "core": 0, "oom_score_adj": 300}
    # What info says is what a run gets.
    c = d.client()
    end = c.exec_run("ulimit -n; cat /proc/self/oom_score_adj")
    assert end.stdout.split() == [b"4096", b"300"], (end.stdout, end.stderr)


@pytest.mark.parametrize("opt,value,ctl", [("--run-memory-max", str(50 << 20), "memory"),
                                           ("--run-pids-max", "64", "pids")])
def test_cgroup_limit_enforced_or_refused(start_boxd, opt, value, ctl):
    probe = start_boxd()
    ctls, _info = controllers_for_runs(probe)
    if ctl not in ctls:
        err = start_refused(opt, value)
        assert "%s cannot be enforced" % opt in err, err
        # It says why (the controller, or no cgroup at all) and what to do.
        assert ("the %s controller is not available" % ctl in err) or ("no cgroup v2" in err), err
        assert "Delegate=yes" in err and ("drop %s" % opt) in err, err
        return
    d = start_boxd(opt, value)
    c = d.client()
    limits = c.info()["run_limits"]
    key = "memory_max" if ctl == "memory" else "pids_max"
    assert limits[key] == int(value)
    if ctl == "memory":
        assert limits["swap_max"] == 0
        # 200 MiB under a 50 MiB limit: the run is OOM-killed, not completed.
        end = c.exec_run("exec python3 -c 'b = bytearray(200 << 20); b[::4096] = b\"x\" * len(b[::4096])'",
                         timeout=60)
        assert end.end["status"] != "completed" or end.end["exit_code"] != 0, end.end
    else:
        end = c.exec_run("cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/pids.max")
        assert end.stdout.decode().strip() == value, (end.stdout, end.stderr)
