"""The boxd Debian package (packaging/deb.sh), installed, upgraded and purged with dpkg inside a
namespace box on the Debian rootfs, and the systemd unit it ships.

deb.sh builds in build-deb/ (about 10 s per version here). Two versions are built: the project's
and an upgrade (BOXD_DEB_VERSION=<version>+test1), into a private directory.
"""

import os
import re
import shutil
import subprocess

import pytest

import minibox
from minibox import ok, text

pytestmark = pytest.mark.boxes

DEB_SH = os.path.join(minibox.REPO, "packaging", "deb.sh")
UNIT = os.path.join(minibox.REPO, "packaging", "systemd", "boxd.service")


def project_version():
    with open(os.path.join(minibox.REPO, "CMakeLists.txt")) as f:
        return re.search(r"project\(boxd VERSION ([0-9.]+)", f.read()).group(1)


def build_deb(outdir, version=None):
    env = dict(os.environ, BOXD_DEB_DIR=outdir)
    if version:
        env["BOXD_DEB_VERSION"] = version
    p = subprocess.run([DEB_SH], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                       timeout=900)
    assert p.returncode == 0, p.stderr.decode("utf-8", "replace")[-3000:]
    last = p.stdout.decode().splitlines()[-1]
    assert os.path.isfile(last) and last.endswith(".deb"), last
    return last


@pytest.fixture(scope="module")
def debs(rootfs, tmp_path_factory):
    if shutil.which("cpack") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs cpack and dpkg-deb")
    out = str(tmp_path_factory.mktemp("debs"))
    v1 = project_version()
    first = build_deb(out)
    # Idempotent: a second call makes the same package again and prints the same path.
    assert build_deb(out) == first
    up = build_deb(out, v1 + "+test1")
    return {"v1": v1, "v2": v1 + "+test1", "first": first, "upgrade": up}


def deb_field(path, field):
    return subprocess.run(["dpkg-deb", "-f", path, field], stdout=subprocess.PIPE,
                          check=True).stdout.decode().strip()


def test_package_contents_and_unit(debs):
    deb = debs["first"]
    assert deb_field(deb, "Package") == "boxd"
    assert deb_field(deb, "Version") == debs["v1"]
    deps = deb_field(deb, "Depends")
    for lib in ("libc6", "libuv1", "libmsgpackc2", "libseccomp2"):
        assert lib in deps, deps
    files = subprocess.run(["dpkg-deb", "-c", deb], stdout=subprocess.PIPE,
                           check=True).stdout.decode()
    for want in ("./usr/sbin/boxd", "./usr/bin/boxctl", "./etc/boxd/languages.conf",
                 "./usr/include/boxd/client.h", "/pkgconfig/boxclient.pc",
                 "./usr/share/man/man8/boxd.8", "/systemd/system/boxd.service"):
        assert want in files, (want, files)
    conffiles = subprocess.run(["sh", "-c", "dpkg-deb --ctrl-tarfile %s | tar -xO ./conffiles"
                                % deb], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert conffiles.split() == ["/etc/boxd/languages.conf"]
    with open(UNIT) as f:
        unit = f.read()
    for line in ("Type=notify", "Delegate=yes", "OOMScoreAdjust=-1000", "Restart=always",
                 "ExecStart=/usr/sbin/boxd $BOXD_ARGS"):
        assert re.search("^%s$" % re.escape(line), unit, re.M), line
    if shutil.which("systemd-analyze"):
        p = subprocess.run(["systemd-analyze", "verify", UNIT], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        # Only the absent binary and man page may be reported (this host has no boxd installed).
        bad = [l for l in p.stdout.decode().splitlines()
               if l and "not executable" not in l and "man boxd" not in l]
        assert bad == [], bad


def copy_in(box, path):
    dest = "/tmp/" + os.path.basename(path)
    shutil.copyfile(path, os.path.join(box.root, dest.lstrip("/")))
    return dest


# The packaged boxd, started inside the box as a daemon the way systemd starts it: with a
# NOTIFY_SOCKET. It must send READY=1 only once it serves, and STOPPING=1 on SIGTERM.
NOTIFY_PY = r"""
import os, socket, subprocess, sys, time
d = "/tmp/notify-test"
os.makedirs(d, exist_ok=True)
ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
path = d + "/notify.sock"
if os.path.exists(path):
    os.unlink(path)
ns.bind(path)
ns.settimeout(10)
sock = d + "/boxd.sock"
p = subprocess.Popen(["/usr/sbin/boxd", "--listen", "unix:" + sock],
                     env={"NOTIFY_SOCKET": path, "PATH": "/usr/bin:/bin"},
                     stderr=open(d + "/stderr", "w"))
msg = ns.recv(4096).decode()
serving = subprocess.run(["boxctl", "-s", sock, "ping"], stdout=subprocess.PIPE).returncode
p.terminate()
stop = ns.recv(4096).decode()
print("|".join([repr(msg), str(serving), repr(stop), str(p.wait(10))]))
"""


def test_install_upgrade_purge_in_a_box(debs, box, client):
    v1, v2 = debs["v1"], debs["v2"]
    first = copy_in(box, debs["first"])
    up = copy_in(box, debs["upgrade"])

    # Install: dpkg resolves the dependencies against the box's own libraries.
    ok(client.run("dpkg -i %s" % first, timeout_ms=120000))
    assert ok(client.run("dpkg-query -W -f '${Status} ${Version}' boxd")) == \
        "install ok installed " + v1
    assert ok(client.run("/usr/sbin/boxd --version")).startswith("boxd %s " % v1)
    # The packaged boxctl talks to the box's PID 1.
    assert ok(client.run("boxctl -s /run/boxd.sock ping")).strip() != ""
    assert ok(client.run("test -f /lib/systemd/system/boxd.service && echo unit")) == "unit"
    # No systemd runs in the box: postinst only registered the unit, started nothing.
    assert "boxd" == ok(client.run("cat /proc/1/comm"))
    assert ok(client.run("pgrep -c -x boxd || true")) == "1"

    # sd_notify from the packaged binary, as systemd would see it.
    ok(client.run("cat > /tmp/notify.py <<'EOF'\n%sEOF" % NOTIFY_PY))
    out = ok(client.run("python3 /tmp/notify.py", timeout_ms=60000))
    ready, serving, stopping, rc = out.split("|")
    assert ready.startswith("'READY=1") and serving == "0", out
    assert stopping.startswith("'STOPPING=1") and rc == "0", out

    # Upgrade, with the conffile changed by the admin: the change is kept.
    ok(client.run("echo '# local change' >> /etc/boxd/languages.conf"))
    ok(client.run("dpkg -i %s" % up, timeout_ms=120000))
    assert ok(client.run("dpkg-query -W -f '${Version}' boxd")) == v2
    assert ok(client.run("/usr/sbin/boxd --version")).startswith("boxd %s " % v2)
    assert ok(client.run("tail -n 1 /etc/boxd/languages.conf")) == "# local change"

    # Remove keeps the conffile; purge takes it and /etc/boxd.
    ok(client.run("dpkg -r boxd", timeout_ms=120000))
    assert ok(client.run("test ! -e /usr/sbin/boxd && test ! -e /usr/bin/boxctl && "
                         "test -f /etc/boxd/languages.conf && echo removed")) == "removed"
    ok(client.run("dpkg --purge boxd", timeout_ms=120000))
    assert ok(client.run("test ! -e /etc/boxd && echo purged")) == "purged"
    end = client.run("dpkg-query -W -f '${Status}' boxd")
    assert "install ok installed" not in text(end.get("stdout"))
    # The box's PID 1 (its binary unlinked under it) still serves.
    assert ok(client.run("echo still-here")) == "still-here"
