"""Both SDKs' documented examples in the product's box image (packaging/image.sh).

One namespace box is booted from the image (nsbox.sh --lower "$(image.sh --format rootfs)") for
the module: boxd is its PID 1 and runs runs as the image's user `box`, who has passwordless
sudo; /work holds a small npm project with one dependency (@msgpack/msgpack, from the
registry) and a test that prints `PASS msgpack round trip` (the project tests/sdk/test_js_sdk.py
uses). Against the box's socket, from the host:

- every ```python block of protocol/sdk/python/README.md runs in a fresh interpreter
  (PYTHONPATH=protocol/sdk/python) with only its Box.connect line changed, and what it prints
  must match its `# prints:` comments (the runner, tests/lib/sdk_examples.py, is the one
  tests/sdk/test_python_sdk.py uses);
- every ```js block of protocol/sdk/js/README.md runs under node with the built SDK, checked
  against its `// prints:` comments by tests/sdk/js/examples.test.mjs (BOXD_TEST_IMAGE=1).

The blocks marked `<!-- requires: image -->` (which tests/sdk skips) are the ones that need this
box: `sudo apt-get update && sudo apt-get install -y hello` as the box's user, and
`cd /work && npm install && npm test` in the project in /work. `python3 --version && pip list`
runs here against the image's own python and pip, and the files blocks (upload ./src and
package.json, build in the box, download the dist folder) against the agent's file protocol. Between the two languages hello is purged and
/work's node_modules removed, so each SDK's example installs for real.

Skipped, with the reason: the blocks that use apt-get when the Debian mirror is out of reach,
the files blocks while the agent lacks the `files` capability, and the JS blocks when npm cannot
build the SDK (protocol/sdk/js/dist is built here with `npm ci` when missing, about 20 s from
npm's cache). Where the box cannot reach the npm registry, the host fetches the project's
dependency for it (npm_from_the_host_if_needed says how). About 25 s with the image cached.

Run alone:  /usr/bin/python3 -m pytest tests/boxes/test_sdk_image.py
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import minibox
from conftest import started_box
from minibox import ok, text
from test_image import image, mirror_reachable

sys.path.insert(0, os.path.join(minibox.REPO, "tests", "sdk"))

from test_js_sdk import PROJECT_PACKAGE, PROJECT_TEST  # noqa: E402
from sdk_examples import readme_examples, run_example  # noqa: E402

pytestmark = [pytest.mark.boxes]

PY_SDK = os.path.join(minibox.REPO, "protocol", "sdk", "python")
JS_SDK = os.path.join(minibox.REPO, "protocol", "sdk", "js")
JS_EXAMPLES = os.path.join(minibox.REPO, "tests", "sdk", "js", "examples.test.mjs")
PY_EXAMPLES = readme_examples()
NO_MIRROR = "the Debian mirror is out of reach from the box, so `sudo apt-get install` cannot run"


class ImageBox:
    """The booted box: its socket, a raw client for set-up, and what it can do."""

    def __init__(self, b, client):
        self.box = b
        self.socket = b.socket
        self.c = client
        self.capabilities = client.hello().get("capabilities", [])
        self.mirror = mirror_reachable()
        self.npm_note = None

    def sh(self, cmd, timeout=120):
        return ok(self.c.run(cmd, timeout_ms=timeout * 1000))

    def reset(self):
        """What the examples install is taken away again, so the next SDK's examples install
        for real: the hello package, and the project's node_modules and lock file."""
        self.sh("rm -rf /work/node_modules /work/package-lock.json /tmp/npm-demo")
        if self.mirror:
            self.sh("sudo DEBIAN_FRONTEND=noninteractive apt-get purge -y -q hello >/dev/null; "
                    "! command -v hello")


def npm_from_the_host_if_needed(ib):
    """The project's `npm install` needs the registry. Where the box cannot reach it (here a
    TLS-intercepting egress whose CA only the host trusts makes every HTTPS request from the
    box fail, and npm retries for 70 s), the host fetches the project's dependencies into an npm
    cache that is copied to the box user's, and the box's npm is set `offline`: the examples
    still run `npm install` unchanged, which then installs from that cache. Returns the note
    printed, or None when the box reaches the registry itself."""
    probe = ib.c.run("curl -sS --max-time 10 -o /dev/null https://registry.npmjs.org/")
    if probe["status"] == "completed" and probe["exit_code"] == 0:
        return None
    why = (text(probe.get("stderr")).strip().splitlines() or ["exit %s" % probe["exit_code"]])[0]
    if shutil.which("npm") is None:
        pytest.skip("the box cannot reach the npm registry (%s) and there is no npm here to "
                    "fetch the project's dependencies for it" % why)
    tmp = tempfile.mkdtemp(prefix="boxd-sdkimage-npm.")
    try:
        deps = ["%s@%s" % kv for kv in sorted(PROJECT_PACKAGE["dependencies"].items())]
        p = subprocess.run(["npm", "cache", "add", "--cache", tmp] + deps, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=300)
        if p.returncode != 0:
            pytest.skip("neither the box (%s) nor this host reaches the npm registry: %s"
                        % (why, p.stdout.decode("utf-8", "replace")[-800:]))
        # Through /proc/PID/root: into the box's overlay, never the image.
        shutil.copytree(os.path.join(tmp, "_cacache"),
                        os.path.join(ib.box.root, "home", "box", ".npm", "_cacache"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ib.sh("sudo chown -R box:box /home/box/.npm && npm config set offline true")
    return ("the box cannot reach the npm registry (%s): its npm installs %s offline from a "
            "cache the host filled" % (why, " ".join(deps)))


@pytest.fixture(scope="module")
def image_box(rootfs):
    root = image("rootfs")
    t0 = time.monotonic()
    with started_box(["--lower", root]) as b:
        print("nsbox.sh --lower %s: ready in %.0f ms" % (root, (time.monotonic() - t0) * 1000))
        with minibox.Client(b.socket, 300) as c:
            ib = ImageBox(b, c)
            assert ib.sh("id -un").strip() == "box"
            assert ib.sh("stat -c %U /work").strip() == "box"
            # The real project in /work, made by the box's user as a control plane would.
            ib.sh("cd /work && printf '%%s\\n' %s >package.json && printf '%%s' %s >test.js"
                  % (shlex.quote(json.dumps(PROJECT_PACKAGE, indent=2)), shlex.quote(PROJECT_TEST)))
            assert json.loads(ib.sh("cat /work/package.json")) == PROJECT_PACKAGE
            ib.npm_note = npm_from_the_host_if_needed(ib)
            if ib.npm_note:
                print("note: " + ib.npm_note)
            yield ib
            # Every example waits for (or cancels) its runs: none is left running.
            runs = ib.c.request({"type": "list"})["runs"]
            assert [r for r in runs if r["state"] == "running"] == [], runs


def test_readmes_have_the_image_examples():
    with open(os.path.join(PY_SDK, "README.md")) as f:
        py = f.read()
    with open(os.path.join(JS_SDK, "README.md")) as f:
        js = f.read()
    for doc, name in ((py, "python"), (js, "js")):
        blocks = re.findall(r"<!-- requires: image -->\n```%s\n(.*?)```" % name, doc, re.S)
        assert any("sudo apt-get install" in b for b in blocks), name
        for needle in ("cd /work && npm install && npm test", "python3 --version && pip list"):
            assert needle in doc, "%s README lost %s" % (name, needle)
    images = [e for e in PY_EXAMPLES if e[2] == "image"]
    assert len(images) == 2, [e[0] for e in images]


# ---- Python -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,code,requires", PY_EXAMPLES, ids=[e[0] for e in PY_EXAMPLES])
def test_python_example(image_box, name, code, requires, tmp_path):
    if requires == "files" and "files" not in image_box.capabilities:
        pytest.skip("the agent in this image lacks the files capability (hello capabilities: %s)"
                    % ", ".join(image_box.capabilities))
    if "apt-get" in code and not image_box.mirror:
        pytest.skip(NO_MIRROR)
    dt = run_example(name, code, image_box.socket, str(tmp_path), 300)
    print("%s: %.0f ms" % (name, dt * 1000))


# ---- TypeScript ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def js_sdk():
    """node, and the SDK's dist/ (built with `npm ci` as tests/sdk/run-js.sh does, if missing)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed here (the JS SDK needs Node.js 18 or later; "
                    "tests/sdk/run-js.sh installs it)")
    if not os.path.exists(os.path.join(JS_SDK, "dist", "esm", "index.js")):
        if shutil.which("npm") is None:
            pytest.skip("protocol/sdk/js/dist is not built and there is no npm to build it")
        t0 = time.monotonic()
        p = subprocess.run(["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund"],
                           cwd=JS_SDK, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=600)
        if p.returncode != 0:
            pytest.skip("npm ci in protocol/sdk/js failed (no registry and no cache?):\n" +
                        p.stdout.decode("utf-8", "replace")[-1500:])
        print("npm ci in protocol/sdk/js: %.1f s" % (time.monotonic() - t0))
    return node


def tap_results(out):
    """[(ok, name, skip reason or None)] of the top-level tests in node's TAP output."""
    res = []
    for m in re.finditer(r"^(not ok|ok) \d+ - (.*?)(?: # SKIP(?: (.*))?)?$", out, re.M):
        skip = (m.group(3) or "") if " # SKIP" in m.group(0) else None
        res.append((m.group(1) == "ok", m.group(2), skip))
    return res


def test_js_examples(image_box, js_sdk):
    image_box.reset()
    env = dict(os.environ, BOXD_SOCKET=image_box.socket, BOXD_TEST_WORK="/work",
               BOXD_TEST_IMAGE="1")
    if not image_box.mirror:
        env["BOXD_TEST_NO_APT"] = NO_MIRROR
    t0 = time.monotonic()
    p = subprocess.run([js_sdk, "--test", "--test-reporter=tap", JS_EXAMPLES],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=600,
                       cwd=os.path.dirname(JS_EXAMPLES))
    out = p.stdout.decode("utf-8", "replace")
    print("node --test examples.test.mjs: %.1f s" % (time.monotonic() - t0))
    assert p.returncode == 0, "node --test examples.test.mjs failed:\n%s" % out[-20000:]
    results = tap_results(out)
    for passed, name, skip in results:
        print("  %s %s%s" % ("ok" if passed else "FAIL", name,
                             " (skipped: %s)" % skip if skip is not None else ""))
    assert results and all(r[0] for r in results), out[-20000:]
    ran = [name for _, name, skip in results if skip is None]
    # The examples this box is for ran, and were not skipped.
    for needle in ("npm install", "python3 --version && pip list", "echo hello"):
        assert any(needle in name for name in ran), (needle, ran)
    if image_box.mirror:
        assert any("apt-get" in name for name in ran), ran
    if "files" in image_box.capabilities:
        # Uploads ./src and package.json, builds in /work, downloads /work/dist.
        assert any("npm run build" in name for name in ran), ran
        assert text(image_box.c.run("hello").get("result")).strip() == "Hello, world!"
    # The JS npm example installed the project's dependency in the box's /work.
    assert image_box.sh("ls /work/node_modules/@msgpack").split() == ["msgpack"]
    # Nothing else was skipped than what this box cannot do.
    for _, name, skip in results:
        if skip is not None:
            no_files = "files" in skip and "files" not in image_box.capabilities
            assert no_files or skip == NO_MIRROR, (name, skip)
