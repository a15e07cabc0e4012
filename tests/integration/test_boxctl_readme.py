"""Every boxctl example in README.md, run as written (in one shell, in order, so that `id=$(...)`
carries over), against a fresh daemon. A command must succeed unless the README shows the error
it prints; plain-text outputs the README shows must match exactly."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import BOXCTL_BIN, REPO, T


def readme_examples():
    """[(command, [expected lines])] for every `$ ` line of README.md that runs build/boxctl."""
    text = open(os.path.join(REPO, "README.md")).read()
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        cur = None
        for line in block.splitlines():
            if line.startswith("$ "):
                cur = (line[2:], [])
                if "build/boxctl" in cur[0]:
                    out.append(cur)
                else:
                    cur = None
            elif cur is not None:
                cur[1].append(line)
    return out


def test_readme_has_boxctl_examples():
    assert len(readme_examples()) >= 8


def test_readme_examples_run_as_written(boxd, tmp_path):
    examples = readme_examples()
    have_node = shutil.which("node") is not None
    work = tmp_path / "work"
    (work / "build").mkdir(parents=True)
    os.symlink(BOXCTL_BIN, work / "build" / "boxctl")
    (work / "script.py").write_text("print('from script.py')\n")
    # The files example starts in a project directory (README "Files").
    (work / "src").mkdir()
    (work / "src" / "main.js").write_text("console.log('built')\n")
    (work / "package.json").write_text(
        '{"name": "demo", "scripts": {"build": "mkdir -p dist && cp src/main.js dist/"}}\n')
    lines = ["cd '%s'" % work]
    for i, (cmd, _) in enumerate(examples):
        lines.append("{ %s\n} >out.%d 2>err.%d; echo $? >rc.%d" % (cmd, i, i, i))
    lines.append("wait")
    env = dict(os.environ, BOXD_SOCKET=boxd.sock)
    p = subprocess.run(["/bin/bash", "-c", "\n".join(lines)], env=env, timeout=T(60),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.returncode == 0, p
    for i, (cmd, expected) in enumerate(examples):
        rc = int((work / ("rc.%d" % i)).read_text())
        out = (work / ("out.%d" % i)).read_bytes().decode()
        err = (work / ("err.%d" % i)).read_bytes().decode()
        needs_node = "node" in cmd or "--lang js" in cmd or "npm" in cmd
        if needs_node and not have_node:
            continue
        shows_error = any(e.startswith("boxctl: ") for e in expected)
        if shows_error:
            assert rc != 0, (cmd, out, err)
            code = expected[0].split(":")[1].strip()
            assert code in err, (cmd, err)
            continue
        assert rc == 0, (cmd, rc, out, err)
        plain = [e for e in expected if not re.search(r"[{\[]|\.\.\.", e)]
        if plain and len(plain) == len(expected):
            assert out.splitlines() == plain, (cmd, out)
        if cmd.startswith("build/boxctl cp -a --json :/tmp/work/dist"):
            assert (work / "dist" / "main.js").read_text() == "console.log('built')\n", cmd
        if "wait --json" in cmd:
            assert '"status":"cancelled"' in out, (cmd, out)
