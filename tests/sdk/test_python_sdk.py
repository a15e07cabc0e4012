"""The Python SDK (protocol/sdk/python) against a real boxd.

1. Every `python` example of protocol/sdk/python/README.md runs as written, with only its
   Box.connect line pointed at the test's socket, and prints what its `# prints:` comments say.
2. Reconnect and re-attach: connections are reset mid-stream by a relay; the lines seen equal
   a direct run's output exactly, none lost or repeated.
3. A boxd restart (new boot_id) raises BootChangedError; the fc: handshake; tokens; typed
   errors; the install with pip, offline.

Run: BOXD_BIN=$PWD/build/boxd /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/sdk/test_python_sdk.py
"""

import asyncio
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import py_boxd  # noqa: E402
from py_boxd import SDK_DIR, T, Daemon, Relay  # noqa: E402
from sdk_examples import (  # noqa: E402
    expected_prints, readme_examples, run_example)

sys.path.insert(0, SDK_DIR)

import boxd  # noqa: E402
from boxd import Box  # noqa: E402
from boxd.aio import AsyncBox  # noqa: E402

README = os.path.join(SDK_DIR, "README.md")

pytestmark = pytest.mark.skipif(not os.access(py_boxd.BOXD_BIN, os.X_OK),
                                reason="boxd not built (set BOXD_BIN)")


@pytest.fixture(scope="module")
def daemon():
    d = Daemon().start()
    yield d
    assert d.sanitizer_report() is None, d.stderr_text()[-4000:]
    rc = d.stop()
    assert rc == 0, "boxd exited %r after SIGTERM: %s" % (rc, d.stderr_text()[-2000:])


@pytest.fixture
def fresh_daemon():
    ds = []

    def make(*args):
        d = Daemon(args).start()
        ds.append(d)
        return d
    yield make
    for d in ds:
        d.stop()


@pytest.fixture
def box(daemon):
    b = Box.connect(socket=daemon.sock)
    yield b
    b.close()


# ---- 1. the documented examples -----------------------------------------------------------------

EXAMPLES = readme_examples(README)


def test_readme_has_the_examples():
    names = " ".join(code for _, code, _ in EXAMPLES)
    for needle in ('exec.command("echo hello")', 'lang="py"', 'lang="js"',
                   "node -e 'process.exit(1)'", 'exec.start("sleep 10")', "run.logs()",
                   "python3 --version && pip list", "exec.stream(", "AsyncBox",
                   "npm install && npm test", "files.upload(", "files.download("):
        assert needle in names, "README lost the example with %s" % needle
    for _, code, _ in EXAMPLES:
        assert expected_prints(code), "an example without # prints: %s" % code[:80]


@pytest.mark.parametrize("name,code,requires", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_readme_example(daemon, name, code, requires, tmp_path):
    if requires == "image":
        pytest.skip("needs the product's box image (sudo as its user box, a project in /work): "
                    "tests/boxes/test_sdk_image.py runs it there")
    if requires in ("node", "npm") and shutil.which(requires) is None:
        pytest.skip("%s is not installed in this box (the example needs it)" % requires)
    if requires == "files":
        with Box.connect(socket=daemon.sock) as b:
            if "files" not in b.capabilities:
                pytest.skip("this boxd has no file protocol (hello capabilities lack files)")
    if requires in ("node", "npm"):
        with Box.connect(socket=daemon.sock) as b:
            langs = {lang["name"] for lang in b.info()["languages"]}
        if "js" not in langs:
            pytest.skip("boxd's languages.conf finds no js interpreter here")
    run_example(name, code, daemon.sock, str(tmp_path), T(60))


# ---- 2. reconnect and re-attach -----------------------------------------------------------------

N_LINES = 400
FLOOD = "for i in $(seq 1 %d); do echo line $i; [ $((i %% 40)) = 0 ] && sleep 0.05; done; " \
        "echo tail >&2" % N_LINES
WANT = "".join("line %d\n" % i for i in range(1, N_LINES + 1))


@pytest.fixture
def relay(daemon):
    d = tempfile.mkdtemp(prefix="boxd-relay-", dir="/tmp")
    r = Relay(daemon.sock, os.path.join(d, "relay.sock"))
    yield r
    r.close()
    shutil.rmtree(d, ignore_errors=True)


def test_stream_reattaches_after_drops_without_loss_or_repeat(daemon, relay):
    with Box.connect(socket=daemon.sock) as direct:
        direct_run = direct.exec.command(FLOOD)
    assert direct_run.stdout == WANT
    seen, seqs, kills = [], [], 0
    with Box.connect(socket=relay.path) as b:
        for item in b.exec.stream(FLOOD):
            if item.type == "output":
                seen.append(item)
                seqs.append(item.seq)
                if len(seen) in (30, 150, 300):
                    kills += relay.kill_connections()
            else:
                exit_item = item
        assert b._abox._session.reconnects >= 3
    assert kills >= 3
    assert "".join(c.data for c in seen if c.stream == "stdout") == direct_run.stdout
    assert "".join(c.data for c in seen if c.stream == "stderr") == "tail\n" == direct_run.stderr
    assert seqs == list(range(len(seqs))), "a record lost or repeated across reconnects"
    assert exit_item.status == "completed" and exit_item.run.stdout == WANT
    assert relay.accepted >= 4


def test_command_callbacks_and_wait_survive_drops(daemon, relay):
    got = []

    def on_stdout(chunk):
        got.append(chunk.data)
        if len(got) == 100:
            relay.kill_connections()
    with Box.connect(socket=relay.path) as b:
        run = b.exec.command(FLOOD, on_stdout=on_stdout)
        assert run.status == "completed" and run.stdout == WANT
        assert "".join(got) == WANT
        # A live run being waited for while its connection is reset.
        live = b.exec.start("sleep 0.5; echo late")
        relay.kill_connections()
        live.wait()
        assert live.result == "late"
        assert [log.message for log in live.logs()] == ["late"]


def test_async_stream_reattaches(daemon, relay):
    async def main():
        seen = []
        async with await AsyncBox.connect(socket=relay.path) as b:
            async for item in b.exec.stream(FLOOD):
                if item.type == "output" and item.stream == "stdout":
                    seen.append(item.data)
                    if len(seen) == 77:
                        relay.kill_connections()
        return "".join(seen)
    assert asyncio.run(main()) == WANT


def test_boot_id_change_raises(fresh_daemon):
    d = fresh_daemon()
    b = Box.connect(socket=d.sock, reconnect_timeout=T(20))
    try:
        old = b.boot_id
        run = b.exec.start("sleep 30")
        d.kill()           # no end event: the connection just resets
        d.start()          # a new agent on the same socket
        with pytest.raises(boxd.BootChangedError) as ei:
            run.wait()
        assert ei.value.code == "boot_changed"
        assert ei.value.old_boot_id == old and ei.value.new_boot_id == b.boot_id != old
        assert "restarted" in str(ei.value)
        for again in (run.wait, run.cancel, run.logs):
            with pytest.raises(boxd.BootChangedError):
                again()
        # The Box goes on with the new agent.
        assert b.exec.command("echo again").result == "again"
    finally:
        b.close()


def test_lost_for_good_raises_connection_lost(fresh_daemon):
    d = fresh_daemon()
    b = Box.connect(socket=d.sock, reconnect_timeout=0.5)
    try:
        run = b.exec.start("sleep 30")
        d.kill()
        t0 = time.monotonic()
        with pytest.raises(boxd.ConnectionLostError) as ei:
            run.wait()
        assert time.monotonic() - t0 < T(10)
        assert "reconnect_timeout" in str(ei.value)
    finally:
        b.close()


# ---- 3. transports, tokens, errors, timeouts ----------------------------------------------------

def test_fc_hybrid_vsock_handshake(daemon):
    d = tempfile.mkdtemp(prefix="boxd-fc-", dir="/tmp")
    r = Relay(daemon.sock, os.path.join(d, "v.sock"), fc_port=1024)
    try:
        with Box.connect(socket="fc:%s:1024" % r.path) as b:
            assert b.exec.command("echo via vsock").result == "via vsock"
        assert r.handshakes == [b"CONNECT 1024\n"]
        with pytest.raises(boxd.ConnectionLostError):
            Box.connect(socket="fc:%s:9" % r.path, connect_timeout=2)
    finally:
        r.close()
        shutil.rmtree(d, ignore_errors=True)


def test_addresses_and_defaults(monkeypatch, daemon):
    from boxd._wire import parse_address
    assert str(parse_address("/x/y.sock")) == "unix:/x/y.sock"
    assert str(parse_address("vsock:3:1024")) == "vsock:3:1024"
    assert parse_address("fc:/a:b/v.sock:52").path == "/a:b/v.sock"
    with pytest.raises(ValueError):
        parse_address("vsock:3")
    monkeypatch.setenv("BOXD_SOCKET", "unix:" + daemon.sock)
    with Box.connect() as b:
        assert b.exec.command("echo env").result == "env"
    monkeypatch.delenv("BOXD_SOCKET")
    assert str(parse_address(None)) == "unix:/run/boxd.sock"


def test_token(fresh_daemon, tmp_path, monkeypatch):
    tok = tmp_path / "token"
    tok.write_text("s3cret-token\n")
    os.chmod(tok, 0o600)
    d = fresh_daemon("--token-file", str(tok), "--user", "nobody")
    with pytest.raises(boxd.UnauthorizedError) as ei:
        Box.connect(socket=d.sock)
    assert ei.value.code == "unauthorized"
    with Box.connect(socket=d.sock, token="s3cret-token") as b:
        assert b.exec.command("id -un").result == "nobody"
    monkeypatch.setenv("BOXD_TOKEN_FILE", str(tok))
    with Box.connect(socket=d.sock) as b:
        assert b.exec.command("echo ok").result == "ok"


def test_every_protocol_code_has_its_class():
    with open(os.path.join(py_boxd.REPO, "protocol", "PROTOCOL.md")) as f:
        proto = f.read()
    section = proto[proto.index("## 6. Errors"):proto.index("## 7.")]
    codes = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert codes and codes <= set(boxd.ERROR_CLASSES), codes - set(boxd.ERROR_CLASSES)
    for code, cls in boxd.ERROR_CLASSES.items():
        e = boxd.error_from_reply({"type": "error", "code": code, "message": "m"})
        assert type(e) is cls and isinstance(e, boxd.BoxError) and e.code == code
    e = boxd.error_from_reply({"type": "error", "code": "brand_new", "message": "m"})
    assert type(e) is boxd.BoxError and e.code == "brand_new"


def test_typed_errors_from_the_agent(box):
    with pytest.raises(boxd.NotFoundError) as ei:
        box.exec.attach("no-such-run")
    assert ei.value.code == "not_found" and ei.value.reply["type"] == "error"
    with pytest.raises(boxd.BadRequestError):
        box.exec.command("true", env={"A=B": "x"})
    with pytest.raises(boxd.RunEndedError):
        box.exec.command("true").send_signal("TERM")


class SilentAgent:
    """Answers hello like boxd, then reads requests and answers none (a frozen box)."""

    def __init__(self, path):
        import socket as socket_mod
        import msgpack
        self.accepted = 0
        self.lsock = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
        self.lsock.bind(path)
        self.lsock.listen(8)
        self.conns = []

        def serve():
            while True:
                try:
                    c, _ = self.lsock.accept()
                except OSError:
                    return
                self.accepted += 1
                self.conns.append(c)
                buf = b""
                while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                if len(buf) < 4:
                    continue
                hello = msgpack.unpackb(buf[4:4 + int.from_bytes(buf[:4], "big")])
                body = msgpack.packb({"type": "hello", "req": hello["req"], "version": 1,
                                      "agent": "silent", "boot_id": "b-1", "pid": 1,
                                      "capabilities": ["exec"], "limits": {}})
                c.sendall(len(body).to_bytes(4, "big") + body)
        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.lsock.close()
        for c in self.conns:
            c.close()


def test_request_timeout_and_heartbeat(tmp_path):
    agent = SilentAgent(str(tmp_path / "silent.sock"))
    try:
        b = Box.connect(socket=str(tmp_path / "silent.sock"), request_timeout=0.3,
                        heartbeat_interval=None)
        t0 = time.monotonic()
        with pytest.raises(boxd.RequestTimeoutError) as ei:
            b.exec.command("true", timeout=60000)
        assert 0.25 < time.monotonic() - t0 < T(5)
        assert ei.value.code == "request_timeout" and "request_timeout" in str(ei.value)
        b.close()
        # A silent connection is pinged; no pong within request_timeout counts as a drop.
        b = Box.connect(socket=str(tmp_path / "silent.sock"), request_timeout=0.2,
                        heartbeat_interval=0.2)
        assert py_boxd.wait_until(lambda: agent.accepted >= 3, T(10)), agent.accepted
        b.close()
    finally:
        agent.close()


def test_run_timeout_is_the_agents(box):
    run = box.exec.command("sleep 5", timeout=200)
    assert (run.status, run.reason) == ("failed", "timeout")
    assert run.duration_ms < 4000
    live = box.exec.start("sleep 2")
    with pytest.raises(boxd.WaitTimeoutError):
        live.wait(wait_timeout=0.1)
    assert live.status == "running"
    assert live.cancel().status == "cancelled"


def test_stdin_and_attach(box):
    run = box.exec.start("cat", stdin=True)
    run.write_stdin("one\n")
    run.write_stdin(b"two\n", eof=True)
    assert run.wait().stdout == "one\ntwo\n"
    again = box.exec.attach(run.id)
    assert again.wait().stdout == "one\ntwo\n"
    assert any(r["id"] == run.id for r in box.exec.list())


def test_files_without_the_capability(box):
    if "files" in box.capabilities:
        pytest.skip("this agent has the file protocol")
    with pytest.raises(boxd.CapabilityError) as ei:
        box.files.upload([{"path": "x", "destination": "/tmp/x"}])
    assert ei.value.capability == "files" and "files" in str(ei.value)


def test_threads_share_one_box(box):
    results = []

    def worker(i):
        results.append(box.exec.command("echo %d" % i).result)
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(T(30))
    assert sorted(results, key=int) == [str(i) for i in range(8)]


def test_pip_install_offline(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=T(120))
    # From a copy: setuptools builds in the source tree (build/, *.egg-info).
    src = tmp_path / "python"
    shutil.copytree(SDK_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                 "__pycache__"))
    p = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-build-isolation",
                        "--no-deps", "--no-index", str(src)], capture_output=True, text=True,
                       timeout=T(300), cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    p = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import boxd, os; print(boxd.__version__, os.path.dirname(boxd.__file__))"],
                       capture_output=True, text=True, timeout=T(30), cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("0.1.0 ") and str(venv) in p.stdout


def test_pydoc_documents_the_api():
    env = dict(os.environ, PYTHONPATH=SDK_DIR)
    p = subprocess.run([sys.executable, "-m", "pydoc", "boxd.sync"], capture_output=True,
                       text=True, timeout=T(30), env=env)
    assert p.returncode == 0
    for word in ("command(", "cancel(", "logs(", "stream(", "request_timeout"):
        assert word in p.stdout


def test_requests_made_while_the_connection_is_down_are_sent_after_it(daemon, relay):
    with Box.connect(socket=relay.path) as b:
        assert b.exec.command("echo one").result == "one"
        for i in range(5):
            relay.kill_connections()
            assert b.exec.command("echo %d" % i).result == str(i)
            assert b.exec.code(code="print(%d * 2)" % i, lang="python").output == str(i * 2)
        assert b._abox._session.reconnects >= 1


def test_a_retried_start_with_the_same_id_is_the_same_run(box, daemon):
    rid = "sdk-retry-" + os.urandom(4).hex()
    first = box.exec.start("echo first; sleep 0.3", id=rid)
    with Box.connect(socket=daemon.sock) as other:
        again = other.exec.command("echo never run", id=rid)
    assert again.id == first.id == rid
    assert again.stdout == "first\n" == first.wait().stdout


def test_stream_break_leaves_the_run_and_the_box_usable(box):
    rid = "sdk-break-" + os.urandom(4).hex()
    for item in box.exec.stream("echo a; sleep 0.3; echo b", id=rid):
        assert item.data == "a\n"
        break
    run = box.exec.attach(rid).wait()
    assert run.stdout == "a\nb\n" and run.status == "completed"
    assert box.exec.command("echo still").result == "still"


def test_binary_output_and_argv(box):
    run = box.exec.command(["printf", "\\377\\376ok\\n"])
    assert run.stdout_bytes == b"\xff\xfeok\n"
    assert run.stdout.endswith("ok\n")
    chunks = list(box.exec.stream(["printf", "\\377x"]))
    assert chunks[0].raw == b"\xffx" and chunks[-1].type == "exit"


def test_unknown_lang_lists_what_is_available(box):
    with pytest.raises(boxd.UnknownLangError) as ei:
        box.exec.code(code="x", lang="cobol")
    assert "python" in ei.value.available and ei.value.code == "unknown_lang"


def test_no_fd_or_thread_leak(daemon, relay):
    def counts():
        return len(os.listdir("/proc/self/fd")), threading.active_count()
    for _ in range(3):  # warm up whatever the interpreter caches
        with Box.connect(socket=daemon.sock) as b:
            b.exec.command("true")
    before = counts()
    for i in range(30):
        with Box.connect(socket=relay.path if i % 2 else daemon.sock) as b:
            b.exec.command("echo x")
            if i % 2:
                relay.kill_connections()
                b.exec.command("echo y")
    assert py_boxd.wait_until(lambda: counts()[0] <= before[0] and counts()[1] <= before[1],
                              T(5)), (before, counts())


def test_closed_box_and_unreachable_socket(daemon, tmp_path):
    b = Box.connect(socket=daemon.sock)
    run = b.exec.start("sleep 0.2")
    b.close()
    b.close()  # twice is fine
    with pytest.raises(boxd.BoxClosedError):
        b.exec.command("true")
    with pytest.raises(boxd.BoxClosedError):
        run.wait()
    with pytest.raises(boxd.ConnectionLostError) as ei:
        Box.connect(socket=str(tmp_path / "nothing.sock"))
    assert "cannot connect" in str(ei.value) and "BOXD_SOCKET" in str(ei.value)


@pytest.fixture
def files_box(daemon):
    b = Box.connect(socket=daemon.sock)
    if "files" not in b.capabilities:
        b.close()
        pytest.skip("this boxd has no file protocol (hello capabilities lack files)")
    yield b
    b.close()


def test_files_round_trip_and_errors(files_box, tmp_path):
    b = files_box
    root = "/tmp/boxd-sdk-files-" + os.urandom(4).hex()
    try:
        data = os.urandom(3 << 20) + b"end"
        w = b.files.write(root + "/a/big.bin", data, mkdir=True)
        assert w["size"] == len(data)
        assert b.files.read(root + "/a/big.bin") == data
        assert b.files.stat(root + "/a/big.bin")["size"] == len(data)
        with pytest.raises(boxd.NotFoundError):
            b.files.read(root + "/missing")
        with pytest.raises(boxd.ExistsError):
            b.files.write(root + "/a/big.bin", b"x", overwrite=False)
        with pytest.raises(boxd.IsADirectoryError_):
            b.files.read(root + "/a")
        (tmp_path / "tree" / "d").mkdir(parents=True)
        (tmp_path / "tree" / "d" / "x.sh").write_text("echo x\n")
        os.chmod(tmp_path / "tree" / "d" / "x.sh", 0o755)
        b.files.upload([{"path": str(tmp_path / "tree"), "destination": root + "/tree"}])
        assert b.exec.command(root + "/tree/d/x.sh").result == "x"
        out = b.files.download(folder=root + "/tree", destination=str(tmp_path / "back"))
        with open(os.path.join(out, "d", "x.sh")) as f:
            assert f.read() == "echo x\n"
        assert os.stat(os.path.join(out, "d", "x.sh")).st_mode & 0o777 == 0o755
    finally:
        b.files.remove(root, recursive=True)


def test_files_resume_across_dropped_connections(daemon, relay):
    with Box.connect(socket=relay.path) as b:
        if "files" not in b.capabilities:
            pytest.skip("this boxd has no file protocol")
        path = "/tmp/boxd-sdk-resume-" + os.urandom(4).hex()
        data = os.urandom(24 << 20)
        stop = threading.Event()

        def dropper():
            for _ in range(3):
                if stop.wait(0.15):
                    return
                relay.kill_connections()
        t = threading.Thread(target=dropper)
        t.start()
        try:
            w = b.files.write(path, data)
            got = b.files.read(path)
        finally:
            stop.set()
            t.join()
            try:
                b.files.remove(path)
            except boxd.NotFoundError:
                pass
        assert w["size"] == len(data) and got == data
        assert b._abox._session.reconnects >= 1


def test_files_tree_with_symlinks(files_box, tmp_path):
    b = files_box
    root = "/tmp/boxd-sdk-links-" + os.urandom(4).hex()
    try:
        b.files.symlink(root + "-probe", "x")
        b.files.remove(root + "-probe")
    except boxd.UnknownTypeError:
        pytest.skip("this agent has no file_symlink")
    try:
        tree = tmp_path / "tree"
        (tree / "lib").mkdir(parents=True)
        (tree / "lib" / "real.txt").write_text("real\n")
        os.symlink("real.txt", tree / "lib" / "link.txt")
        os.symlink("lib", tree / "libdir")
        os.symlink("/etc/passwd", tree / "outside")
        b.files.upload([{"path": str(tree), "destination": root}])
        assert b.files.stat(root + "/lib/link.txt")["kind"] == "symlink"
        assert b.files.stat(root + "/outside")["target"] == "/etc/passwd"
        assert b.exec.command("cat %s/libdir/link.txt" % root).result == "real"
        out = b.files.download(folder=root, destination=str(tmp_path / "back"))
        assert os.readlink(os.path.join(out, "lib", "link.txt")) == "real.txt"
        assert os.readlink(os.path.join(out, "libdir")) == "lib"
        assert os.readlink(os.path.join(out, "outside")) == "/etc/passwd"
        with open(os.path.join(out, "lib", "real.txt")) as f:
            assert f.read() == "real\n"
    finally:
        b.files.remove(root, recursive=True)


def _snapshot(top):
    """A tree, path by path: type (lstat), mode bits, link target, mtime to the second, a
    file's bytes. A link's own mtime is left out: no request of the protocol sets one."""
    out = {}

    def walk(rel):
        p = os.path.join(top, rel) if rel else top
        st = os.lstat(p)
        key = rel or "."
        if stat.S_ISLNK(st.st_mode):
            out[key] = ("link", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[key] = ("dir", st.st_mode & 0o7777, st.st_mtime_ns // 10**9)
            for n in sorted(os.listdir(p)):
                walk(os.path.join(rel, n) if rel else n)
        else:
            with open(p, "rb") as f:
                out[key] = ("file", st.st_mode & 0o7777, st.st_mtime_ns // 10**9, f.read())
    walk("")
    return out


def test_files_tree_keeps_links_modes_and_mtimes(files_box, tmp_path):
    b = files_box
    root = "/tmp/boxd-sdk-fidelity-" + os.urandom(4).hex()
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "sub" / "exec.sh").write_text("#!/bin/sh\necho exec\n")
    os.chmod(tree / "sub" / "exec.sh", 0o755)
    (tree / "sub" / "plain").write_bytes(os.urandom(3000))
    os.chmod(tree / "sub" / "plain", 0o640)
    os.symlink("sub/exec.sh", tree / "rel")
    os.symlink("/etc/hostname", tree / "abs")
    os.symlink("no/such/file", tree / "dangling")
    os.chmod(tree / "empty", 0o711)
    os.chmod(tree / "sub", 0o750)
    t = 981173100  # 2001-02-03 04:05:00 UTC; distinct seconds, directories last
    for i, rel in enumerate(["sub/exec.sh", "sub/plain", "empty", "sub", ""], 1):
        os.utime(tree / rel, ns=((t + i) * 10**9, (t + i) * 10**9 + 123456789))
    os.utime(tree / "rel", ns=(t * 10**9, t * 10**9), follow_symlinks=False)
    before = _snapshot(str(tree))
    assert before["sub/exec.sh"][2] == t + 1
    try:
        up = b.files.upload([{"path": str(tree), "destination": root}])
        assert sorted(u["path"][len(root):] for u in up) == [
            "/abs", "/dangling", "/rel", "/sub/exec.sh", "/sub/plain"]
        # In the box, as the agent describes it, to the nanosecond for what was set.
        in_box = {}
        top = b.files.stat(root)
        in_box["."] = ("dir", top["mode"], top["mtime_ns"] // 10**9)
        for e in b.files.list(root, depth=8):
            if e["kind"] == "symlink":
                in_box[e["name"]] = ("link", e["target"])
            else:
                in_box[e["name"]] = (e["kind"], e["mode"], e["mtime_ns"] // 10**9)
        assert in_box == {k: v[:3] for k, v in before.items()}
        assert b.files.stat(root + "/sub/exec.sh")["mtime_ns"] == (t + 1) * 10**9 + 123456789
        assert b.exec.command(root + "/rel").result == "exec"
        back = str(tmp_path / "back")
        assert b.files.download(folder=root, destination=back) == back
        assert _snapshot(back) == before
        # A link's own mtime comes down as the box has it.
        assert (os.lstat(os.path.join(back, "rel")).st_mtime_ns // 10**9
                == b.files.stat(root + "/rel")["mtime_ns"] // 10**9)
        # Again over the first download: links and files replaced, never followed.
        b.files.download(folder=root, destination=back)
        assert _snapshot(back) == before
        # One file, named by itself: its mode and mtime too.
        one = str(tmp_path / "one.sh")
        b.files.download(folder=root + "/sub/exec.sh", destination=one)
        assert os.stat(one).st_mode & 0o777 == 0o755
        assert os.stat(one).st_mtime_ns // 10**9 == t + 1
        # Through a link to it: the file's attributes, not the link's.
        os.chmod(one, 0o600)
        b.files.download(folder=root + "/rel", destination=one)
        assert os.stat(one).st_mode & 0o777 == 0o755
        assert os.stat(one).st_mtime_ns // 10**9 == t + 1
    finally:
        b.files.remove(root, recursive=True)


def test_files_chunks_follow_the_agents_max_frame(fresh_daemon):
    d = fresh_daemon("--max-frame", "65536")
    with Box.connect(socket=d.sock) as b:
        if "files" not in b.capabilities:
            pytest.skip("this boxd has no file protocol")
        path = "/tmp/boxd-sdk-small-frames-" + os.urandom(4).hex()
        data = os.urandom(1 << 20)
        assert b.files.write(path, data)["size"] == len(data)
        assert b.files.read(path) == data
        b.files.remove(path)
