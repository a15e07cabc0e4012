"""Code runs: the `code` request, the language table and its override file, the snippet's
private file, and `boxctl code` (PROTOCOL.md 4.8)."""

import glob
import json
import os
import shutil
import signal
import time

import pytest

from conftest import REPO, T, read_stat, wait_for

# The PATH a run gets (PROTOCOL.md 4.1): the interpreters tests expect are searched there.
RUN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def have(prog):
    return shutil.which(prog, path=RUN_PATH) is not None


# name, program, hello snippet, exit-7 snippet, syntax error snippet, the file traces name
LANGS = [
    ("python", "python3", "print('hello')", "import sys\nsys.exit(7)", "print('x'", "main.py"),
    ("js", "node", "console.log('hello')", "process.exit(7)", "console.log('x'", "main.js"),
    ("bash", "bash", "echo hello", "exit 7", "if then fi", "main.sh"),
    ("sh", "sh", "echo hello", "exit 7", "( echo", "main.sh"),
    ("perl", "perl", 'print "hello\\n";', "exit 7;", 'print "x', "main.pl"),
    ("ruby", "ruby", "puts 'hello'", "exit 7", "puts('x'", "main.rb"),
    ("php", "php", "<?php echo \"hello\\n\";", "<?php exit(7);", "<?php echo (;", "main.php"),
]
PRESENT = [l for l in LANGS if have(l[1])]
IDS = [l[0] for l in PRESENT]


def code_start(c, lang, code, req=None, **opts):
    if req is None:
        req = c.next_req()
    msg = {"type": "code", "req": req}
    if lang is not None:
        msg["lang"] = lang
    if code is not None:
        msg["code"] = code
    msg.setdefault("output", True)
    msg.update(opts)
    c.send(msg)
    return req


def code_run(c, lang, code, wait_s=None, **opts):
    """Runs a snippet with follow; opts are request fields (`timeout` is the run's, in ms)."""
    opts.setdefault("output", True)
    req = code_start(c, lang, code, **opts)
    return c.collect(req, timeout=T(30) if wait_s is None else wait_s)


def snippet_dirs():
    return set(glob.glob("/tmp/boxd-code-*"))


def test_python_and_node_are_here():
    # The issue asks for python and node at least; the test machine must have them.
    assert have("python3") and have("node")


# ---- the SDK's examples -------------------------------------------------------------------------

def test_sdk_example_js(client):
    res = code_run(client, "js", "console.log('hello')", timeout_ms=10_000)
    assert res.error is None, res.error
    assert res.end["status"] == "completed" and res.end["exit_code"] == 0
    assert res.stdout == b"hello\n" and res.end["stdout"] == "hello\n"
    assert res.end["result"] == "hello"


def test_sdk_example_python(client):
    res = code_run(client, "python", "print('hello')", timeout=10_000)
    assert res.error is None, res.error
    assert res.end["result"] == "hello" and res.end["exit_code"] == 0
    assert res.end["status"] == "completed" and res.end["reason"] == "exit"


@pytest.mark.parametrize("alias,expect", [("py", "python"), ("python3", "python"),
                                          ("PYTHON", "python"), ("node", "js"),
                                          ("javascript", "js")])
def test_aliases(client, alias, expect):
    code = "print('hi')" if expect == "python" else "console.log('hi')"
    res = code_run(client, alias, code)
    assert res.error is None and res.end["result"] == "hi", res


# ---- every language the machine has -------------------------------------------------------------

@pytest.mark.parametrize("lang,prog,hello,exit7,syntax,fname", PRESENT, ids=IDS)
def test_hello(client, lang, prog, hello, exit7, syntax, fname):
    res = code_run(client, lang, hello)
    assert res.error is None, res.error
    assert res.end["status"] == "completed", res.end
    assert res.end["result"] == "hello"


@pytest.mark.parametrize("lang,prog,hello,exit7,syntax,fname", PRESENT, ids=IDS)
def test_exit_code(client, lang, prog, hello, exit7, syntax, fname):
    end = code_run(client, lang, exit7).end
    assert end["status"] == "failed" and end["reason"] == "exit" and end["exit_code"] == 7


@pytest.mark.parametrize("lang,prog,hello,exit7,syntax,fname", PRESENT, ids=IDS)
def test_syntax_error(client, lang, prog, hello, exit7, syntax, fname):
    end = code_run(client, lang, syntax).end
    assert end["status"] == "failed" and end["reason"] == "exit", end
    assert end["exit_code"] != 0
    # The result is the interpreter's own error text, naming the snippet's file.
    assert end["result"] == end["stderr"].rstrip("\n") or end["result"] == end["stderr"][:-1]
    assert end["result"].strip(), end
    if lang != "php":  # php reports parse errors on stdout with display_errors
        assert fname in end["stderr"], end["stderr"]


MULTI = {
    "python": "def f(x):\n    return x * 2\n\nfor i in range(3):\n    print(f(i))\n",
    "js": "function f(x) {\n  return x * 2;\n}\nfor (let i = 0; i < 3; i++) {\n  console.log(f(i));\n}\n",
    "bash": "f() {\n  echo $(( $1 * 2 ))\n}\nfor i in 0 1 2; do\n  f $i\ndone\n",
    "sh": "f() {\n  echo $(( $1 * 2 ))\n}\nfor i in 0 1 2; do\n  f $i\ndone\n",
    "perl": "sub f {\n  return $_[0] * 2;\n}\nfor my $i (0..2) {\n  print f($i), \"\\n\";\n}\n",
    "ruby": "def f(x)\n  x * 2\nend\n3.times { |i| puts f(i) }\n",
    "php": "<?php\nfunction f($x) {\n  return $x * 2;\n}\nfor ($i = 0; $i < 3; $i++) {\n  echo f($i), \"\\n\";\n}\n",
}

UNICODE = {
    "python": "print('héllo wörld ✓ 日本 🎉')",
    "js": "console.log('héllo wörld ✓ 日本 🎉')",
    "bash": "echo 'héllo wörld ✓ 日本 🎉'",
    "sh": "echo 'héllo wörld ✓ 日本 🎉'",
    "perl": "print \"héllo wörld ✓ 日本 🎉\\n\";",
    "ruby": "puts 'héllo wörld ✓ 日本 🎉'",
    "php": "<?php echo \"héllo wörld ✓ 日本 🎉\\n\";",
}


@pytest.mark.parametrize("lang", IDS)
def test_multi_line(client, lang):
    end = code_run(client, lang, MULTI[lang]).end
    assert end["status"] == "completed", end
    assert end["stdout"] == "0\n2\n4\n"


@pytest.mark.parametrize("lang", IDS)
def test_unicode(client, lang):
    end = code_run(client, lang, UNICODE[lang]).end
    assert end["status"] == "completed", end
    assert end["result"] == "héllo wörld ✓ 日本 🎉"


def test_code_as_bin(client):
    res = code_run(client, "python", "print('b\u00e9')".encode())
    assert res.end["result"] == "bé"


def test_runtime_exception_python(client):
    end = code_run(client, "python", "x = 1\nraise ValueError('boom')\n").end
    assert end["status"] == "failed" and end["exit_code"] == 1
    assert "ValueError: boom" in end["result"]
    assert 'main.py", line 2' in end["result"], end["result"]


def test_runtime_exception_js(client):
    end = code_run(client, "js", "const x = 1;\nthrow new Error('boom');\n").end
    assert end["status"] == "failed" and end["exit_code"] == 1
    assert "Error: boom" in end["result"]
    assert "main.js:2" in end["result"], end["result"]


@pytest.mark.skipif(not have("perl"), reason="no perl")
def test_runtime_exception_perl(client):
    end = code_run(client, "perl", "my $x = 1;\ndie 'boom';\n").end
    assert end["status"] == "failed" and end["exit_code"] != 0
    assert "boom at" in end["result"] and "main.pl line 2" in end["result"]


@pytest.mark.parametrize("lang,code", [
    ("python", "import sys\nprint(repr(sys.stdin.read()))"),
    ("js", "let d = ''; process.stdin.on('data', c => d += c); "
           "process.stdin.on('end', () => console.log(JSON.stringify(d)));"),
    ("bash", "cat; echo done"),
])
def test_stdin_absent(client, lang, code):
    t0 = time.monotonic()
    end = code_run(client, lang, code, timeout_ms=5000).end
    assert end["status"] == "completed", end
    assert end["result"] in ("''", '""', "done")
    assert time.monotonic() - t0 < T(4)


def test_stdin_requested(client):
    req = code_start(client, "python", "import sys\nprint(sys.stdin.read().upper())", stdin=True,
                     id="code-stdin")
    started = client.recv_req(req)
    assert started["type"] == "started", started
    assert client.stdin("code-stdin", data="abc", eof=True)["type"] == "ok"
    res = client.collect(req)
    assert res.end["result"] == "ABC"


# ---- the run's environment and options ----------------------------------------------------------

def test_env_cwd_and_interpreter_env(client, tmp_path):
    code = ("import os, sys\n"
            "print(os.environ['FOO'], os.environ.get('PYTHONUNBUFFERED'),"
            " os.environ.get('PYTHONDONTWRITEBYTECODE'), os.getcwd())\n")
    end = code_run(client, "python", code, env={"FOO": "bar"}, cwd=str(tmp_path)).end
    assert end["result"] == "bar 1 1 %s" % tmp_path


def test_request_env_overrides_table_env(client):
    code = "import os\nprint(os.environ.get('PYTHONDONTWRITEBYTECODE'))"
    end = code_run(client, "python", code, env={"PYTHONDONTWRITEBYTECODE": ""}).end
    assert end["result"] == ""


def test_default_cwd_is_home(client):
    end = code_run(client, "python", "import os\nprint(os.getcwd())").end
    home = end["result"]
    assert home == os.path.expanduser("~") or home == "/"


def test_file_private(client):
    code = ("import os, stat\n"
            "print(oct(stat.S_IMODE(os.stat(__file__).st_mode)),"
            " oct(stat.S_IMODE(os.stat(os.path.dirname(__file__)).st_mode)),"
            " os.path.basename(__file__), os.path.dirname(__file__).startswith('/tmp/'))")
    end = code_run(client, "python", code).end
    assert end["result"] == "0o440 0o750 main.py True"


def test_not_in_argv_as_code(client):
    # The snippet is a file, not an argument: ps shows the file's path only.
    code = "import os\nprint(open('/proc/%d/cmdline' % os.getpid()).read().split('\\0')[:-1])"
    end = code_run(client, "python", code).end
    argv = eval(end["result"])  # a list literal printed by the snippet
    assert argv[-1].endswith("/main.py") and "cmdline" not in " ".join(argv)


def test_timeout_ms_and_timeout(client):
    r = code_run(client, "python", "print(1)", timeout_ms=1000, timeout=1000)
    assert r.error and r.error["code"] == "bad_request"
    end = code_run(client, "python", "print(1)", timeout_ms=5000).end
    assert end["status"] == "completed"


def test_retry_same_id(client):
    a = code_run(client, "python", "print('once')", id="code-retry")
    assert a.started["existing"] is False and a.end["result"] == "once"
    b = code_run(client, "python", "print('twice')", id="code-retry")
    assert b.started["existing"] is True
    assert b.end["result"] == "once"


def test_list_shows_language(client):
    code_run(client, "python", "print(1)", id="code-list")
    runs = {r["id"]: r for r in client.list()["runs"]}
    assert runs["code-list"]["cmd"] == "python: main.py"
    assert "argv" not in runs["code-list"]


def test_logs_and_wait(client):
    req = code_start(client, "python", "print('a')\nprint('b')", id="code-logs", follow=False)
    started = client.recv_req(req)
    assert started["type"] == "started" and started["existing"] is False
    end = client.wait("code-logs", output=True)
    assert end["type"] == "end" and end["stdout"] == "a\nb\n"
    page = client.logs("code-logs")
    assert [r[3] for r in page["lines"]] == ["a\n", "b\n"]


# ---- live output --------------------------------------------------------------------------------

LIVE = {
    "python": "import time\nprint('first')\ntime.sleep(1)\nprint('second')",
    "js": "console.log('first'); setTimeout(() => console.log('second'), 1000);",
    "perl": "print \"first\\n\"; sleep 1; print \"second\\n\";",
    "bash": "echo first; sleep 1; echo second",
    "ruby": "puts 'first'; sleep 1; puts 'second'",
    "php": "<?php echo \"first\\n\"; sleep(1); echo \"second\\n\";",
}


@pytest.mark.parametrize("lang", [l for l in IDS if l in LIVE])
def test_output_is_live(client, lang):
    res = code_run(client, lang, LIVE[lang])
    assert res.end["stdout"] == "first\nsecond\n", res.end
    t_first = t_end = None
    for t, m in res.events:
        if m["type"] == "output" and t_first is None:
            t_first = t
        if m["type"] == "end":
            t_end = t
    assert t_first is not None and t_end - t_first >= 0.7, (t_first, t_end)


# ---- timeouts and what they leave ---------------------------------------------------------------

def test_timeout_infinite_loop(client):
    t0 = time.monotonic()
    end = code_run(client, "python", "while True:\n    pass\n", timeout_ms=500).end
    assert end["status"] == "failed" and end["reason"] == "timeout"
    assert time.monotonic() - t0 < T(5)


def test_timeout_js_infinite_loop(client):
    end = code_run(client, "js", "for (;;) {}", timeout_ms=500).end
    assert end["status"] == "failed" and end["reason"] == "timeout"


def test_timeout_ignores_sigterm(client):
    code = ("import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "while True:\n    time.sleep(0.05)\n")
    t0 = time.monotonic()
    end = code_run(client, "python", code, timeout_ms=400, grace_ms=300).end
    assert end["status"] == "failed" and end["reason"] == "timeout"
    assert end["signal"] == 9
    assert time.monotonic() - t0 < T(5)


def test_forked_children_gone_after_timeout(client):
    # Children that ignore TERM, one that left the session, and a grandchild: all must go.
    code = (
        "import os, signal, subprocess, sys, time\n"
        "pids = []\n"
        "for i in range(3):\n"
        "    p = subprocess.Popen(['sh', '-c', 'trap \"\" TERM; while :; do sleep 0.1; done'])\n"
        "    pids.append(p.pid)\n"
        "p = subprocess.Popen(['setsid', 'sleep', '1000'])\n"
        "pids.append(p.pid)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    while True:\n        time.sleep(1)\n"
        "pids.append(pid)\n"
        "print(' '.join(map(str, pids)), flush=True)\n"
        "print(__file__, flush=True)\n"
        "while True:\n    time.sleep(1)\n")
    end = code_run(client, "python", code, timeout_ms=1000, grace_ms=300).end
    assert end["status"] == "failed" and end["reason"] == "timeout", end
    lines = end["stdout"].splitlines()
    pids = [int(p) for p in lines[0].split()]
    assert len(pids) == 5

    def all_gone():
        return all(read_stat(p) is None or read_stat(p)[0] == "Z" for p in pids)
    assert wait_for(all_gone, T(3)), [(p, read_stat(p)) for p in pids]
    assert not os.path.exists(lines[1]) and not os.path.exists(os.path.dirname(lines[1]))


# ---- the snippet's file goes, whatever the ending ------------------------------------------------

PRINT_FILE = "print(__file__, flush=True)\n"


def test_tmp_gone_after_exit(client, tmp_path):
    # What the snippet adds to its directory goes too; a symlink in it is removed, not followed.
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    os.chmod(tmp_path, 0o755)
    end = code_run(client, "python", PRINT_FILE + "open(__file__ + '.extra', 'w').write('x')\n"
                   "import os\nd = os.path.dirname(__file__)\n"
                   "os.makedirs(d + '/sub/deeper')\n"
                   "open(d + '/sub/deeper/f', 'w').write('x')\n"
                   "os.symlink(os.environ['KEEP'], d + '/sub/link')\n",
                   env={"KEEP": str(keep)}).end
    assert end["status"] == "completed", end
    f = end["stdout"].splitlines()[0]
    assert f.startswith("/tmp/") and f.endswith("/main.py")
    assert not os.path.exists(os.path.dirname(f))
    assert (keep / "precious").read_text() == "x"


def test_tmp_gone_after_failure(client):
    end = code_run(client, "python", PRINT_FILE + "raise SystemExit(3)").end
    assert end["exit_code"] == 3
    assert not os.path.exists(os.path.dirname(end["stdout"].splitlines()[0]))


def test_tmp_gone_after_timeout(client):
    end = code_run(client, "python", PRINT_FILE + "import time\ntime.sleep(100)",
                   timeout_ms=500).end
    assert end["reason"] == "timeout"
    assert not os.path.exists(os.path.dirname(end["stdout"].splitlines()[0]))


def test_tmp_gone_after_cancel(client):
    req = code_start(client, "python", PRINT_FILE + "import time\ntime.sleep(100)", id="code-cancel")
    assert client.recv_req(req)["type"] == "started"
    f = None
    deadline = time.monotonic() + T(10)
    while f is None and time.monotonic() < deadline:
        m = client.recv_req(req, timeout=T(10))
        if m["type"] == "output":
            f = m["lines"][0][3].strip()
    assert f and os.path.exists(f)
    client.cancel("code-cancel", grace_ms=200)
    res = client.collect(req)
    assert res.end["status"] == "cancelled"
    assert not os.path.exists(os.path.dirname(f))


def snippet_dirs_holding(code):
    """The snippet directories whose file holds exactly this code: other tests' daemons (in
    parallel workers) make and remove snippet directories of their own in the same /tmp."""
    found = set()
    for d in snippet_dirs():
        for f in glob.glob(os.path.join(d, "*")):
            try:
                with open(f) as fh:
                    if fh.read() == code:
                        found.add(d)
            except OSError:
                pass
    return found


def test_tmp_gone_after_spawn_failure(client):
    code = "print('tmp gone after spawn failure %s')" % os.getpid()
    r = code_run(client, "python", code, cwd="/nonexistent-dir-for-boxd", id="code-sf")
    assert r.error and r.error["code"] == "spawn_failed" and r.error["stage"] == "chdir"
    assert client.wait("code-sf")["reason"] == "spawn"
    assert not snippet_dirs_holding(code)


def test_tmp_gone_after_shutdown(start_boxd):
    d = start_boxd()
    c = d.client()
    req = code_start(c, "python", PRINT_FILE + "import time\ntime.sleep(100)")
    assert c.recv_req(req)["type"] == "started"
    m = c.recv_req(req, timeout=T(10))
    f = m["lines"][0][3].strip()
    assert os.path.exists(f)
    assert d.terminate() == 0
    assert not os.path.exists(os.path.dirname(f))


# ---- refusals -----------------------------------------------------------------------------------

def test_unknown_language(client):
    before = client.info()["started_total"]
    dirs = snippet_dirs()
    r = code_run(client, "cobol", "DISPLAY 'x'")
    assert r.started is None and r.error["code"] == "unknown_lang"
    assert "python" in r.error["available"] and "js" in r.error["available"]
    assert "python" in r.error["message"]
    assert client.info()["started_total"] == before
    assert snippet_dirs() == dirs


def test_missing_language(client):
    r = code_run(client, None, "print(1)")
    assert r.error["code"] == "unknown_lang" and "python" in r.error["available"]


@pytest.mark.parametrize("msg", [{"lang": 3, "code": "x"}, {"lang": "python"},
                                 {"lang": "python", "code": 5},
                                 {"lang": "python", "code": "x", "env": {"A=B": "c"}}])
def test_bad_requests(client, msg):
    r = client.request("code", **msg)
    assert r["type"] == "error" and r["code"] == "bad_request", r


def test_oversized_snippet(client):
    limit = client.hello_reply["limits"]["max_code"]
    assert limit == 256 * 1024
    r = code_run(client, "python", "#" * (limit + 1))
    assert r.error["code"] == "too_large"
    end = code_run(client, "python", "#" * (limit - 20) + "\nprint('ok')").end
    assert end["result"] == "ok"


def test_language_not_on_path(client):
    # With a PATH that has no python, python is not available to this run.
    r = code_run(client, "python", "print(1)", env={"PATH": "/nonexistent"})
    assert r.error["code"] == "unknown_lang" and "python" not in r.error["available"]


def test_ts_only_where_runnable(client):
    langs = {l["name"] for l in client.info()["languages"]}
    r = code_run(client, "ts", "const x: number = 1;\nconsole.log(x);")
    if "ts" in langs:
        assert r.end["result"] == "1"
    else:
        assert r.error["code"] == "unknown_lang"


# ---- hello and info -----------------------------------------------------------------------------

def test_hello_advertises_code(client):
    assert "code" in client.hello_reply["capabilities"]


def test_info_languages(client):
    info = client.info()
    langs = {l["name"]: l for l in info["languages"]}
    for name, prog, *_ in PRESENT:
        assert name in langs, (name, info["languages"])
        l = langs[name]
        assert os.path.isabs(l["path"]) and os.access(l["path"], os.X_OK)
        assert os.path.basename(l["path"]) == os.path.basename(os.path.realpath(
            shutil.which(prog, path=RUN_PATH))) or os.path.basename(l["path"]) == prog
        assert isinstance(l["aliases"], list)
    assert langs["python"]["version"].startswith("Python 3")
    assert langs["js"]["version"].startswith("v")
    assert "py" in langs["python"]["aliases"]
    if "sh" in langs:
        assert langs["sh"]["version"] is None
    for absent in ("cobol", "ruby", "php"):
        if absent not in IDS:
            assert absent not in langs
    t0 = time.monotonic()
    client.info()
    assert time.monotonic() - t0 < T(0.5)  # versions are cached


# ---- the override file ----------------------------------------------------------------------------

def test_override_file(start_boxd, tmp_path):
    if not have("awk"):
        pytest.skip("no awk")
    conf = tmp_path / "languages.conf"
    conf.write_text(
        "# a test override\n"
        "awk2 aliases=awkk file=prog.awk version=--version cmd=awk -f {file}\n"
        "python file=snippet.py env=MARK=over cmd=python3 {file}\n"
        "perl off\n"
        "this line is bad\n"
        "ghost cmd=/nonexistent/ghost {file}\n")
    d = start_boxd(env={"BOXD_LANGUAGES": str(conf)})
    c = d.client()
    langs = {l["name"]: l for l in c.info()["languages"]}
    assert "awk2" in langs and langs["awk2"]["aliases"] == ["awkk"]
    assert "perl" not in langs and "ghost" not in langs
    assert "js" in langs
    end = code_run(c, "awk2", 'BEGIN { print "hi from awk" }').end
    assert end["result"] == "hi from awk"
    end = code_run(c, "awkk", 'BEGIN { exit 4 }').end
    assert end["exit_code"] == 4
    end = code_run(c, "python", "import os\nprint(os.path.basename(__file__), os.environ['MARK'],"
                   " os.environ.get('PYTHONUNBUFFERED'))").end
    assert end["result"] == "snippet.py over None"
    r = code_run(c, "perl", "print 1")
    assert r.error["code"] == "unknown_lang" and "awk2" in r.error["available"]
    assert "perl" not in r.error["available"]
    r = code_run(c, "ghost", "x")
    assert r.error["code"] == "unknown_lang"
    c.close()
    assert d.terminate() == 0
    assert "line skipped" in d.stderr_text()


def test_default_table_is_the_packaged_file(boxd):
    # The built-in table is generated from packaging/languages.conf: the daemon's entries are
    # that file's entries (python, js, ts, bash, sh, ruby, perl, php).
    names = []
    with open(os.path.join(REPO, "packaging", "languages.conf")) as f:
        for line in f:
            w = line.split()
            if w and not w[0].startswith("#") and w[0] not in names:
                names.append(w[0])
    assert names == ["python", "js", "ts", "bash", "sh", "ruby", "perl", "php"]
    c = boxd.client()
    got = [l["name"] for l in c.info()["languages"]]
    assert got == [n for n in names if n in got]
    assert set(IDS) <= set(got)


# ---- boxctl code --------------------------------------------------------------------------------

def test_boxctl_code(boxctl, tmp_path):
    p = boxctl.run("code", "--lang", "js", "console.log('hello')")
    assert p.returncode == 0 and p.stdout == b"hello\n", p
    p = boxctl.run("code", "--json", "--lang", "python", "--timeout", "10000", "print('hello')")
    assert p.returncode == 0, p
    j = json.loads(p.stdout)
    assert j["result"] == "hello" and j["output"] == "hello\n" and j["exit_code"] == 0
    assert j["stdout"] == "hello\n" and j["status"] == "completed"
    f = tmp_path / "s.py"
    f.write_text("import sys\nprint('from file')\nsys.exit(5)\n")
    p = boxctl.run("code", "-l", "py", "-f", str(f))
    assert p.returncode == 5 and p.stdout == b"from file\n"
    p = boxctl.run("code", "-l", "python", "-", input=b"print('from stdin')\n")
    assert p.returncode == 0 and p.stdout == b"from stdin\n"


def test_boxctl_code_errors(boxctl):
    p = boxctl.run("code", "--lang", "cobol", "x")
    assert p.returncode == 1 and b"unknown_lang" in p.stderr and b"python" in p.stderr
    assert boxctl.run("code", "print(1)").returncode == 2
    assert boxctl.run("code", "-l", "py").returncode == 2
    p = boxctl.run("code", "--json", "-l", "py", "--timeout", "300", "import time\ntime.sleep(5)")
    j = json.loads(p.stdout)
    assert p.returncode == 0 and j["reason"] == "timeout" and j["output"] == ""


def test_boxctl_code_detach(boxctl):
    p = boxctl.run("code", "--detach", "--id", "cd1", "-l", "sh", "echo later")
    assert p.returncode == 0 and p.stdout == b"cd1\n"
    p = boxctl.run("wait", "--json", "cd1")
    assert json.loads(p.stdout)["result"] == "later"
