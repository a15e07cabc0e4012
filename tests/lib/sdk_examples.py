"""The Python SDK README's examples, extracted and run: one runner that tests/sdk/test_python_sdk.py
(against a test daemon) and tests/boxes/test_sdk_image.py (in the product's box image) share.

Each ```python block of protocol/sdk/python/README.md (optionally preceded by
`<!-- requires: WHAT -->`) runs in a fresh interpreter with PYTHONPATH at the SDK, with one change:
its Box.connect line points at the socket under test (blocks without one get PRELUDE's). What it
prints must match its `# prints:` comments line for line (a comment ending in `...` is a prefix).
"""

import os
import re
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SDK_DIR = os.path.join(REPO, "protocol", "sdk", "python")
README = os.path.join(SDK_DIR, "README.md")
PRELUDE = 'from boxd import Box\n\nbox = Box.connect(socket="unix:/run/boxd.sock")\n'
DOC_SOCKET = '"unix:/run/boxd.sock"'


def readme_examples(readme=README):
    """(name, code, requires) for each ```python block of the SDK README."""
    with open(readme) as f:
        text = f.read()
    out = []
    for m in re.finditer(r"(<!-- requires: (\w+) -->\n)?```python\n(.*?)```", text, re.S):
        code = m.group(3)
        first = next((ln for ln in code.splitlines() if ln.strip()), "")
        out.append(("ex%02d-%s" % (len(out) + 1, re.sub(r"\W+", "_", first)[:40]), code,
                    m.group(2)))
    return out


def expected_prints(code):
    return [m.group(1).rstrip() for m in re.finditer(r"# prints: (.*)$", code, re.M)]


def connect_lines(code):
    return [ln for ln in code.splitlines() if ".connect(" in ln]


def run_example(name, code, socket, cwd, timeout):
    """Runs one example against socket (a path) and asserts it succeeded and printed what its
    `# prints:` comments say. Returns the seconds it took."""
    script = code if connect_lines(code) else PRELUDE + code
    # The one change: the connect line points at the socket under test.
    lines = connect_lines(script)
    assert len(lines) == 1 and DOC_SOCKET in lines[0], lines
    script = script.replace(DOC_SOCKET, repr(socket))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, PYTHONPATH=SDK_DIR), cwd=cwd)
    dt = time.monotonic() - t0
    assert p.returncode == 0, "example %s failed:\n%s\nstderr:\n%s" % (name, code, p.stderr)
    got = p.stdout.splitlines()
    want = expected_prints(code)
    assert len(got) == len(want), "printed %r, the docs say %r" % (got, want)
    for g, w in zip(got, want):
        if w.endswith("..."):
            assert g.startswith(w[:-3]), "printed %r, the docs say %r" % (g, w)
        else:
            assert g == w, "printed %r, the docs say %r" % (g, w)
    return dt
