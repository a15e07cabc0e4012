"""Helpers for the file requests (PROTOCOL.md section 12) over boxd_client.Client."""

import hashlib
import os

CHUNK = 512 * 1024
WINDOW = 8 * 1024 * 1024  # stays under the agent's file_window (16 MiB)


class FileError(Exception):
    def __init__(self, reply):
        super().__init__("%s: %s" % (reply.get("code"), reply.get("message")))
        self.reply = reply
        self.code = reply.get("code")


def chunks_of(data, size=CHUNK):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def upload_open(c, path, **opts):
    r = c.request("file_write", path=path, **opts)
    if r["type"] == "error":
        raise FileError(r)
    assert r["type"] == "file_ack", r
    return r


def upload_stream(c, upload_id, pieces, offset=0, timeout=60):
    """Sends pieces (bytes) from offset, keeping at most WINDOW bytes unacknowledged; the last
    piece carries eof. Returns the file_written reply. Messages for other requests (a run's
    output and end on the same connection) stay pending for their reader, never dropped."""
    inflight = {}  # req -> size
    pending = 0
    final_req = None
    it = iter(pieces)
    nxt = next(it, None)
    while nxt is not None:
        cur, nxt = nxt, next(it, None)
        while pending + len(cur) > WINDOW:
            m = c.recv_match(lambda m: m.get("req") in inflight, timeout)
            if m["type"] == "error":
                raise FileError(m)
            pending -= inflight.pop(m["req"])
        req = c.next_req()
        eof = nxt is None
        c.send({"type": "file_data", "req": req, "upload_id": upload_id, "offset": offset,
                "data": cur, "eof": eof})
        offset += len(cur)
        inflight[req] = len(cur)
        pending += len(cur)
        if eof:
            final_req = req
    if final_req is None:  # nothing at all: an empty file
        final_req = c.next_req()
        c.send({"type": "file_data", "req": final_req, "upload_id": upload_id,
                "offset": offset, "data": b"", "eof": True})
        inflight[final_req] = 0
    result = None
    while inflight:
        m = c.recv_match(lambda m: m.get("req") in inflight, timeout)
        inflight.pop(m["req"])
        if m["type"] == "error":
            raise FileError(m)
        if m["req"] == final_req:
            assert m["type"] == "file_written", m
            result = m
    return result


def upload(c, path, data, **opts):
    ack = upload_open(c, path, **opts)
    return upload_stream(c, ack["upload_id"], chunks_of(data))


def download(c, path, timeout=60, sink=None, **opts):
    """Returns (file_info, bytes or None with sink, file_end)."""
    req = c.next_req()
    c.send(dict({"type": "file_read", "req": req, "path": path}, **opts))
    info = c.recv_req(req, timeout)
    if info["type"] == "error":
        raise FileError(info)
    assert info["type"] == "file_info", info
    parts = []
    expect = info["offset"]
    while True:
        m = c.recv_req(req, timeout)
        if m["type"] == "file_end":
            data = None if sink else b"".join(parts)
            return info, data, m
        if m["type"] == "error":
            raise FileError(m)
        assert m["type"] == "file_chunk", m
        assert m["offset"] == expect, (m["offset"], expect)
        expect += len(m["data"])
        if sink:
            sink(m["data"])
        else:
            parts.append(m["data"])


def op(c, type_, **fields):
    r = c.request(type_, **fields)
    if r["type"] == "error":
        raise FileError(r)
    return r
