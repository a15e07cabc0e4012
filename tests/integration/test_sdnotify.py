"""sd_notify without libsystemd (agent/sdnotify.c): with NOTIFY_SOCKET, as systemd starts the
packaged boxd.service (Type=notify), boxd sends READY=1 once it serves and STOPPING=1 when it
shuts down; a notify socket that does not take the datagram never blocks it."""

import os
import signal
import socket
import time

import boxd_client
from conftest import T


def notify_socket(workdir, name="notify.sock"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.path.join(workdir, name)
    s.bind(path)
    s.settimeout(T(5))
    return s, path


def test_ready_after_serving_and_stopping_on_term(start_boxd, tmp_path):
    s, path = notify_socket(str(tmp_path))
    d = start_boxd(env={"NOTIFY_SOCKET": path})
    msg = s.recv(4096).decode()
    assert msg.splitlines()[0] == "READY=1", msg
    # READY came after the socket served: start_boxd saw it accept, and it answers now.
    c = d.client()
    assert c.request("ping")["type"] == "pong"
    c.close()
    # NOTIFY_SOCKET is the agent's, not the runs': their environment is clean.
    c = d.client()
    end = c.exec_run("echo ${NOTIFY_SOCKET:-unset}")
    assert end.stdout == b"unset\n"
    c.close()
    assert d.terminate(signal.SIGTERM) == 0
    msg = s.recv(4096).decode()
    assert msg.splitlines()[0] == "STOPPING=1", msg


def test_abstract_notify_socket(start_boxd):
    name = "boxd-notify-test-%d" % os.getpid()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(T(5))
    start_boxd(env={"NOTIFY_SOCKET": "@" + name})
    assert s.recv(4096).decode().startswith("READY=1")


def test_a_full_notify_socket_never_blocks_boxd(start_boxd, tmp_path):
    s, path = notify_socket(str(tmp_path))
    # Fill the receiver's queue: the agent's datagram will not fit.
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    n = 0
    try:
        while n < 100000:
            filler.sendto(b"x" * 1024, path)
            n += 1
    except BlockingIOError:
        pass
    assert n > 0
    t0 = time.monotonic()
    d = start_boxd(env={"NOTIFY_SOCKET": path})
    c = d.client()
    assert c.request("ping")["type"] == "pong"
    assert time.monotonic() - t0 < T(5)
    c.close()
    assert d.terminate(signal.SIGTERM) == 0
    assert "NOTIFY_SOCKET" in d.stderr_text()


def test_a_bad_notify_socket_is_logged_not_fatal(start_boxd):
    d = start_boxd(env={"NOTIFY_SOCKET": "relative/path"})
    c = d.client()
    assert c.request("ping")["type"] == "pong"
    c.close()
    assert "NOTIFY_SOCKET 'relative/path'" in d.stderr_text()
