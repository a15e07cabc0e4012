"""SSH into the product's box image through boxd's tunnels, and a dev server through
`boxctl forward` (issue 14; PROTOCOL.md section 13).

One namespace box is booted from the image with a network namespace of its own (nsbox.sh
--lower IMAGE --net): only its loopback, so nothing on the host reaches a port in the box except
through boxd. In it, as the box's user, `sudo box-sshd` starts the image's sshd on 127.0.0.1:22
(the image makes each box's own host keys then), and the box user's authorized_keys gets a key
made here. From the host:

- `ssh -o ProxyCommand='boxctl -s SOCK tunnel 127.0.0.1:22' box@box CMD` runs a command, and the
  same with `-tt` gives an interactive session on a terminal, driven through a pseudo-terminal
  as a person would (its `tty`, its exit status);
- `boxctl -s SOCK forward LPORT:127.0.0.1:8000` reaches `python3 -m http.server 8000` started in
  the box with an exec, and serves several connections at once.

Run alone:  /usr/bin/python3 -m pytest -m boxes tests/boxes/test_ssh_image.py
"""

import hashlib
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import minibox
from conftest import started_box
from minibox import ok, text
from test_image import image

pytestmark = [pytest.mark.boxes]

BOXCTL_BIN = os.environ.get("BOXCTL_BIN", os.path.join(minibox.REPO, "build", "boxctl"))


def sh(c, cmd, timeout=60):
    return ok(c.run(cmd, timeout_ms=timeout * 1000))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class SshBox:
    def __init__(self, b, c, keydir):
        self.box = b
        self.socket = b.socket
        self.c = c
        self.key = os.path.join(keydir, "id_ed25519")
        self.known = os.path.join(keydir, "known_hosts")

    def ssh_argv(self, *extra):
        proxy = "%s -s %s tunnel 127.0.0.1:22" % (BOXCTL_BIN, self.socket)
        return (["ssh", "-F", "/dev/null", "-i", self.key, "-o", "IdentitiesOnly=yes",
                 "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                 "-o", "UserKnownHostsFile=" + self.known, "-o", "ConnectTimeout=30",
                 "-o", "ProxyCommand=" + proxy] + list(extra))


@pytest.fixture(scope="module")
def ssh_box(rootfs):
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs openssh-client (ssh, ssh-keygen) on the host: scripts/deps.sh tests")
    root = image("rootfs")
    keydir = tempfile.mkdtemp(prefix="boxd-ssh.")
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        os.path.join(keydir, "id_ed25519")], check=True)
        with open(os.path.join(keydir, "id_ed25519.pub")) as f:
            pub = f.read().strip()
        with started_box(["--lower", root, "--net"]) as b:
            with minibox.Client(b.socket, 120) as c:
                caps = c.hello()["capabilities"]
                assert "tunnel" in caps, caps
                sb = SshBox(b, c, keydir)
                sb.hostname = sh(c, "hostname").strip()
                # What the platform does once per box: the user's key, then the box's sshd.
                sh(c, "install -d -m 700 ~/.ssh && printf '%%s\\n' '%s' >~/.ssh/authorized_keys"
                   " && chmod 600 ~/.ssh/authorized_keys" % pub)
                sh(c, "sudo box-sshd -o ListenAddress=127.0.0.1 -o PasswordAuthentication=no")
                # The box's own network: no port in it is the host's.
                assert os.readlink("/proc/%d/ns/net" % b.pid) != os.readlink("/proc/self/ns/net")
                # sshd detaches; wait for its listening socket (0A: LISTEN) on 127.0.0.1:22.
                sh(c, "for i in $(seq 200); do grep -qi ' 0100007F:0016 00000000:0000 0A '"
                   " /proc/net/tcp && exit 0; sleep 0.1; done; echo no sshd >&2; exit 1")
                yield sb
    finally:
        shutil.rmtree(keydir, ignore_errors=True)


def test_ssh_command_through_the_tunnel(ssh_box):
    p = subprocess.run(ssh_box.ssh_argv("box@box", "id -un; hostname; echo $((6*7))"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
    # The session is the box's: its user, its hostname (nsbox.sh names it after the box).
    assert p.stdout.decode().split() == ["box", ssh_box.hostname, "42"], p.stdout
    # The exit status comes back through the tunnel too, and so do many bytes, exactly.
    p = subprocess.run(ssh_box.ssh_argv("box@box", "exit 7"), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert p.returncode == 7, p.stderr
    blob = os.urandom(4 << 20)
    p = subprocess.run(ssh_box.ssh_argv("box@box", "sha256sum"), input=blob,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert p.stdout.decode().split()[0] == hashlib.sha256(blob).hexdigest(), p.stderr


def _read_until(fd, pattern, timeout):
    buf = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, buf):
        left = deadline - time.monotonic()
        assert left > 0, "no %r in %r" % (pattern, buf[-500:])
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            assert chunk, "EOF before %r in %r" % (pattern, buf[-500:])
            buf += chunk
    return buf


def test_interactive_ssh_session_through_the_tunnel(ssh_box):
    argv = ssh_box.ssh_argv("-tt", "box@box")
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    try:
        _read_until(fd, rb"\$ ", 60)   # bash's prompt as the box user
        os.write(fd, b"tty; echo RESULT=$((6*7))\r")
        out = _read_until(fd, rb"RESULT=42", 30)
        assert re.search(rb"/dev/pts/\d+", out), out
        # Ctrl-C reaches the box's foreground job, not ssh: the session lives on.
        os.write(fd, b"sleep 100\r")
        time.sleep(1)
        os.write(fd, b"\x03")
        os.write(fd, b"echo ALIVE=$((1+1))\r")
        _read_until(fd, rb"ALIVE=2", 30)
        os.write(fd, b"exit 5\r")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 5, status
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_forward_reaches_a_dev_server_in_the_box(ssh_box):
    c = ssh_box.c
    sh(c, "mkdir -p /tmp/site && echo 'hello from the box' >/tmp/site/index.txt")
    server = c.start(argv=["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1",
                           "--directory", "/tmp/site"], follow=False)
    port = free_port()
    fwd = subprocess.Popen([BOXCTL_BIN, "-s", ssh_box.socket, "forward",
                            "%d:127.0.0.1:8000" % port], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        def get(_):
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/index.txt" % port,
                                                timeout=10) as r:
                        return r.read().decode()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        assert get(0) == "hello from the box\n"
        with ThreadPoolExecutor(8) as ex:
            assert list(ex.map(get, range(16))) == ["hello from the box\n"] * 16
    finally:
        fwd.terminate()
        _, err = fwd.communicate(timeout=10)
        c.request({"type": "cancel", "id": server["id"]})
    assert fwd.returncode in (0, -15, 143), err
