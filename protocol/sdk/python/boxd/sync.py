"""The synchronous API of the boxd SDK: :class:`Box`, :class:`Exec`, :class:`Run`.

A thin facade over the asyncio core (:mod:`boxd.aio`): each Box runs its own event loop on a
private daemon thread, and every call blocks the calling thread until the loop has the
answer. Callbacks (``on_stdout``, ``on_stderr``) and ``exec.stream`` items are delivered on
the *calling* thread, so they may raise and use the caller's state freely.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from . import aio
from .errors import BoxClosedError
from .types import Exit, Gap, OutputChunk, RunFields, RunLog

__all__ = ["Box", "Exec", "Run"]

_DONE = object()


class _Loop:
    """An event loop on a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="boxd-sdk-loop",
                                       daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        if not self.thread.is_alive() or self.loop.is_closed():
            coro.close()
            raise BoxClosedError("the Box is closed; connect again")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class _Bridge:
    """Carries items from the loop to the calling thread, with a byte budget: the loop side
    waits (and so stops reading the connection) while the caller is far behind."""

    def __init__(self, lp: _Loop, cap: int = aio.STREAM_BUFFER):
        self.lp = lp
        self.q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.cap = cap
        self.bytes = 0
        self.lock = threading.Lock()
        self.room: Optional[asyncio.Event] = None
        self.closed = False

    async def put(self, item: Any) -> None:
        if self.closed:
            return
        if self.room is None:
            self.room = asyncio.Event()
        n = len(getattr(item, "raw", b""))
        with self.lock:
            self.bytes += n
            over = self.bytes > self.cap
            if over:
                self.room.clear()
        self.q.put(item)
        while over and not self.closed:
            await self.room.wait()
            with self.lock:
                over = self.bytes > self.cap
                if over:
                    self.room.clear()

    def done(self, fut: Any) -> None:
        self.q.put(_DONE)

    def get(self) -> Any:
        item = self.q.get()
        n = len(getattr(item, "raw", b""))
        if n:
            with self.lock:
                self.bytes -= n
                wake = self.bytes <= self.cap // 2 and self.room is not None
            if wake:
                self.lp.loop.call_soon_threadsafe(self.room.set)  # type: ignore[union-attr]
        return item

    def close(self) -> None:
        self.closed = True
        if self.room is not None:
            self.lp.loop.call_soon_threadsafe(self.room.set)


class Run(RunFields):
    """A run, live or ended (fields: see :class:`boxd.types.RunFields`: ``id``, ``status``,
    ``result``, ``output``, ``exit_code``, ``stdout``, ``stderr``, ``reason``, ``signal``,
    ``duration_ms``...)."""

    def __init__(self, lp: _Loop, arun: aio.AsyncRun):
        self._lp = lp
        self._arun = arun
        self._state = arun._state

    def wait(self, wait_timeout: Optional[float] = None) -> "Run":
        """Blocks until the run ends; returns it. ``wait_timeout`` (seconds, client side)
        raises WaitTimeoutError if it has not ended by then (the run goes on)."""
        self._lp.call(self._arun.wait(wait_timeout))
        return self

    def cancel(self, grace_ms: Optional[int] = None) -> "Run":
        """Cancels the run's whole tree and returns once it has ended (``status`` is then
        ``"cancelled"``, unless it had already ended)."""
        self._lp.call(self._arun.cancel(grace_ms))
        return self

    def send_signal(self, sig: Union[int, str]) -> None:
        """Sends a signal (``15``, ``"TERM"``) to the run's process group."""
        self._lp.call(self._arun.send_signal(sig))

    def write_stdin(self, data: Union[str, bytes], eof: bool = False) -> None:
        """Writes to the run's stdin (started with ``stdin=True``); ``eof`` closes it after."""
        self._lp.call(self._arun.write_stdin(data, eof))

    def close_stdin(self) -> None:
        """Closes the run's stdin."""
        self._lp.call(self._arun.close_stdin())

    def logs(self) -> List[RunLog]:
        """Every retained line so far: ``[RunLog(timestamp=..., level=..., message=...)]``."""
        return self._lp.call(self._arun.logs())


def _split_callbacks(kw: Dict[str, Any]):
    return kw.pop("on_stdout", None), kw.pop("on_stderr", None)


class Exec:
    """Runs: ``box.exec``. The options are those of :meth:`boxd.aio.AsyncExec.start`."""

    def __init__(self, box: "Box"):
        self._box = box

    def _with_callbacks(self, make: Callable[..., Any], on_stdout, on_stderr) -> Any:
        lp = self._box._lp
        if on_stdout is None and on_stderr is None:
            return lp.call(make(None, None))
        bridge = _Bridge(lp)
        fut = asyncio.run_coroutine_threadsafe(
            make(bridge.put if on_stdout else None, bridge.put if on_stderr else None), lp.loop)
        fut.add_done_callback(bridge.done)
        try:
            while True:
                item = bridge.get()
                if item is _DONE:
                    break
                (on_stdout if item.stream == "stdout" else on_stderr)(item)
            return fut.result()
        except BaseException:
            bridge.close()
            fut.cancel()
            raise

    def command(self, cmd: aio.Command, **kw: Any) -> Run:
        """Runs a command to its end; returns the ended :class:`Run` (``result``, ``status``,
        ``exit_code``...). ``timeout`` is the run's limit in milliseconds. ``on_stdout`` and
        ``on_stderr`` are called on this thread with each :class:`OutputChunk`."""
        out, err = _split_callbacks(kw)
        ex = self._box._abox.exec
        arun = self._with_callbacks(
            lambda o, e: ex.command(cmd, on_stdout=o, on_stderr=e, **kw), out, err)
        return Run(self._box._lp, arun)

    def code(self, code: Union[str, bytes], lang: str = "python", **kw: Any) -> Run:
        """Runs a snippet to its end (``lang`` a name or alias: ``python``/``py``,
        ``js``/``node``...; ``timeout`` in milliseconds); returns the ended :class:`Run`
        (``output``, ``exit_code``...). Raises UnknownLangError with ``.available``."""
        out, err = _split_callbacks(kw)
        ex = self._box._abox.exec
        arun = self._with_callbacks(
            lambda o, e: ex.code(code, lang, on_stdout=o, on_stderr=e, **kw), out, err)
        return Run(self._box._lp, arun)

    def start(self, cmd: aio.Command, **kw: Any) -> Run:
        """Starts a command and returns the live :class:`Run` once it is running. Callbacks
        are not taken here (they would run on the SDK's thread): use ``stream`` or
        ``command`` for live output, ``run.logs()`` for what it printed."""
        if "on_stdout" in kw or "on_stderr" in kw:
            raise TypeError("exec.start takes no callbacks in the sync API; use exec.stream")
        return Run(self._box._lp, self._box._lp.call(self._box._abox.exec.start(cmd, **kw)))

    def start_code(self, code: Union[str, bytes], lang: str = "python", **kw: Any) -> Run:
        """Starts a snippet and returns the live :class:`Run`."""
        return Run(self._box._lp,
                   self._box._lp.call(self._box._abox.exec.start_code(code, lang, **kw)))

    def attach(self, run_id: str, from_seq: int = 0) -> Run:
        """Follows an existing run by id; returns it live."""
        return Run(self._box._lp,
                   self._box._lp.call(self._box._abox.exec.attach(run_id, from_seq=from_seq)))

    def stream(self, cmd: aio.Command, **kw: Any) -> Iterator[Union[OutputChunk, Gap, Exit]]:
        """Runs a command and yields :class:`OutputChunk` items (``stream``, ``data``,
        ``timestamp``) as they come, then one :class:`Exit` (whose ``run`` is the ended
        :class:`Run`). Leaving the loop early leaves the run running."""
        lp = self._box._lp
        bridge = _Bridge(lp)
        agen = self._box._abox.exec.stream(cmd, **kw)

        async def pump() -> None:
            try:
                async for item in agen:
                    await bridge.put(item)
            finally:
                await agen.aclose()

        fut = asyncio.run_coroutine_threadsafe(pump(), lp.loop)
        fut.add_done_callback(bridge.done)
        try:
            while True:
                item = bridge.get()
                if item is _DONE:
                    fut.result()
                    return
                if isinstance(item, Exit):
                    item = Exit(status=item.status, exit_code=item.exit_code,
                                signal=item.signal, reason=item.reason,
                                duration_ms=item.duration_ms, run=Run(lp, item.run))
                yield item
        finally:
            bridge.close()
            if not fut.done():
                fut.cancel()

    def list(self) -> List[Dict[str, Any]]:
        """The runs the agent knows, as dicts."""
        return self._box._lp.call(self._box._abox.exec.list())


class _SyncFiles:
    """``box.files``: the sync face of :mod:`boxd.files` (or of the unavailable stub)."""

    def __init__(self, box: "Box"):
        self._box = box

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._box._abox.files, name)
        if not callable(target):
            return target

        def call(*a: Any, **k: Any) -> Any:
            r = target(*a, **k)
            return self._box._lp.call(r) if asyncio.iscoroutine(r) else r
        call.__doc__ = target.__doc__
        return call


class Box:
    """A connection to one boxd (sync API).

    ``Box.connect(socket=..., token=...)``; use as a context manager or call ``close()``.
    Attributes: ``exec`` (:class:`Exec`), ``files``, ``boot_id``, ``agent``,
    ``capabilities``, ``limits``.
    """

    def __init__(self, lp: _Loop, abox: aio.AsyncBox):
        self._lp = lp
        self._abox = abox
        self.exec = Exec(self)
        self.files = _SyncFiles(self)

    @classmethod
    def connect(cls, socket: Optional[str] = None, token: Optional[Union[str, bytes]] = None,
                **kw: Any) -> "Box":
        """Connects and says hello. Arguments as :meth:`boxd.aio.AsyncBox.connect`:
        ``socket`` (``unix:PATH``/path, ``vsock:CID:PORT``, ``fc:UDS:PORT``; default
        ``$BOXD_SOCKET`` then ``/run/boxd.sock``), ``token`` or ``token_file`` (default
        ``$BOXD_TOKEN_FILE``), ``request_timeout``, ``connect_timeout``,
        ``reconnect_timeout`` (seconds), ``heartbeat_interval``."""
        lp = _Loop()
        try:
            abox = lp.call(aio.AsyncBox.connect(socket, token, **kw))
        except BaseException:
            lp.stop()
            raise
        return cls(lp, abox)

    @property
    def boot_id(self) -> str:
        return self._abox.boot_id

    @property
    def agent(self) -> str:
        return self._abox.agent

    @property
    def capabilities(self) -> List[str]:
        return self._abox.capabilities

    @property
    def limits(self) -> Dict[str, int]:
        return self._abox.limits

    def ping(self) -> float:
        """Round trip to the agent, in seconds."""
        return self._lp.call(self._abox.ping())

    def info(self) -> Dict[str, Any]:
        """The agent's ``info`` reply."""
        return self._lp.call(self._abox.info())

    def close(self) -> None:
        """Closes the connection and the SDK's thread. Runs go on in the box."""
        if self._lp.thread.is_alive():
            self._lp.call(self._abox.close())
            self._lp.stop()

    def __enter__(self) -> "Box":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
