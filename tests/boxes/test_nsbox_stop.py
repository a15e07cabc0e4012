"""`nsbox.sh --stop NAME` for a box that does not exist fails and says so (issue 16): a typo must
not look like a clean stop."""

import subprocess

import pytest

import minibox

pytestmark = pytest.mark.boxes


def test_stop_of_an_unknown_box_fails_loudly(rootfs):
    p = subprocess.run([minibox.NSBOX, "--stop", "no-such-box-unknown"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 1
    assert "no box named no-such-box" in p.stderr.decode(), p.stderr
    assert p.stdout == b""


