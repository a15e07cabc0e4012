"""Issue 11, items 5 and 13: one bound over all retained output, live runs' included; log_bytes
counts data; retention fields in attach and list; retried exec and max_subs; retrying a spawn
that failed (PROTOCOL.md 4.1, 4.5, 4.7)."""

import os
import time

import boxd_client
from conftest import T, proc_status, wait_for

MiB = 1 << 20
# ASan's quarantine holds freed memory: RSS says nothing about boxd's bounds there.
RSS_MEANINGFUL = os.environ.get("BOXD_SANITIZED") != "1"


def assert_peak(d, base, total, what):
    """boxd's peak RSS stayed under log_total plus a margin over its RSS at start."""
    hwm = kb(d, "VmHWM")
    margin = 8 * 1024  # kB: a chunk per live run, followers' queues, the heap's slack
    print("%s: boxd peak RSS %d kB (at start %d kB, log_total %d kB)"
          % (what, hwm, base, total // 1024))
    if RSS_MEANINGFUL:
        assert hwm < base + total // 1024 + margin, \
            "%s: boxd peaked at %d kB with log_total %d kB (at start %d kB)" \
            % (what, hwm, total // 1024, base)


def kb(d, key):
    return int(proc_status(d.pid)[key].split()[0])


def seqs_once(records, start=0):
    """The records' seqs are start, start+1, ... each exactly once, in order."""
    got = [r[0] for r in records]
    assert got == list(range(start, start + len(got))), got[:20]


def last_record(c, id_):
    """The last retained record of a live run (via list's next_seq and logs)."""
    run = {r["id"]: r for r in c.list()["runs"]}[id_]
    if run["next_seq"] == 0:
        return None
    p = c.logs(id_, from_seq=run["next_seq"] - 1)
    return p["lines"][-1] if p["lines"] else None


# ---- item 5: live runs' logs within log_total ---------------------------------------------------

def test_live_runs_logs_stay_within_log_total(start_boxd):
    total = 16 * MiB
    d = start_boxd("--log-total", str(total))
    base = kb(d, "VmRSS")
    c = d.client()
    # A follower that does not read for a while: what it is owed is never dropped.
    f = d.client()
    nlines = 600000  # seq 1 600000: 4.4 MB
    freq = f.exec_start(cmd="seq 1 %d; echo fin >&2" % nlines, id="fol")
    # 40 live runs nobody follows, each printing 4 MB and then sleeping: 160 MB in all.
    n, each = 40, 4000000
    line = "x" * 63
    for i in range(n):
        req = c.exec_start(cmd="yes %s | head -c %d; echo done-%d; exec sleep 120"
                           % (line, each, i), id="u%d" % i, follow=False)
        assert c.recv_req(req)["type"] == "started"

    def all_done():
        for i in range(n):
            rec = last_record(c, "u%d" % i)
            if rec is None or rec[3] != "done-%d\n" % i:
                return False
        return True
    # A run nobody follows never blocks, even with every log full.
    assert wait_for(all_done, T(60), interval=0.2), "unfollowed runs were held back"
    time.sleep(T(0.3))
    print("40 live runs printed 160 MB: boxd RSS now %d kB" % kb(d, "VmRSS"))
    assert_peak(d, base, total, "40 live runs")

    # The drops are reported in list, logs and end.
    runs = {r["id"]: r for r in c.list()["runs"]}
    dropped = 0
    for i in range(n):
        r = runs["u%d" % i]
        assert r["state"] == "running"
        assert r["first_seq"] == r["dropped_records"] and r["dropped_bytes"] > 0, r
        dropped += r["dropped_bytes"]
    assert dropped > n * each - total
    recs, pages = c.all_logs("u7")
    p = pages[-1]
    assert p["dropped_records"] == runs["u7"]["dropped_records"]
    assert p["first_seq"] == p["dropped_records"] > 0
    kept = sum(len(r[3]) for r in recs)
    assert kept + p["dropped_bytes"] == each + len(b"done-7\n")
    assert c.cancel("u7")["type"] == "ok"
    w = c.wait("u7", timeout=T(10))
    assert w["status"] == "cancelled"
    assert w["dropped_records"] == p["dropped_records"] and w["dropped_bytes"] == p["dropped_bytes"]

    # The follower now reads: it gets every record, none twice, no gap.
    res = f.collect(freq, timeout=T(60))
    assert res.error is None and res.end["status"] == "completed", res
    assert res.gaps == []
    seqs_once(res.records)
    assert len(res.records) == res.end["next_seq"]  # (lines, or pieces of them: 4.2)
    assert res.stdout == b"".join(b"%d\n" % i for i in range(1, nlines + 1))
    assert res.stderr == b"fin\n"
    assert_peak(d, base, total, "40 live runs and the follower")


def test_followed_runs_under_full_logs_are_held_back_not_lost(start_boxd):
    # Many followed runs whose followers are slow: their writers block; memory stays bounded;
    # each follower gets everything once it reads. A follower that reads unblocks its own run
    # whatever the others do.
    total = 16 * MiB
    d = start_boxd("--log-total", str(total))
    base = kb(d, "VmRSS")
    conns, reqs = [], []
    n, nlines = 8, 200000  # 8 x 1.3 MB of short lines (5 MB each in memory), all followed
    for i in range(n):
        fc = d.client()
        conns.append(fc)
        reqs.append(fc.exec_start(cmd="seq 1 %d" % nlines, id="f%d" % i))
    time.sleep(T(2))  # nobody reads
    # One more follower that reads at once is not held back by the stalled ones.
    q = d.client()
    t0 = time.monotonic()
    res = q.exec_run("seq 1 %d" % nlines, id="quick", output=False, timeout=T(30))
    assert res.end["status"] == "completed"
    seqs_once(res.records)
    assert res.stdout == b"".join(b"%d\n" % i for i in range(1, nlines + 1))
    print("quick run beside %d stalled followers: %.2f s" % (n, time.monotonic() - t0))
    assert_peak(d, base, total, "%d stalled followers" % n)
    for fc, req in zip(conns, reqs):
        r = fc.collect(req, timeout=T(60))
        assert r.end["status"] == "completed" and r.gaps == []
        seqs_once(r.records)
        assert r.stdout == b"".join(b"%d\n" % i for i in range(1, nlines + 1))


# ---- item 13 (a): log_bytes is data --------------------------------------------------------------

def test_log_bytes_counts_data_and_memory_stays_bounded(start_boxd):
    d = start_boxd()
    c = d.client()
    log_bytes = c.hello_reply["limits"]["log_bytes"]
    assert log_bytes == 8 * MiB
    n = 2000000  # seq 1 2000000: 14.9 MB of 7.4-byte lines
    req = c.exec_start(cmd="seq 1 %d" % n, id="short", follow=False)
    assert c.recv_req(req)["type"] == "started"
    w = c.wait("short", timeout=T(30))
    written = sum(len(b"%d\n" % i) for i in range(1, n + 1))
    kept = written - w["dropped_bytes"]
    print("short lines: %d bytes of data kept of log_bytes %d" % (kept, log_bytes))
    assert log_bytes - 256 * 1024 <= kept <= log_bytes, kept
    recs, _ = c.all_logs("short", max_bytes=4 * MiB)
    assert sum(len(r[3]) for r in recs) == kept
    assert recs[0][0] == w["first_seq"] == w["dropped_records"]

    # One-byte lines: data is capped by log_bytes, memory by log_total.
    total = 16 * MiB
    d2 = start_boxd("--log-total", str(total))
    base = kb(d2, "VmRSS")
    c2 = d2.client()
    size = 24 * MiB
    req = c2.exec_start(cmd="head -c %d /dev/zero | tr '\\0' '\\n'" % size, id="nl",
                        follow=False)
    assert c2.recv_req(req)["type"] == "started"
    w = c2.wait("nl", timeout=T(60))
    kept = size - w["dropped_bytes"]
    print("1-byte lines: %d bytes of data kept" % kept)
    assert 0 < kept < log_bytes
    assert w["next_seq"] == size and w["dropped_records"] == size - kept
    assert_peak(d2, base, total, "1-byte lines")


# ---- item 13 (b): retention fields in attach and list ---------------------------------------------

def test_retention_fields_in_attach_and_list(start_boxd):
    d = start_boxd("--log-bytes", "65536")
    c = d.client()
    req = c.exec_start(cmd="seq 1 100000", id="ret", follow=False)
    c.recv_req(req)
    w = c.wait("ret", timeout=T(10))
    assert w["dropped_records"] > 0
    want = {k: w[k] for k in ("first_seq", "dropped_records", "dropped_bytes")}
    run = {r["id"]: r for r in c.list()["runs"]}["ret"]
    assert {k: run[k] for k in want} == want, run
    res = c.attach("ret", from_seq=w["first_seq"])
    assert {k: res.started[k] for k in want} == want, res.started
    p = c.logs("ret")
    assert {k: p[k] for k in want} == want
    # A live run too.
    c.send({"type": "exec", "req": "live", "id": "live", "follow": False,
            "cmd": "seq 1 100000; echo END; exec sleep 30"})
    c.recv_req("live")
    assert wait_for(lambda: (last_record(c, "live") or [0, 0, 0, ""])[3] == "END\n", T(10))
    run = {r["id"]: r for r in c.list()["runs"]}["live"]
    assert run["state"] == "running" and run["dropped_records"] == run["first_seq"] > 0
    a = c.attach("live", until_end=False).started
    assert a["dropped_records"] == run["dropped_records"]
    assert a["dropped_bytes"] == run["dropped_bytes"] > 0
    c.cancel("live")


# ---- item 13 (c): a retried exec does not subscribe twice -----------------------------------------

SLOW = "seq 1 5; sleep %s; seq 6 10"


def test_retried_exec_same_req_delivers_each_record_once(client):
    client.send({"type": "exec", "req": 7, "id": "again", "cmd": SLOW % "0.5"})
    first = client.recv_req(7)
    assert first["type"] == "started" and first["existing"] is False
    client.send({"type": "exec", "req": 7, "id": "again", "cmd": "echo SHOULD NOT RUN"})
    msgs = []
    deadline = time.monotonic() + T(10)
    while not any(m["type"] == "end" for m in msgs) and time.monotonic() < deadline:
        msgs.append(client.recv_req(7, timeout=T(10)))
    msgs += [m for m in client.drain(0.5) if m.get("req") == 7]
    kinds = [m["type"] for m in msgs]
    assert kinds.count("started") == 1 and kinds.count("end") == 1, kinds
    assert [m for m in msgs if m["type"] == "started"][0]["existing"] is True
    recs = [rec for m in msgs if m["type"] == "output" for rec in m["lines"]]
    seqs_once(recs)
    assert len(recs) == 10


def test_retried_exec_other_req_replaces_the_subscription(client):
    a = client.exec_start(cmd=SLOW % "0.5", id="again2")
    assert client.recv_req(a)["type"] == "started"
    got_a = []
    while len(got_a) < 5:
        m = client.recv_req(a, timeout=T(5))
        got_a += m.get("lines", [])
    b = client.exec_start(cmd="echo SHOULD NOT RUN", id="again2")
    res = client.collect(b, timeout=T(10))
    assert res.started["existing"] is True
    seqs_once(res.records)  # the whole run, from 0, each once, under the retry's req
    assert res.stdout == b"".join(b"%d\n" % i for i in range(1, 11))
    late = [m for m in client.drain(0.5) if m.get("req") == a]
    assert late == [], "the replaced subscription still delivered: %r" % late


def test_retry_pipelined_while_starting_delivers_each_record_once(client):
    # Both requests in one write: the retry is read while the run is still starting.
    for _ in range(5):
        rid = "pipe%d" % client.next_req()
        # (Two send()s would be two writes: on a busy machine the run could start and deliver
        # its output to "one" before the retry is even read.)
        client.raw_send(boxd_client.frame(boxd_client.pack(
            {"type": "exec", "req": "one", "id": rid, "cmd": "seq 1 10"})) +
            boxd_client.frame(boxd_client.pack(
                {"type": "exec", "req": "two", "id": rid, "cmd": "seq 1 10"})))
        res = client.collect("two", timeout=T(10))
        assert res.started["existing"] is True
        seqs_once(res.records)
        assert res.stdout == b"".join(b"%d\n" % i for i in range(1, 11))
        other = client.recv_req("one", timeout=T(5))
        assert other["type"] == "started"
        more = [m for m in client.drain(0.3) if m.get("req") in ("one", "two")]
        assert [m["type"] for m in more if m["type"] == "end"] == [], more
        dup = [rec for m in more if m["type"] == "output" for rec in m["lines"]]
        assert dup == [], "records delivered twice: %r" % dup


# ---- item 13 (d): over max_subs, an answer --------------------------------------------------------

def test_over_max_subs_is_an_error_naming_the_limit(start_boxd):
    d = start_boxd("--max-subs", "2")
    c = d.client()
    other = d.client()
    r = other.request("exec", id="bg", cmd="sleep 30", follow=False)
    assert r["type"] == "started"
    for i in range(2):
        assert c.exec_start(cmd="sleep 30", id="s%d" % i, req="s%d" % i)
        assert c.recv_req("s%d" % i)["type"] == "started"
    # A retried exec of a run this connection does not follow: an error, not a silent started.
    e = c.request("exec", id="bg", cmd="sleep 30")
    assert e["type"] == "error" and e["code"] == "limit", e
    assert e["limit"] == "max_subs" and e["id"] == "bg", e
    # A new exec with follow.
    e = c.request("exec", cmd="true")
    assert e["type"] == "error" and e["code"] == "limit" and e["limit"] == "max_subs", e
    for typ in ("attach", "wait"):
        e = c.request(typ, id="bg")
        assert e["type"] == "error" and e["code"] == "limit" and e["limit"] == "max_subs", e
    # Without follow a retry needs no subscription; re-following a run it follows replaces.
    assert c.request("exec", id="bg", cmd="x", follow=False)["existing"] is True
    assert c.request("exec", id="s0", cmd="x")["existing"] is True
    assert c.request("attach", id="s1")["type"] == "attached"
    c.request("cancel", id="s0")
    assert c.recv_match(lambda m: m["type"] == "end" and m.get("id") == "s0", T(10))
    assert c.request("attach", id="bg")["type"] == "attached"  # room again
    for id_ in ("bg", "s1"):
        c.request("cancel", id=id_)


# ---- item 13 (e): retrying a spawn that failed -----------------------------------------------------

def test_retry_of_a_failed_spawn_answers_the_same_error(client):
    for follow in (True, False):
        rid = "nope-%s" % follow
        first = client.request("exec", id=rid, argv=["/nonexistent/prog"], follow=follow)
        assert first["type"] == "error" and first["code"] == "spawn_failed", first
        for _ in range(2):
            again = client.request("exec", id=rid, argv=["/bin/true"], follow=follow)
            assert again["type"] == "error" and again["code"] == "spawn_failed", again
            assert again["existing"] is True and again["id"] == rid
            assert first["existing"] is False
            for k in ("errno", "errno_name", "stage"):
                assert again[k] == first[k]
            # No end follows an exec's spawn_failed, first or retried.
            assert [m for m in client.drain(0.3) if m.get("req") == again["req"]] == []
        w = client.wait(rid)
        assert w["type"] == "end" and w["reason"] == "spawn" and w["stage"] == "exec"
    assert client.info()["started_total"] == 2
