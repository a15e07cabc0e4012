"""Big output: a two-stream flood followed live, and a 2 GiB run whose follower stops reading
(issue 6, 5-6). Both read with conftest.FrameReader, which never holds more than one frame."""

import gc
import threading
import time

from conftest import FLOOD_BYTES, FLOOD_SECS, SANITIZED, T, FrameReader, report, wait_for

PY = "/usr/bin/python3"  # Debian's; runs search a clean PATH that has it too

# ---- 5. stdout and stderr flooded at once, followed live ---------------------------------------

# Writes numbered fixed-width lines to fd 1 and fd 2 alternately, a batch at a time, for
# argv[1] seconds; then prints how many lines each stream got on a last line of each.
FLOOD2 = r"""
import os, sys, time
secs = float(sys.argv[1])
pad = {1: b"o" * 88 + b"\n", 2: b"e" * 88 + b"\n"}
nxt = {1: 0, 2: 0}
BATCH = 400
def put(fd, data):
    v = memoryview(data)
    while v:
        v = v[os.write(fd, v):]
end = time.monotonic() + secs
while time.monotonic() < end:
    for fd in (1, 2):
        n = nxt[fd]
        put(fd, b"".join(b"%010d " % i + pad[fd] for i in range(n, n + BATCH)))
        nxt[fd] = n + BATCH
put(1, b"total %d\n" % nxt[1])
put(2, b"total %d\n" % nxt[2])
"""


def line_of(stream, i):
    return "%010d %s\n" % (i, ("o" if stream == 1 else "e") * 88)


def test_two_stream_flood_followed(start_boxd):
    d = start_boxd()
    c = d.client()
    other = d.client()
    req = c.exec_start(argv=[PY, "-c", FLOOD2, str(FLOOD_SECS)], output=False)
    r = FrameReader(c)
    seq = 0
    nxt = {1: 0, 2: 0}
    partial = {1: "", 2: ""}
    totals = {}
    end = None
    pieces = 0
    started = None
    t0 = time.monotonic()
    deadline = t0 + T(FLOOD_SECS + 60)
    gc.disable()  # millions of short-lived lists: the cycle collector only costs time here
    try:
        while end is None:
            for m in r.take(max(0.1, deadline - time.monotonic())):
                assert m.get("req") == req, m
                ty = m["type"]
                if ty == "started":
                    started = m
                    continue
                assert started is not None, m
                if ty == "end":
                    end = m
                    break
                assert ty == "output", m  # a gap (or anything else) fails here
                for s, _ts, stream, data in m["lines"]:
                    assert s == seq, "seq %d after %d" % (s, seq - 1)
                    seq += 1
                    if partial[stream] or data[-1:] != "\n":
                        pieces += 1
                        data = partial[stream] + data
                        if data[-1:] != "\n":
                            partial[stream] = data
                            continue
                        partial[stream] = ""
                    n = nxt[stream]
                    if data != line_of(stream, n):
                        assert data.startswith("total "), (stream, n, data[:120])
                        assert stream not in totals, (stream, data)
                        totals[stream] = int(data[6:])
                        continue
                    assert stream not in totals, "output after the total on %d" % stream
                    nxt[stream] = n + 1
            assert time.monotonic() < deadline, "no end within %.0f s" % (deadline - t0)
    finally:
        gc.enable()
    took = time.monotonic() - t0
    assert end["status"] == "completed", end
    assert partial == {1: "", 2: ""}, "unfinished line at the end"
    assert totals == nxt, (totals, nxt)  # every line of each stream, none missing or doubled
    assert end["next_seq"] == seq, (end, seq)
    # Records past the 8 MiB log were dropped by retention after they were sent; none was ever
    # dropped while owed to this follower (no gap above, seqs contiguous). So the count of
    # dropped records is exactly the oldest retained seq: drops only ever at the old end.
    assert end["dropped_records"] == end["first_seq"], end
    assert other.ping()["type"] == "pong"
    mb = r.bytes_in / 1e6
    report("flood2", "%.0f s flood: %d stdout + %d stderr lines (%d records, %d pieces), %.0f MB "
           "read in %.1f s (%.1f MB/s); end: dropped_records %d, first_seq %d" % (
               FLOOD_SECS, nxt[1], nxt[2], seq, pieces, mb, took, mb / took,
               end["dropped_records"], end["first_seq"]))


# ---- 6. flow control: 2 GiB to a follower that stops reading -----------------------------------

LINE_LEN = 1000  # bytes a line, its newline included
LOG_BYTES = 4 << 20
PAUSE = 10.0


def run_state(c, run_id):
    runs = [x for x in c.list()["runs"] if x["id"] == run_id]
    assert runs, run_id
    return runs[0]


def test_paused_follower_bounded_memory(start_boxd):
    d = start_boxd("--log-bytes", str(LOG_BYTES))
    c = d.client()
    side = d.client()
    other = d.client()
    assert c.hello_reply["limits"]["log_bytes"] == LOG_BYTES
    assert side.exec_run("echo warm").end["status"] == "completed"
    time.sleep(0.2)
    rss_idle = d.counts()[1]

    body = "x" * (LINE_LEN - 1)
    cmd = "yes %s | head -c %d" % (body, FLOOD_BYTES)
    req = c.exec_start(cmd=cmd, output=False)
    st = c.recv_req(req, timeout=T(10))
    assert st["type"] == "started", st
    run_id = st["id"]

    # The follower reads nothing for PAUSE s. Meanwhile: RSS sampled, next_seq watched from
    # another connection, and a second run on a third connection must complete promptly.
    t0 = time.monotonic()
    rss_peak = rss_idle
    samples = []
    second = {}

    def second_run():
        t = time.monotonic()
        res = other.exec_run(cmd="seq 1 100000", output=False, timeout=T(20))
        second["took"] = time.monotonic() - t
        second["res"] = res

    while time.monotonic() - t0 < 3.0:
        rss_peak = max(rss_peak, d.counts()[1])
        time.sleep(0.1)
    th = threading.Thread(target=second_run, daemon=True)
    th.start()
    while time.monotonic() - t0 < PAUSE:
        rss_peak = max(rss_peak, d.counts()[1])
        if time.monotonic() - t0 > PAUSE - 4:
            samples.append(run_state(side, run_id))
            time.sleep(0.5)
        else:
            time.sleep(0.1)
    th.join(T(20))
    growth = rss_peak - rss_idle
    st1, st2 = samples[0], samples[-1]
    report("paused", "--log-bytes %d: boxd VmRSS idle %d kB, peak while the follower did not read "
           "%d kB (growth %d kB); run paused at next_seq %d (%.1f MB)" % (
               LOG_BYTES, rss_idle, rss_peak, growth, st2["next_seq"],
               st2["next_seq"] * LINE_LEN / 1e6))
    assert len(samples) >= 4
    assert st2["state"] == "running", st2
    assert st1["next_seq"] == st2["next_seq"], "the run was not paused: next_seq %d -> %d" % (
        st1["next_seq"], st2["next_seq"])
    assert st2["next_seq"] * LINE_LEN < FLOOD_BYTES / 2
    if not SANITIZED:
        assert growth < 12 * 1024, "boxd VmRSS grew by %d kB for a paused follower" % growth
    assert "res" in second, "the second run did not end while the first was paused"
    res2 = second["res"]
    assert res2.end["status"] == "completed", res2.end
    # Every line (a slow moment may cut one into pieces: more records than lines is fine).
    assert res2.stdout == b"".join(b"%d\n" % i for i in range(1, 100001)), res2.end
    assert res2.end["next_seq"] == len(res2.records) >= 100000, res2.end
    report("paused", "second run (seq 1 100000) on another connection took %.2f s meanwhile"
           % second["took"])
    assert second["took"] < T(5), second["took"]

    # Now the follower reads everything.
    r = FrameReader(c)
    seq = 0
    nbytes = 0
    full = body + "\n"
    partial = ""
    pieces = 0
    end = None
    t1 = time.monotonic()
    deadline = t1 + T(240)
    gc.disable()
    try:
        while end is None:
            for m in r.take(max(0.1, deadline - time.monotonic())):
                assert m.get("req") == req, m
                ty = m["type"]
                if ty == "end":
                    end = m
                    break
                assert ty == "output", m  # a gap (or anything else) fails here
                for s, _ts, stream, data in m["lines"]:
                    nbytes += len(data)
                    if s != seq or stream != 1 or data != full:
                        assert s == seq, "seq %d after %d" % (s, seq - 1)
                        assert stream == 1, stream
                        # A piece (a partial line flushed while the writer was blocked, or
                        # the bytes after the last newline at the end): joined and checked.
                        pieces += 1
                        partial += data
                        if partial[-1:] == "\n":
                            assert partial == full, (s, partial[:100], len(partial))
                            partial = ""
                        else:
                            assert partial == body[:len(partial)], (s, partial[:100])
                    elif partial:
                        raise AssertionError("record %d: a full line after a piece" % s)
                    seq += 1
            assert time.monotonic() < deadline, "no end within %.0f s" % (deadline - t1)
    finally:
        gc.enable()
    took = time.monotonic() - t1
    assert end["status"] == "completed", end
    assert nbytes == FLOOD_BYTES, (nbytes, FLOOD_BYTES)
    assert end["next_seq"] == seq, (end, seq)
    assert partial == body[:FLOOD_BYTES % LINE_LEN], len(partial)
    assert side.ping()["type"] == "pong"
    report("paused", "read back %d bytes in %d records (%d pieces) after the pause: %.1f s, "
           "%.0f MB/s" % (nbytes, seq, pieces, took, nbytes / 1e6 / took))
    assert wait_for(lambda: side.info()["runs_live"] == 0, T(5))
