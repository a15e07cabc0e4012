"""File requests (PROTOCOL.md section 12) against the real daemon over its socket.

Covers: uploads (atomic, sha256 checked against sha256sum, a corrupted checksum refused leaving
nothing, resume after a dropped connection), downloads (streamed, ranges, flow control with a
reader that does not read), stat/list/mkdir/remove/rename/chmod and their typed errors, acting
as the runs' user (files owned by it, permission denied, symlink and /proc attacks, FIFOs and
devices refused, the loop thread's credentials unchanged), ENOSPC on a small tmpfs mounted in a
private mount namespace, a run reading a file while it is replaced, and 1 GiB both ways with
ping p99 and boxd's RSS bounded (FILES_BIG_MB sizes it; default 1024).
"""

import hashlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest

import conftest
import files_client as fc
from conftest import T, wait_for

NOBODY = pwd.getpwnam("nobody")
# ASan's quarantine holds freed memory: RSS says nothing about boxd's bounds there.
RSS_MEANINGFUL = os.environ.get("BOXD_SANITIZED") != "1"


@pytest.fixture
def tdir():
    d = tempfile.mkdtemp(prefix="boxd-files-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def sha256sum(path):
    out = subprocess.run(["sha256sum", path], check=True, capture_output=True, text=True).stdout
    return out.split()[0]


def main_thread_creds(pid):
    """The Uid, Gid and Groups lines of the main (loop) thread's status."""
    st = conftest.proc_status(pid)
    return st["Uid"], st["Gid"], st.get("Groups", "")


def test_hello_advertises_files(client):
    h = client.hello_reply
    assert "files" in h["capabilities"]
    for k in ("file_chunk", "file_window", "max_uploads", "upload_ttl_ms", "max_downloads",
              "list_max", "file_depth", "file_workers"):
        assert isinstance(h["limits"][k], int) and h["limits"][k] > 0, k


def test_upload_download_sha256_matches_sha256sum(client, tdir):
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = os.path.join(tdir, "sub", "a.bin")
    w = fc.upload(client, path, data, mkdir=True, mode=0o640)
    assert w["size"] == len(data)
    assert w["sha256"] == sha256sum(path) == hashlib.sha256(data).hexdigest()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    info, got, end = fc.download(client, path)
    assert got == data and info["size"] == len(data)
    assert end["sha256"] == w["sha256"] and end["bytes"] == len(data)
    # A range: no sha256 (it would not be the file's).
    info, got, end = fc.download(client, path, offset=1000, length=5000)
    assert got == data[1000:6000] and "sha256" not in end
    # An empty file.
    w = fc.upload(client, os.path.join(tdir, "empty"), b"")
    assert w["size"] == 0 and os.path.getsize(os.path.join(tdir, "empty")) == 0
    # No temp file is left beside them.
    assert sorted(os.listdir(os.path.join(tdir, "sub"))) == ["a.bin"]


def test_sha256_known_vectors(client, tdir):
    for data, want in [(b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
                       (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
                       (b"a" * 1000000, hashlib.sha256(b"a" * 1000000).hexdigest())]:
        p = os.path.join(tdir, "v")
        w = fc.upload(client, p, data, sha256=want)
        assert w["sha256"] == want == sha256sum(p)


def test_corrupted_checksum_is_refused_and_leaves_nothing(client, tdir):
    path = os.path.join(tdir, "x.bin")
    with pytest.raises(fc.FileError) as ei:
        fc.upload(client, path, os.urandom(1 << 20), sha256="0" * 64)
    assert ei.value.code == "checksum_mismatch"
    assert os.listdir(tdir) == []
    # An existing file is left as it was.
    with open(path, "wb") as f:
        f.write(b"old")
    with pytest.raises(fc.FileError):
        fc.upload(client, path, b"new", sha256="1" * 64)
    assert open(path, "rb").read() == b"old" and os.listdir(tdir) == ["x.bin"]


def test_overwrite_false_and_typed_errors(client, tdir):
    p = os.path.join(tdir, "f")
    fc.upload(client, p, b"one")
    with pytest.raises(fc.FileError) as ei:
        fc.upload(client, p, b"two", overwrite=False)
    assert ei.value.code == "exists"
    assert open(p, "rb").read() == b"one"
    os.mkdir(os.path.join(tdir, "d"))
    cases = [
        ("file_write", dict(path=os.path.join(tdir, "d")), "is_a_directory"),
        ("file_write", dict(path=os.path.join(tdir, "f", "x")), "not_a_directory"),
        ("file_write", dict(path=os.path.join(tdir, "nope", "x")), "not_found"),
        ("file_read", dict(path=os.path.join(tdir, "d")), "is_a_directory"),
        ("file_read", dict(path=os.path.join(tdir, "missing")), "not_found"),
        ("file_list", dict(path=p), "not_a_directory"),
        ("file_stat", dict(path=os.path.join(tdir, "missing")), "not_found"),
        ("file_mkdir", dict(path=os.path.join(tdir, "d")), "exists"),
        ("file_mkdir", dict(path=os.path.join(tdir, "a", "b")), "not_found"),
        ("file_remove", dict(path=os.path.join(tdir, "missing")), "not_found"),
        ("file_rename", dict(**{"from": p, "to": os.path.join(tdir, "d")}), "exists"),
        ("file_write", dict(path="relative/path"), "bad_request"),
        ("file_chmod", dict(path=p), "bad_request"),
    ]
    for t, kw, code in cases:
        r = client.request(t, **kw)
        assert r["type"] == "error" and r["code"] == code, (t, kw, r)
        assert r["message"], r
    fc.upload(client, os.path.join(tdir, "d", "inner"), b"x")
    r = client.request("file_remove", path=os.path.join(tdir, "d"))
    assert r["code"] == "exists", r  # not empty without recursive


def test_stat_list_mkdir_rename_chmod_remove(client, tdir):
    fc.op(client, "file_mkdir", path=os.path.join(tdir, "a", "b", "c"), parents=True, mode=0o750)
    assert stat.S_IMODE(os.stat(os.path.join(tdir, "a", "b", "c")).st_mode) == 0o750
    fc.op(client, "file_mkdir", path=os.path.join(tdir, "a", "b", "c"), parents=True)  # -p: ok
    fc.upload(client, os.path.join(tdir, "a", "b", "f.txt"), b"hello")
    os.symlink("../nowhere", os.path.join(tdir, "a", "dangling"))
    st = fc.op(client, "file_stat", path=os.path.join(tdir, "a", "dangling"))["entry"]
    assert st["kind"] == "symlink" and st["target"] == "../nowhere"  # lstat semantics
    top = fc.op(client, "file_list", path=os.path.join(tdir, "a"))
    assert sorted(e["name"] for e in top["entries"]) == ["b", "dangling"]
    deep = fc.op(client, "file_list", path=os.path.join(tdir, "a"), depth=3)
    names = {e["name"]: e for e in deep["entries"]}
    assert set(names) == {"b", "b/c", "b/f.txt", "dangling"}, names
    assert names["b/f.txt"]["size"] == 5 and names["b/c"]["kind"] == "dir"
    assert deep["truncated"] is False
    fc.op(client, "file_rename", **{"from": os.path.join(tdir, "a", "b", "f.txt"),
                                   "to": os.path.join(tdir, "g.txt")})
    assert open(os.path.join(tdir, "g.txt")).read() == "hello"
    fc.op(client, "file_chmod", path=os.path.join(tdir, "g.txt"), mode=0o755)
    assert stat.S_IMODE(os.stat(os.path.join(tdir, "g.txt")).st_mode) == 0o755
    fc.op(client, "file_remove", path=os.path.join(tdir, "a"), recursive=True)
    assert os.listdir(tdir) == ["g.txt"]


def test_resume_after_dropped_connection(boxd, tdir):
    data = os.urandom(5 * 1024 * 1024 + 3)
    path = os.path.join(tdir, "r.bin")
    c1 = boxd.client()
    ack = fc.upload_open(c1, path, sha256=hashlib.sha256(data).hexdigest(), upload_id="resume-1")
    assert ack["upload_id"] == "resume-1" and ack["offset"] == 0
    half = 2 * 1024 * 1024
    for i, piece in enumerate(fc.chunks_of(data[:half])):
        r = c1.request("file_data", upload_id="resume-1", offset=i * fc.CHUNK, data=piece)
        assert r["type"] == "file_ack", r
    c1.close()  # the connection drops mid-upload
    assert not os.path.exists(path)
    c2 = boxd.client()
    ack = fc.upload_open(c2, path, upload_id="resume-1")
    assert ack["offset"] == half
    w = fc.upload_stream(c2, "resume-1", fc.chunks_of(data[half:]), offset=half)
    assert w["sha256"] == sha256sum(path) and open(path, "rb").read() == data
    # A wrong offset says where to continue; an unknown upload is not_found.
    r = c2.request("file_data", upload_id="resume-1", offset=0, data=b"x")
    assert r["code"] == "not_found", r
    fc.upload_open(c2, os.path.join(tdir, "s"), upload_id="off-1")
    r = c2.request("file_data", upload_id="off-1", offset=7, data=b"x")
    assert r["code"] == "bad_request" and "offset 0" in r["message"], r
    assert c2.request("file_abort", upload_id="off-1")["type"] == "ok"
    assert wait_for(lambda: os.listdir(tdir) == ["r.bin"], T(5)), os.listdir(tdir)


def test_boxd_user_owns_what_it_writes_and_loop_creds_unchanged(start_boxd, tdir):
    d = start_boxd("--user", "nobody")
    c = d.client()
    os.chown(tdir, NOBODY.pw_uid, NOBODY.pw_gid)
    before = main_thread_creds(d.pid)
    w = fc.upload(c, os.path.join(tdir, "mine"), b"data")
    st = os.stat(os.path.join(tdir, "mine"))
    assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid), st
    fc.op(c, "file_mkdir", path=os.path.join(tdir, "dir"))
    assert os.stat(os.path.join(tdir, "dir")).st_uid == NOBODY.pw_uid
    # The I/O threads switched; the loop thread never did.
    assert main_thread_creds(d.pid) == before
    assert before[0].split() == ["0", "0", "0", "0"], before
    fsuids = set()
    for tid in os.listdir("/proc/%d/task" % d.pid):
        with open("/proc/%d/task/%s/status" % (d.pid, tid)) as f:
            for line in f:
                if line.startswith("Uid:"):
                    fsuids.add(int(line.split()[4]))
    assert NOBODY.pw_uid in fsuids, fsuids
    assert w["size"] == 4


def test_permission_denied_and_attacks_as_box_user(start_boxd, tdir):
    d = start_boxd("--user", "nobody")
    c = d.client()
    os.chown(tdir, NOBODY.pw_uid, NOBODY.pw_gid)
    secret = os.path.join(tempfile.mkdtemp(prefix="boxd-secret-", dir="/tmp"), "secret")
    try:
        with open(secret, "w") as f:
            f.write("root only")
        os.chmod(secret, 0o600)
        os.chmod(os.path.dirname(secret), 0o755)
        # Plain permission denied: reading root's file, writing into a root directory.
        for t, kw in [("file_read", dict(path=secret)),
                      ("file_write", dict(path=os.path.join(os.path.dirname(secret), "x"))),
                      ("file_remove", dict(path=secret)),
                      ("file_chmod", dict(path=secret, mode=0o644))]:
            r = c.request(t, **kw)
            assert r["code"] == "permission_denied", (t, r)
        # The box user points its paths at root's: symlinks give it nothing more.
        run = lambda cmd: c.exec_run(cmd, timeout=T(10))  # noqa: E731
        end = run("ln -s %s %s/link && ln -s /etc %s/etc && ln -s /proc/self/environ %s/env && "
                  "ln -s /proc/1/root %s/root && mkfifo %s/fifo" % ((secret,) + (tdir,) * 5))
        assert end.end["status"] == "completed", end.end
        r = c.request("file_read", path=tdir + "/link")
        assert r["code"] == "permission_denied", r
        r = c.request("file_write", path=tdir + "/etc/boxd-planted")
        assert r["code"] == "permission_denied", r
        assert not os.path.exists("/etc/boxd-planted")
        for p in ("/env", "/root/etc/hostname", "/fifo"):
            t0 = time.monotonic()
            r = c.request("file_read", path=tdir + p, timeout=T(5))
            assert r["code"] in ("refused", "permission_denied"), (p, r)
            assert time.monotonic() - t0 < T(2), p  # never waits on a FIFO's writer
        for p in ("/proc/self/status", "/sys/kernel/mm/transparent_hugepage/enabled",
                  "/dev/zero", "/dev/null"):
            r = c.request("file_read", path=p)
            assert r["code"] == "refused", (p, r)
        # An upload landing on a planted symlink replaces the link, never writes its target.
        fc.upload(c, tdir + "/link", b"replaced")
        assert open(secret).read() == "root only"
        assert not os.path.islink(tdir + "/link") and open(tdir + "/link").read() == "replaced"
        # Not atomic onto a FIFO: refused at once, not held.
        r = c.request("file_write", path=tdir + "/fifo", atomic=False, timeout=T(5))
        assert r["code"] == "refused", r
        # The daemon still answers at once.
        assert c.ping()["type"] == "pong"
    finally:
        shutil.rmtree(os.path.dirname(secret), ignore_errors=True)


def test_request_user_follows_exec_policy(start_boxd, tdir):
    d = start_boxd("--user", "nobody")
    c = d.client()
    r = c.request("file_stat", path=tdir, user="root")
    assert r["code"] == "denied", r
    d2 = start_boxd("--user", "nobody", "--allow-request-user", "root")
    c2 = d2.client()
    assert c2.request("file_stat", path=tdir, user="root")["type"] == "file_stat"
    r = c2.request("file_stat", path=tdir, user="no-such-user-x")
    assert r["code"] == "denied", r


def test_run_end_during_uploads_reaches_its_reader(client, tdir):
    # The run ends while uploads on the same connection wait for their acks: its output and
    # end must stay for collect(). (The test client once dropped them, and CI timed out.)
    path = os.path.join(tdir, "f")
    req = client.exec_start(cmd="echo done")
    for _ in range(5):
        fc.upload(client, path, b"x" * (1 << 20))
    res = client.collect(req, timeout=T(10))
    assert res.stdout.strip() in ("done", b"done"), res


def test_reader_sees_old_or_new_never_half(client, tdir):
    path = os.path.join(tdir, "swap")
    a = b"a" * 4095 + b"\n"
    b = b"b" * 4095 + b"\n"
    fc.upload(client, path, a * 256)
    req = client.exec_start(cmd="n=0; while [ $n -lt 300 ]; do sort -u %s | wc -l; "
                                "n=$((n+1)); done" % path)
    for i in range(40):
        fc.upload(client, path, (b if i % 2 == 0 else a) * 256)
    res = client.collect(req, timeout=T(60))
    counts = [x if isinstance(x, str) else x.decode() for x in res.stdout.split()]
    assert len(counts) == 300 and set(counts) == {"1"}, counts[:20]


def test_slow_reader_pauses_disk_reads_memory_bounded(boxd, tdir):
    path = os.path.join(tdir, "big")
    with open(path, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    c = boxd.client()
    rss0 = boxd.counts()[1]
    c.send({"type": "file_read", "req": 99, "path": path})
    time.sleep(T(1.5))  # the client reads nothing meanwhile
    rss = boxd.counts()[1]
    assert rss - rss0 < 16 * 1024 or not RSS_MEANINGFUL, (rss0, rss)
    # It then reads everything.
    got = 0
    while True:
        m = c.recv_req(99, T(30))
        if m["type"] == "file_end":
            break
        if m["type"] == "file_chunk":
            got += len(m["data"])
    assert got == 256 * 1024 * 1024


def test_enospc_clear_error_no_partial_file(start_boxd, monkeypatch, tdir):
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is missing")
    mnt = os.path.join(tdir, "small")
    os.mkdir(mnt)
    wrapper = os.path.join(tdir, "boxd-in-mntns.sh")
    with open(wrapper, "w") as f:
        # A private mount namespace: the tmpfs exists only for this boxd.
        f.write("#!/bin/sh\nexec unshare -m --propagation private sh -c "
                "'mount -t tmpfs -o size=2m boxd-test %s && exec \"$0\" \"$@\"' %s \"$@\"\n"
                % (mnt, conftest.BOXD_BIN))
    os.chmod(wrapper, 0o755)
    monkeypatch.setattr(conftest, "BOXD_BIN", wrapper)
    d = start_boxd()
    c = d.client()
    fc.upload(c, mnt + "/small", b"fits")
    with pytest.raises(fc.FileError) as ei:
        fc.upload(c, mnt + "/big", os.urandom(4 * 1024 * 1024))
    assert ei.value.code == "no_space" and "free space" in ei.value.reply["message"]
    lst = fc.op(c, "file_list", path=mnt)
    assert [e["name"] for e in lst["entries"]] == ["small"], lst  # no partial, no temp file
    assert os.listdir(mnt) == []  # the host's view: nothing was mounted here


def test_fd_counts_unchanged_after_file_ops(boxd, tdir):
    c = boxd.client()
    fc.upload(c, tdir + "/warm", b"x")
    fc.download(c, tdir + "/warm")
    time.sleep(0.2)
    fds0 = boxd.counts()[0]
    for i in range(50):
        fc.upload(c, "%s/f%d" % (tdir, i), os.urandom(1000))
        fc.download(c, "%s/f%d" % (tdir, i))
        fc.op(c, "file_stat", path="%s/f%d" % (tdir, i))
        c.request("file_read", path=tdir + "/missing")
    fc.op(c, "file_list", path=tdir)
    fc.op(c, "file_remove", path=tdir + "/f0")
    c.close()
    assert wait_for(lambda: boxd.counts()[0] == fds0 - 1 or boxd.counts()[0] == fds0, T(5)), \
        (fds0, boxd.counts())


PINGER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import boxd_client
c = boxd_client.connect(sys.argv[1], hello=True)
lat = []
while True:
    t0 = time.perf_counter()
    c.ping(timeout=30)
    lat.append(time.perf_counter() - t0)
    try:
        open(sys.argv[3]).close()
        break
    except FileNotFoundError:
        pass
    time.sleep(0.005)
print(" ".join("%.6f" % x for x in lat))
"""


def start_pinger(sock, stopfile):
    """A pinger in a process of its own, so the test's own work (hashing, packing) cannot
    delay its pings."""
    return subprocess.Popen(["/usr/bin/python3", "-c", PINGER, sock,
                             os.path.dirname(os.path.abspath(__file__)), stopfile],
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.serial
def test_big_file_both_ways_ping_and_rss(boxd, tdir):
    mb = int(os.environ.get("FILES_BIG_MB", "1024"))
    block = os.urandom(1024 * 1024)
    size = mb * 1024 * 1024
    want = hashlib.sha256()
    for _ in range(mb):
        want.update(block)
    path = os.path.join(tdir, "big.bin")
    c = boxd.client()
    rss0 = boxd.counts()[1]
    peak = [rss0]
    # The same pinger with nothing else going on: what this (shared) machine gives at best.
    idle_stop = os.path.join(tdir, "stop-idle")
    idle = start_pinger(boxd.sock, idle_stop)
    time.sleep(T(3))
    open(idle_stop, "w").close()
    idle_lat = sorted(float(x) for x in idle.communicate(timeout=T(30))[0].split())
    idle_p99 = idle_lat[int(len(idle_lat) * 0.99) - 1]
    stopfile = os.path.join(tdir, "stop-pinging")
    pinger = start_pinger(boxd.sock, stopfile)
    sampler_stop = threading.Event()

    def sample():
        while not sampler_stop.is_set():
            peak[0] = max(peak[0], boxd.counts()[1])
            time.sleep(0.05)
    sampler = threading.Thread(target=sample)
    sampler.start()
    # The client moving the bytes is this test's own thread, on the same 2 CPUs as boxd: at
    # nice 0 it takes the CPU boxd's loop needs and the figure measures the scheduler, not
    # boxd. In production the client is on the host. So it runs at nice 10 (Linux: this thread
    # only); boxd's loop stays at 0, its I/O threads at +5, the pinger at 0.
    old_nice = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, 10)
    try:
        ack = fc.upload_open(c, path, sha256=want.hexdigest())
        w = fc.upload_stream(c, ack["upload_id"],
                             (block[i:i + fc.CHUNK] for _ in range(mb)
                              for i in range(0, len(block), fc.CHUNK)), timeout=T(120))
        assert w["size"] == size and w["sha256"] == want.hexdigest()
        got = hashlib.sha256()
        info, _, end = fc.download(c, path, timeout=T(120), sink=got.update)
        assert end["bytes"] == size and got.hexdigest() == want.hexdigest() == end["sha256"]
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, old_nice)
        open(stopfile, "w").close()
        sampler_stop.set()
        sampler.join()
        out, _ = pinger.communicate(timeout=T(30))
    lat = sorted(float(x) for x in out.split())
    p99 = lat[int(len(lat) * 0.99) - 1] if len(lat) >= 100 else lat[-1]
    print("big file: %d MiB, %d pings, p99 %.2f ms (idle p99 %.2f ms), RSS %d -> peak %d kB"
          % (mb, len(lat), p99 * 1000, idle_p99 * 1000, rss0, peak[0]))
    assert len(lat) >= 20
    # 5 ms is the target; on a machine whose idle p99 is already over 2.5 ms (shared CPUs), the
    # bound is twice the idle p99 measured just before, so what is held is boxd's share.
    # Under TSan the four I/O threads hash and copy 5-15x slower and take both CPUs from the
    # loop, so the figure is the scheduler's; that pass looks for races, the others for latency.
    bound = max(0.005, 2 * idle_p99) * conftest.SLOW
    assert p99 < bound or os.environ.get("BOXD_TSAN") == "1", "ping p99 %.2f ms during the transfer (idle %.2f ms)" % (
        p99 * 1000, idle_p99 * 1000)
    assert peak[0] - rss0 <= 16 * 1024 or not RSS_MEANINGFUL, (rss0, peak[0])


def test_watch_recursive_with_seq_and_overflow(boxd, tdir):
    c = boxd.client()
    os.makedirs(tdir + "/a/b")
    r = c.request("file_watch", path=tdir, recursive=True)
    assert r["type"] == "file_watching" and r["dirs"] == 3, r
    wid = r["watch"]
    with open(tdir + "/a/b/new.txt", "w") as f:
        f.write("x")
    os.mkdir(tdir + "/c")
    time.sleep(0.3)  # the new directory's watch is added by an I/O thread
    with open(tdir + "/c/inner", "w") as f:
        f.write("y")
    seen = []
    deadline = time.monotonic() + T(5)
    while time.monotonic() < deadline and not any(e.get("name") == "c/inner" for e in seen):
        try:
            m = c.recv(0.5)
        except Exception:
            continue
        if m["type"] == "file_event":
            seen.append(m)
    names = [(e["event"], e.get("name")) for e in seen]
    assert ("create", "a/b/new.txt") in names and ("create", "c") in names, names
    assert ("create", "c/inner") in names, names
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    # A reader that stops reading gets an explicit overflow, and boxd's memory stays bounded.
    req = c.next_req()
    for i in range(40000):
        open("%s/a/f%d" % (tdir, i % 500), "w").close()
    time.sleep(1)
    got_overflow = False
    deadline = time.monotonic() + T(20)
    while time.monotonic() < deadline and not got_overflow:
        try:
            m = c.recv(1)
        except Exception:
            break
        got_overflow = m.get("type") == "file_event" and m["event"] == "overflow"
    assert got_overflow
    assert c.request("file_unwatch", watch=wid, req=req)["type"] == "ok"
    assert c.request("file_unwatch", watch=wid)["code"] == "not_found"
