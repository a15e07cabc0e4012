"""Trees both ways with boxctl cp, and boxctl killed mid-upload then resumed.

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
from conftest import T, wait_for

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
