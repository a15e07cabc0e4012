"""scripts/local-box.sh, the README's first set-up command: it builds, starts boxd in the
background and returns once boxd serves (so it pastes together with tests/run), saying where
the log is and how to stop it; `status` and `--stop` do what they say, also when nothing runs.

It builds the repository's build/, so it runs only when BOXD_BIN is build/boxd (the normal
configuration); a private socket and state directory keep it off /run/boxd.sock."""

import os
import subprocess
import tempfile

import pytest

from conftest import BOXD_BIN, BOXCTL_BIN, REPO, T, wait_for

SCRIPT = os.path.join(REPO, "scripts", "local-box.sh")


@pytest.fixture
def env():
    if os.geteuid() != 0:
        pytest.skip("local-box.sh needs root")
    if os.path.realpath(BOXD_BIN) != os.path.realpath(os.path.join(REPO, "build", "boxd")):
        pytest.skip("local-box.sh builds build/; BOXD_BIN is another build (%s)" % BOXD_BIN)
    d = tempfile.mkdtemp(prefix="lbox-", dir="/tmp")
    os.chmod(d, 0o700)
    e = dict(os.environ, BOXD_SOCKET=os.path.join(d, "boxd.sock"),
             BOXD_LOCAL_DIR=os.path.join(d, "state"))
    yield e
    subprocess.run([SCRIPT, "--stop"], env=e, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)
    subprocess.run(["rm", "-rf", d])


def run(env, *args, timeout=600):
    p = subprocess.run([SCRIPT] + list(args), env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_start_returns_once_serving_then_status_and_stop(env):
    sock = env["BOXD_SOCKET"]
    rc, out, err = run(env)
    assert rc == 0, err
    assert out.splitlines()[-1] == sock
    # It said what it was doing, where the log is and how to stop it.
    for want in ("building boxd and boxctl", "log:", "--stop", "serves unix:" + sock):
        assert want in err, err
    log = os.path.join(env["BOXD_LOCAL_DIR"], "boxd.log")
    assert os.path.exists(log)
    # Serving already when the command returned: no wait needed.
    p = subprocess.run([BOXCTL_BIN, "-s", sock, "exec", "echo hello"], stdout=subprocess.PIPE,
                       timeout=30)
    assert p.stdout == b"hello\n"
    with open(os.path.join(env["BOXD_LOCAL_DIR"], "boxd.pid")) as f:
        pid = int(f.read())
    # A second start changes nothing and says so.
    rc, out, err = run(env)
    assert rc == 0 and "already serving" in err and out.strip() == sock
    rc, _out, err = run(env, "status")
    assert rc == 0 and ("pid %d" % pid) in err and "mode: daemon" in err, err
    rc, _out, err = run(env, "--stop")
    assert rc == 0 and "stopped" in err, err
    assert wait_for(lambda: not os.path.exists("/proc/%d" % pid)
                    or open("/proc/%d/stat" % pid).read().split()[2] == "Z", T(5))
    # Nothing runs now: both say so, neither pretends.
    rc, _out, err = run(env, "--stop")
    assert rc == 1 and "nothing to stop" in err, err
    rc, _out, err = run(env, "status")
    assert rc == 3 and "no local boxd is running" in err, err


def test_a_failed_start_says_why(env):
    rc, _out, err = run(env, "--", "--max-runs", "0")
    assert rc == 1 and "boxd exited at start-up" in err and "bad value '0' for --max-runs" in err, err
    rc, _out, _err = run(env, "status")
    assert rc == 3
