"""A pseudo-terminal driver for tests that use a program as a person at a terminal would.

    t = PtyTerm([boxctl, "-s", sock, "shell"], rows=24, cols=80)
    t.expect(rb"\\$ ")             # waits (with a timeout) for a regex in the screen's bytes
    t.send(b"tty\\r")              # keys, as typed: \\r for Enter, b"\\x03" for Ctrl-C
    t.resize(40, 120)             # TIOCSWINSZ on the terminal, then SIGWINCH to the program
    t.termios()                   # the terminal's modes now (tcgetattr on the master)
    t.wait()                      # the program's exit status (128+N for signal N)

The program runs in a session of its own with the pty's slave as its controlling terminal and
as fds 0-2, like a login on a terminal. Everything it writes is kept (`t.output`), and expect()
searches from where the last match ended (`t.mark()` moves that point), so a test sees each
thing once, in order. No thread: reads happen inside expect(), read_for() and wait() with
select() timeouts.
"""

import errno
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time


class Timeout(AssertionError):
    """expect() did not see its pattern in time; the message shows what the screen had."""


class PtyTerm:
    def __init__(self, argv, rows=24, cols=80, env=None, cwd=None):
        self.master, slave = os.openpty()
        os.set_blocking(self.master, False)
        self._setsize(self.master, rows, cols)
        full_env = dict(os.environ)
        full_env["TERM"] = "xterm-256color"  # what a terminal emulator sets; env may change it
        full_env.update(env or {})

        def child_setup():
            # A session of its own with the slave as its controlling terminal (TIOCSCTTY), so
            # Ctrl-C, job control and SIGWINCH work as on a real terminal.
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=full_env,
                                     cwd=cwd, start_new_session=True, preexec_fn=child_setup,
                                     close_fds=True)
        os.close(slave)
        self.output = bytearray()
        self.pos = 0
        self.eof = False

    # ---- reading ------------------------------------------------------------------------------

    def _read_some(self, timeout):
        """Reads what the program wrote within timeout seconds. False at end-of-file."""
        if self.eof:
            return False
        r, _, _ = select.select([self.master], [], [], max(timeout, 0))
        if not r:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return True
            if e.errno != errno.EIO:  # EIO: every slave fd is closed
                raise
            data = b""
        if not data:
            self.eof = True
            return False
        self.output += data
        return True

    def read_for(self, seconds):
        """Keeps reading for `seconds` (or until end-of-file); returns the new bytes."""
        start = len(self.output)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self._read_some(deadline - time.monotonic()):
            pass
        return bytes(self.output[start:])

    def expect(self, pattern, timeout=10):
        """Waits for regex `pattern` (bytes) in the output after the last match; returns the
        match and moves past it. Raises Timeout with the unmatched output."""
        rx = re.compile(pattern) if isinstance(pattern, (bytes, str)) else pattern
        if isinstance(rx.pattern, str):
            rx = re.compile(rx.pattern.encode())
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.output, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise Timeout("no %r within %.1fs%s; output since the last match:\n%r"
                              % (rx.pattern, timeout, " (end of output)" if self.eof else "",
                                 bytes(self.output[self.pos:])[-4000:]))
            self._read_some(min(left, 0.2))

    def mark(self):
        """Forgets the output so far for expect(): only what comes next is searched."""
        self.read_for(0)
        self.pos = len(self.output)

    def since_mark(self):
        return bytes(self.output[self.pos:])

    # ---- writing and the terminal -------------------------------------------------------------

    def send(self, data):
        """Types data (bytes or str) into the terminal. A long paste is read back meanwhile, as
        a terminal emulator does: a program blocked writing its echo would stop reading."""
        if isinstance(data, str):
            data = data.encode()
        while data:
            try:
                n = os.write(self.master, data[:4096])
                data = data[n:]
            except BlockingIOError:
                r, _, _ = select.select([self.master], [self.master], [], 1)
                if r:
                    self._read_some(0)

    @staticmethod
    def _setsize(fd, rows, cols):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def resize(self, rows, cols):
        """Sets the window size and sends SIGWINCH to the terminal's foreground process group,
        as a terminal emulator does (the kernel does it too when the size changes; sending it
        again is harmless)."""
        self._setsize(self.master, rows, cols)
        try:
            pgrp = os.tcgetpgrp(self.master)
            os.killpg(pgrp, signal.SIGWINCH)
        except OSError:
            self.proc.send_signal(signal.SIGWINCH)

    def termios(self):
        """The terminal's modes now: [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]. On Linux
        the master reports the slave's settings."""
        return termios.tcgetattr(self.master)

    def is_canonical(self):
        """True when the line discipline cooks input and echoes (ICANON and ECHO set)."""
        lflag = self.termios()[3]
        return bool(lflag & termios.ICANON) and bool(lflag & termios.ECHO)

    # ---- the end ------------------------------------------------------------------------------

    def wait(self, timeout=10):
        """Reads until the program exits; returns its status as a shell reports it (128+N for a
        signal N)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise Timeout("the program is still running after %.1fs; output:\n%r"
                              % (timeout, bytes(self.output[-4000:])))
            self._read_some(0.05)
        self.read_for(0.05)
        rc = self.proc.returncode
        return 128 - rc if rc < 0 else rc

    def close(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        try:
            os.close(self.master)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
