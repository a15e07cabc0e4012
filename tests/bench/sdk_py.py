#!/usr/bin/python3
"""Benchmark row: exec round trip through the Python SDK against the raw protocol client.

Starts its own boxd on a temporary socket (or uses --socket), opens one connection per client
and times `exec true` (follow, output: true) to its `end`, interleaving the three clients run by
run so drift on the machine lands on all of them:

- raw: tests/integration/boxd_client.py (one blocking socket, no threads), the baseline;
- sync: boxd.Box (the asyncio core on its own thread, the caller blocked on a future);
- async: boxd.aio.AsyncBox, awaited on the caller's own loop.

usage: BOXD_BIN=build/boxd /usr/bin/python3 tests/bench/sdk_py.py [--iters N] [--socket PATH]
Prints one table of p50/p99 in µs and the ratios against raw.
"""

import argparse
import asyncio
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, os.path.join(REPO, "tests", "sdk"))
sys.path.insert(0, os.path.join(REPO, "protocol", "sdk", "python"))

import boxd_client  # noqa: E402
from boxd import Box  # noqa: E402
from boxd.aio import AsyncBox  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=int(os.environ.get("BENCH_ITERS", "1000")))
    ap.add_argument("--socket", help="an already running boxd (default: start one)")
    args = ap.parse_args()
    daemon = None
    sock = args.socket
    if sock is None:
        import py_boxd
        daemon = py_boxd.Daemon().start()
        sock = daemon.sock
    try:
        raw = boxd_client.connect(sock)
        box = Box.connect(socket=sock)
        loop = asyncio.new_event_loop()
        abox = loop.run_until_complete(AsyncBox.connect(socket=sock))
        times = {"raw": [], "sync": [], "async": []}

        def run_raw():
            r = raw.exec_run("true")
            assert r.end["status"] == "completed", r

        def run_sync():
            assert box.exec.command("true").status == "completed"

        def run_async():
            r = loop.run_until_complete(abox.exec.command("true"))
            assert r.status == "completed"
        fns = {"raw": run_raw, "sync": run_sync, "async": run_async}
        for _ in range(20):  # warm up
            for f in fns.values():
                f()
        for _ in range(args.iters):
            for name, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[name].append((time.perf_counter() - t0) * 1e6)
        loop.run_until_complete(abox.close())
        loop.close()
        box.close()
        raw.close()
    finally:
        if daemon:
            daemon.stop()
    base50, base99 = statistics.median(times["raw"]), pct(times["raw"], 0.99)
    print("exec `true` round trip on one connection, %d interleaved runs each, µs" % args.iters)
    print("| client | p50 | p99 | p50 ratio vs raw | p99 ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in ("raw", "sync", "async"):
        p50, p99 = statistics.median(times[name]), pct(times[name], 0.99)
        print("| %s | %.0f | %.0f | %.2fx | %.2fx |" % (name, p50, p99, p50 / base50,
                                                      p99 / base99))


if __name__ == "__main__":
    main()
