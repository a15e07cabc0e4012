"""Framing and transports (PROTOCOL.md section 1). No state beyond one byte stream.

A frame is a uint32 big-endian length and exactly that many bytes of one msgpack map.
Addresses:

- ``unix:PATH`` or a bare ``PATH``: a unix stream socket;
- ``vsock:CID:PORT``: AF_VSOCK (QEMU/vhost-vsock; from the host, CID is the guest's);
- ``fc:UDS:PORT``: the unix socket Firecracker or Cloud Hypervisor exposes for a guest's vsock
  (``uds_path``): the SDK writes ``CONNECT PORT\\n`` and expects ``OK <host port>\\n`` first.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import msgpack

from .errors import ProtocolError

#: Default socket when neither ``socket=`` nor ``$BOXD_SOCKET`` is given.
DEFAULT_SOCKET = "/run/boxd.sock"
#: A frame from the agent longer than this is a protocol violation (the agent promises at most
#: its ``max_event``, 1 MiB by default; 64 MiB leaves room for agents configured larger).
CLIENT_MAX_FRAME = 64 << 20
#: The hypervisor's ``OK ...`` line is at most this long.
HANDSHAKE_MAX = 256
_READ_SIZE = 1 << 16


@dataclass(frozen=True)
class Address:
    """A parsed boxd address. ``kind`` is ``"unix"``, ``"vsock"`` or ``"fc"``."""

    kind: str
    path: str = ""
    cid: int = 0
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return "unix:" + self.path
        if self.kind == "vsock":
            return "vsock:%d:%d" % (self.cid, self.port)
        return "fc:%s:%d" % (self.path, self.port)


def _port(text: str, what: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise ValueError("%s: the port must be a number, not %r" % (what, text)) from None
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError("%s: port %d is out of range" % (what, v))
    return v


def parse_address(spec: Optional[str]) -> Address:
    """Parses ``unix:PATH`` / ``PATH`` / ``vsock:CID:PORT`` / ``fc:UDS:PORT``. None means
    ``$BOXD_SOCKET``, then ``/run/boxd.sock``. Raises ValueError with what to write instead."""
    if spec is None:
        spec = os.environ.get("BOXD_SOCKET") or DEFAULT_SOCKET
    spec = os.fspath(spec)
    if not spec:
        raise ValueError("empty boxd address: give unix:PATH, vsock:CID:PORT or fc:UDS:PORT")
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path:
            raise ValueError("unix: needs a path, e.g. unix:/run/boxd.sock")
        return Address("unix", path=path)
    if spec.startswith("vsock:"):
        parts = spec[6:].split(":")
        if len(parts) != 2:
            raise ValueError("vsock address %r: write vsock:CID:PORT, e.g. vsock:3:1024" % spec)
        return Address("vsock", cid=_port(parts[0], spec), port=_port(parts[1], spec))
    if spec.startswith("fc:"):
        uds, sep, port = spec[3:].rpartition(":")
        if not sep or not uds:
            raise ValueError("fc address %r: write fc:UDS_PATH:PORT, e.g. fc:/srv/vm/v.sock:1024"
                             % spec)
        return Address("fc", path=uds, port=_port(port, spec))
    return Address("unix", path=spec)


def encode_frame(msg: Dict[str, Any]) -> bytes:
    """One message -> its frame (str as msgpack str, bytes as bin)."""
    body = msgpack.packb(msg, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class FrameReader:
    """Splits a byte stream into decoded messages; feed() bytes, then iterate messages()."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def messages(self):
        """Yields every complete message in the buffer. Raises ProtocolError on a bad frame."""
        buf = self._buf
        pos = 0
        try:
            while len(buf) - pos >= 4:
                (n,) = struct.unpack_from(">I", buf, pos)
                if n == 0 or n > CLIENT_MAX_FRAME:
                    raise ProtocolError("the agent sent a frame of %d bytes" % n)
                if len(buf) - pos - 4 < n:
                    break
                body = bytes(buf[pos + 4:pos + 4 + n])
                pos += 4 + n
                try:
                    msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
                except Exception as e:  # any decode failure is the peer's
                    raise ProtocolError("the agent sent an undecodable frame (%s)" % e) from None
                if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                    raise ProtocolError("the agent sent a message that is not a typed map")
                yield msg
        finally:
            if pos:
                del buf[:pos]


async def open_stream(addr: Address, timeout: float
                      ) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connects to addr (with the hypervisor handshake for ``fc``) within timeout seconds."""
    return await asyncio.wait_for(_open(addr), timeout)


async def _open(addr: Address) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    limit = CLIENT_MAX_FRAME + 8
    if addr.kind == "unix":
        return await asyncio.open_unix_connection(addr.path, limit=limit)
    if addr.kind == "vsock":
        if not hasattr(socket, "AF_VSOCK"):
            raise OSError("this Python has no AF_VSOCK support")
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (addr.cid, addr.port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=limit)
    reader, writer = await asyncio.open_unix_connection(addr.path, limit=limit)
    try:
        writer.write(b"CONNECT %d\n" % addr.port)
        await writer.drain()
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        writer.close()
        raise ConnectionResetError(
            "the hypervisor socket %s closed during CONNECT %d (is the guest listening on that "
            "port?) after %r" % (addr.path, addr.port, e.partial[:HANDSHAKE_MAX])) from None
    except asyncio.LimitOverrunError:
        writer.close()
        raise ProtocolError("the hypervisor socket %s sent no line ending after CONNECT"
                            % addr.path) from None
    except BaseException:
        writer.close()
        raise
    if len(line) > HANDSHAKE_MAX or not line.startswith(b"OK"):
        writer.close()
        raise ProtocolError("the hypervisor socket %s answered CONNECT %d with %r, not OK"
                            % (addr.path, addr.port, line[:80]))
    return reader, writer


READ_SIZE = _READ_SIZE
