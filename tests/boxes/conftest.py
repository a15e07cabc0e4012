"""Fixtures for the box tests: the cached Debian rootfs and namespace boxes on it.

The first run builds the rootfs with debootstrap (about 30 s, packaging/rootfs.sh); later runs find
it cached in /var/cache/boxd/rootfs-bookworm and a box starts in about 0.1 s. Tests are skipped,
with the reason, when the machine cannot make boxes (not root, no debootstrap or no mirror, no
cgroup2, no built boxd).

Environment: BOXD_BIN (default <repo>/build/boxd), BOXD_ROOTFS, BOXD_BOXES_DIR (see packaging/).
"""

import contextlib
import itertools
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import minibox  # noqa: E402

BOXD_BIN = os.environ.get("BOXD_BIN", os.path.join(minibox.REPO, "build", "boxd"))
_names = itertools.count(1)


def pytest_configure(config):
    # Registered here too, so that -m boxes works whatever pytest.ini is in use.
    config.addinivalue_line("markers", "boxes: needs a real box (namespace box or microVM)")
    config.addinivalue_line("markers", "vm: boots the microVM box under QEMU")


@pytest.fixture(scope="session")
def rootfs():
    """The cached rootfs directory (built on first use), or a skip saying why there is none."""
    if os.geteuid() != 0:
        pytest.skip("box tests need root (namespaces, mounts, cgroups)")
    for tool in ("unshare", "pivot_root", "perl"):
        if shutil.which(tool) is None:
            pytest.skip("box tests need %s" % tool)
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--cgroup",
                            "--propagation", "private", "true"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if probe.returncode != 0:
        pytest.skip("cannot create namespaces here (an unprivileged container?): " +
                    probe.stderr.decode("utf-8", "replace").strip())
    if minibox.cgroup_root() is None:
        pytest.skip("box tests need a cgroup2 mount (/sys/fs/cgroup/unified or /sys/fs/cgroup)")
    if not os.access(BOXD_BIN, os.X_OK):
        pytest.skip("no boxd binary at %s (cmake --build build --target boxd)" % BOXD_BIN)
    p = subprocess.run([minibox.ROOTFS_SH], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=900)
    if p.returncode != 0:
        tail = "\n".join(p.stderr.decode("utf-8", "replace").splitlines()[-8:])
        pytest.skip("debootstrap cannot run here, so there is no rootfs for boxes:\n" + tail)
    return p.stdout.decode().strip()


@contextlib.contextmanager
def started_box(extra_args=(), boxd_args=()):
    """A namespace box (nsbox.sh EXTRA_ARGS -- BOXD_ARGS), stopped when the block ends. The stop
    checks that nothing of it is left: no cgroup, no state directory, and the host's mount table
    exactly as before."""
    before = minibox.mount_table()
    name = "t%d-%d" % (os.getpid(), next(_names))
    try:
        b = minibox.NsBox(name, extra_args=extra_args, boxd_args=boxd_args, boxd_bin=BOXD_BIN)
    except RuntimeError as e:
        msg = str(e)
        # A sanitizer build links libraries the Debian rootfs does not have.
        if "which" in msg and "lacks" in msg:
            pytest.skip("this boxd cannot run in the box's rootfs: " + msg.strip())
        raise
    try:
        yield b
    finally:
        rc, err = b.stop()
        assert rc == 0, "nsbox.sh --stop failed: " + err
        if b.cgroup:
            assert not os.path.exists(b.cgroup), "box cgroup left behind"
        assert not os.path.lexists(b.state), "box state directory left behind"
        assert minibox.mount_table() == before, "the host's mount table changed"


@pytest.fixture
def box(rootfs):
    """A fresh namespace box, stopped at teardown (see started_box)."""
    with started_box() as b:
        yield b


@pytest.fixture
def client(box):
    with box.client() as c:
        yield c
