"""SIGTERM to boxd with 100 live runs, some ignoring TERM (issue 6, 8; PROTOCOL.md 8)."""

import ctypes
import os
import signal
import threading
import time

from conftest import T, all_pids, marker, procs_with_env, read_stat, report, wait_for, \
    zombie_children

N_RUNS = 100
N_DEAF = 20  # of them ignore TERM (and so does what they start)
N_CONNS = 4
GRACE_MS = 500
PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on):
    """Makes this process the child subreaper of its descendants (or stops): whatever boxd
    leaves behind when it exits, zombie or not, becomes our child, where we can see it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def adopted_children(known):
    """(pid, state) of our children that we did not start ourselves."""
    me = os.getpid()
    out = []
    for p in all_pids():
        st = read_stat(p)
        if st and st[1] == me and p not in known:
            out.append((p, st[0]))
    return out


def test_sigterm_with_100_live_runs(start_boxd):
    d = start_boxd("--grace-ms", str(GRACE_MS))
    mark = marker()
    conns = [d.client() for _ in range(N_CONNS)]
    kinds = {}
    for n in range(N_RUNS):
        cl = conns[n % N_CONNS]
        if n < N_DEAF:
            # The shell and its sleep both ignore TERM (ignored dispositions survive exec).
            argv = ["sh", "-c", "trap '' TERM; echo deaf; sleep 1000; echo never"]
        else:
            argv = ["sh", "-c", "echo live; exec sleep 1000"]
        kinds[n] = n < N_DEAF
        cl.exec_start(argv=argv, req=n, id="run%d" % n, env={"BOXD_LOAD_MARK": mark})
    # Every run started and printed its line (the deaf ones have set their trap by then).
    per_conn = {k: {} for k in range(N_CONNS)}
    for k, cl in enumerate(conns):
        mine = [n for n in range(N_RUNS) if n % N_CONNS == k]
        seen = per_conn[k]
        for n in mine:
            seen[n] = {"started": None, "out": [], "end": None}
        deadline = time.monotonic() + T(30)
        while not all(seen[n]["started"] and seen[n]["out"] for n in mine):
            m = cl.recv(timeout=max(0.01, deadline - time.monotonic()))
            s = seen[m["req"]]
            if m["type"] == "started":
                s["started"] = m
            elif m["type"] == "output":
                s["out"] += m["lines"]
            else:
                raise AssertionError(m)
    want_procs = 2 * N_DEAF + (N_RUNS - N_DEAF)  # sh + sleep, or the sleep sh exec'd
    assert wait_for(lambda: len(procs_with_env("BOXD_LOAD_MARK", mark)) == want_procs, T(5))
    before = len(procs_with_env("BOXD_LOAD_MARK", mark))
    info = conns[0].info()
    assert info["runs_live"] == N_RUNS, info

    # SIGTERM; the followers read on while boxd shuts down.
    errors = []

    def follow(k):
        cl = conns[k]
        seen = per_conn[k]
        try:
            deadline = time.monotonic() + T(15)
            while any(s["end"] is None for s in seen.values()):
                m = cl.recv(timeout=max(0.01, deadline - time.monotonic()))
                s = seen[m["req"]]
                if m["type"] == "end":
                    assert s["end"] is None, "two ends for %r" % m["id"]
                    s["end"] = (time.monotonic(), m)
                elif m["type"] == "output":
                    s["out"] += m["lines"]
                else:
                    raise AssertionError(m)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((k, repr(e)))

    ths = [threading.Thread(target=follow, args=(k,), daemon=True) for k in range(N_CONNS)]
    for t in ths:
        t.start()
    mine = {p for p, _ in adopted_children(())}  # our own children, boxd among them
    set_subreaper(True)
    try:
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        rc, zombies_at_ends, t_exit, adopted = shut_down(d, per_conn, mine)
    finally:
        set_subreaper(False)
    for t in ths:
        t.join(T(5))
    left = procs_with_env("BOXD_LOAD_MARK", mark)
    populated = None
    if d.cgroup:
        with open(os.path.join(d.cgroup, "cgroup.events")) as f:
            populated = "populated 1" in f.read()
    report("shutdown", "SIGTERM with %d live runs (%d ignoring TERM, %d processes), grace %d "
           "ms: boxd exited %s after %.0f ms" % (N_RUNS, N_DEAF, before, GRACE_MS, rc,
                                                 t_exit * 1e3))
    assert errors == [], errors[:3]
    assert rc == 0, "boxd exit status %r after SIGTERM (%.1f s)" % (rc, t_exit)
    assert t_exit < GRACE_MS / 1000 + T(2), t_exit
    assert left == [], "processes of runs outlived boxd: %r" % left
    assert adopted == [], "boxd left children behind (pid, state): %r" % adopted
    assert populated in (None, False), "the daemon's cgroup still has processes"
    assert zombies_at_ends == [], zombies_at_ends
    for k in range(N_CONNS):
        for n, s in per_conn[k].items():
            assert s["end"] is not None, "no end for run%d" % n
            t_end, e = s["end"]
            assert e["id"] == "run%d" % n, e
            assert e["status"] == "cancelled" and e["reason"] == "cancel", e
            want = signal.SIGKILL if kinds[n] else signal.SIGTERM
            assert e["signal"] == want and e["exit_code"] == 128 + want, (n, e)
            if kinds[n]:
                # Killed at the grace deadline, not before.
                assert t_end - t0 >= GRACE_MS / 1000 * 0.9, (n, t_end - t0)
                assert e["duration_ms"] >= GRACE_MS, e
            assert [r[3] for r in s["out"]] == ["deaf\n" if kinds[n] else "live\n"], s["out"]


def shut_down(d, per_conn, mine):
    """Waits for boxd to exit after SIGTERM. Returns (exit status or None, zombie children
    of boxd when every end had arrived, seconds to exit, children boxd left to us)."""
    t0 = time.monotonic()
    zombies_at_ends = []
    while d.proc.poll() is None and time.monotonic() - t0 < GRACE_MS / 1000 + T(5):
        if all(s["end"] for seen in per_conn.values() for s in seen.values()):
            # Every end is out, so every run's main process has been reaped.
            zombies_at_ends = zombie_children(d.pid)
            break
        time.sleep(0.01)
    try:
        rc = d.proc.wait(timeout=max(0.1, t0 + GRACE_MS / 1000 + T(5) - time.monotonic()))
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
        rc = None
    t_exit = time.monotonic() - t0
    adopted = []
    if rc is not None:
        time.sleep(0.1)  # reparenting is immediate; a last exit may still be on its way
        adopted = adopted_children(mine)
        for p, _ in adopted:  # reap (or kill then reap) what we were handed
            try:
                os.kill(p, signal.SIGKILL)
                os.waitpid(p, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    return rc, zombies_at_ends, t_exit, adopted
