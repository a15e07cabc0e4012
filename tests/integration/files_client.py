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


# ---- trees (PROTOCOL.md 12.8) ---------------------------------------------------------------

TREE_FRAME = 768 * 1024   # bytes of entries in one file_tree_data, under max_frame (1 MiB)
TREE_PIECE = 512 * 1024   # data bytes of one element at most


def tree_read(c, path, timeout=60, on_frame=None, **opts):
    """file_tree_read of path. Returns (entries, end): every entry with its data joined (bytes;
    continuations folded in), and the file_tree_end. An error reply raises FileError; an
    error after entries (a cap) raises FileError too, with .entries set to those received."""
    req = c.next_req()
    c.send(dict({"type": "file_tree_read", "req": req, "path": path}, **opts))
    entries = []
    open_file = None
    while True:
        m = c.recv_req(req, timeout)
        if on_frame:
            on_frame(m)
        if m["type"] == "file_tree_end":
            assert open_file is None, "the stream ended inside a file's data"
            return entries, m
        if m["type"] == "error":
            e = FileError(m)
            e.entries = entries
            raise e
        assert m["type"] == "file_tree_entries", m
        for el in m["entries"]:
            if "name" not in el:
                assert open_file is not None, el
                open_file["data"] += el.get("data", b"")
                if not el.get("more"):
                    open_file = None
                continue
            assert open_file is None, el
            el = dict(el)
            el.setdefault("data", b"")
            entries.append(el)
            if el.get("more"):
                open_file = el


def name_str(n):
    return n.decode("utf-8", "surrogateescape") if isinstance(n, bytes) else n


def tree_download(c, path, dest, **opts):
    """Reads a tree into the local directory dest (made), as boxctl cp -a does. Returns
    (end, failed entries)."""
    entries, end = tree_read(c, path, **opts)
    dirs = []
    failed = []
    for e in entries:
        name = name_str(e["name"])
        p = dest if name == "." else os.path.join(dest, name)
        if "code" in e:
            failed.append(e)
            continue
        if e["kind"] == "dir":
            os.makedirs(p, exist_ok=True)
            dirs.append((p, e))
        elif e["kind"] == "symlink":
            t = e["target"]
            os.symlink(t if isinstance(t, str) else os.fsdecode(t), p)
            os.utime(p, ns=(e["mtime_ns"], e["mtime_ns"]), follow_symlinks=False)
        else:
            with open(p, "wb") as f:
                f.write(e["data"])
            os.chmod(p, e["mode"])
            os.utime(p, ns=(e["mtime_ns"], e["mtime_ns"]))
    for p, e in reversed(dirs):
        os.chmod(p, e["mode"])
        os.utime(p, ns=(e["mtime_ns"], e["mtime_ns"]))
    return end, failed


def local_entries(root):
    """The elements of root's tree as a client sends them: "." first, then pre-order; a file's
    data in pieces of TREE_PIECE (continuations after the header)."""
    import stat as st_

    def head(rel, st, **kw):
        d = {"name": rel, "mode": st_.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns}
        d.update(kw)
        return d

    def walk(dirpath, rel):
        for name in sorted(os.listdir(dirpath)):
            p = os.path.join(dirpath, name)
            r = name if rel == "" else rel + "/" + name
            st = os.lstat(p)
            if st_.S_ISLNK(st.st_mode):
                yield head(r, st, kind="symlink", target=os.readlink(p))
            elif st_.S_ISDIR(st.st_mode):
                yield head(r, st, kind="dir")
                yield from walk(p, r)
            elif st_.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    data = f.read(TREE_PIECE)
                    nxt = f.read(TREE_PIECE)
                    yield head(r, st, kind="file", data=data, more=bool(nxt))
                    while nxt:
                        cur, nxt = nxt, f.read(TREE_PIECE)
                        yield {"data": cur, "more": bool(nxt)}
            else:
                yield head(r, st, kind="fifo" if st_.S_ISFIFO(st.st_mode) else "other")

    yield head(".", os.lstat(root), kind="dir")
    yield from walk(root, "")


def tree_write(c, path, elements, timeout=120, window=WINDOW, **opts):
    """file_tree_write of path, then file_tree_data requests of elements (about TREE_FRAME
    bytes each), keeping under window bytes unacknowledged. Returns file_tree_written."""
    r = c.request("file_tree_write", path=path, **opts)
    if r["type"] == "error":
        raise FileError(r)
    assert r["type"] == "file_tree_ack", r
    tid = r["tree_id"]
    inflight = {}
    pending = 0

    def settle(limit):
        nonlocal pending
        while inflight and pending > limit:
            m = c.recv_match(lambda m: m.get("req") in inflight, timeout)
            pending -= inflight.pop(m["req"])
            if m["type"] == "error":
                raise FileError(m)
            assert m["type"] == "file_tree_ack", m

    batch, size = [], 0

    def send(eof):
        nonlocal batch, size, pending
        settle(window - size)
        req = c.next_req()
        c.send({"type": "file_tree_data", "req": req, "tree_id": tid, "entries": batch,
                "eof": eof})
        if eof:
            settle(0)
            m = c.recv_req(req, timeout)
            if m["type"] == "error":
                raise FileError(m)
            assert m["type"] == "file_tree_written", m
            return m
        inflight[req] = size + 64 * len(batch)
        pending += size + 64 * len(batch)
        batch, size = [], 0

    for el in elements:
        n = len(el.get("data", b"")) + len(el.get("name", "")) + 64
        if batch and size + n > TREE_FRAME:
            send(False)
        batch.append(el)
        size += n
    return send(True)
