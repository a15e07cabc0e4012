"""`cmake --install` (issue 12, 16): the install rules put boxd, boxctl, the client library with
its headers and pkg-config file, languages.conf, the systemd unit and the man pages into a prefix,
and a C program built only from that tree (`pkg-config --cflags --libs boxclient`) talks to a
real boxd. The build directory is the one holding BOXD_BIN."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import BOXD_BIN, REPO

BUILD = os.path.dirname(os.path.abspath(BOXD_BIN))

PING_C = r"""
#include <boxd/client.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    struct box_client c;
    struct box_msg m;
    if (argc != 2 || box_msg_init(&m) < 0 || box_client_connect(&c, argv[1]) < 0)
        return 2;
    if (box_client_hello(&c, "install-test", 5000, &m) < 0)
        return 3;
    struct msg_out o;
    uint64_t req;
    if (box_req_begin(&c, &o, "ping", 0, &req) < 0 || box_client_call(&c, &o, req, &m, 5000) < 0)
        return 4;
    if (!box_msg_is(&m, "pong"))
        return 5;
    printf("pong from pid %lld, %s\n", (long long)c.agent_pid, c.agent);
    box_msg_destroy(&m);
    box_client_close(&c);
    return 0;
}
"""


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    if not os.path.exists(os.path.join(BUILD, "cmake_install.cmake")):
        pytest.skip("%s is not a CMake build directory" % BUILD)
    for tool in ("cmake", "pkg-config", "cc"):
        if shutil.which(tool) is None:
            pytest.skip("needs %s" % tool)
    d = str(tmp_path_factory.mktemp("prefix"))
    p = subprocess.run(["cmake", "--install", BUILD, "--prefix", d], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120)
    assert p.returncode == 0, p.stdout.decode()
    return d


def installed(prefix):
    out = []
    for root, _dirs, files in os.walk(prefix):
        out += [os.path.relpath(os.path.join(root, f), prefix) for f in files]
    return sorted(out)


def test_install_puts_every_piece_in_place(prefix):
    files = installed(prefix)
    for want in ("sbin/boxd", "bin/boxctl", "include/boxd/client.h", "include/boxd/codec.h",
                 "etc/boxd/languages.conf", "lib/systemd/system/boxd.service",
                 "share/man/man8/boxd.8", "share/man/man1/boxctl.1", "include/boxd/schema.h",
                 "share/doc/boxd/PROTOCOL.md"):
        assert want in files, files
    assert any(re.match(r"lib(/[^/]+)?/libboxclient\.a$", f) for f in files), files
    assert any(re.match(r"lib(/[^/]+)?/pkgconfig/boxclient\.pc$", f) for f in files), files
    for lib in ("boxclient", "boxcodec", "boxschema", "boxcommon"):
        assert any(re.match(r"lib(/[^/]+)?/lib%s\.a$" % lib, f) for f in files), (lib, files)
    assert os.access(os.path.join(prefix, "sbin/boxd"), os.X_OK)
    with open(os.path.join(REPO, "packaging", "languages.conf"), "rb") as a, \
            open(os.path.join(prefix, "etc/boxd/languages.conf"), "rb") as b:
        assert a.read() == b.read()


def test_man_page_lists_every_option(prefix):
    """boxd.8 is generated from `boxd --help`: every long option main.c parses is in it."""
    with open(os.path.join(REPO, "agent", "main.c")) as f:
        src = f.read()
    table = src[src.index("static const struct option opts[]"):]
    table = table[:table.index("};")]
    names = re.findall(r'\{"([a-z0-9-]+)",', table)
    assert len(names) > 30, names
    with open(os.path.join(prefix, "share/man/man8/boxd.8")) as f:
        page = f.read().replace("\\-", "-")
    missing = [n for n in names if not re.search(r"--%s(?![a-z0-9-])" % re.escape(n), page)]
    assert missing == [], "options missing from boxd.8: %s" % missing
    assert ".SH OPTIONS" in page and "@OPTIONS@" not in page


def test_pkg_config_program_pings_boxd(prefix, start_boxd, tmp_path):
    pcdirs = [os.path.dirname(os.path.join(prefix, f)) for f in installed(prefix)
              if f.endswith("pkgconfig/boxclient.pc")]
    env = dict(os.environ, PKG_CONFIG_PATH=pcdirs[0])
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "boxclient"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert flags.returncode == 0, flags.stderr.decode()
    words = flags.stdout.decode().split()
    assert "-I%s/include" % prefix in words and "-lboxclient" in words, words
    src = tmp_path / "ping.c"
    src.write_text(PING_C)
    exe = str(tmp_path / "ping")
    # Nothing from the source tree: only the installed headers and libraries.
    # A sanitized tree (tests/run's ASan pass) installs sanitized libraries: the program that
    # links them must be built with the same sanitizers.
    san = (["-fsanitize=address,undefined"] if os.environ.get("BOXD_SANITIZED") == "1"
           and "build-asan" in os.environ.get("BOXD_BIN", "") else [])
    cc = subprocess.run(["cc", "-std=c11", "-Wall", "-Werror"] + san + ["-o", exe, str(src)] + words,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert cc.returncode == 0, cc.stdout.decode()
    d = start_boxd()
    p = subprocess.run([exe, d.sock], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 0, (p.returncode, p.stderr.decode())
    assert p.stdout.decode().startswith("pong from pid %d, boxd " % d.pid)
