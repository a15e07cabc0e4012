"""Output records, encoding, flushing, draining and processes left behind (PROTOCOL.md 4.2-4.5)."""

import os
import random
import signal
import time

from conftest import T, marker, procs_with_env, read_stat, wait_for


def ok(res):
    assert res.error is None, res.error
    assert res.end is not None, res
    return res.end


def utf8_valid(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def check_records(res):
    """Seqs contiguous from first_seq, streams 1/2, data encoded per the spec, next_seq right."""
    seqs = [r[0] for r in res.records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True, seqs[:50]
    for raw in res.raw_records:
        assert raw[2] in (1, 2), raw
        assert len(raw) == 4
        data = raw[3]
        if isinstance(data, str):
            pass  # msgpack already checked it decodes as UTF-8
        else:
            assert isinstance(data, bytes), raw
            assert not utf8_valid(data), "valid UTF-8 sent as bin: %r" % data[:80]
        assert len(data) > 0, "empty record"
    if res.end is not None and seqs:
        assert res.end["next_seq"] == seqs[-1] + 1


def test_records_are_lines(client):
    res = client.exec_run("printf 'a\\nbb\\nccc\\n'")
    ok(res)
    check_records(res)
    assert [r[3] for r in res.records] == [b"a\n", b"bb\n", b"ccc\n"]
    assert [r[0] for r in res.records] == [0, 1, 2]


def test_interleaved_streams(client):
    cmd = "for i in 1 2 3 4 5; do echo out$i; sleep 0.05; echo err$i >&2; sleep 0.05; done"
    res = client.exec_run(cmd)
    ok(res)
    check_records(res)
    assert [r[0] for r in res.records] == list(range(10))
    assert [r[2] for r in res.records] == [1, 2] * 5
    expect = []
    for i in range(1, 6):
        expect += [b"out%d\n" % i, b"err%d\n" % i]
    assert [r[3] for r in res.records] == expect
    assert res.stdout == b"".join(b"out%d\n" % i for i in range(1, 6))
    assert res.stderr == b"".join(b"err%d\n" % i for i in range(1, 6))
    assert res.end["next_seq"] == 10


def test_one_mib_single_line(client, tmp_path):
    max_line = client.hello_reply["limits"]["max_line"]
    data = os.urandom(512 << 10).hex().encode() + b"\n"  # 1 MiB + 1
    f = tmp_path / "line"
    f.write_bytes(data)
    res = client.exec_run(argv=["cat", str(f)], output=False, timeout=T(30))
    ok(res)
    check_records(res)
    assert res.stdout == data
    assert all(len(r[3]) <= max_line for r in res.records)
    assert len(res.records) >= len(data) // max_line
    assert all(not r[3].endswith(b"\n") for r in res.records[:-1])
    assert res.records[-1][3].endswith(b"\n")


def test_max_line_cut_exact(client, tmp_path):
    max_line = client.hello_reply["limits"]["max_line"]
    data = b"x" * (3 * max_line + 10) + b"\n"
    f = tmp_path / "line"
    f.write_bytes(data)
    res = client.exec_run(argv=["cat", str(f)], output=False)
    ok(res)
    assert res.stdout == data
    # Written at once, so only the max_line cut applies: 3 full pieces and the rest.
    assert [len(r[3]) for r in res.records] == [max_line] * 3 + [11]


def test_binary_output(client, tmp_path):
    data = bytes(range(256)) * 64
    f = tmp_path / "bin"
    f.write_bytes(data)
    res = client.exec_run(argv=["cat", str(f)], output=False)
    ok(res)
    check_records(res)
    assert res.stdout == data
    assert any(isinstance(r[3], bytes) for r in res.raw_records)


def test_invalid_utf8_is_bin(client):
    res = client.exec_run("printf '\\377\\376abc\\n'; printf 'ok\\n'", output=False)
    ok(res)
    assert res.raw_records[0][3] == b"\xff\xfeabc\n"
    assert isinstance(res.raw_records[0][3], bytes)
    assert res.raw_records[1][3] == "ok\n"


def test_unicode_is_str(client):
    text = "héllo wörld ✓ 😀 日本語\n"
    res = client.exec_run(argv=["printf", "%s", text], output=True)
    ok(res)
    assert res.raw_records == [[0, res.raw_records[0][1], 1, text]]
    assert res.end["result"] == text[:-1]


def test_multibyte_cut_by_max_line(client, tmp_path):
    max_line = client.hello_reply["limits"]["max_line"]
    data = ("a" + "é" * max_line).encode() + b"\n"  # cuts land inside a 2-byte character
    f = tmp_path / "u"
    f.write_bytes(data)
    res = client.exec_run(argv=["cat", str(f)], output=False)
    ok(res)
    check_records(res)
    assert res.stdout == data


def test_binary_end_fields(client):
    end = ok(client.exec_run("printf '\\377x\\n'", output=True))
    assert end["stdout"] == b"\xffx\n"
    assert end["result"] == b"\xffx"


def test_partial_line_idle_flush(client):
    res = client.exec_run("printf 'prompt> '; sleep 1; echo done", timeout=T(10))
    end = ok(res)
    check_records(res)
    assert [r[3] for r in res.records] == [b"prompt> ", b"done\n"]
    prompt_ts = res.records[0][1]
    assert end["ended_ns"] - prompt_ts >= 700 * 10**6
    assert prompt_ts - end["started_ns"] <= T(400) * 10**6
    # ... and it reached the client well before the end did.
    t_prompt = next(t for t, m in res.events if m["type"] == "output")
    t_end = next(t for t, m in res.events if m["type"] == "end")
    assert t_end - t_prompt >= 0.6


def test_partial_line_at_end(client):
    res = client.exec_run("printf 'no newline'; printf 'err' >&2")
    end = ok(res)
    assert res.stdout == b"no newline" and res.stderr == b"err"
    assert end["result"] == "no newline"


def test_many_lines_batched(client):
    res = client.exec_run("seq 1 100000", output=False, timeout=T(60))
    ok(res)
    check_records(res)
    assert res.stdout == b"".join(b"%d\n" % i for i in range(1, 100001))
    # One record per line; a line may come as pieces if the writer paused mid-line for longer
    # than the flush delay (seq writes in blocks), but that is rare.
    assert 100000 <= len(res.records) <= 100000 + 1000
    whole = sum(1 for r in res.records if r[3].endswith(b"\n") and b"\n" not in r[3][:-1])
    pieces = sum(1 for r in res.records if not r[3].endswith(b"\n"))
    assert whole + pieces == len(res.records), "a record holds more than one line"
    n_events = len(res.output_events())
    assert n_events <= 2000, "100000 lines took %d output events" % n_events
    max_event = client.hello_reply["limits"]["max_event"]
    # Events respect max_event (re-encoding gives the size the agent sent, give or take ints).
    import msgpack
    for _, m in res.events:
        assert len(msgpack.packb(m, use_bin_type=True)) <= max_event


def test_ten_mib(client, tmp_path):
    rnd = random.Random(1)
    parts = []
    size = 0
    while size < (10 << 20):
        line = os.urandom(rnd.randint(0, 300)).hex().encode() + b"\n"
        parts.append(line)
        size += len(line)
    data = b"".join(parts)
    f = tmp_path / "big"
    f.write_bytes(data)
    res = client.exec_run(argv=["cat", str(f)], output=False, timeout=T(90))
    end = ok(res)
    check_records(res)
    assert res.records[0][0] == 0
    assert res.stdout == data
    assert end["status"] == "completed"


def test_random_binary_4mib(client, tmp_path):
    data = os.urandom(4 << 20)
    f = tmp_path / "rnd"
    f.write_bytes(data)
    res = client.exec_run("cat %s; cat %s >&2" % (f, f), output=False, timeout=T(60))
    ok(res)
    check_records(res)
    assert res.stdout == data
    assert res.stderr == data


def test_end_after_all_output(client):
    # Output written just before exit must all arrive, before the end.
    for _ in range(10):
        res = client.exec_run("seq 1 2000; seq 1 2000 >&2", output=False)
        ok(res)
        assert res.stdout == b"".join(b"%d\n" % i for i in range(1, 2001))
        assert res.stderr == res.stdout
        assert res.events[-1][1]["type"] == "end"


# ---- processes left behind -------------------------------------------------------------------

def test_background_process_holding_pipes(client):
    m = marker()
    t0 = time.monotonic()
    res = client.exec_run("sleep 30 & echo started", env={"BOXD_MARK": m}, timeout=T(10))
    elapsed = time.monotonic() - t0
    end = ok(res)
    assert end["status"] == "completed"
    assert end["result"] == "started"
    assert elapsed < T(2.0), "end took %.2f s with a background process" % elapsed
    pids = procs_with_env("BOXD_MARK", m)
    assert len(pids) == 1, pids
    bg = pids[0]
    assert read_stat(bg)[0] in "SR"
    run = {r["id"]: r for r in client.list()["runs"]}[res.id]
    assert run["state"] == "ended"
    assert run["lingering"] is True
    time.sleep(0.3)
    assert read_stat(bg)[0] in "SR", "background process died"
    os.kill(bg, signal.SIGKILL)

    def not_lingering():
        return not {r["id"]: r for r in client.list()["runs"]}[res.id]["lingering"]
    assert wait_for(not_lingering, T(2)), "run still lingering after its last writer died"


def test_late_writer_not_blocked_nor_killed(client, tmp_path):
    done = tmp_path / "writer-done"
    cmd = ("(sleep 0.5; for i in $(seq 1 50); do echo late $i; echo late err $i >&2; sleep 0.02;"
           " done; touch %s) & echo main" % done)
    t0 = time.monotonic()
    res = client.exec_run(cmd, timeout=T(10))
    end = ok(res)
    # Had the agent waited for the writer (which starts at 0.5 s), the end would come after 1.5 s.
    assert time.monotonic() - t0 < T(1.2)
    assert end["status"] == "completed"
    assert end["result"] == "main"
    assert wait_for(done.exists, T(5)), "the late writer did not finish (SIGPIPE or blocked?)"

    def settled():
        r = {r["id"]: r for r in client.list()["runs"]}[res.id]
        return r if not r["lingering"] else None
    run = wait_for(settled, T(3))
    assert run, "still lingering"
    late = sum(len(b"late %d\n" % i) + len(b"late err %d\n" % i) for i in range(1, 51))
    assert run["late_bytes"] == late
    # Late output is discarded: nothing more arrives for the run and next_seq did not move.
    assert [m for m in client.drain(0.2) if m.get("req") == res.started["req"]] == []
    w = client.wait(res.id)
    assert w["next_seq"] == end["next_seq"]


def test_late_bulk_writer(client, tmp_path):
    done = tmp_path / "bulk-done"
    cmd = "(sleep 0.3; head -c 3000000 /dev/zero; touch %s) & echo main" % done
    res = client.exec_run(cmd, timeout=T(10))
    assert ok(res)["result"] == "main"
    assert wait_for(done.exists, T(10)), "a late writer blocked on a full pipe"

    def late_bytes():
        r = {r["id"]: r for r in client.list()["runs"]}[res.id]
        return r["late_bytes"] >= 3000000 and not r["lingering"]
    assert wait_for(late_bytes, T(3))


# ---- flow control ------------------------------------------------------------------------------

def test_slow_follower_blocks_the_run_and_loses_nothing(boxd, client):
    total = 20 << 20
    rss0 = boxd.counts()[1]
    req = client.exec_start(cmd="head -c %d /dev/zero | tr '\\0' a; echo fin >&2" % total,
                            id="slow")
    time.sleep(T(1.5))  # not reading: the run must be held back instead of dropping
    other = boxd.client()
    run = {r["id"]: r for r in other.list()["runs"]}["slow"]
    assert run["state"] == "running", "the run was not held back by the slow follower"
    # Memory stays bounded (log_bytes + the connection's queue + slack) ...
    grown = boxd.counts()[1] - rss0
    assert grown < 48 * 1024, "boxd RSS grew by %d kB for one slow client" % grown
    # ... and other connections and runs are not affected.
    t0 = time.monotonic()
    assert other.exec_run("echo unaffected").end["result"] == "unaffected"
    assert time.monotonic() - t0 < T(1)
    res = client.collect(req, timeout=T(60))
    ok(res)
    assert res.records[0][0] == 0
    check_records(res)
    assert len(res.stdout) == total and res.stdout == b"a" * total
    assert res.stderr == b"fin\n"


def test_unfollowed_run_never_blocks(client):
    total = 20 << 20
    req = client.exec_start(cmd="head -c %d /dev/zero | tr '\\0' a; echo fin >&2" % total,
                            id="free", follow=False)
    assert client.recv_req(req)["type"] == "started"
    w = client.wait("free", timeout=T(20))
    assert w["type"] == "end" and w["status"] == "completed", w
    log_bytes = client.hello_reply["limits"]["log_bytes"]
    assert w["dropped_bytes"] > 0 and w["dropped_records"] > 0 and w["first_seq"] > 0
    recs, pages = client.all_logs("free")
    kept = sum(len(r[3]) for r in recs)
    assert kept <= log_bytes
    assert kept + w["dropped_bytes"] == total + 4
    assert recs[0][0] == w["first_seq"]
    # stderr's only record; stdout's last piece may be sent after it (flushed at the end).
    assert [r[3] for r in recs if r[2] == 2] == [b"fin\n"]


def test_closing_a_slow_follower_unblocks_the_run(boxd):
    c = boxd.client()
    c.exec_start(cmd="head -c %d /dev/zero | tr '\\0' a" % (40 << 20), id="blk")
    time.sleep(T(0.5))
    c.close()
    other = boxd.client()
    w = other.wait("blk", timeout=T(20))
    assert w["status"] == "completed", w
    assert w["dropped_bytes"] > 0


def test_output_truncated(client):
    max_event = client.hello_reply["limits"]["max_event"]
    n = max_event  # more than max_event / 4 on each stream
    res = client.exec_run("head -c %d /dev/zero | tr '\\0' a; head -c %d /dev/zero | tr '\\0' b >&2"
                          % (n, n), timeout=T(30))
    end = res.end
    assert end["output_truncated"] is True
    assert len(end["stdout"]) <= max_event // 4 and len(end["stderr"]) <= max_event // 4
    assert set(end["stdout"]) == {"a"} and set(end["stderr"]) == {"b"}
    assert len(res.stdout) == n and len(res.stderr) == n  # the stream itself is complete
    assert client.exec_run("echo small").end.get("output_truncated", False) is False
