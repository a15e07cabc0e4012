"""Trees both ways with boxctl cp (file_tree_read and file_tree_write, PROTOCOL.md 12.8) and with
the tree requests directly, and boxctl killed mid-upload then resumed.

The tree is a real node_modules (`npm install` of a few packages into a temporary directory,
when npm and the registry answer within 2 minutes), else a generated one, topped up to 10 000
files either way, with unicode names, spaces, relative, absolute and dangling symlinks,
executable bits and empty directories. It goes into the box and back with `boxctl cp -a`, and
is compared with `diff -r` and by lstat (mode, size, mtime, link targets)."""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import pytest

import conftest
import files_client as fc
from conftest import T, wait_for

RSS_MEANINGFUL = os.environ.get("BOXD_SANITIZED") != "1"

NPM_PACKAGES = ["lodash", "rxjs", "moment", "date-fns", "@babel/core"]


def make_tree(root, want=10000):
    """Returns how the tree was made ("npm" or "generated") and its file count."""
    how = "generated"
    if shutil.which("npm") and not os.environ.get("FILES_TREE_NO_NPM"):
        try:
            r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent",
                                "--prefix", root] + NPM_PACKAGES, timeout=120,
                               capture_output=True)
            if r.returncode == 0 and os.path.isdir(os.path.join(root, "node_modules")):
                how = "npm"
        except subprocess.TimeoutExpired:
            pass
    gen = os.path.join(root, "gen")
    os.makedirs(gen, exist_ok=True)
    n = sum(len(f) for _, _, f in os.walk(root))
    i = 0
    while n < want:
        d = os.path.join(gen, "d%03d" % (i // 100), "sub dir ü" if i % 3 == 0 else "s")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, "file %d ✓ é.txt" % i if i % 7 == 0 else "f%d.js" % i)
        with open(p, "wb") as f:
            f.write(hashlib.sha256(b"%d" % i).digest() * (1 + i % 40))
        if i % 11 == 0:
            os.chmod(p, 0o755)
        i += 1
        n += 1
    specials = os.path.join(root, "specials")
    os.makedirs(os.path.join(specials, "empty dir"), exist_ok=True)
    os.makedirs(os.path.join(specials, "empty", "nested"), exist_ok=True)
    os.symlink("../gen", os.path.join(specials, "relative link"))
    os.symlink("/etc/hostname", os.path.join(specials, "absolute"))
    os.symlink("does/not/exist", os.path.join(specials, "dangling"))
    with open(os.path.join(specials, "run.sh"), "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(os.path.join(specials, "run.sh"), 0o750)
    with open(os.path.join(specials, "日本語 name.txt"), "w") as f:
        f.write("unicode\n")
    return how, sum(len(f) for _, _, f in os.walk(root))


def lstat_map(root):
    out = {}
    for dp, dns, fns in os.walk(root):
        for name in dns + fns:
            p = os.path.join(dp, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def boxctl(sock, *args, timeout=300):
    return subprocess.run([conftest.BOXCTL_BIN, "-s", sock] + list(args), capture_output=True,
                          timeout=T(timeout))


def test_tree_round_trip(boxd):
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        src = os.path.join(work, "src")
        os.mkdir(src)
        how, n = make_tree(src)
        print("tree: %s, %d files" % (how, n))
        assert n >= 10000
        fds0 = boxd.counts()[0]
        t0 = time.monotonic()
        r = boxctl(boxd.sock, "cp", "-a", "--json", src, ":" + work + "/box")
        up_s = time.monotonic() - t0
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        res = json.loads(r.stdout)
        assert res["errors"] == [] and res["files"] >= 10000 - 10 and res["symlinks"] >= 3, res
        t0 = time.monotonic()
        r = boxctl(boxd.sock, "cp", "-a", "--json", ":" + work + "/box", work + "/back")
        down_s = time.monotonic() - t0
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        print("up %.2f s, down %.2f s" % (up_s, down_s))
        for a, b in ((src, work + "/box"), (src, work + "/back")):
            d = subprocess.run(["diff", "-r", "--no-dereference", a, b], capture_output=True)
            assert d.returncode == 0, d.stdout.decode()[-2000:]
            ma, mb = lstat_map(a), lstat_map(b)
            assert ma.keys() == mb.keys()
            bad = [k for k in ma if ma[k] != mb[k]]
            assert not bad, [(k, ma[k], mb[k]) for k in bad[:10]]
        assert wait_for(lambda: boxd.counts()[0] <= fds0, T(5)), (fds0, boxd.counts())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare_trees(a, b):
    d = subprocess.run(["diff", "-r", "--no-dereference", a, b], capture_output=True)
    assert d.returncode == 0, d.stdout.decode()[-2000:]
    ma, mb = lstat_map(a), lstat_map(b)
    assert ma.keys() == mb.keys(), sorted(set(ma) ^ set(mb))[:10]
    bad = [k for k in ma if ma[k] != mb[k]]
    assert not bad, [(k, ma[k], mb[k]) for k in bad[:10]]


def test_tree_requests_round_trip(boxd):
    """The 10 000-file tree up in one file_tree_write and down in one file_tree_read (the test
    client's helpers), compared with diff -r and lstat; boxd's RSS and fds come back."""
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        src = os.path.join(work, "src")
        os.mkdir(src)
        how, n = make_tree(src)
        assert n >= 10000
        fds0, rss0 = boxd.counts()[:2]
        c = boxd.client()
        t0 = time.monotonic()
        w = fc.tree_write(c, work + "/box", fc.local_entries(src), fsync=False)
        up_s = time.monotonic() - t0
        assert w["failed"] == 0 and w["errors"] == [] and w["files"] >= 10000, w
        assert w["symlinks"] >= 3, w
        t0 = time.monotonic()
        end, failed = fc.tree_download(c, work + "/box", work + "/back")
        down_s = time.monotonic() - t0
        assert failed == [] and end["failed"] == 0 and end["files"] == w["files"], (end, failed)
        print("tree requests (%s): up %.2f s, down %.2f s" % (how, up_s, down_s))
        compare_trees(src, work + "/box")
        compare_trees(src, work + "/back")
        assert [x for x in os.listdir(work + "/box") if ".boxd-" in x] == []
        c.close()
        assert wait_for(lambda: boxd.counts()[0] <= fds0, T(5)), (fds0, boxd.counts())
        assert boxd.counts()[1] - rss0 < 32 * 1024 or not RSS_MEANINGFUL, (rss0, boxd.counts())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_tree_read_by_a_reader_that_does_not_read_is_bounded(boxd):
    """A file_tree_read of 256 MiB whose client reads nothing: the walk pauses (RSS bounded,
    the disk is not read on), then it all comes when the client reads."""
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        for i in range(64):
            with open("%s/f%02d" % (work, i), "wb") as f:
                f.truncate(4 << 20)
        c = boxd.client()
        rss0 = boxd.counts()[1]
        c.send({"type": "file_tree_read", "req": 77, "path": work})
        time.sleep(T(1.5))
        rss = boxd.counts()[1]
        assert rss - rss0 < 16 * 1024 or not RSS_MEANINGFUL, (rss0, rss)
        got = 0
        while True:
            m = c.recv_req(77, T(60))
            if m["type"] == "file_tree_end":
                break
            assert m["type"] == "file_tree_entries", m
            got += sum(len(e.get("data", b"")) for e in m["entries"])
        assert got == 256 << 20 and m["bytes"] == got and m["files"] == 64, (got, m)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_tree_fifo_and_device_refused_and_reported(boxd):
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        os.mkdir(work + "/t")
        with open(work + "/t/ok", "w") as f:
            f.write("ok")
        os.mkfifo(work + "/t/fifo")
        has_dev = True
        try:
            os.mknod(work + "/t/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except OSError:
            has_dev = False  # not root, or no CAP_MKNOD
        c = boxd.client()
        ents, end = fc.tree_read(c, work + "/t")
        refused = {e["name"]: e for e in ents if "code" in e}
        want = {"fifo", "null"} if has_dev else {"fifo"}
        assert set(refused) == want and end["failed"] == len(want), ents
        assert all(e["code"] == "refused" and "refused" in e["message"] for e in refused.values())
        assert refused["fifo"]["kind"] == "fifo"
        assert end["files"] == 1
        # Up: a FIFO or device entry is refused per entry; the rest is written.
        w = fc.tree_write(c, work + "/up", [{"name": ".", "kind": "dir"},
                                            {"name": "p", "kind": "fifo"},
                                            {"name": "d", "kind": "char"},
                                            {"name": "f", "kind": "file", "data": b"x"}])
        assert [(e["name"], e["code"]) for e in w["errors"]] == [("p", "refused"),
                                                                   ("d", "refused")], w
        assert w["files"] == 1 and sorted(os.listdir(work + "/up")) == ["f"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_tree_caps_give_clear_errors(boxd):
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        deep = work + "/t/" + "/".join("d%d" % i for i in range(5))
        os.makedirs(deep)
        for i in range(10):
            with open("%s/t/f%d" % (work, i), "wb") as f:
                f.write(b"x" * 1000)
        c = boxd.client()
        lim = c.hello()["limits"]
        assert lim["tree_entries"] == 1000000 and lim["tree_depth"] == 64
        assert lim["tree_bytes"] == 64 << 30 and lim["max_trees"] == 16
        with pytest.raises(fc.FileError) as ei:
            fc.tree_read(c, work + "/t", max_entries=5)
        assert ei.value.code == "limit" and ei.value.reply["limit"] == "tree_entries"
        assert "max_entries" in ei.value.reply["message"]
        assert len(ei.value.entries) >= 1
        with pytest.raises(fc.FileError) as ei:
            fc.tree_read(c, work + "/t", max_bytes=2500)
        assert ei.value.reply["limit"] == "tree_bytes", ei.value.reply
        ents, end = fc.tree_read(c, work + "/t", max_depth=3)
        deep_errs = [e for e in ents if e.get("code") == "too_large"]
        assert [e["name"] for e in deep_errs] == ["d0/d1/d2"], ents
        assert "max_depth" in deep_errs[0]["message"]
        r = c.request("file_tree_read", path=work + "/t", max_entries=1 << 40)
        assert r["code"] == "bad_request" and "max_entries" in r["message"], r
        # Up: past max_entries the tree is dropped; past max_depth the entry is too_large.
        els = [{"name": "f%d" % i, "kind": "file", "data": b"y"} for i in range(8)]
        with pytest.raises(fc.FileError) as ei:
            fc.tree_write(c, work + "/up", els, max_entries=4)
        assert ei.value.reply["limit"] == "tree_entries", ei.value.reply
        w = fc.tree_write(c, work + "/up2", [{"name": "a", "kind": "dir"},
                                             {"name": "a/b", "kind": "dir"},
                                             {"name": "a/f", "kind": "file", "data": b"z"}],
                          max_depth=2)
        # a/b is a directory at max_depth: what it holds would be deeper.
        assert [(e["name"], e["code"]) for e in w["errors"]] == [("a/b", "too_large")], w
        assert os.listdir(work + "/up2/a") == ["f"]
        for bad_el, text in [({"name": "../x", "kind": "file"}, "relative path"),
                             ({"data": b"x"}, "continues a file"),
                             ({"name": "l", "kind": "symlink"}, "needs its target")]:
            r = c.request("file_tree_write", path=work + "/up3", entries=[bad_el], eof=True)
            assert r["code"] == "bad_request" and text in r["message"], r
        assert not os.path.exists(work + "/up3")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_tree_write_never_follows_a_link_planted_in_the_destination(boxd):
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        os.makedirs(work + "/dst")
        os.makedirs(work + "/outside")
        with open(work + "/outside/f", "w") as f:
            f.write("precious")
        os.symlink(work + "/outside", work + "/dst/sub")      # where a directory goes
        os.symlink(work + "/outside/f", work + "/dst/file")   # where a file goes
        c = boxd.client()
        w = fc.tree_write(c, work + "/dst", [{"name": "sub", "kind": "dir"},
                                             {"name": "sub/f", "kind": "file", "data": b"evil"},
                                             {"name": "file", "kind": "file", "data": b"new"}])
        assert [(e["name"], e["code"]) for e in w["errors"]] == [("sub", "exists"),
                                                                   ("sub/f", "refused")], w
        with open(work + "/outside/f") as f:
            assert f.read() == "precious"
        assert os.path.islink(work + "/dst/sub")
        assert not os.path.islink(work + "/dst/file")      # replaced, not written through
        with open(work + "/dst/file") as f:
            assert f.read() == "new"
        # A download does not go through a link inside the tree either.
        ents, end = fc.tree_read(c, work + "/dst")
        assert {e["name"]: e["kind"] for e in ents} == {".": "dir", "sub": "symlink",
                                                        "file": "file"}, ents
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_tree_as_a_user_without_permission(start_boxd):
    d = start_boxd("--user", "nobody")
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        os.chmod(work, 0o755)
        os.makedirs(work + "/t/open")
        os.makedirs(work + "/t/closed")
        for p in ("/t/open/a", "/t/closed/b", "/t/secret"):
            with open(work + p, "w") as f:
                f.write("x")
        os.chmod(work + "/t/closed", 0o700)
        os.chmod(work + "/t/secret", 0o600)
        c = d.client()
        ents, end = fc.tree_read(c, work + "/t")
        denied = sorted(e["name"] for e in ents if e.get("code") == "permission_denied")
        assert denied == ["closed", "secret"], ents
        assert end["files"] == 1 and end["failed"] == 2
        # Up, as nobody: into a directory nobody may not write, each entry is denied.
        os.makedirs(work + "/ro")
        w = fc.tree_write(c, work + "/ro", [{"name": "f", "kind": "file", "data": b"1"},
                                            {"name": "d", "kind": "dir"}])
        assert [(e["name"], e["code"]) for e in w["errors"]] == [("f", "permission_denied"),
                                                                   ("d", "permission_denied")]
        r = c.request("file_tree_write", path="/root/boxd-tree-nope", eof=True)
        assert r["code"] == "permission_denied", r
        os.chmod(work, 0o777)
        w = fc.tree_write(c, work + "/mine", [{"name": "f", "kind": "file", "data": b"1"}])
        assert w["files"] == 1 and os.stat(work + "/mine/f").st_uid == 65534
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_tree_write_dropped_with_its_connection(boxd):
    """A client that goes away mid-tree: the file being written and those not yet renamed are
    removed, the files before stay whole, and boxd's fds come back."""
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        fds0 = boxd.counts()[0]
        c = boxd.client()
        r = c.request("file_tree_write", path=work + "/dst", tree_id="gone1",
                      entries=[{"name": "done", "kind": "file", "data": b"whole"}])
        assert r["type"] == "file_tree_ack" and r["entries"] == 1, r
        r = c.request("file_tree_data", tree_id="gone1",
                      entries=[{"name": "half", "kind": "file", "data": b"x" * 1000,
                                "more": True}])
        assert r["type"] == "file_tree_ack", r
        assert any(".half.boxd-gone1" in n for n in os.listdir(work + "/dst"))
        other = boxd.client()
        r = other.request("file_tree_data", tree_id="gone1", entries=[])
        assert r["code"] == "not_found", r  # a tree belongs to its connection
        c.close()
        assert wait_for(lambda: os.listdir(work + "/dst") == ["done"], T(5)), \
            os.listdir(work + "/dst")
        with open(work + "/dst/done", "rb") as f:
            assert f.read() == b"whole"
        other.close()
        assert wait_for(lambda: boxd.counts()[0] <= fds0, T(5)), (fds0, boxd.counts())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_cp_failed_entry_names_it_and_exits_nonzero(start_boxd):
    d = start_boxd("--user", "nobody")
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        os.mkdir(work + "/src")
        with open(work + "/src/ok", "w") as f:
            f.write("x")
        os.mkfifo(work + "/src/fifo")
        os.chmod(work, 0o777)
        r = boxctl(d.sock, "cp", "--json", work + "/src", ":/root/nope")
        assert r.returncode == 1
        assert b"/root/nope" in r.stderr and b"permission_denied" in r.stderr, r.stderr
        r = boxctl(d.sock, "cp", "--json", work + "/src", ":" + work + "/in")
        res = json.loads(r.stdout)
        assert r.returncode == 1 and [e["path"] for e in res["errors"]] == [work + "/src/fifo"]
        assert res["errors"][0]["code"] == "refused" and res["files"] == 1, res
        assert os.stat(work + "/in/ok").st_uid == 65534
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_boxctl_killed_mid_upload_then_resumed(boxd):
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        big = work + "/big.bin"
        block = os.urandom(1 << 20)
        with open(big, "wb") as f:
            for _ in range(512):
                f.write(block)
        want = subprocess.run(["sha256sum", big], capture_output=True, text=True).stdout.split()[0]
        dst = work + "/dst.bin"
        p = subprocess.Popen([conftest.BOXCTL_BIN, "-s", boxd.sock, "cp", big, ":" + dst],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def temp_size():
            for name in os.listdir(work):
                if name.startswith(".dst.bin.boxd-"):
                    s = os.path.getsize(os.path.join(work, name))
                    return s if s > 64 << 20 else 0
            return 0
        held = wait_for(temp_size, T(60), interval=0.01)
        assert held, "the upload never got going"
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not os.path.exists(dst)  # nothing half-written at the path
        t0 = time.monotonic()
        r = boxctl(boxd.sock, "cp", "--json", big, ":" + dst)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        # The second run sent only what the agent did not hold.
        assert res["bytes"] <= (512 << 20) - held + (16 << 20), (res, held)
        assert subprocess.run(["sha256sum", dst], capture_output=True,
                              text=True).stdout.split()[0] == want
        assert [n for n in os.listdir(work) if n.startswith(".dst")] == []
        print("resumed after %d MiB held, %.2f s" % (held >> 20, time.monotonic() - t0))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_boxctl_ls_mkdir_rm_watch(boxd):
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        assert boxctl(boxd.sock, "mkdir", "-p", ":" + work + "/x/y").returncode == 0
        with open(work + "/x/y/f", "w") as f:
            f.write("abc")
        r = boxctl(boxd.sock, "ls", "-l", "-R", ":" + work + "/x")
        assert r.returncode == 0 and b"y/f" in r.stdout and b" 3 " in r.stdout, r.stdout
        w = subprocess.Popen([conftest.BOXCTL_BIN, "-s", boxd.sock, "watch", "-r", ":" + work],
                             stdout=subprocess.PIPE)
        time.sleep(0.5)
        open(work + "/x/y/g", "w").close()
        line = w.stdout.readline()
        w.kill()
        w.wait()
        assert line.split()[1:] == [b"create", b"x/y/g"], line
        assert boxctl(boxd.sock, "rm", ":" + work + "/x").returncode == 1  # not empty
        assert boxctl(boxd.sock, "rm", "-r", ":" + work + "/x").returncode == 0
        assert os.listdir(work) == []
        r = boxctl(boxd.sock, "ls", ":" + work + "/missing")
        assert r.returncode == 1 and b"not_found" in r.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_file_commands_are_in_the_command_and_option_tables(boxd):
    """cp, ls, rm, mkdir, watch are rows of boxctl's command table: `boxctl --help`, `boxctl help
    CMD` and the man page show them and their options; their short letters do not take other
    commands' meanings (ls -l is --long, code -l is still --lang; rm -r and ls -R are both
    --recursive); bad values and options are usage errors (exit 2) against the real daemon."""
    def ctl(*a):
        return subprocess.run([conftest.BOXCTL_BIN, "-s", boxd.sock] + list(a),
                              capture_output=True, timeout=T(30))
    top = ctl("--help")
    assert top.returncode == 0
    files = top.stdout.split(b"Files:", 1)[1]
    for c in [b"cp", b"ls", b"rm", b"mkdir", b"watch"]:
        assert b"\n  " + c + b" " in files, top.stdout
    for cmd, opts in [("cp", [b"-a, --archive", b"-u, --user", b"-j, --json"]),
                      ("ls", [b"-l, --long", b"-R, --recursive"]),
                      ("rm", [b"-r, --recursive", b"-f, --force"]),
                      ("mkdir", [b"-p, --parents", b"-m, --mode MODE"]),
                      ("watch", [b"-r, --recursive", b"-j, --json"])]:
        for how in [("help", cmd), (cmd, "--help")]:
            h = ctl(*how)
            assert h.returncode == 0 and h.stdout.startswith(b"Usage: boxctl " + cmd.encode())
            for o in opts:
                assert o in h.stdout, (cmd, o, h.stdout)
    man = subprocess.run([conftest.BOXCTL_BIN, "--man"], capture_output=True, timeout=T(30))
    assert man.returncode == 0
    for c in [b"cp", b"ls", b"rm", b"mkdir", b"watch"]:
        assert b".SS " + c + b"\n" in man.stdout
    assert b"\\-\\-archive" in man.stdout
    assert b"\\fB\\-R\\fR, " in man.stdout
    work = tempfile.mkdtemp(prefix="boxd-tree-", dir="/tmp")
    try:
        assert ctl("mkdir", "-m", "700", ":" + work + "/d").returncode == 0
        assert stat.S_IMODE(os.stat(work + "/d").st_mode) == 0o700
        bad = ctl("mkdir", "-m", "99", ":" + work + "/e")
        assert bad.returncode == 2 and b"octal" in bad.stderr and not os.path.exists(work + "/e")
        assert ctl("ls", "-r", ":" + work).returncode == 2     # -r is rm's and watch's
        assert ctl("rm", "-R", ":" + work + "/d").returncode == 2  # -R is ls's
        assert ctl("cp", "--lang", "py", work, ":" + work + "/c").returncode == 2
        r = ctl("ls", "--long", "--recursive", ":" + work)
        assert r.returncode == 0 and b"dir " in r.stdout and b"d/" in r.stdout, r.stdout
        assert ctl("rm", "-rf", ":" + work + "/d").returncode == 0
        assert os.listdir(work) == []
        # code -l is still --lang (the parser picks the row the command takes).
        c = ctl("code", "-l", "nosuchlang", "1")
        assert c.returncode == 1 and b"nosuchlang" in c.stderr, c.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
