"""A follower to be SIGKILLed (test_conns.py): starts a shell run on boxd and follows it,
journaling what it received.

usage: follow_child.py SOCKET JOURNAL CMD

The journal is append-only: `I <run id>` once, then per output event one `R <seq> <stream>
<data in hex>` line per record followed by `C <last seq>`, the whole event in one write. A kill
can tear only the last write; the reader counts only records followed by their commit line.
"""

import os
import sys

import boxd_client


def main():
    sock, journal, cmd = sys.argv[1:4]
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)

    def put(data):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    c = boxd_client.connect(sock)
    req = c.exec_start(cmd=cmd)
    while True:
        m = c.recv_req(req, timeout=60)
        ty = m["type"]
        if ty == "started":
            put(b"I %s\n" % m["id"].encode())
        elif ty == "output":
            lines = [b"R %d %d %s\n" % (r[0], r[2], boxd_client.as_bytes(r[3]).hex().encode())
                     for r in m["lines"]]
            lines.append(b"C %d\n" % m["lines"][-1][0])
            put(b"".join(lines))
        elif ty == "end":
            put(b"E\n")
            return 0
        else:
            sys.stderr.write("follow_child: unexpected %r\n" % (m,))
            return 1


if __name__ == "__main__":
    sys.exit(main())
