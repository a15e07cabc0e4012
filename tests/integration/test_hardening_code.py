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


# ---- item 7: interpreter probes are guarded, asynchronous runs ----------------------------------

def plant(d, name, body):
    """Writes an executable shell script d/name (an "interpreter" a box user planted)."""
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(p, 0o755)
    return p


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_probe_runs_guarded_and_its_daemon_dies(user_boxd):
    c = user_boxd.client()
    d = user_dir()
    try:
        # `ts` is node --experimental-strip-types where node accepts it: a probe. This node
        # reports what it runs under, leaves a daemon behind, and says it cannot.
        plant(d, "node",
              'out=%s/probe.$$\n'
              '{ grep "^Seccomp:" /proc/self/status; echo "cgroup $(grep ^0:: /proc/self/cgroup)"\n'
              '  echo "oom $(cat /proc/self/oom_score_adj)"; echo "uid $(id -u)"; } > $out.t\n'
              'setsid sleep 300 </dev/null >/dev/null 2>&1 &\n'
              'echo "daemon $!" >> $out.t\n'
              'mv $out.t $out\n'
              'exit 1\n' % d)
        r = code_run(c, "ts", "console.log(1)", env={"PATH": d + ":/usr/bin:/bin"})
        assert r.error or r.end  # whatever ts resolves to without that node
        reports = wait_for(lambda: glob.glob(os.path.join(d, "probe.*[0-9]")), T(5))
        assert reports, "the planted node was never probed"
        text = open(reports[0]).read()
        info = dict((line.split(None, 1) + [""])[:2] for line in text.splitlines())
        # What an ordinary run of this agent gets, for comparison.
        ref = c.exec_run("cat /proc/self/oom_score_adj; id -u").end["result"].split()
        with open("/proc/%d/cgroup" % user_boxd.pid) as f:
            boxd_cgroup = [l for l in f.read().splitlines() if l.startswith("0::")][0]
        with open("/proc/%d/oom_score_adj" % user_boxd.pid) as f:
            boxd_oom = f.read().strip()
        assert info["Seccomp:"].strip() == "2", info          # a seccomp filter
        assert info["uid"] == ref[1] != "0", info               # the run user
        assert info["oom"] == ref[0], (info, ref)               # the run's oom_score_adj
        if ref[0] != boxd_oom:
            assert info["oom"] != boxd_oom, info
        if cgroup2_available():
            assert info["cgroup"] != boxd_cgroup, (info, boxd_cgroup)  # a cgroup of its own
        daemon = int(info["daemon"])
        assert wait_for(lambda: not pid_alive(daemon), T(3)), "the probe's daemon survived"
        assert not any(r["id"].startswith("probe") for r in c.list()["runs"])
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.serial
def test_ping_answers_while_a_probe_hangs(user_boxd):
    a, b = user_boxd.client(), user_boxd.client()
    d = user_dir()
    try:
        plant(d, "node", "echo $$ > %s/pid\nsleep 10\n" % d)
        req = a.next_req()
        a.send({"type": "code", "req": req, "lang": "ts", "code": "console.log(1)",
                "output": True, "env": {"PATH": d + ":/usr/bin:/bin"}})
        assert wait_for(lambda: os.path.exists(os.path.join(d, "pid")), T(5))
        worst = 0.0
        t_end = time.monotonic() + 0.6
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            b.ping(timeout=T(5))
            worst = max(worst, time.monotonic() - t0)
        res = a.collect(req, timeout=T(10))
        assert res.error or res.end
        assert worst < T(0.1), "ping took %.0f ms while a probe hung" % (worst * 1000)
        pid = int(open(os.path.join(d, "pid")).read())
        assert wait_for(lambda: not pid_alive(pid), T(3)), "the hung probe was not killed"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_unknown_lang_is_bounded(start_boxd, tmp_path):
    # Six alternatives of one language, each with a probe that hangs: the request is answered
    # within the probe deadline of parallel probes, not six deadlines one after the other.
    d = user_dir()
    try:
        plant(d, "slowint", "sleep 10\n")
        table = tmp_path / "languages.conf"
        table.write_text("".join("slow file=main.s probe=--check%d cmd=slowint {file}\n" % i
                                 for i in range(6)))
        daemon = start_boxd("--user", RUN_USER, env={"BOXD_LANGUAGES": str(table)})
        c = daemon.client()
        t0 = time.monotonic()
        r = code_run(c, "slow", "x", env={"PATH": d + ":/usr/bin:/bin"})
        took = time.monotonic() - t0
        assert r.error and r.error["code"] == "unknown_lang", r
        assert "slow" not in r.error["available"]
        assert took < T(1.6), "unknown_lang took %.0f ms" % (took * 1000)
        # Cached now: the next one is immediate.
        t0 = time.monotonic()
        r = code_run(c, "slow", "x", env={"PATH": d + ":/usr/bin:/bin"})
        assert r.error["code"] == "unknown_lang" and time.monotonic() - t0 < T(0.3)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_info_versions_from_probe_runs(user_boxd):
    # info still reports versions (found by probe runs, as the run user).
    langs = {l["name"]: l for l in user_boxd.client().info()["languages"]}
    assert langs["python"]["version"].startswith("Python 3")
