"""Many runs: 1000 at once on 50 connections, and 100 000 one after another (issue 6, 1-2)."""

import fcntl
import multiprocessing
import os
import threading
import time

import pytest

import boxd_client
from conftest import SANITIZED, SEQ_RUNS, T, report, wait_for

# ---- 1. 1000 concurrent runs on 50 connections ------------------------------------------------

N_CONC = 1000
N_CONNS = 50
# Each run prints its number, then waits on a shared lock the test holds, so all 1000 are live
# at once (flock needs no polling, and a run that gets there after the release just passes).
GATED = 'echo "$1"; flock -s "$2" true; exit $(($1 % 256))'


def expected_end(n):
    code = n % 256
    return ("completed" if code == 0 else "failed"), code


def settle_counts(d, base_fds, threads):
    ok = wait_for(lambda: d.counts()[0] <= base_fds and d.counts()[3] == 0, T(5))
    nfd, _, thr, zombies = d.counts()
    assert ok and nfd == base_fds, "fds %d (baseline %d), zombie children %d" % (
        nfd, base_fds, zombies)
    assert thr == threads, "threads %d, was %d" % (thr, threads)


def test_1000_concurrent_runs_50_connections(start_boxd, tmp_path):
    d = start_boxd("--max-runs", "2000")
    c = d.client()
    assert c.hello_reply["limits"]["max_runs"] == 2000
    assert c.exec_run("echo warm").end["status"] == "completed"  # lazily made things exist
    time.sleep(0.1)
    base_fds, _, threads, _ = d.counts()
    gate = str(tmp_path / "gate")
    gate_fd = os.open(gate, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(gate_fd, fcntl.LOCK_EX)

    conns = [d.client() for _ in range(N_CONNS)]
    per = N_CONC // N_CONNS
    lock = threading.Lock()
    started = [0]
    results = {}  # n -> (started, outputs, end, error)
    errors = []

    def worker(k):
        cl = conns[k]
        mine = list(range(k * per, (k + 1) * per))
        try:
            for n in mine:
                cl.exec_start(argv=["sh", "-c", GATED, "_", str(n), gate], req=n)
            seen = {n: {"started": None, "out": [], "end": None, "error": None} for n in mine}
            left = len(mine)
            deadline = time.monotonic() + T(120)
            while left:
                m = cl.recv(timeout=max(0.01, deadline - time.monotonic()))
                n = m.get("req")
                assert n in seen, m
                s = seen[n]
                ty = m["type"]
                if ty == "started":
                    assert s["started"] is None, m
                    s["started"] = m
                    with lock:
                        started[0] += 1
                elif ty == "output":
                    s["out"].extend(m["lines"])
                elif ty == "end":
                    assert s["end"] is None, "two ends for run %d" % n
                    s["end"] = m
                    left -= 1
                elif ty == "error":
                    s["error"] = m
                    left -= 1
                else:
                    raise AssertionError(m)
            with lock:
                results.update(seen)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append((k, repr(e)))

    t0 = time.monotonic()
    ths = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(N_CONNS)]
    for t in ths:
        t.start()
    try:
        all_started = wait_for(lambda: started[0] == N_CONC or errors, T(90), interval=0.05)
        t_started = time.monotonic() - t0
        assert not errors, errors[:5]
        assert all_started, "only %d of %d runs started" % (started[0], N_CONC)
        # All of them are live at once: each waits on the gate.
        info = c.info()
        assert info["runs_live"] == N_CONC, info["runs_live"]
        assert info["conns"] == N_CONNS + 1, info["conns"]
    finally:
        os.close(gate_fd)  # releases the lock: every run goes on
    for t in ths:
        t.join(T(120))
    t_all = time.monotonic() - t0
    assert not errors, errors[:5]
    assert len(results) == N_CONC
    bad = []
    for n in range(N_CONC):
        s = results[n]
        status, code = expected_end(n)
        e = s["end"]
        if s["error"] is not None or e is None or e["status"] != status or \
                e["exit_code"] != code or e["signal"] is not None or e["reason"] != "exit" or \
                [rec[3] for rec in s["out"]] != ["%d\n" % n] or e["next_seq"] != 1 or \
                s["started"] is None or e["id"] != s["started"]["id"]:
            bad.append((n, s))
    assert not bad, "%d runs wrong, e.g. %r" % (len(bad), bad[:3])
    report("concurrent", "%d runs on %d connections: all live after %.2f s, all ended after "
           "%.2f s" % (N_CONC, N_CONNS, t_started, t_all))

    for cl in conns:
        cl.close()
    info = c.info()
    assert info["runs_live"] == 0, info
    assert info["started_total"] == N_CONC + 1, info
    assert wait_for(lambda: c.info()["conns"] == 1, T(5))
    settle_counts(d, base_fds, threads)
    assert c.ping()["type"] == "pong"


# ---- 2. 100 000 sequential runs of /bin/true -------------------------------------------------

SEQ_WORKERS = 3  # connections, each one run at a time; more only adds contention on 2 cores


def seq_worker(sock, phases, go, bye, out):
    """A process: on its own connection, runs /bin/true phases[0] times one after another,
    reports, waits for `go`, then runs phases[1] more, reports, and closes its connection when
    told `bye` (so both samples see the same connections). Puts (phase, done, bad examples) or
    ("error", repr) on out."""
    try:
        cl = boxd_client.connect(sock)
        for phase, n in enumerate(phases):
            if phase:
                if not go.wait(T(120)):
                    out.put(("error", "never told to go on"))
                    return
            done, bad = 0, []
            for _ in range(n):
                req = cl.exec_start(argv=["/bin/true"], output=False)
                while True:
                    m = cl.recv_req(req, timeout=T(20))
                    ty = m["type"]
                    if ty == "end":
                        if m["status"] == "completed" and m["exit_code"] == 0 and \
                                m["reason"] == "exit" and m["next_seq"] == 0:
                            done += 1
                        elif len(bad) < 3:
                            bad.append(m)
                        break
                    if ty != "started":
                        if len(bad) < 3:
                            bad.append(m)
                        break
            out.put((phase, done, bad))
        bye.wait(T(120))
        cl.close()
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        out.put(("error", repr(e)))


def host_spawn_rate(n=1000):
    """posix_spawn + waitpid of /bin/true per second from this process: what this host can do
    at all right now, to read the runs/s figure against."""
    t = time.monotonic()
    for _ in range(n):
        os.waitpid(os.posix_spawn("/bin/true", ["/bin/true"], {}), 0)
    return n / (time.monotonic() - t)


def test_sequential_runs(start_boxd):
    total = SEQ_RUNS
    assert total >= 2 * SEQ_WORKERS
    first = min(10000, total // 2)
    d = start_boxd()
    c = d.client()
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    bye = ctx.Event()
    out = ctx.Queue()
    split1 = [first // SEQ_WORKERS + (1 if k < first % SEQ_WORKERS else 0)
              for k in range(SEQ_WORKERS)]
    rest = total - first
    split2 = [rest // SEQ_WORKERS + (1 if k < rest % SEQ_WORKERS else 0)
              for k in range(SEQ_WORKERS)]
    procs = [ctx.Process(target=seq_worker, args=(d.sock, (split1[k], split2[k]), go, bye, out),
                         daemon=True) for k in range(SEQ_WORKERS)]

    def collect(phase, timeout):
        done, bad = 0, []
        deadline = time.monotonic() + timeout
        for _ in range(SEQ_WORKERS):
            left = deadline - time.monotonic()
            try:
                r = out.get(timeout=max(0.1, left))
            except Exception:  # noqa: BLE001 - queue.Empty
                raise AssertionError("workers did not finish phase %d in %.0f s" % (phase,
                                                                                   timeout))
            assert r[0] == phase, r
            done += r[1]
            bad += r[2]
        return done, bad

    def sample():
        # Every worker is idle between its runs here; let the last ends settle.
        wait_for(lambda: d.counts()[3] == 0 and c.info()["runs_live"] == 0, T(5))
        time.sleep(0.2)
        return d.counts()

    t0 = time.monotonic()
    for p in procs:
        p.start()
    try:
        # ~600 runs/s on a busy 2-core machine: 2.5 min for the default 100 000.
        budget = T(60 + total / 200.0)
        done1, bad1 = collect(0, budget * first / total + T(30))
        t1 = time.monotonic()
        fds1, rss1, thr1, z1 = sample()
        go.set()
        t2 = time.monotonic()
        done2, bad2 = collect(1, budget)
        t3 = time.monotonic()
        fds2, rss2, thr2, z2 = sample()
        bye.set()
        for p in procs:
            p.join(T(10))
    finally:
        bye.set()
        for p in procs:
            if p.is_alive():
                p.kill()
    rate = total / ((t1 - t0) + (t3 - t2))
    report("sequential", "%d runs of /bin/true on %d connections: %.0f runs/s in %.0f s (this "
           "host: %.0f plain posix_spawn+wait of /bin/true a second, one at a time)" % (
               total, SEQ_WORKERS, rate, (t1 - t0) + (t3 - t2), host_spawn_rate()))
    report("sequential", "boxd at %d runs: fds %d, VmRSS %d kB, threads %d; at %d runs: fds %d, "
           "VmRSS %d kB (%+d kB), threads %d" % (first, fds1, rss1, thr1, total, fds2, rss2,
                                                 rss2 - rss1, thr2))
    assert bad1 == [] and bad2 == [], (bad1 + bad2)[:3]
    assert done1 == first and done2 == total - first, (done1, done2)
    info = c.info()
    assert info["started_total"] == total, info
    assert info["runs_live"] == 0
    assert (z1, z2) == (0, 0)
    assert fds2 == fds1, "boxd fds %d after %d runs, %d after %d" % (fds1, first, fds2, total)
    assert thr2 == thr1, "boxd threads %d after %d runs, %d after %d" % (thr1, first, thr2, total)
    if not SANITIZED:
        assert rss2 - rss1 <= 1024, "boxd VmRSS grew from %d to %d kB" % (rss1, rss2)
    # The workers' connections close: their fds go too.
    assert wait_for(lambda: c.info()["conns"] == 1, T(5))
    assert wait_for(lambda: d.counts()[0] == fds2 - SEQ_WORKERS, T(5)), (d.counts(), fds2)
