"""Hardening of code runs (issue 11, items 7 and 11).

Item 11: a code run of one user cannot change the snippet of another code run of the same user
(the snippet's directory and file are the agent's, group the run's, read-only to runs).

Item 7: interpreter probes (`probe=` and `version=` commands) are runs of the agent's own: they
take the spawner path (seccomp, a cgroup of their own, the run user, the run's oom_score_adj),
their whole tree is killed when they end, and none blocks the event loop."""

import glob
import os
import shutil
import stat
import tempfile
import time

import pytest

from conftest import T, cgroup2_available, wait_for

RUN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUN_USER = "nobody"


def have(prog):
    return shutil.which(prog, path=RUN_PATH) is not None


def code_run(c, lang, code, timeout=30, **opts):
    req = c.next_req()
    msg = {"type": "code", "req": req, "lang": lang, "code": code, "output": True}
    msg.update(opts)
    c.send(msg)
    return c.collect(req, timeout=T(timeout))


def user_dir():
    """A directory under /tmp that the run user can write (what a box user could plant in)."""
    d = tempfile.mkdtemp(prefix="boxd-plant-", dir="/tmp")
    os.chmod(d, 0o777)
    return d


@pytest.fixture
def user_boxd(start_boxd):
    return start_boxd("--user", RUN_USER)


# ---- item 11: one code run cannot rewrite another's snippet -------------------------------------

# Runs as the run user, detached, for as long as the test lasts: every way it has to change a
# snippet that another code run of the same user is about to execute.
ATTACK = r"""
import glob, os, time
pwn = 'print("PWNED")\n'
hits = 0
end = time.time() + 60
while time.time() < end:
    for d in glob.glob('/tmp/boxd-code-*'):
        f = d + '/main.py'
        try:                                   # overwrite in place
            with open(f, 'w') as fh:
                fh.write(pwn)
            hits += 1
        except OSError:
            pass
        try:                                   # replace by rename
            t = d + '/.x%d' % os.getpid()
            with open(t, 'w') as fh:
                fh.write(pwn)
            os.replace(t, f)
            hits += 1
        except OSError:
            pass
        try:                                   # unlink and recreate
            os.unlink(f)
            with open(f, 'w') as fh:
                fh.write(pwn)
            hits += 1
        except OSError:
            pass
        try:                                   # make it writable, then write
            os.chmod(f, 0o666)
            with open(f, 'w') as fh:
                fh.write(pwn)
            hits += 1
        except OSError:
            pass
        try:                                   # plant a module beside it (sys.path[0])
            with open(d + '/json.py', 'w') as fh:
                fh.write(pwn)
            hits += 1
        except OSError:
            pass
        try:                                   # swap the whole directory
            os.rename(d, d + '.moved')
            os.mkdir(d)
            with open(f, 'w') as fh:
                fh.write(pwn)
            hits += 1
        except OSError:
            pass
    with open(os.environ['HITS'] + '.t', 'w') as fh:
        fh.write(str(hits))
    os.replace(os.environ['HITS'] + '.t', os.environ['HITS'])
"""


def test_snippet_cannot_be_rewritten_by_another_run(user_boxd):
    c = user_boxd.client()
    out = user_dir()
    hits = os.path.join(out, "hits")
    req = c.exec_start(argv=["python3", "-c", ATTACK], id="attacker", follow=False,
                       env={"HITS": hits})
    r = c.collect(req, until_end=False)
    assert r.started, r.error
    # The attacker is up and scanning before the victims start.
    assert wait_for(lambda: os.path.exists(hits), T(10)), "the attacker never ran"
    wrong = []
    for i in range(25):
        want = "mine-%d" % i
        end = code_run(c, "python", "import json\nprint(%r)\n" % want).end
        if end["result"] != want or end["status"] != "completed":
            wrong.append((want, end["status"], end["result"], end.get("stderr")))
    c.cancel("attacker", grace_ms=100)
    c.wait("attacker")
    try:
        n_hits = int(open(hits).read() or "0")
    except ValueError:
        n_hits = -1
    shutil.rmtree(out, ignore_errors=True)
    for d in glob.glob("/tmp/boxd-code-*.moved"):
        shutil.rmtree(d, ignore_errors=True)
    assert not wrong, "snippets changed by another run: %r" % wrong[:5]
    assert n_hits == 0, "the attacker changed %d snippet files" % n_hits


def test_snippet_file_modes_as_run_user(user_boxd):
    c = user_boxd.client()
    code = ("import os, stat\n"
            "f = __file__; d = os.path.dirname(f)\n"
            "sf, sd = os.stat(f), os.stat(d)\n"
            "print(oct(stat.S_IMODE(sf.st_mode)), sf.st_uid, sf.st_gid,"
            " oct(stat.S_IMODE(sd.st_mode)), sd.st_uid, sd.st_gid, os.getuid(), os.getgid(),"
            " os.access(f, os.W_OK), os.access(d, os.W_OK))\n")
    end = code_run(c, "python", code).end
    assert end["status"] == "completed", end
    fmode, fuid, fgid, dmode, duid, dgid, uid, gid, fw, dw = end["result"].split()
    assert (fmode, fuid, dmode, duid) == ("0o440", "0", "0o750", "0")
    assert fgid == gid and dgid == gid and uid != "0"
    assert (fw, dw) == ("False", "False")


# name, program, snippet, what it prints; and a failing snippet whose stderr names its line
LANGS = [
    ("python", "python3", "print('hi')", "hi", "x = 1\nraise ValueError('boom')\n",
     ["main.py", "line 2", "raise ValueError('boom')"]),
    ("js", "node", "console.log('hi')", "hi", "let x = 1;\nthrow new Error('boom');\n",
     ["main.js:2", "boom"]),
    ("bash", "bash", "echo hi", "hi", "echo x\nnosuchcommand-boxd\n", ["main.sh: line 2"]),
    ("perl", "perl", 'print "hi\\n";', "hi", "my $x = 1;\ndie 'boom';\n", ["main.pl line 2"]),
]


@pytest.mark.parametrize("lang,prog,ok,want,bad,trace", [l for l in LANGS if have(l[1])],
                         ids=[l[0] for l in LANGS if have(l[1])])
def test_interpreters_read_only_snippet(user_boxd, lang, prog, ok, want, bad, trace):
    c = user_boxd.client()
    end = code_run(c, lang, ok).end
    assert end["status"] == "completed" and end["result"] == want, end
    end = code_run(c, lang, bad).end
    assert end["status"] == "failed", end
    for t in trace:
        assert t in end["stderr"], (t, end["stderr"])


def test_snippet_dir_removed_as_run_user(user_boxd):
    c = user_boxd.client()
    end = code_run(c, "python", "print(__file__)").end
    d = os.path.dirname(end["result"])
    assert d.startswith("/tmp/boxd-code-")
    assert wait_for(lambda: not os.path.exists(d), T(5))
