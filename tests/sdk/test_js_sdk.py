"""The TypeScript SDK (protocol/sdk/js) against real boxd daemons.

Starts the daemons the node:test files in tests/sdk/js need, each fenced in its own cgroup like
the integration suite's (tests/integration/conftest.py), then runs each file with `node --test`:

- examples.test.mjs: every example of protocol/sdk/js/README.md, checked against its
  `// prints:` comments. Its daemon runs in a private mount namespace with a small npm project
  bind-mounted on /work (tests/sdk/boxd-workns.sh); where /work is absent or no mount namespace
  can be made, the project is a temp dir and the example's `cd /work` is pointed at it.
- api.test.mjs: runs, stream, cancel, logs, timeouts, typed errors, tokens, transports
  (hybrid vsock handshake, vsock's error), CommonJS require.
- files.test.mjs: box.files (skipped when the agent lacks the `files` capability): every call,
  typed errors, a tree uploaded and downloaded back, a cut mid-upload and mid-download.
- reconnect.test.mjs: connections cut mid-stream through a relay; the lines seen equal a direct
  run's output exactly; a frozen connection noticed by heartbeat; a changed boot_id.

Needs node (18+) and the SDK built (tests/sdk/run-js.sh does `npm ci`, which builds).

Environment: BOXD_BIN (default build/boxd).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SDK = os.path.join(REPO, "protocol", "sdk", "js")
JS = os.path.join(HERE, "js")

_spec = importlib.util.spec_from_file_location(
    "boxd_it_conftest", os.path.join(REPO, "tests", "integration", "conftest.py"))
it = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(it)

NODE = shutil.which("node")

PROJECT_PACKAGE = {
    "name": "boxd-sdk-example",
    "version": "1.0.0",
    "private": True,
    "scripts": {"test": "node test.js"},
    "dependencies": {"@msgpack/msgpack": "3.1.3"},
}
PROJECT_TEST = """\
const assert = require("node:assert");
const { encode, decode } = require("@msgpack/msgpack");
assert.deepStrictEqual(decode(encode({ a: [1, "x"] })), { a: [1, "x"] });
console.log("PASS msgpack round trip");
"""


def _can_mount_ns():
    if not os.path.isdir("/work") or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def _start(args, env=None, binary=None):
    saved = it.BOXD_BIN
    if binary:
        it.BOXD_BIN = binary
    try:
        d = it.Daemon(it.new_workdir(), args, env)
    finally:
        it.BOXD_BIN = saved
    d.wait_ready()
    return d


@pytest.fixture(scope="module")
def daemons():
    if NODE is None:
        pytest.skip("node is not installed (the JS SDK needs Node.js 18 or later)")
    if not os.access(it.BOXD_BIN, os.X_OK):
        pytest.skip("boxd binary not found at %s (set BOXD_BIN)" % it.BOXD_BIN)
    if not os.path.exists(os.path.join(SDK, "dist", "esm", "index.js")):
        pytest.fail("the SDK is not built: run tests/sdk/run-js.sh (npm ci builds it)")
    started = []
    project = tempfile.mkdtemp(prefix="boxd-sdkjs-work-")
    with open(os.path.join(project, "package.json"), "w") as f:
        json.dump(PROJECT_PACKAGE, f, indent=2)
    with open(os.path.join(project, "test.js"), "w") as f:
        f.write(PROJECT_TEST)
    env = {}
    cleanup = [project]
    try:
        if _can_mount_ns():
            # The bind mount hides whatever is under /work (this repository, perhaps): run a
            # copy of boxd from outside it.
            bindir = tempfile.mkdtemp(prefix="boxd-sdkjs-bin-")
            cleanup.append(bindir)
            real = os.path.join(bindir, "boxd")
            shutil.copy2(it.BOXD_BIN, real)
            main = _start([], {"BOXD_REAL_BIN": real, "BOXD_WORK_DIR": project},
                          binary=os.path.join(HERE, "boxd-workns.sh"))
            env["BOXD_TEST_WORK"] = "/work"
        else:
            print("no /work or no mount namespace here: the npm example runs in %s" % project)
            main = _start([])
            env["BOXD_TEST_WORK"] = project
        started.append(main)
        other = _start([])  # another agent, another boot_id
        started.append(other)
        tokdir = tempfile.mkdtemp(prefix="boxd-sdkjs-tok-")
        cleanup.append(tokdir)
        tokfile = os.path.join(tokdir, "token")
        fd = os.open(tokfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"s3cret-sdk-token\n")
        os.close(fd)
        tok = _start(["--token-file", tokfile, "--user", "nobody"])
        started.append(tok)
        env.update({
            "BOXD_SOCKET": main.sock,
            "BOXD_SOCKET_OTHER": other.sock,
            "BOXD_TOKEN_SOCKET": tok.sock,
            "BOXD_TOKEN_FILE": tokfile,
            "BOXD_PROTOCOL_MD": os.path.join(REPO, "protocol", "PROTOCOL.md"),
        })
        yield env
    finally:
        problems = []
        for d in started:
            problems += d.shutdown()
        for d in cleanup:
            shutil.rmtree(d, ignore_errors=True)
        if problems:
            pytest.fail("; ".join(problems), pytrace=False)


@pytest.mark.parametrize("name", ["examples", "api", "reconnect", "files"])
def test_js(daemons, name):
    env = dict(os.environ)
    env.update(daemons)
    p = subprocess.run([NODE, "--test", "--test-reporter=spec",
                        os.path.join(JS, name + ".test.mjs")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                       timeout=it.T(900), cwd=JS)
    out = p.stdout.decode("utf-8", "replace")
    print(out)
    assert p.returncode == 0, "node --test %s.test.mjs failed:\n%s" % (name, out[-20000:])
