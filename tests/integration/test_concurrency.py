"""Many runs at once, on one connection and on many; no leaks afterwards."""

import os
import threading
import time

import pytest

from conftest import T, boxd_option, wait_for

CMD = "echo $1; exit $(($1 % 7))"


def check_end(n, end):
    assert end["type"] == "end", end
    assert end["exit_code"] == n % 7, (n, end)
    assert end["result"] == (str(n) if n % 7 == 0 else ""), (n, end)
    assert end["stdout"] == "%d\n" % n
    assert end["status"] == ("completed" if n % 7 == 0 else "failed")


def run_many(c, numbers, timeout):
    """Starts every number as a run on connection c, then collects all ends."""
    for n in numbers:
        c.exec_start(argv=["sh", "-c", CMD, "_", str(n)], req=n, output=True)
    ends, started, outputs = {}, set(), {}
    deadline = time.monotonic() + timeout
    while len(ends) < len(numbers):
        m = c.recv(timeout=max(0.01, deadline - time.monotonic()))
        n = m.get("req")
        assert n in numbers, m
        if m["type"] == "started":
            started.add(n)
        elif m["type"] == "output":
            outputs.setdefault(n, []).extend(m["lines"])
        elif m["type"] == "end":
            assert n in started
            assert n not in ends, "two ends for one run"
            ends[n] = m
        else:
            raise AssertionError(m)
    for n in numbers:
        check_end(n, ends[n])
        assert [l[3] for l in outputs.get(n, [])] == ["%d\n" % n]
    return ends


def settle(boxd, baseline_fds, threads):
    ok = wait_for(lambda: boxd.counts()[0] <= baseline_fds and boxd.counts()[3] == 0, T(3))
    nfd, _, thr, zombies = boxd.counts()
    assert ok, "fds %d (baseline %d), zombies %d" % (nfd, baseline_fds, zombies)
    assert thr == threads, "threads %d, was %d" % (thr, threads)


def test_200_runs_one_connection(boxd, client):
    n = min(200, client.hello_reply["limits"]["max_runs"])
    assert n >= 64, "max_runs is only %d" % n
    client.exec_run("true")  # warm-up: lazily created resources exist from now on
    time.sleep(0.1)
    fds, _, threads, _ = boxd.counts()
    run_many(client, list(range(1, n + 1)), T(60))
    settle(boxd, fds, threads)
    info = client.info()
    assert info["runs_live"] == 0
    assert info["started_total"] == n + 1


def test_200_runs_20_connections(boxd, client):
    client.exec_run("true")
    time.sleep(0.1)
    fds, _, threads, _ = boxd.counts()
    errors = []
    conns = [boxd.client() for _ in range(20)]

    def worker(i):
        try:
            run_many(conns[i], list(range(i * 10 + 1, i * 10 + 11)), T(60))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((i, repr(e)))

    threads_ = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join(T(90))
    assert not errors, errors
    assert client.info()["conns"] == 21
    for c in conns:
        c.close()
    assert wait_for(lambda: client.info()["conns"] == 1, T(3))
    settle(boxd, fds, threads)


def test_connection_churn_no_leak(boxd, client):
    client.exec_run("true")
    time.sleep(0.1)
    fds, rss, threads, _ = boxd.counts()
    for i in range(200):
        c = boxd.client()
        c.exec_start(cmd="echo %d" % i)
        if i % 2:
            c.recv()  # sometimes close before the run ends, sometimes after started
        c.close()
    assert wait_for(lambda: client.info()["runs_live"] == 0, T(10))
    settle(boxd, fds, threads)
    assert boxd.counts()[1] - rss < 16 * 1024


def test_max_runs_limit(start_boxd):
    opt = boxd_option("--max-runs")
    if opt is None:
        pytest.skip("boxd --help shows no --max-runs option")
    d = start_boxd(opt, "3")
    c = d.client()
    assert c.hello_reply["limits"]["max_runs"] == 3
    reqs = [c.exec_start(argv=["sleep", "10"], id="m%d" % i) for i in range(3)]
    for r in reqs:
        assert c.recv_req(r)["type"] == "started"
    r = c.request("exec", argv=["true"], id="over")
    assert r["type"] == "error" and r["code"] == "limit", r
    c.cancel("m0", grace_ms=100)
    c.collect(reqs[0], timeout=T(5))
    assert c.exec_run("echo ok").end["result"] == "ok"


def test_max_conns_limit(start_boxd):
    opt = boxd_option("--max-conns")
    if opt is None:
        pytest.skip("boxd --help shows no --max-conns option")
    d = start_boxd(opt, "4")
    cs = [d.client() for _ in range(4)]
    from boxd_client import Client, ConnectionClosed
    extra = Client(d.sock, default_timeout=T(3))
    with pytest.raises((ConnectionClosed, OSError)):
        extra.hello()
        raise AssertionError("a connection over max_conns was served")
    extra.close()
    cs[0].close()
    time.sleep(0.2)
    assert d.client().ping()["type"] == "pong"


def test_request_flood_without_reading(boxd):
    """A client that sends requests but does not read replies costs the agent bounded memory;
    once it reads, every reply arrives, in order (PROTOCOL.md 7)."""
    from boxd_client import frame, pack
    c = boxd.client()
    other = boxd.client()
    rss0 = boxd.counts()[1]
    n = 400000  # about 7 MB of requests and 11 MB of replies
    blob = b"".join(frame(pack({"type": "ping", "req": i})) for i in range(n))
    sent = []

    def sender():
        c.raw_send(blob)
        sent.append(True)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    time.sleep(T(1.5))
    grown1 = boxd.counts()[1] - rss0
    time.sleep(T(1.5))
    grown2 = boxd.counts()[1] - rss0
    assert not sent, "the agent read every request although its replies were not read"
    # Bounded: no growth while the client keeps not reading ...
    assert grown2 - grown1 < 2048, "RSS still growing: %d -> %d kB" % (grown1, grown2)
    # ... and within a sane multiple of the default 4 MiB connection queue.
    assert grown2 < 64 * 1024, "boxd RSS grew by %d kB for one client that does not read" % grown2
    t0 = time.monotonic()
    assert other.ping()["type"] == "pong"
    assert time.monotonic() - t0 < T(1)
    for i in range(n):
        m = c.recv(timeout=T(10))
        assert m["type"] == "pong" and m["req"] == i, (i, m)
    t.join(T(10))
    assert sent


@pytest.mark.skipif(os.environ.get("BOXD_SANITIZED") == "1",
                    reason="ASan's quarantine holds freed memory: RSS is not meaningful")
def test_rss_plateaus_over_many_runs(boxd, client):
    """Finished runs past max_finished are forgotten, so memory stops growing."""
    max_finished = client.hello_reply["limits"]["max_finished"]
    if max_finished > 300:
        pytest.skip("max_finished %d is too large for a quick plateau check" % max_finished)

    def batch(k, base):
        for i in range(k):
            client.exec_start(argv=["echo", "x" * 100, str(base + i)], req=base + i, output=False)
        got = 0
        while got < k:
            if client.recv(timeout=T(20))["type"] == "end":
                got += 1

    for b in range(6):  # past max_finished: the table is full from here on
        batch(50, b * 50)
    time.sleep(0.2)
    rss1 = boxd.counts()[1]
    for b in range(6, 14):
        batch(50, b * 50)
    time.sleep(0.2)
    rss2 = boxd.counts()[1]
    assert rss2 - rss1 < 2048, "RSS grew from %d to %d kB over 400 runs" % (rss1, rss2)
    info = client.info()
    assert info["runs_finished"] == max_finished
    assert info["started_total"] == 700


def test_info_counters(boxd, client):
    req = client.exec_start(argv=["sleep", "10"], id="live")
    client.recv_req(req)
    client.exec_run("true")
    client.exec_run(argv=["/nonexistent"])
    other = boxd.client()
    info = other.info()
    assert info["runs_live"] == 1
    assert info["runs_finished"] == 2
    assert info["started_total"] in (2, 3)  # whether a spawn failure counts as started
    assert info["conns"] == 2
    client.cancel("live", grace_ms=100)
    client.collect(req, timeout=T(5))
    info = other.info()
    assert info["runs_live"] == 0 and info["runs_finished"] == 3
