"""The asyncio API of the boxd SDK: :class:`AsyncBox`, :class:`AsyncExec`, :class:`AsyncRun`.

Same shape as the sync API (:class:`boxd.Box`), with ``await`` and ``async for``::

    from boxd.aio import AsyncBox

    async with await AsyncBox.connect(socket="unix:/run/boxd.sock") as box:
        run = await box.exec.command("echo hello")
        print(run.result)                      # hello
        async for item in box.exec.stream("seq 3"):
            print(item)

Timeouts: ``timeout`` on a run is the *run's* limit in milliseconds, enforced by the agent
(it kills the run's whole tree; the run ends ``failed`` with reason ``timeout``).
``request_timeout`` (seconds, ``connect``) is how long the SDK waits for a reply before it
raises :class:`boxd.errors.RequestTimeoutError`; it never stops a run.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
from typing import (Any, AsyncIterator, Callable, Dict, List, Mapping, Optional, Sequence,
                    Union)

from ._session import CLIENT_NAME, Session, _Sub, resolve_token
from ._wire import parse_address
from .errors import BootChangedError, CapabilityError, WaitTimeoutError
from .types import Exit, Gap, OutputChunk, RunFields, RunLog, RunState

__all__ = ["AsyncBox", "AsyncExec", "AsyncRun", "new_run_id"]

Command = Union[str, Sequence[str]]
Callback = Callable[[OutputChunk], Any]

#: Bytes of output ``exec.stream`` buffers for a consumer before the SDK stops reading the
#: connection (the agent then holds the run back: nothing is lost).
STREAM_BUFFER = 8 << 20


def new_run_id() -> str:
    """A fresh client-chosen run id (``py-`` and 16 hex digits). Client ids make ``exec`` safe
    to retry after a reconnect (PROTOCOL.md 4.1)."""
    return "py-" + secrets.token_hex(8)


def _run_fields(cmd: Optional[Command], *, id: Optional[str], cwd: Optional[str],
                env: Optional[Mapping[str, str]], timeout: Optional[int],
                user: Optional[str], grace_ms: Optional[int], seccomp: Optional[str],
                stdin: bool) -> Dict[str, Any]:
    msg: Dict[str, Any] = {"id": id or new_run_id(), "follow": True, "output": True}
    if cmd is not None:
        if isinstance(cmd, str):
            msg["cmd"] = cmd
        else:
            msg["argv"] = [str(a) for a in cmd]
    if cwd is not None:
        msg["cwd"] = str(cwd)
    if env is not None:
        msg["env"] = {str(k): str(v) for k, v in env.items()}
    if timeout:
        msg["timeout_ms"] = int(timeout)
    if user is not None:
        msg["user"] = user
    if grace_ms is not None:
        msg["grace_ms"] = int(grace_ms)
    if seccomp is not None:
        msg["seccomp"] = seccomp
    if stdin:
        msg["stdin"] = True
    return msg


def _callback_sink(on_stdout: Optional[Callback], on_stderr: Optional[Callback]):
    if on_stdout is None and on_stderr is None:
        return None

    async def sink(item: Union[OutputChunk, Gap]) -> None:
        if isinstance(item, Gap):
            return
        cb = on_stdout if item.stream == "stdout" else on_stderr
        if cb is not None:
            r = cb(item)
            if inspect.isawaitable(r):
                await r
    return sink


class _Buffer:
    """A queue of stream items with a byte budget: put() waits while it is over budget."""

    def __init__(self, cap: int = STREAM_BUFFER):
        self.q: asyncio.Queue = asyncio.Queue()
        self.cap = cap
        self.bytes = 0
        self.room = asyncio.Event()
        self.room.set()
        self.closed = False

    async def put(self, item: Any) -> None:
        if self.closed:
            return
        self.bytes += len(getattr(item, "raw", b""))
        self.q.put_nowait(item)
        while self.bytes > self.cap and not self.closed:
            self.room.clear()
            await self.room.wait()

    async def get(self) -> Any:
        item = await self.q.get()
        self.bytes -= len(getattr(item, "raw", b""))
        if self.bytes <= self.cap // 2:
            self.room.set()
        return item

    def close(self) -> None:
        self.closed = True
        self.room.set()


class AsyncRun(RunFields):
    """A run, live or ended (fields: see :class:`boxd.types.RunFields`).

    Returned by ``exec.start`` (live), ``exec.command``/``exec.code`` (ended) and
    ``exec.attach``. Its fields fill in as the run ends.
    """

    def __init__(self, box: "AsyncBox", state: RunState, sub: Optional[_Sub]):
        self._box = box
        self._state = state
        self._sub = sub

    def _same_boot(self) -> None:
        """Raises BootChangedError if the agent restarted since this run was started: the
        run is gone, and its id must not be looked up on the new agent."""
        now = self._box._session.boot_id
        if self._state.boot_id and self._state.boot_id != now:
            raise BootChangedError(
                "run %s belonged to boxd boot %s; the agent has restarted (boot %s) and the run "
                "is gone" % (self.id, self._state.boot_id, now),
                old_boot_id=self._state.boot_id, new_boot_id=now)

    async def wait(self, wait_timeout: Optional[float] = None) -> "AsyncRun":
        """Waits until the run ends and returns it (with every field set).

        ``wait_timeout`` (seconds, client side) raises :class:`WaitTimeoutError` if the run
        has not ended by then; the run goes on. Connection drops are ridden out
        transparently (the run is re-attached); a box restart raises BootChangedError.
        """
        if self._state.end is not None:
            return self
        self._same_boot()
        if self._sub is None or (self._sub.ended.done() and self._sub.ended.exception()):
            # Not followed here (or the subscription failed): ask with `wait`.
            sess = self._box._session
            self._sub = await sess.subscribe({"type": "wait", "id": self.id, "output": True},
                                             self._state, None, wait_only=True)
        try:
            await asyncio.wait_for(asyncio.shield(self._sub.ended), wait_timeout)
        except asyncio.TimeoutError:
            raise WaitTimeoutError("run %s had not ended after %.1f s (wait_timeout); it goes "
                                   "on" % (self.id, wait_timeout), id=self.id) from None
        return self

    async def cancel(self, grace_ms: Optional[int] = None) -> "AsyncRun":
        """Cancels the run (TERM and CONT to its whole tree, KILL after ``grace_ms``) and
        returns once it has ended; ``status`` is then ``"cancelled"`` (or what it already was
        if the run had ended before)."""
        self._same_boot()
        msg: Dict[str, Any] = {"type": "cancel", "id": self.id}
        if grace_ms is not None:
            msg["grace_ms"] = int(grace_ms)
        await self._box._session.request(msg)
        return await self.wait()

    async def send_signal(self, sig: Union[int, str]) -> None:
        """Sends a signal (``15``, ``"TERM"``, ``"SIGTERM"``) to the run's process group.
        Not repeated after a connection drop (raises ConnectionLostError instead)."""
        self._same_boot()
        await self._box._session.request({"type": "signal", "id": self.id, "signal": sig},
                                         idempotent=False)

    async def write_stdin(self, data: Union[str, bytes], eof: bool = False) -> None:
        """Writes to the run's stdin (start the run with ``stdin=True``); returns once the
        bytes are in the pipe. ``eof=True`` closes stdin after them."""
        self._same_boot()
        await self._box._session.request({"type": "stdin", "id": self.id, "data": data,
                                          "eof": bool(eof)}, idempotent=False)

    async def close_stdin(self) -> None:
        """Closes the run's stdin (the process reads EOF)."""
        self._same_boot()
        await self._box._session.request({"type": "stdin", "id": self.id, "eof": True})

    async def logs(self) -> List[RunLog]:
        """Every retained line of the run so far, oldest first, as :class:`RunLog` values."""
        self._same_boot()
        out: List[RunLog] = []
        from_seq = 0
        sess = self._box._session
        while True:
            page = await sess.request({"type": "logs", "id": self.id, "from_seq": from_seq})
            out.extend(RunLog.from_record(r) for r in page.get("lines") or ())
            nxt = int(page.get("next_seq", from_seq))
            if not page.get("more") or nxt <= from_seq:
                return out
            from_seq = nxt


class AsyncExec:
    """Runs: ``box.exec``."""

    def __init__(self, box: "AsyncBox"):
        self._box = box

    async def _start(self, msg: Dict[str, Any], sink) -> AsyncRun:
        state = RunState(id=msg["id"], boot_id=self._box._session.boot_id)
        sub = await self._box._session.subscribe(msg, state, sink)
        return AsyncRun(self._box, state, sub)

    async def start(self, cmd: Command, *, cwd: Optional[str] = None,
                    env: Optional[Mapping[str, str]] = None, timeout: Optional[int] = None,
                    user: Optional[str] = None, on_stdout: Optional[Callback] = None,
                    on_stderr: Optional[Callback] = None, id: Optional[str] = None,
                    grace_ms: Optional[int] = None, seccomp: Optional[str] = None,
                    stdin: bool = False) -> AsyncRun:
        """Starts a command and returns the live run once it is running.

        Args:
            cmd: a shell expression (``/bin/sh -c CMD``), or a list for an argv run.
            cwd: working directory (default the run user's HOME).
            env: variables added to the clean base environment.
            timeout: the run's limit in **milliseconds** (the agent kills the whole tree);
                None or 0 for none.
            user: run as this user (only one the agent's policy allows).
            on_stdout, on_stderr: called with each :class:`OutputChunk` (plain functions or
                coroutine functions). They run on the event loop, in order, and the SDK reads
                nothing more from the connection until each returns: keep them short.
            id: the run id (default: a fresh ``py-...`` id).
            grace_ms: TERM-to-KILL grace for timeout and cancel.
            seccomp: ``"default"`` or ``"strict"`` (or ``"none"`` if the agent allows it).
            stdin: give the run a stdin pipe fed by ``run.write_stdin``.

        Raises SpawnFailedError when the process cannot be started, DeniedError, LimitError...
        """
        msg = _run_fields(cmd, id=id, cwd=cwd, env=env, timeout=timeout, user=user,
                          grace_ms=grace_ms, seccomp=seccomp, stdin=stdin)
        msg["type"] = "exec"
        return await self._start(msg, _callback_sink(on_stdout, on_stderr))

    async def command(self, cmd: Command, **kw: Any) -> AsyncRun:
        """Runs a command to its end and returns the ended run (``status``, ``result``,
        ``output``, ``exit_code``...). Takes the options of :meth:`start`."""
        run = await self.start(cmd, **kw)
        return await run.wait()

    async def code(self, code: Union[str, bytes], lang: str = "python", **kw: Any
                   ) -> AsyncRun:
        """Runs a snippet to its end: ``await box.exec.code(code=..., lang="py",
        timeout=10000)`` returns the ended run (``output`` is its stdout with one final
        newline dropped, ``exit_code``...). ``timeout`` is in milliseconds. Options as
        :meth:`start_code`."""
        run = await self.start_code(code, lang, **kw)
        return await run.wait()

    async def start_code(self, code: Union[str, bytes], lang: str = "python", *,
                         timeout: Optional[int] = None, cwd: Optional[str] = None,
                         env: Optional[Mapping[str, str]] = None, user: Optional[str] = None,
                         on_stdout: Optional[Callback] = None,
                         on_stderr: Optional[Callback] = None, id: Optional[str] = None,
                         grace_ms: Optional[int] = None, seccomp: Optional[str] = None,
                         stdin: bool = False) -> AsyncRun:
        """Starts a snippet (PROTOCOL.md 4.8) and returns the live run. ``lang`` is a
        language's name or alias (``python``/``py``, ``js``/``node``, ``bash``...);
        ``timeout`` is in milliseconds. Raises UnknownLangError (``.available``)."""
        msg = _run_fields(None, id=id, cwd=cwd, env=env, timeout=timeout, user=user,
                          grace_ms=grace_ms, seccomp=seccomp, stdin=stdin)
        msg.update(type="code", lang=lang, code=code)
        return await self._start(msg, _callback_sink(on_stdout, on_stderr))

    async def attach(self, run_id: str, *, on_stdout: Optional[Callback] = None,
                     on_stderr: Optional[Callback] = None, from_seq: int = 0) -> AsyncRun:
        """Follows an existing run (started elsewhere, or before a restart of this program)
        from ``from_seq``; returns it live (``wait()`` for its end)."""
        msg = {"type": "attach", "id": run_id, "from_seq": int(from_seq), "output": True}
        return await self._start(msg, _callback_sink(on_stdout, on_stderr))

    async def stream(self, cmd: Command, **kw: Any) -> AsyncIterator[Union[OutputChunk, Gap,
                                                                          Exit]]:
        """Runs a command and yields its output as it comes: :class:`OutputChunk` items
        (``stream``, ``data``, ``timestamp``), then one :class:`Exit`. Takes the options of
        :meth:`start` (not the callbacks). Breaking out early leaves the run running."""
        buf = _Buffer()
        run = await self._start(dict(_run_fields(cmd, **_opts(kw)), type="exec"), buf.put)
        async for item in _drain(run, buf):
            yield item

    async def list(self) -> List[Dict[str, Any]]:
        """The runs the agent knows, as dicts (PROTOCOL.md 10.3 ``list``)."""
        reply = await self._box._session.request({"type": "list"})
        return list(reply.get("runs") or [])


def _opts(kw: Dict[str, Any]) -> Dict[str, Any]:
    allowed = ("id", "cwd", "env", "timeout", "user", "grace_ms", "seccomp", "stdin")
    bad = set(kw) - set(allowed)
    if bad:
        raise TypeError("unexpected option(s) for stream: %s" % ", ".join(sorted(bad)))
    return {k: kw.get(k, False if k == "stdin" else None) for k in allowed}


async def _drain(run: AsyncRun, buf: _Buffer):
    waiter = asyncio.ensure_future(run.wait())
    getter: Optional[asyncio.Future] = None
    try:
        while True:
            getter = asyncio.ensure_future(buf.get())
            done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            getter = None
            waiter.result()  # raises BootChangedError and the like
            while not buf.q.empty():
                yield await buf.get()
            yield Exit(status=run.status, exit_code=run.exit_code, signal=run.signal,
                       reason=run.reason, duration_ms=run.duration_ms, run=run)
            return
    finally:
        buf.close()
        if getter is not None:
            getter.cancel()
        if not waiter.done():
            waiter.cancel()


class AsyncFilesUnavailable:
    """``box.files`` on an agent without the file protocol: every call raises
    :class:`CapabilityError`."""

    def __init__(self, box: "AsyncBox"):
        self._box = box

    def _no(self, *_a: Any, **_k: Any) -> Any:
        raise CapabilityError(
            "boxd %s at %s has no file transfer (its hello capabilities lack \"files\"); "
            "upgrade the agent" % (self._box.agent, self._box._session.addr), capability="files")

    upload = download = read = write = list = _no


class AsyncBox:
    """A connection to one boxd. Make one with ``await AsyncBox.connect(...)``."""

    def __init__(self, session: Session):
        self._session = session
        self.exec = AsyncExec(self)
        self.files = _make_files(self)

    @classmethod
    async def connect(cls, socket: Optional[str] = None, token: Optional[Union[str, bytes]] = None,
                      *, token_file: Optional[str] = None, request_timeout: float = 30.0,
                      connect_timeout: float = 5.0, reconnect_timeout: float = 30.0,
                      heartbeat_interval: Optional[float] = 15.0,
                      client: str = CLIENT_NAME) -> "AsyncBox":
        """Connects and says hello.

        Args:
            socket: ``unix:PATH`` or a path, ``vsock:CID:PORT``, or ``fc:UDS:PORT`` (a
                Firecracker/Cloud Hypervisor vsock socket). Default ``$BOXD_SOCKET``, then
                ``/run/boxd.sock``.
            token: the agent's token (str or bytes); or ``token_file`` (default
                ``$BOXD_TOKEN_FILE``), read as boxd reads it (trailing newline dropped).
            request_timeout: seconds to wait for each reply (client side; never stops a run).
            connect_timeout: seconds for each connection attempt, hello included.
            reconnect_timeout: seconds to keep trying after the connection drops before
                failing what is in flight with ConnectionLostError.
            heartbeat_interval: seconds of silence after which the SDK pings the agent and
                treats a missing pong as a dead connection; None to disable.

        Raises ConnectionLostError when boxd cannot be reached, UnauthorizedError for a wrong
        or missing token, BadVersionError.
        """
        sess = Session(parse_address(socket), resolve_token(token, token_file), client=client,
                       connect_timeout=connect_timeout, request_timeout=request_timeout,
                       reconnect_timeout=reconnect_timeout,
                       heartbeat_interval=heartbeat_interval)
        await sess.open()
        return cls(sess)

    @property
    def boot_id(self) -> str:
        """The agent's boot id (changes when the box reboots or boxd restarts)."""
        return self._session.boot_id

    @property
    def agent(self) -> str:
        """The agent's name and version, e.g. ``"boxd 0.1.0"``."""
        return str(self._session.hello.get("agent", ""))

    @property
    def capabilities(self) -> List[str]:
        """What the agent can do (``hello.capabilities``)."""
        return list(self._session.hello.get("capabilities") or [])

    @property
    def limits(self) -> Dict[str, int]:
        """The agent's limits (``hello.limits``)."""
        return dict(self._session.hello.get("limits") or {})

    async def ping(self) -> float:
        """Round trip to the agent, in seconds."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await self._session.request({"type": "ping"})
        return loop.time() - t0

    async def info(self) -> Dict[str, Any]:
        """The agent's ``info`` reply (mode, runs, languages...)."""
        return await self._session.request({"type": "info"})

    async def close(self) -> None:
        """Closes the connection. Runs go on in the box; ``exec.attach`` finds them later."""
        await self._session.close()

    async def __aenter__(self) -> "AsyncBox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def _make_files(box: AsyncBox) -> Any:
    if "files" in box.capabilities:
        from .files import AsyncFiles
        return AsyncFiles(box)
    return AsyncFilesUnavailable(box)
