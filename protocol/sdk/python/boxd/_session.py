"""The asyncio core: one logical session with one boxd, over as many connections as it takes.

The session owns the current connection, the requests in flight (keyed by ``req``, an integer
that is never reused within a session) and the subscriptions (followed runs). When the
connection drops it reconnects, says ``hello`` again, compares ``boot_id``, and then:

- re-sends requests that are safe to repeat (everything but ``stdin`` data and ``signal``,
  which fail with :class:`ConnectionLostError` because they may have taken effect);
- re-attaches each followed run from the sequence number after the last record received
  (``attach`` with ``from_seq``, PROTOCOL.md 4.7 and 9.2), so no record is lost or repeated;
- re-sends an ``exec``/``code`` whose ``started`` had not arrived: the SDK always gives runs a
  client-chosen id, so the retry is answered by the existing run (PROTOCOL.md 4.1).

If ``boot_id`` changed, every request and run in flight fails with :class:`BootChangedError`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple, Union

from ._version import __version__
from ._wire import READ_SIZE, Address, FrameReader, encode_frame, open_stream
from .errors import (BadVersionError, BootChangedError, BoxClosedError, BoxError,
                     ConnectionLostError, ProtocolError, RequestTimeoutError, UnauthorizedError,
                     error_from_reply)
from .types import Gap, OutputChunk, RunState

Sink = Callable[[Union[OutputChunk, Gap]], Awaitable[None]]


def _quiet(fut: "asyncio.Future[Any]") -> None:
    """Marks a future's exception as retrieved (it is also delivered elsewhere)."""
    if not fut.cancelled():
        fut.exception()


class _Op:
    """A request waiting for its one reply."""

    __slots__ = ("req", "msg", "idempotent", "first", "sent_gen", "resend_unsent")

    def __init__(self, req: int, msg: Dict[str, Any], idempotent: bool,
                 resend_unsent: bool = True):
        self.req = req
        self.msg = msg
        self.idempotent = idempotent
        # False: never send on a later connection than the one current when it was made,
        # even if it was not sent yet (file_data: its predecessors may be lost; the upload
        # resumes from the agent's offset instead).
        self.resend_unsent = resend_unsent
        self.first: asyncio.Future = asyncio.get_running_loop().create_future()
        self.first.add_done_callback(_quiet)
        self.sent_gen = -1

    def resend_msg(self) -> Dict[str, Any]:
        return self.msg

    def fail(self, err: BaseException) -> None:
        if not self.first.done():
            self.first.set_exception(err)

    async def handle(self, sess: "Session", m: Dict[str, Any]) -> None:
        sess._ops.pop(self.req, None)
        if self.first.done():
            return
        if m["type"] == "error":
            self.first.set_exception(error_from_reply(m))
        else:
            self.first.set_result(m)


class _Sub(_Op):
    """A subscription: ``exec``/``code`` with follow, ``attach``, or ``wait`` (PROTOCOL.md 9.2).

    ``first`` resolves with ``started``/``attached`` (for ``wait``, with the ``end``); ``ended``
    with the ``end`` event. ``next_seq`` is the seq of the next record expected.
    """

    __slots__ = ("state", "next_seq", "started", "sink", "ended", "output", "wait_only")

    def __init__(self, req: int, msg: Dict[str, Any], state: RunState, sink: Optional[Sink],
                 wait_only: bool = False):
        super().__init__(req, msg, True)
        self.state = state
        self.next_seq = int(msg.get("from_seq") or 0)
        self.started = False
        self.sink = sink
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ended.add_done_callback(_quiet)
        self.output = bool(msg.get("output"))
        self.wait_only = wait_only

    def resend_msg(self) -> Dict[str, Any]:
        if self.started and not self.wait_only:
            # Re-attach from the first record not yet received: nothing lost, nothing twice.
            return {"type": "attach", "req": self.req, "id": self.state.id,
                    "from_seq": self.next_seq, "output": self.output}
        return self.msg

    def fail(self, err: BaseException) -> None:
        super().fail(err)
        if not self.ended.done():
            self.ended.set_exception(err)

    async def handle(self, sess: "Session", m: Dict[str, Any]) -> None:
        t = m["type"]
        if t == "output":
            for rec in m.get("lines") or ():
                seq = rec[0]
                if seq < self.next_seq:
                    continue  # already delivered before a reconnect
                self.next_seq = seq + 1
                if self.sink is not None:
                    sess._blocked += 1
                    try:
                        await self.sink(OutputChunk.from_record(rec))
                    finally:
                        sess._blocked -= 1
        elif t == "gap":
            to_seq = int(m.get("to_seq", 0))
            if to_seq > self.next_seq:
                gap = Gap(max(int(m.get("from_seq", 0)), self.next_seq), to_seq)
                self.next_seq = to_seq
                self.state.gaps.append(gap)
                if self.sink is not None:
                    await self.sink(gap)
        elif t in ("started", "attached"):
            self.started = True
            if t == "started":
                self.state.pid = int(m.get("pid") or 0) or self.state.pid
            if not self.first.done():
                self.first.set_result(m)
        elif t == "end":
            sess._ops.pop(self.req, None)
            self.state.end = m
            self.state.pid = self.state.pid
            if not self.first.done():
                self.first.set_result(m)
            if not self.ended.done():
                self.ended.set_result(m)
        elif t == "error":
            sess._ops.pop(self.req, None)
            self.fail(error_from_reply(m))
        # Other types carrying this req are not in the protocol; they are ignored.


def read_token_file(path: str) -> bytes:
    """Reads a token file as boxd does: its bytes with trailing CR/LF removed."""
    with open(path, "rb") as f:
        data = f.read(4098)
    data = data.rstrip(b"\r\n")
    if not data:
        raise ValueError("token file %s is empty" % path)
    return data


class Session:
    """One client's conversation with one boxd. Every method runs on the session's loop."""

    def __init__(self, addr: Address, token: Optional[Union[str, bytes]], *,
                 client: str, connect_timeout: float, request_timeout: float,
                 reconnect_timeout: float, heartbeat_interval: Optional[float]):
        self.addr = addr
        self.token = token
        self.client = client
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.reconnect_timeout = reconnect_timeout
        self.heartbeat_interval = heartbeat_interval
        self.hello: Dict[str, Any] = {}
        self.boot_id: str = ""
        self.reconnects = 0  # connections re-established (for tests and diagnostics)
        self._reqs = itertools.count(1)
        self._ops: Dict[int, _Op] = {}
        self._writer: Optional[asyncio.StreamWriter] = None
        self._gen = 0
        self._reader_task: Optional[asyncio.Task] = None
        self._reconnect_task: Optional[asyncio.Task] = None
        self._heartbeat_task: Optional[asyncio.Task] = None
        self._closing = False
        self._blocked = 0
        self._last_rx = 0.0

    # ---- connecting ------------------------------------------------------------------------

    def next_req(self) -> int:
        return next(self._reqs)

    async def _connect_hello(self) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                            Dict[str, Any], FrameReader]:
        reader, writer = await open_stream(self.addr, self.connect_timeout)
        try:
            req = self.next_req()
            msg: Dict[str, Any] = {"type": "hello", "req": req, "version": 1,
                                   "client": self.client}
            if self.token is not None:
                msg["token"] = self.token
            writer.write(encode_frame(msg))
            await writer.drain()
            fr = FrameReader()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.connect_timeout
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise asyncio.TimeoutError()
                data = await asyncio.wait_for(reader.read(READ_SIZE), left)
                if not data:
                    raise ConnectionResetError("boxd closed the connection during hello")
                fr.feed(data)
                for m in fr.messages():
                    if m.get("req") == req or (m["type"] == "error" and "req" not in m):
                        if m["type"] == "error":
                            raise error_from_reply(m)
                        if m["type"] != "hello" or not isinstance(m.get("boot_id"), str):
                            raise ProtocolError("hello answered with %r" % (m.get("type"),))
                        return reader, writer, m, fr
        except BaseException:
            writer.close()
            raise

    async def open(self) -> None:
        """The first connection. Errors are raised as they are (nothing to resume yet)."""
        try:
            reader, writer, hello, fr = await self._connect_hello()
        except asyncio.TimeoutError:
            raise ConnectionLostError("boxd at %s did not answer hello within %.1f s"
                                      % (self.addr, self.connect_timeout)) from None
        except OSError as e:
            raise ConnectionLostError("cannot connect to boxd at %s: %s (is boxd running? set "
                                      "socket= or $BOXD_SOCKET)" % (self.addr, e)) from e
        self.hello = hello
        self.boot_id = hello["boot_id"]
        self._install(reader, writer, fr)
        if self.heartbeat_interval:
            self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat())

    def _install(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 fr: FrameReader) -> None:
        self._gen += 1
        self._writer = writer
        self._last_rx = asyncio.get_running_loop().time()
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read_loop(reader, fr, self._gen))

    # ---- reading -----------------------------------------------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader, fr: FrameReader, gen: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                for m in fr.messages():
                    await self._dispatch(m)
                data = await reader.read(READ_SIZE)
                if not data:
                    raise ConnectionResetError("boxd closed the connection")
                self._last_rx = loop.time()
                fr.feed(data)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a dropped or broken connection: reconnect
            if gen == self._gen and not self._closing:
                self._lost(e)

    async def _dispatch(self, m: Dict[str, Any]) -> None:
        req = m.get("req")
        op = self._ops.get(req) if isinstance(req, int) else None
        if op is not None:
            await op.handle(self, m)
            return
        if m["type"] == "error" and "req" not in m:
            # The SDK sends only well-formed frames with a req, so this is `internal` (out of
            # memory): PROTOCOL.md 6 says to take it as the failure of the oldest request.
            for o in list(self._ops.values()):
                if not isinstance(o, _Sub) or not o.started:
                    self._ops.pop(o.req, None)
                    o.fail(error_from_reply(m))
                    return
        # Anything else is for a request given up on (a client timeout): ignored.

    # ---- connection loss and reconnect -------------------------------------------------------

    def _lost(self, cause: BaseException) -> None:
        w, self._writer = self._writer, None
        self._gen += 1
        if w is not None:
            w.transport.abort()
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect(cause))

    async def _reconnect(self, cause: BaseException) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        delay = 0.02
        last: BaseException = cause
        while True:
            if self._closing:
                return
            try:
                reader, writer, hello, fr = await self._connect_hello()
                break
            except (UnauthorizedError, BadVersionError) as e:
                self._fail_all(e)
                return
            except (OSError, EOFError, asyncio.TimeoutError, BoxError) as e:
                last = e
            if loop.time() + delay > deadline:
                self._fail_all(ConnectionLostError(
                    "lost the connection to boxd at %s (%s) and could not reconnect within "
                    "%.1f s (reconnect_timeout): %s" % (self.addr, cause, self.reconnect_timeout,
                                                        last or "timeout")))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        if self._closing:
            writer.close()
            return
        self.reconnects += 1
        new_boot = hello["boot_id"]
        self.hello = hello
        if new_boot != self.boot_id:
            old, self.boot_id = self.boot_id, new_boot
            self._fail_all(BootChangedError(
                "boxd at %s restarted (boot_id %s is now %s): the box rebooted or the agent "
                "restarted, and every run this client knew of is gone" % (self.addr, old,
                                                                           new_boot),
                old_boot_id=old, new_boot_id=new_boot))
        self._install(reader, writer, fr)
        for op in list(self._ops.values()):
            if op.idempotent or (op.sent_gen == -1 and op.resend_unsent):
                self._write(op, op.resend_msg())
            else:
                self._ops.pop(op.req, None)
                op.fail(ConnectionLostError(
                    "the connection to boxd dropped before %r was answered; it may or may not "
                    "have taken effect" % op.msg.get("type")))

    def _fail_all(self, err: BaseException) -> None:
        ops, self._ops = self._ops, {}
        for op in ops.values():
            op.fail(err)

    async def _heartbeat(self) -> None:
        """Pings a connection that has been silent for heartbeat_interval; a ping without a
        pong within request_timeout means the peer is gone (a frozen VM sends no EOF)."""
        loop = asyncio.get_running_loop()
        interval = float(self.heartbeat_interval or 0)
        while not self._closing:
            await asyncio.sleep(interval)
            if self._writer is None or self._blocked or loop.time() - self._last_rx < interval:
                continue
            gen = self._gen
            try:
                await self.request({"type": "ping"})
            except RequestTimeoutError as e:
                if gen == self._gen and self._writer is not None and not self._blocked:
                    self._lost(e)
            except BoxError:
                pass

    # ---- sending -----------------------------------------------------------------------------

    def _write(self, op: _Op, msg: Dict[str, Any]) -> None:
        w = self._writer
        if w is None:
            return
        try:
            w.write(encode_frame(msg))
            op.sent_gen = self._gen
        except (OSError, RuntimeError) as e:
            self._lost(e)

    async def _submit(self, op: _Op) -> None:
        if self._closing:
            raise BoxClosedError("the Box is closed; connect again")
        self._ops[op.req] = op
        if self._writer is not None:
            self._write(op, op.msg)
            w = self._writer
            if w is not None:
                try:
                    await w.drain()
                except (OSError, RuntimeError):
                    pass  # the read loop sees the loss and reconnects; the op is resent
        elif self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect(ConnectionLostError("not connected")))

    async def _await_first(self, op: _Op, timeout: Optional[float]) -> Dict[str, Any]:
        t = self.request_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(op.first), t)
        except asyncio.TimeoutError:
            if self._ops.get(op.req) is op and not isinstance(op, _Sub):
                self._ops.pop(op.req, None)
            raise RequestTimeoutError(
                "boxd did not answer %r within %.1f s (request_timeout; the run, if any, is "
                "not affected)" % (op.msg.get("type"), t)) from None

    async def request(self, msg: Dict[str, Any], *, idempotent: bool = True,
                      timeout: Optional[float] = None) -> Dict[str, Any]:
        """Sends one request and returns its reply; an ``error`` reply is raised, typed."""
        req = self.next_req()
        msg = dict(msg, req=req)
        op = _Op(req, msg, idempotent)
        await self._submit(op)
        return await self._await_first(op, timeout)

    async def subscribe(self, msg: Dict[str, Any], state: RunState, sink: Optional[Sink], *,
                        wait_only: bool = False) -> _Sub:
        """Sends exec/code/attach/wait and returns the subscription once its first reply
        (``started``/``attached``) has arrived (for ``wait``, at once)."""
        req = self.next_req()
        msg = dict(msg, req=req)
        sub = _Sub(req, msg, state, sink, wait_only)
        await self._submit(sub)
        if not wait_only:
            try:
                await self._await_first(sub, None)
            except RequestTimeoutError:
                self._ops.pop(sub.req, None)
                sub.fail(RequestTimeoutError("no reply to %r" % msg.get("type")))
                raise
        return sub

    def unsubscribe(self, sub: _Sub) -> None:
        """Forgets a subscription locally (its later events are ignored)."""
        self._ops.pop(sub.req, None)

    # ---- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        for t in (self._heartbeat_task, self._reconnect_task, self._reader_task):
            if t is not None and not t.done():
                t.cancel()
        w, self._writer = self._writer, None
        if w is not None:
            w.close()
            try:
                await w.wait_closed()
            except (OSError, RuntimeError):
                pass
        self._fail_all(BoxClosedError("the Box was closed"))


def resolve_token(token: Optional[Union[str, bytes]], token_file: Optional[str]
                  ) -> Optional[Union[str, bytes]]:
    """token= wins, then token_file=, then $BOXD_TOKEN_FILE; None when none is set."""
    if token is not None and token_file is not None:
        raise ValueError("give token= or token_file=, not both")
    if token is not None:
        return token
    path = token_file if token_file is not None else os.environ.get("BOXD_TOKEN_FILE")
    if path:
        return read_token_file(path)
    return None


CLIENT_NAME = "boxd-python/" + __version__
