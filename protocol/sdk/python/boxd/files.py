"""Files: ``box.files`` on agents with the ``files`` capability (PROTOCOL.md section 12).

``upload`` and ``download`` move local files and trees in and out of the box, keeping each
file's bytes, permission bits and mtime, each directory's permission bits and mtime, and each
symbolic link as a link; ``read``, ``write``, ``list``, ``stat``, ``mkdir``, ``remove``,
``rename``, ``chmod`` and ``symlink`` work on one path. Every call
takes ``user=`` (default: the agent's run user), under the agent's policy for runs.

Uploads are streamed in chunks, pipelined within a window, atomic on the agent's side (a temp
file renamed into place, sha256 checked), and **resumed** after a dropped connection from the
offset the agent reports. Downloads are streamed too and, after a drop, resumed as a range read
from the bytes already received.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat as _stat
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Union

from ._session import Session, _Op
from .errors import (BoxError, ConnectionLostError, NotADirectoryError_, NotFoundError,
                     ProtocolError, error_from_reply)

if TYPE_CHECKING:
    from .aio import AsyncBox

__all__ = ["AsyncFiles"]

#: Bytes per `file_data` chunk (a frame must stay within the agent's max_frame, 1 MiB default).
CHUNK = 512 << 10
#: Bytes sent but not yet acknowledged (the agent allows limits.file_window, 16 MiB default).
WINDOW = 4 << 20
#: How many times an upload or download is resumed after dropped connections.
RESUMES = 5


class _ReadOp(_Op):
    """A ``file_read``: ``file_info``, then ``file_chunk`` events, then ``file_end``. After a
    reconnect it is sent again as a range read from the bytes already received."""

    __slots__ = ("out", "received", "start", "info", "done")

    def __init__(self, req: int, msg: Dict[str, Any], out: Any):
        super().__init__(req, msg, True)
        self.out = out
        self.start = int(msg.get("offset") or 0)
        self.received = 0
        self.info: Optional[Dict[str, Any]] = None
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())

    def resend_msg(self) -> Dict[str, Any]:
        msg = dict(self.msg, offset=self.start + self.received)
        if "length" in self.msg:
            msg["length"] = max(0, int(self.msg["length"]) - self.received)
        return msg

    def fail(self, err: BaseException) -> None:
        super().fail(err)
        if not self.done.done():
            self.done.set_exception(err)

    async def handle(self, sess: Session, m: Dict[str, Any]) -> None:
        t = m["type"]
        if t == "file_info":
            if self.info is None:
                self.info = m
            if not self.first.done():
                self.first.set_result(m)
        elif t == "file_chunk":
            off = int(m.get("offset", -1))
            data = m.get("data") or b""
            if isinstance(data, str):
                data = data.encode("utf-8")
            want = self.start + self.received
            if off > want:
                sess._ops.pop(self.req, None)
                self.fail(ProtocolError("file_read: chunk at %d, expected %d" % (off, want)))
                return
            if off + len(data) <= want:
                return  # already received before a reconnect
            data = data[want - off:]
            self.out.write(data)
            self.received += len(data)
        elif t == "file_end":
            sess._ops.pop(self.req, None)
            if not self.first.done():
                self.first.set_result(m)
            if not self.done.done():
                self.done.set_result(m)
        elif t == "error":
            sess._ops.pop(self.req, None)
            self.fail(error_from_reply(m))


class _TreeReadOp(_Op):
    """A ``file_tree_read`` (PROTOCOL.md 12.8): ``file_tree_entries`` events handed to ``sink``
    as they come, then ``file_tree_end``. Not resent after a reconnect (the stream cannot go
    on where it stopped): the download starts over instead."""

    __slots__ = ("sink", "done")

    def __init__(self, req: int, msg: Dict[str, Any], sink: "_TreeSink"):
        super().__init__(req, msg, False, resend_unsent=False)
        self.sink = sink
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())

    def fail(self, err: BaseException) -> None:
        super().fail(err)
        if not self.done.done():
            self.done.set_exception(err)

    async def handle(self, sess: Session, m: Dict[str, Any]) -> None:
        t = m["type"]
        if t == "file_tree_entries":
            if not self.first.done():
                self.first.set_result(m)
            try:
                self.sink.take(m.get("entries") or [])
            except BaseException as e:  # a local failure ends the download
                sess._ops.pop(self.req, None)
                self.fail(e)
        elif t == "file_tree_end":
            sess._ops.pop(self.req, None)
            if not self.first.done():
                self.first.set_result(m)
            if not self.done.done():
                self.done.set_result(m)
        elif t == "error":
            sess._ops.pop(self.req, None)
            self.fail(error_from_reply(m))


def _fsname(n: Any) -> str:
    return os.fsdecode(n) if isinstance(n, bytes) else str(n)


class _TreeSink:
    """Applies a tree's entries under a local directory as download() always has: files and
    links made beside their path and renamed over it (never written through), directories'
    modes and mtimes last, deepest first. Entries the agent refused (FIFOs, devices, sockets)
    are skipped; other failed entries are kept to be raised at the end."""

    def __init__(self, dest: str):
        self.dest = dest
        self.dirs: List[tuple] = []
        self.failed: List[Mapping[str, Any]] = []
        self.f: Any = None
        self.tmp = ""
        self.entry: Mapping[str, Any] = {}
        self.local = ""

    def _path(self, name: str) -> str:
        if name == ".":
            return self.dest
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ProtocolError("file_tree_read: an entry named %r" % name)
        return os.path.join(self.dest, *parts)

    def _file_end(self) -> None:
        f, self.f = self.f, None
        try:
            f.flush()  # before the mtime: a later write would move it
            os.fchmod(f.fileno(), int(self.entry.get("mode", 0o644)) & 0o777)
            if "mtime_ns" in self.entry:
                os.utime(f.fileno(), ns=(time.time_ns(), int(self.entry["mtime_ns"])))
            f.close()
            os.replace(self.tmp, self.local)
        except BaseException:
            f.close()
            os.unlink(self.tmp)
            raise

    def take(self, entries: List[Mapping[str, Any]]) -> None:
        for e in entries:
            if "name" not in e:  # the open file's next data
                if self.f is not None:
                    self.f.write(e.get("data") or b"")
                    if not e.get("more"):
                        self._file_end()
                continue
            if "code" in e:
                if e.get("code") != "refused":
                    self.failed.append(e)
                continue
            local = self._path(_fsname(e["name"]))
            kind = e.get("kind")
            if kind == "dir":
                _local_dir(local)
                self.dirs.append((local, e))
            elif kind == "symlink" and e.get("target") is not None:
                tmp = "%s.boxd-%s" % (local, os.urandom(4).hex())
                os.symlink(_fsname(e["target"]), tmp)
                try:
                    os.utime(tmp, ns=(time.time_ns(), int(e.get("mtime_ns", 0))),
                             follow_symlinks=False)
                    os.replace(tmp, local)
                except BaseException:
                    os.unlink(tmp)
                    raise
            elif kind == "file":
                self.tmp = "%s.boxd-%s" % (local, os.urandom(4).hex())
                fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o600)
                self.f = os.fdopen(fd, "wb")
                self.entry, self.local = e, local
                self.f.write(e.get("data") or b"")
                if not e.get("more"):
                    self._file_end()

    def finish(self) -> None:
        for local, e in reversed(self.dirs):
            os.chmod(local, int(e.get("mode", 0o755)) & 0o777)
            if "mtime_ns" in e:
                os.utime(local, ns=(time.time_ns(), int(e["mtime_ns"])))
        if self.failed:
            e = self.failed[0]
            raise error_from_reply({"type": "error", "code": e.get("code"),
                                    "message": "download: %d entries failed; the first, %s: %s"
                                    % (len(self.failed), _fsname(e.get("name")),
                                       e.get("message"))})

    def abandon(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


def _tree_elements(local: str):
    """A local directory as a tree's entries (PROTOCOL.md 12.8): "." first, then pre-order; a
    file's data in CHUNK pieces (continuations after its header). FIFOs, sockets and devices
    are skipped, as upload() always has."""

    def head(rel: str, st: os.stat_result, **kw: Any) -> Dict[str, Any]:
        d = {"name": rel, "mode": st.st_mode & 0o7777, "mtime_ns": st.st_mtime_ns}
        d.update(kw)
        return d

    def walk(path: str, rel: str):
        for name in sorted(os.listdir(path)):
            p = os.path.join(path, name)
            r = name if not rel else rel + "/" + name
            st = os.lstat(p)
            if _stat.S_ISLNK(st.st_mode):
                yield head(r, st, kind="symlink", target=os.readlink(p))
            elif _stat.S_ISDIR(st.st_mode):
                yield head(r, st, kind="dir")
                yield from walk(p, r)
            elif _stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    data, nxt = f.read(CHUNK), f.read(CHUNK)
                    yield head(r, st, kind="file", data=data, more=bool(nxt))
                    while nxt:
                        data, nxt = nxt, f.read(CHUNK)
                        yield {"data": data, "more": bool(nxt)}

    yield head(".", os.stat(local), kind="dir")
    yield from walk(local, "")


def _user(msg: Dict[str, Any], user: Optional[str]) -> Dict[str, Any]:
    if user is not None:
        msg["user"] = user
    return msg


class AsyncFiles:
    """``box.files`` (asyncio). The sync ``Box`` offers the same methods without ``await``."""

    def __init__(self, box: "AsyncBox"):
        self._box = box

    @property
    def _s(self) -> Session:
        return self._box._session

    # ---- one path ----------------------------------------------------------------------------

    async def write(self, path: str, data: Union[bytes, str], *, mode: Optional[int] = None,
                    mkdir: bool = False, overwrite: bool = True, fsync: bool = True,
                    mtime_ns: Optional[int] = None, user: Optional[str] = None
                    ) -> Dict[str, Any]:
        """Writes ``data`` to ``path`` in the box, atomically (a reader sees the old file or the
        new one). ``mkdir`` creates missing parents; ``fsync=False`` skips the agent's fsync
        before the rename (still atomic for readers; agents without the option fsync anyway);
        ``mtime_ns`` (ns since the epoch) sets the file's mtime (default: the time of writing).
        Returns the ``file_written`` reply (``path``, ``size``, ``sha256``)."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        return await self._upload_bytes(path, _BytesSource(raw), mode=mode, mkdir=mkdir,
                                        overwrite=overwrite, user=user, fsync=fsync,
                                        mtime_ns=mtime_ns)

    async def chmod(self, path: str, mode: int, *, mtime_ns: Optional[int] = None,
                    user: Optional[str] = None) -> None:
        """Sets the permission bits of a file or directory (a final symbolic link is followed)
        and, with ``mtime_ns`` (ns since the epoch), its mtime too."""
        msg: Dict[str, Any] = {"type": "file_chmod", "path": path, "mode": int(mode)}
        if mtime_ns is not None:
            msg["mtime_ns"] = int(mtime_ns)
        await self._s.request(_user(msg, user))

    async def symlink(self, path: str, target: str, *, overwrite: bool = True,
                      user: Optional[str] = None) -> None:
        """Makes a symbolic link at ``path`` whose target is ``target``, stored as given."""
        await self._s.request(_user({"type": "file_symlink", "path": path, "target": target,
                                     "overwrite": bool(overwrite)}, user))

    async def read(self, path: str, *, user: Optional[str] = None) -> bytes:
        """The contents of a regular file in the box, as bytes."""
        buf = _Collect()
        await self._read_into(path, buf, user=user)
        return bytes(buf.data)

    async def list(self, path: str, *, depth: int = 1, user: Optional[str] = None
                   ) -> List[Dict[str, Any]]:
        """The entries of a directory, ``depth`` levels deep: dicts with ``name`` (relative to
        ``path``), ``kind`` (``file``, ``dir``, ``symlink``...), ``mode``, ``size``,
        ``mtime_ns``, ``uid``, ``gid`` (``target`` for links). A listing the agent truncated
        is completed by listing the deeper directories on their own."""
        reply = await self._s.request(_user({"type": "file_list", "path": path,
                                             "depth": int(depth)}, user))
        entries = list(reply.get("entries") or [])
        if reply.get("truncated"):
            raise BoxError("file_list %s: more entries than the agent sends at once; list "
                           "deeper directories on their own" % path, code="too_large")
        return entries

    async def stat(self, path: str, *, user: Optional[str] = None) -> Dict[str, Any]:
        """The path itself, described (lstat): ``kind``, ``mode``, ``size``, ``mtime_ns``..."""
        reply = await self._s.request(_user({"type": "file_stat", "path": path}, user))
        return dict(reply.get("entry") or {})

    async def mkdir(self, path: str, *, parents: bool = False, mode: Optional[int] = None,
                    user: Optional[str] = None) -> None:
        """Makes a directory (``parents=True``: ``mkdir -p``)."""
        msg = {"type": "file_mkdir", "path": path, "parents": bool(parents)}
        if mode is not None:
            msg["mode"] = int(mode)
        await self._s.request(_user(msg, user))

    async def remove(self, path: str, *, recursive: bool = False, user: Optional[str] = None
                     ) -> None:
        """Removes a file, a link or an empty directory (``recursive=True``: a tree)."""
        await self._s.request(_user({"type": "file_remove", "path": path,
                                     "recursive": bool(recursive)}, user), idempotent=False)

    async def rename(self, src: str, dst: str, *, overwrite: bool = False,
                     user: Optional[str] = None) -> None:
        """Renames within the box."""
        await self._s.request(_user({"type": "file_rename", "from": src, "to": dst,
                                     "overwrite": bool(overwrite)}, user), idempotent=False)

    # ---- trees ---------------------------------------------------------------------------------

    async def upload(self, items: Iterable[Mapping[str, str]], *, user: Optional[str] = None
                     ) -> List[Dict[str, Any]]:
        """Uploads local files and directories: ``[{"path": "./src", "destination": "/work/src"},
        {"path": "package.json", "destination": "/work/package.json"}]``. A directory is copied
        whole, keeping: each file's bytes, permission bits and mtime (written atomically,
        without an fsync each); each directory's permission bits and mtime (set once its
        entries are written), empty ones included; each symbolic link as a link
        (``file_symlink``) with its target as stored: relative, absolute or dangling, never
        followed. Missing directories are made; FIFOs, sockets and devices are skipped. The
        paths named in ``items`` are followed when they are links, as cp(1) does its
        arguments. On agents with the ``file_tree`` capability a directory goes in one
        ``file_tree_write`` (PROTOCOL.md 12.8), else one request per entry. Returns the
        replies, one per file or link (``{"type": "file_tree_entry", "kind", "path"}`` for
        those of a tree sent whole)."""
        out: List[Dict[str, Any]] = []
        for item in items:
            local, dest = item["path"], item["destination"]
            if not os.path.isdir(local):
                out.append(await self._upload_file(local, dest, user, mkdir=True))
                continue
            if self._trees():
                out += await self._upload_tree(local, dest, user)
                continue
            dirs_made: List[tuple] = []  # (remote path, lstat), parents before children
            for root, dirs, files in os.walk(local):
                dirs.sort()
                rel = os.path.relpath(root, local)
                base = dest if rel == "." else dest.rstrip("/") + "/" + rel.replace(os.sep, "/")
                # Made writable first: its own mode and mtime come after its entries (a 0o555
                # directory could not take them, and each entry written moves its mtime).
                await self.mkdir(base, parents=True, user=user)
                dirs_made.append((base, os.stat(root)))
                for name in sorted(files) + sorted(d for d in dirs
                                                    if os.path.islink(os.path.join(root, d))):
                    lp = os.path.join(root, name)
                    rp = base.rstrip("/") + "/" + name
                    st = os.lstat(lp)
                    if _stat.S_ISLNK(st.st_mode):
                        # A link is copied as a link (its target as stored), never followed.
                        target = os.readlink(lp)
                        await self.symlink(rp, target, user=user)
                        out.append({"type": "file_symlink", "path": rp, "target": target})
                    elif _stat.S_ISREG(st.st_mode):
                        out.append(await self._upload_file(lp, rp, user, fsync=False))
                    # FIFOs, sockets and devices are not uploaded.
            for rp, st in reversed(dirs_made):
                await self.chmod(rp, st.st_mode & 0o7777, mtime_ns=st.st_mtime_ns, user=user)
        return out

    async def download(self, folder: str, destination: Optional[str] = None, *,
                       user: Optional[str] = None) -> str:
        """Downloads a directory (or one file) of the box: by default into the current
        directory under its own name (``/work/dist`` -> ``./dist``). Kept: each file's bytes,
        permission bits (rwx: setuid, setgid and sticky are dropped) and mtime; each
        directory's permission bits and mtime (set once its entries are written), the folder's
        own and empty ones included; each symbolic link as a link with its target as stored
        (relative, absolute or dangling, never followed) and its mtime. FIFOs, sockets and
        devices are skipped; a file or link already at a path is replaced, never written
        through. On agents with the ``file_tree`` capability the folder comes in one
        ``file_tree_read`` (PROTOCOL.md 12.8), else as its listings and one read per file.
        Returns the local path."""
        dest = destination if destination is not None else os.path.basename(folder.rstrip("/"))
        top = await self.stat(folder, user=user)
        is_file = top.get("kind") != "dir"
        if top.get("kind") == "symlink":
            try:
                await self.list(folder, user=user)  # a link to a directory?
                is_file = False
            except NotADirectoryError_:
                pass
        if is_file:
            # A link to a file: the file's own mode and mtime (from file_info), not the link's.
            await self._download_file(folder, dest, user,
                                      top if top.get("kind") == "file" else None)
            return dest
        _local_dir(dest)
        if self._trees():
            await self._download_tree(folder, dest, user, top.get("kind") == "dir")
            return dest
        # The folder's own attributes, unless it was named through a link (file_list follows).
        dirs_made: List[tuple] = [(dest, top)] if top.get("kind") == "dir" else []
        pending = [("", folder)]
        while pending:
            rel, remote = pending.pop()
            for e in await self.list(remote, user=user):
                name = e["name"]
                if isinstance(name, bytes):
                    name = os.fsdecode(name)
                if not name or "/" in name or name in (".", ".."):
                    raise ProtocolError("file_list %s: an entry named %r" % (remote, name))
                local = os.path.join(dest, rel, name)
                if e.get("kind") == "dir":
                    _local_dir(local)
                    dirs_made.append((local, e))
                    pending.append((os.path.join(rel, name), remote.rstrip("/") + "/" + name))
                elif e.get("kind") == "symlink" and e.get("target") is not None:
                    target = e["target"]
                    if isinstance(target, bytes):
                        target = os.fsdecode(target)
                    # Made beside the path and renamed over it: never follows what is there.
                    tmp = "%s.boxd-%s" % (local, os.urandom(4).hex())
                    os.symlink(target, tmp)
                    try:
                        os.utime(tmp, ns=(time.time_ns(), int(e.get("mtime_ns", 0))),
                                 follow_symlinks=False)
                        os.replace(tmp, local)
                    except BaseException:
                        os.unlink(tmp)
                        raise
                elif e.get("kind") == "file":
                    await self._download_file(remote.rstrip("/") + "/" + name, local, user, e)
        # Children before parents: setting a directory's mtime then sticks.
        for local, e in reversed(dirs_made):
            os.chmod(local, int(e.get("mode", 0o755)) & 0o777)
            if "mtime_ns" in e:
                os.utime(local, ns=(time.time_ns(), int(e["mtime_ns"])))
        return dest

    # ---- whole trees in one request (PROTOCOL.md 12.8) ---------------------------------------

    def _trees(self) -> bool:
        return "file_tree" in (self._s.hello.get("capabilities") or [])

    async def _download_tree(self, folder: str, dest: str, user: Optional[str],
                             own: bool) -> None:
        """One file_tree_read; after a dropped connection, the whole tree again (each file is
        replaced atomically, so a second pass over a first is harmless). own: the folder's
        own mode and mtime are kept (not when it was named through a link)."""
        for attempt in range(RESUMES + 1):
            sink = _TreeSink(dest)
            req = self._s.next_req()
            op = _TreeReadOp(req, _user({"type": "file_tree_read", "req": req, "path": folder},
                                        user), sink)
            try:
                await self._s._submit(op)
                await self._s._await_first(op, None)
                await op.done
            except ConnectionLostError:
                sink.abandon()
                if attempt == RESUMES:
                    raise
                continue
            except BaseException:
                sink.abandon()
                raise
            if not own:
                sink.dirs = [d for d in sink.dirs if d[0] != dest]
            sink.finish()
            return

    async def _upload_tree(self, local: str, dest: str, user: Optional[str]
                           ) -> List[Dict[str, Any]]:
        """One file_tree_write and its file_tree_data requests, pipelined within the window;
        after a dropped connection (the agent drops the tree), the whole tree again."""
        for attempt in range(RESUMES + 1):
            try:
                return await self._upload_tree_once(local, dest, user)
            except ConnectionLostError:
                if attempt == RESUMES:
                    raise
        raise AssertionError("unreachable")

    async def _upload_tree_once(self, local: str, dest: str, user: Optional[str]
                                ) -> List[Dict[str, Any]]:
        limits = self._s.hello.get("limits") or {}
        frame = max(16 << 10, min(768 << 10, int(limits.get("max_frame", 1 << 20)) - 16384))
        piece = max(4096, min(CHUNK, frame // 2))
        window = max(frame, min(WINDOW, int(limits.get("file_window", 16 << 20)) - frame))
        # Not one by one: as upload() always has, the files of a tree are not fsynced.
        ack = await self._s.request(_user({"type": "file_tree_write", "path": dest,
                                           "mkdir": True, "fsync": False}, user),
                                    idempotent=False)
        tid = ack["tree_id"]
        written: List[Dict[str, Any]] = []
        inflight: List["asyncio.Future[Dict[str, Any]]"] = []
        sizes: List[int] = []
        batch: List[Dict[str, Any]] = []
        size = 0

        async def send(eof: bool) -> Dict[str, Any]:
            nonlocal batch, size
            req = self._s.next_req()
            m = {"type": "file_tree_data", "req": req, "tree_id": tid, "entries": batch,
                 "eof": eof}
            op = _Op(req, m, False, resend_unsent=False)
            await self._s._submit(op)
            inflight.append(asyncio.ensure_future(self._s._await_first(op, None)))
            sizes.append(size)
            batch, size = [], 0
            while inflight and (eof or sum(sizes) > window):
                sizes.pop(0)
                reply = await inflight.pop(0)
            return reply if eof else {}

        try:
            for el in _split_pieces(_tree_elements(local), piece):
                n = len(el.get("data") or b"") + 256 + len(el.get("name", ""))
                if batch and size + n > frame:
                    await send(False)
                batch.append(el)
                size += n
                if "name" in el and el["kind"] in ("file", "symlink"):
                    written.append({"type": "file_tree_entry", "kind": el["kind"],
                                    "path": dest.rstrip("/") + "/" + el["name"]})
            res = await send(True)
        finally:
            for f in inflight:
                if not f.done():
                    f.cancel()
                f.add_done_callback(lambda x: x.cancelled() or x.exception())
        if res.get("failed"):
            e = (res.get("errors") or [{}])[0]
            raise error_from_reply({"type": "error", "code": e.get("code", "io_error"),
                                    "message": "upload to %s: %d entries failed; the first, "
                                    "%s: %s" % (dest, res["failed"], _fsname(e.get("name")),
                                                e.get("message"))})
        return written

    # ---- the transfers -------------------------------------------------------------------------

    async def _upload_file(self, local: str, dest: str, user: Optional[str],
                           mkdir: bool = False, fsync: bool = True) -> Dict[str, Any]:
        with open(local, "rb") as f:
            st = os.fstat(f.fileno())
            return await self._upload_bytes(dest, _FileSource(f), mode=st.st_mode & 0o7777,
                                            mkdir=mkdir, overwrite=True, user=user,
                                            fsync=fsync, mtime_ns=st.st_mtime_ns)

    async def _upload_bytes(self, path: str, src: "_Source", *, mode: Optional[int],
                            mkdir: bool, overwrite: bool, user: Optional[str],
                            fsync: bool = True, mtime_ns: Optional[int] = None
                            ) -> Dict[str, Any]:
        sha = src.sha256()
        msg: Dict[str, Any] = {"type": "file_write", "path": path, "mkdir": bool(mkdir),
                               "overwrite": bool(overwrite), "sha256": sha}
        if not fsync:
            msg["fsync"] = False  # the many small files of a tree (unknown to older agents)
        if mode is not None:
            msg["mode"] = int(mode)
        if mtime_ns is not None:
            msg["mtime_ns"] = int(mtime_ns)
        _user(msg, user)
        eof_sent = [False]
        for attempt in range(RESUMES + 1):
            try:
                ack = await self._s.request(msg)
            except NotFoundError:
                if not eof_sent[0]:
                    raise
                # The last chunk reached the agent but its reply was lost with the connection:
                # the upload is finished. Check that the file there is ours.
                return await self._verify(path, sha, src.size, user)
            upload_id = ack["upload_id"]
            msg["upload_id"] = upload_id  # a resend resumes this upload
            try:
                return await self._send_chunks(upload_id, int(ack.get("offset", 0)), src,
                                               eof_sent)
            except NotFoundError:
                if not eof_sent[0]:
                    raise
                # A resumed upload the agent finished meanwhile (its last chunk was in flight).
                return await self._verify(path, sha, src.size, user)
            except ConnectionLostError:
                if attempt == RESUMES:
                    raise
                # The agent keeps the upload: file_write again with its id gives the offset.
        raise AssertionError("unreachable")

    async def _verify(self, path: str, sha: str, size: int, user: Optional[str]
                      ) -> Dict[str, Any]:
        sink = _Hash()
        await self._read_into(path, sink, user=user)
        if sink.digest() != sha or sink.size != size:
            raise ConnectionLostError(
                "upload to %s: the connection dropped as it finished and the file there is not "
                "the one sent; upload it again" % path)
        return {"type": "file_written", "path": path, "size": size, "sha256": sha}

    async def _send_chunks(self, upload_id: str, offset: int, src: "_Source",
                           eof_sent: List[bool]) -> Dict[str, Any]:
        size = src.size
        limits = self._s.hello.get("limits") or {}
        # Each chunk's frame stays within the agent's max_frame, the bytes in flight within
        # its file_window (both from hello; the defaults are 1 MiB and 16 MiB).
        chunk = max(4096, min(CHUNK, int(limits.get("max_frame", 1 << 20)) - 4096))
        window = max(chunk, min(WINDOW, int(limits.get("file_window", 16 << 20)) - chunk))
        inflight: List["asyncio.Future[Dict[str, Any]]"] = []
        sizes: List[int] = []
        pos = offset
        try:
            while True:
                data = src.read_at(pos, chunk)
                eof = pos + len(data) >= size
                req = self._s.next_req()
                m = {"type": "file_data", "req": req, "upload_id": upload_id, "offset": pos,
                     "data": data}
                if eof:
                    m["eof"] = True
                    eof_sent[0] = True
                # Not repeated after a drop: the caller resumes from the agent's offset instead.
                op = _Op(req, m, False, resend_unsent=False)
                await self._s._submit(op)
                inflight.append(asyncio.ensure_future(self._s._await_first(op, None)))
                sizes.append(len(data))
                pos += len(data)
                if eof:
                    break
                while sum(sizes) > window:
                    sizes.pop(0)
                    await inflight.pop(0)
            reply: Dict[str, Any] = {}
            while inflight:
                sizes.pop(0)
                reply = await inflight.pop(0)
            return reply
        finally:
            for f in inflight:
                if not f.done():
                    f.cancel()
                f.add_done_callback(lambda x: x.cancelled() or x.exception())

    async def _read_into(self, path: str, out: Any, *, user: Optional[str],
                         info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        req = self._s.next_req()
        op = _ReadOp(req, _user({"type": "file_read", "req": req, "path": path}, user), out)
        await self._s._submit(op)
        await self._s._await_first(op, None)
        end = await op.done
        if info is not None and op.info is not None:
            info.update(op.info)
        if "sha256" in end and op.start == 0 and hasattr(out, "digest"):
            if out.digest() != end["sha256"]:
                raise BoxError("file_read %s: the data's sha256 is not the agent's; read it "
                               "again" % path, code="checksum_mismatch")
        return end

    async def _download_file(self, remote: str, local: str, user: Optional[str],
                             entry: Optional[Mapping[str, Any]]) -> None:
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        # O_EXCL | O_NOFOLLOW: never writes through something already at the temp path.
        tmp = "%s.boxd-%s" % (local, os.urandom(4).hex())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                info: Dict[str, Any] = {}
                await self._read_into(remote, _FileSink(f), user=user, info=info)
                f.flush()
                if entry is None:
                    entry = info
                os.fchmod(f.fileno(), int(entry.get("mode", 0o644)) & 0o777)
                if "mtime_ns" in entry:
                    os.utime(f.fileno(), ns=(time.time_ns(), int(entry["mtime_ns"])))
            os.replace(tmp, local)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


def _split_pieces(elements: Iterable[Dict[str, Any]], piece: int):
    """The elements with no data longer than piece (a smaller max_frame): a longer one goes on
    in continuations."""
    for el in elements:
        data = el.get("data") or b""
        if len(data) <= piece:
            yield el
            continue
        more = el.get("more", False)
        first = dict(el, data=data[:piece], more=True)
        yield first
        for i in range(piece, len(data), piece):
            last = i + piece >= len(data)
            yield {"data": data[i:i + piece], "more": more if last else True}


def _local_dir(path: str) -> None:
    """Makes a local directory, refusing anything else already there (a link planted there)."""
    os.makedirs(path, exist_ok=True)
    if not _stat.S_ISDIR(os.lstat(path).st_mode):
        raise BoxError("download: %s exists and is not a directory; remove it or choose "
                       "another destination" % path, code="exists")


class _Source:
    size: int

    def read_at(self, pos: int, n: int) -> bytes:
        raise AssertionError("abstract")

    def sha256(self) -> str:
        raise AssertionError("abstract")


class _BytesSource(_Source):
    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def read_at(self, pos: int, n: int) -> bytes:
        return self.data[pos:pos + n]

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class _FileSource(_Source):
    def __init__(self, f: Any):
        self.f = f
        self.size = os.fstat(f.fileno()).st_size

    def read_at(self, pos: int, n: int) -> bytes:
        return os.pread(self.f.fileno(), min(n, max(0, self.size - pos)), pos)

    def sha256(self) -> str:
        h = hashlib.sha256()
        pos = 0
        while pos < self.size:
            b = self.read_at(pos, 1 << 20)
            if not b:
                break
            h.update(b)
            pos += len(b)
        return h.hexdigest()


class _Collect:
    def __init__(self) -> None:
        self.data = bytearray()
        self.h = hashlib.sha256()

    def write(self, b: bytes) -> None:
        self.data += b
        self.h.update(b)

    def digest(self) -> str:
        return self.h.hexdigest()


class _FileSink:
    def __init__(self, f: Any):
        self.f = f
        self.h = hashlib.sha256()

    def write(self, b: bytes) -> None:
        self.f.write(b)
        self.h.update(b)

    def digest(self) -> str:
        return self.h.hexdigest()


class _Hash:
    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, b: bytes) -> None:
        self.h.update(b)
        self.size += len(b)

    def digest(self) -> str:
        return self.h.hexdigest()
