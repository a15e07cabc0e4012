"""attach, detach, wait, logs, list, retention and run ids (PROTOCOL.md 4.1, 4.5, 4.7)."""

import time

import pytest

from conftest import T, boxd_option

NUMBERED = "i=0; while [ $i -lt %d ]; do echo line $i; i=$((i+1)); sleep %s; done"


def lines_of(records):
    return [r[3] for r in records]


def expect_lines(n):
    return [b"line %d\n" % i for i in range(n)]


def test_follow_false_then_attach(client):
    req = client.exec_start(cmd="echo one; echo two >&2; echo three", id="job-1", follow=False)
    s = client.recv_req(req)
    assert s["type"] == "started" and s["id"] == "job-1" and s["existing"] is False, s
    w = client.wait("job-1")
    assert w["type"] == "end" and w["status"] == "completed"
    # Nothing but the started reply came for the exec req.
    assert [m for m in client.drain(0.2) if m.get("req") == req] == []
    res = client.attach("job-1", from_seq=0)
    a = res.started
    assert a["type"] == "attached" and a["id"] == "job-1", a
    assert a["first_seq"] == 0 and a["next_seq"] == 3 and a["ended"] is True
    assert [r[0] for r in res.records] == [0, 1, 2]
    # stdout and stderr are separate pipes: only the order within a stream is certain.
    assert res.stdout == b"one\nthree\n" and res.stderr == b"two\n"
    assert res.end["status"] == "completed" and res.end["next_seq"] == 3


def test_attach_default_from_zero_and_output(client):
    client.exec_run("echo a; echo b", id="j2")
    res = client.attach("j2", output=True)
    assert lines_of(res.records) == [b"a\n", b"b\n"]
    assert res.end["result"] == "a\nb"


def test_attach_from_middle(client):
    client.exec_run("seq 1 10", id="j3")
    res = client.attach("j3", from_seq=7)
    assert [r[0] for r in res.records] == [7, 8, 9]
    assert lines_of(res.records) == [b"8\n", b"9\n", b"10\n"]
    assert res.gaps == []
    res = client.attach("j3", from_seq=10)
    assert res.records == [] and res.end is not None


def test_exec_same_id_twice(client):
    req = client.exec_start(cmd="echo hi; sleep 0.5; echo bye", id="same", follow=False)
    first = client.recv_req(req)
    assert first["existing"] is False
    res = client.exec_run(cmd="echo SHOULD NOT RUN", id="same")
    assert res.started["existing"] is True
    assert res.started["pid"] == first["pid"]
    assert res.stdout == b"hi\nbye\n"
    # After it ended, a retry still sees the whole run.
    res2 = client.exec_run(cmd="echo SHOULD NOT RUN", id="same")
    assert res2.started["existing"] is True and res2.started["pid"] == first["pid"]
    assert res2.stdout == b"hi\nbye\n" and res2.end["status"] == "completed"
    assert client.info()["started_total"] == 1


def test_reconnect_resume_no_gap(boxd):
    c1 = boxd.client()
    req = c1.exec_start(cmd=NUMBERED % (200, "0.01"), id="resume")
    last = -1
    while last < 50:
        m = c1.recv_req(req, timeout=T(5))
        if m["type"] == "output":
            for rec in m["lines"]:
                assert rec[0] == last + 1
                last = rec[0]
    c1.close()
    time.sleep(0.3)  # the run keeps producing while nobody is attached
    c2 = boxd.client()
    res = c2.attach("resume", from_seq=last + 1, timeout=T(20))
    assert res.started["ended"] is False
    seqs = [r[0] for r in res.records]
    assert seqs == list(range(last + 1, 200))
    assert lines_of(res.records) == expect_lines(200)[last + 1:]
    assert res.end["status"] == "completed" and res.end["next_seq"] == 200


def test_two_followers(boxd):
    a, b = boxd.client(), boxd.client()
    req = a.exec_start(cmd=NUMBERED % (50, "0.01"), id="two")
    assert a.recv_req(req)["type"] == "started"
    rb = b.attach("two", from_seq=0, timeout=T(10))
    ra = a.collect(req, timeout=T(10))
    assert lines_of(ra.records) == expect_lines(50)
    assert lines_of(rb.records) == expect_lines(50)
    assert [r[0] for r in rb.records] == list(range(50))
    assert ra.end["next_seq"] == rb.end["next_seq"] == 50


def test_wait_returns_only_end(boxd, client):
    req = client.exec_start(cmd=NUMBERED % (20, "0.01"), id="w1", follow=False)
    assert client.recv_req(req)["type"] == "started"
    other = boxd.client()
    other.send({"type": "wait", "req": "W", "id": "w1", "output": True})
    got = []
    while True:
        m = other.recv(timeout=T(10))
        got.append(m)
        if m["type"] == "end":
            break
    assert [m["type"] for m in got] == ["end"]
    assert got[0]["req"] == "W" and got[0]["status"] == "completed"
    assert got[0]["stdout"] == "".join("line %d\n" % i for i in range(20))
    # At once for an ended run.
    t0 = time.monotonic()
    assert other.wait("w1")["type"] == "end"
    assert time.monotonic() - t0 < 0.5


def test_detach(boxd, client):
    req = client.exec_start(cmd=NUMBERED % (100, "0.01"), id="d1")
    assert client.recv_req(req)["type"] == "started"
    time.sleep(0.2)
    r = client.request("detach", id="d1")
    assert r["type"] == "ok" and r["id"] == "d1", r
    client.drain(0.1)
    time.sleep(0.3)
    leftovers = [m for m in client.drain(0.1) if m.get("req") == req]
    assert leftovers == [], leftovers
    w = client.wait("d1", timeout=T(10))
    assert w["status"] == "completed"
    assert [m for m in client.drain(0.1) if m.get("req") == req] == []


def test_reattach_replaces_subscription(client):
    client.exec_start(cmd=NUMBERED % (30, "0.02"), id="rep", follow=False)
    client.recv_match(lambda m: m["type"] == "started")
    first = client.next_req()
    client.send({"type": "attach", "req": first, "id": "rep"})
    time.sleep(0.15)
    res = client.attach("rep", from_seq=0, timeout=T(10))
    assert lines_of(res.records) == expect_lines(30)
    # The first subscription was replaced: it got no end, and nothing after the second attach.
    firsts = [m for m in client.drain(0.3) if m.get("req") == first]
    assert all(m["type"] != "end" for m in firsts), firsts


def test_logs_paging(client):
    client.exec_run("seq 1 95; echo err >&2", id="lg")
    recs, pages = client.all_logs("lg", page=10)
    assert [r[0] for r in recs] == list(range(96))
    assert lines_of(recs) == [b"%d\n" % i for i in range(1, 96)] + [b"err\n"]
    assert recs[-1][2] == 2
    assert len(pages) == 10
    for p in pages[:-1]:
        assert len(p["lines"]) == 10 and p["more"] is True
        assert p["next_seq"] == p["lines"][-1][0] + 1
    last = pages[-1]
    assert last["more"] is False and last["next_seq"] == 96 and last["ended"] is True
    for p in pages:
        assert p["first_seq"] == 0 and p["dropped_records"] == 0 and p["dropped_bytes"] == 0
        assert p["id"] == "lg"


def test_logs_max_bytes(client):
    client.exec_run("for i in $(seq 1 20); do echo 0123456789abcdef; done", id="lb")
    recs, pages = client.all_logs("lb", max_bytes=40)
    assert len(recs) == 20
    for p in pages:
        assert 1 <= len(p["lines"]) <= 3, p  # 17 bytes per record; a page holds at least one


def test_logs_while_running(client):
    req = client.exec_start(cmd="echo first; sleep 0.5; echo second", id="lr", follow=False)
    client.recv_req(req)
    time.sleep(0.2)
    p = client.logs("lr")
    assert p["ended"] is False and p["more"] is False
    assert [l[3] for l in p["lines"]] == ["first\n"] and p["next_seq"] == 1
    client.wait("lr")
    p = client.logs("lr", from_seq=1)
    assert [l[3] for l in p["lines"]] == ["second\n"] and p["ended"] is True


def test_run_outlives_connection(boxd):
    c1 = boxd.client()
    req = c1.exec_start(cmd="sleep 0.5; echo done", id="outlive")
    assert c1.recv_req(req)["type"] == "started"
    c1.close()
    c2 = boxd.client()
    w = c2.wait("outlive", output=True, timeout=T(5))
    assert w["status"] == "completed" and w["result"] == "done"


def test_list(client):
    client.exec_run("exit 3", id="l-ended")
    req = client.exec_start(argv=["sleep", "10"], id="l-run", follow=False)
    s = client.recv_req(req)
    runs = {r["id"]: r for r in client.list()["runs"]}
    assert set(runs) == {"l-ended", "l-run"}
    e, r = runs["l-ended"], runs["l-run"]
    assert e["state"] == "ended" and e["status"] == "failed" and e["exit_code"] == 3
    assert e["reason"] == "exit" and e["cmd"] == "exit 3" and e["lingering"] is False
    assert isinstance(e["ended_ns"], int) and e["next_seq"] == 0 and e["late_bytes"] == 0
    assert r["state"] == "running" and r["pid"] == s["pid"] and r["argv"] == ["sleep", "10"]
    assert isinstance(r["started_ns"], int)
    client.cancel("l-run", grace_ms=100)
    client.wait("l-run")
    assert {r["id"]: r for r in client.list()["runs"]}["l-run"]["status"] == "cancelled"


def test_generated_ids(client):
    ids = [client.exec_run("true").started["id"] for _ in range(3)]
    assert ids == ["r1", "r2", "r3"]


# ---- retention and eviction (need daemon options) ------------------------------------------------

def log_opt():
    opt = boxd_option("--log-bytes", "--log-cap", "--max-log-bytes", "--log-limit")
    if opt is None:
        pytest.skip("boxd --help shows no option for the per-run log cap")
    return opt


def run_retained(c, cap, n, id_):
    """Runs seq 1 n unfollowed and checks the retention counters; returns the end."""
    req = c.exec_start(cmd="seq 1 %d" % n, id=id_, follow=False)
    c.recv_req(req)
    w = c.wait(id_, timeout=T(10))
    total = sum(len(b"%d\n" % i) for i in range(1, n + 1))
    assert w["next_seq"] == n
    assert w["first_seq"] > 0 and w["dropped_records"] == w["first_seq"]
    assert w["dropped_bytes"] == sum(len(b"%d\n" % i) for i in range(1, w["first_seq"] + 1))
    retained = total - w["dropped_bytes"]
    assert retained <= cap, "retained %d bytes with a cap of %d" % (retained, cap)
    assert retained > 0
    return w


def test_log_retention_gap(start_boxd):
    cap = 65536
    # The counts below take one record per line: a long flush delay keeps a line that seq's 4 KiB
    # writes cut in two from going out as two pieces when the machine is slow (4.2).
    d = start_boxd(log_opt(), str(cap), "--flush-ms", "2000")
    c = d.client()
    assert c.hello_reply["limits"]["log_bytes"] == cap
    n = 100000
    w = run_retained(c, cap, n, "ret")
    res = c.attach("ret", from_seq=0)
    assert res.started["first_seq"] == w["first_seq"]
    assert len(res.gaps) == 1
    g = res.gaps[0]
    assert g["from_seq"] == 0 and g["to_seq"] == w["first_seq"] and g["id"] == "ret"
    kinds = [m["type"] for _, m in res.events]
    assert kinds.index("gap") < kinds.index("output")
    assert [r[0] for r in res.records] == list(range(w["first_seq"], n))
    assert lines_of(res.records) == [b"%d\n" % i for i in range(w["first_seq"] + 1, n + 1)]
    assert res.end["dropped_records"] == w["dropped_records"]
    # No gap when attaching from a retained seq.
    assert c.attach("ret", from_seq=w["first_seq"]).gaps == []
    p = c.logs("ret", from_seq=0)
    assert p["first_seq"] == w["first_seq"] and p["lines"][0][0] == w["first_seq"]
    assert p["dropped_records"] == w["dropped_records"]
    assert p["dropped_bytes"] == w["dropped_bytes"]
    run = {r["id"]: r for r in c.list()["runs"]}["ret"]
    assert run["next_seq"] == n


def test_log_cap_small(start_boxd):
    # A cap smaller than the agent's internal chunk size must still be a cap.
    d = start_boxd(log_opt(), "4096", "--flush-ms", "2000")  # one record per line, as above
    c = d.client()
    assert c.hello_reply["limits"]["log_bytes"] == 4096
    run_retained(c, 4096, 10000, "small")


def test_max_finished_eviction(start_boxd):
    opt = boxd_option("--max-finished", "--keep-finished", "--finished")
    if opt is None:
        pytest.skip("boxd --help shows no option for max_finished")
    d = start_boxd(opt, "3")
    c = d.client()
    assert c.hello_reply["limits"]["max_finished"] == 3
    for i in range(5):
        assert c.exec_run("echo %d" % i, id="f%d" % i).end["status"] == "completed"
    ids = [r["id"] for r in c.list()["runs"]]
    assert sorted(ids) == ["f2", "f3", "f4"]
    for gone in ("f0", "f1"):
        for typ in ("wait", "logs", "attach"):
            r = c.request(typ, id=gone)
            assert r["type"] == "error" and r["code"] == "not_found", r
    assert c.wait("f2")["status"] == "completed"
    # A forgotten id can be used again for a new run.
    assert c.exec_run("echo again", id="f0").started["existing"] is False
