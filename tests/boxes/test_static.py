"""boxd-static (-DBOXD_STATIC=ON) as PID 1 of a namespace box whose root holds nothing but a
static busybox, its applet links, /etc/passwd and /etc/group: no glibc, no NSS, no shared
library at all. The proof that boxd drops into any image (issue 16).

The static binary is BOXD_STATIC_BIN, else <repo>/build-static/boxd-static, built here when
missing (about a minute). busybox comes from Debian's busybox-static (scripts/deps.sh boxes).
"""

import os
import shutil
import subprocess

import pytest

import minibox
from conftest import started_box
from minibox import ok, text

pytestmark = pytest.mark.boxes

BUILD = os.path.join(minibox.REPO, "build-static")
STATIC = os.environ.get("BOXD_STATIC_BIN", os.path.join(BUILD, "boxd-static"))
BUSYBOX = "/bin/busybox"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nbox:x:1000:1000:Box User:/home/box:/bin/sh\n"
GROUP = "root:x:0:\nbox:x:1000:\nextra:x:2000:nobody,box\n"


@pytest.fixture(scope="module")
def boxd_static(rootfs):
    if not os.access(STATIC, os.X_OK):
        if "BOXD_STATIC_BIN" in os.environ:
            pytest.fail("BOXD_STATIC_BIN=%s is not executable" % STATIC)
        for cmd in (["cmake", "-S", minibox.REPO, "-B", BUILD, "-DBOXD_STATIC=ON"],
                    ["cmake", "--build", BUILD, "-j2", "--target", "boxd-static"]):
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
            assert p.returncode == 0, p.stdout.decode()[-3000:]
    # Statically linked: no interpreter, no NEEDED entries.
    dyn = subprocess.run(["objdump", "-p", STATIC], stdout=subprocess.PIPE).stdout.decode()
    assert "NEEDED" not in dyn and "INTERP" not in dyn
    return STATIC


def is_static_busybox(path):
    if not os.access(path, os.X_OK):
        return False
    dyn = subprocess.run(["objdump", "-p", path], stdout=subprocess.PIPE).stdout.decode()
    return "NEEDED" not in dyn


@pytest.fixture
def busybox_root(tmp_path):
    if not is_static_busybox(BUSYBOX):
        pytest.skip("needs Debian's busybox-static at %s (scripts/deps.sh boxes)" % BUSYBOX)
    root = tmp_path / "root"
    for d in ("bin", "sbin", "usr", "etc", "proc", "sys", "dev/pts", "run", "tmp", "root",
              "home/box"):
        (root / d).mkdir(parents=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], stdout=subprocess.PIPE,
                             check=True).stdout.decode().split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", root / "bin" / a)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    os.chown(root / "home" / "box", 1000, 1000)
    os.mknod(root / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.chmod(root / "dev" / "null", 0o666)
    return root


def regular_files(root):
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(os.path.relpath(p, root))
    return sorted(out)


def test_static_boxd_is_pid1_of_a_busybox_root(boxd_static, busybox_root):
    root = str(busybox_root)
    with started_box(extra_args=["--root", root, "--boxd", boxd_static,
                                 "--boxctl", "/nonexistent"],
                     boxd_args=["--user", "box"]) as box:
        # Nothing but busybox, boxd and the two files (and the resolv.conf nsbox.sh copies from
        # the host at each start): no libc, no loader, no NSS.
        files = [f for f in regular_files(root) if f != "etc/resolv.conf"]
        assert files == ["bin/busybox", "etc/group", "etc/passwd", "sbin/boxd"], files
        with box.client() as c:
            hello = c.hello()
            assert hello["pid"] == 1
            info = c.request({"type": "info"})
            assert info["pid1"] is True and info["mode"] == "container"
            assert ok(c.run("exec echo hi")) == "hi"
            # The run user comes from /etc/passwd and /etc/group, read without NSS.
            ident = ok(c.run("echo $(id -u) $(id -g) $(id -G) $HOME $USER"))
            uid, gid, *rest = ident.split()
            assert (uid, gid) == ("1000", "1000"), ident
            assert "2000" in rest and rest[-2:] == ["/home/box", "box"], ident
            assert ok(c.run("cat /proc/1/comm")) == "boxd"
            end = c.run("touch /root/x")
            assert end["exit_code"] != 0 and "denied" in text(end["stderr"])
