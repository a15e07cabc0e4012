"""Value types of the boxd SDK: log lines, output chunks, the exit item, and a run's fields.

Timestamps are timezone-aware :class:`datetime.datetime` values in UTC (microsecond
precision); the agent's exact nanoseconds are kept in ``ts_ns``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

__all__ = ["RunLog", "OutputChunk", "Gap", "Exit", "RunFields", "RunState", "STREAM_NAMES", "LEVELS",
           "ns_to_datetime"]

#: The protocol's stream numbers (1, 2) as the SDK names them.
STREAM_NAMES = {1: "stdout", 2: "stderr"}
#: The log level each stream shows as (as ``boxctl logs --json`` does).
LEVELS = {1: "info", 2: "error"}


def ns_to_datetime(ts_ns: int) -> _dt.datetime:
    """Nanoseconds since the epoch -> an aware UTC datetime (microseconds kept)."""
    sec, ns = divmod(int(ts_ns), 1_000_000_000)
    return _dt.datetime.fromtimestamp(sec, tz=_dt.timezone.utc).replace(microsecond=ns // 1000)


def _as_bytes(data: Union[str, bytes]) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _as_text(data: Union[str, bytes, None]) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return bytes(data).decode("utf-8", "replace")


@dataclass(frozen=True)
class RunLog:
    """One retained output line of a run, as ``run.logs()`` returns it.

    Attributes:
        timestamp: when the agent read the line (aware UTC datetime).
        level: ``"info"`` for stdout, ``"error"`` for stderr.
        message: the line without its final newline (bytes that are not UTF-8 are replaced
            with U+FFFD; ``raw`` has them exactly).
        seq: the record's sequence number in the run (from 0, stdout and stderr share it).
        stream: ``"stdout"`` or ``"stderr"``.
        raw: the record's exact bytes, final newline included.
    """

    timestamp: _dt.datetime
    level: str
    message: str
    seq: int = field(default=0, compare=False)
    stream: str = field(default="stdout", compare=False)
    raw: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def from_record(cls, rec: list) -> "RunLog":
        seq, ts_ns, stream, data = rec[0], rec[1], rec[2], rec[3]
        raw = _as_bytes(data)
        text = raw.decode("utf-8", "replace")
        if text.endswith("\n"):
            text = text[:-1]
        return cls(timestamp=ns_to_datetime(ts_ns), level=LEVELS.get(stream, "info"),
                   message=text, seq=seq, stream=STREAM_NAMES.get(stream, str(stream)), raw=raw)


@dataclass(frozen=True)
class OutputChunk:
    """One output record of a followed run: a line including its ``\\n``, or a piece of a longer
    or idle line (PROTOCOL.md 4.2). Concatenating the chunks of a stream gives exactly the
    bytes the run wrote there.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"``.
        data: the text (bytes that are not UTF-8 replaced by U+FFFD; ``raw`` is exact).
        timestamp: when the agent read it (aware UTC datetime).
        seq: the record's sequence number.
        ts_ns: the agent's timestamp in ns since the epoch.
        raw: the exact bytes.
    """

    stream: str
    data: str
    timestamp: _dt.datetime
    seq: int
    ts_ns: int = field(repr=False, default=0)
    raw: bytes = field(repr=False, default=b"")
    type: str = field(default="output", init=False, repr=False)

    @classmethod
    def from_record(cls, rec: list) -> "OutputChunk":
        seq, ts_ns, stream, data = rec[0], rec[1], rec[2], rec[3]
        raw = _as_bytes(data)
        text = data if isinstance(data, str) else raw.decode("utf-8", "replace")
        return cls(stream=STREAM_NAMES.get(stream, str(stream)), data=text,
                   timestamp=ns_to_datetime(ts_ns), seq=seq, ts_ns=ts_ns, raw=raw)


@dataclass(frozen=True)
class Gap:
    """Records ``[from_seq, to_seq)`` were dropped by the agent's retention before this client
    could receive them (only after a long disconnection from a run writing more than the
    agent's ``log_bytes``). Yielded by ``exec.stream`` in place of the lost chunks."""

    from_seq: int
    to_seq: int
    type: str = field(default="gap", init=False, repr=False)


@dataclass(frozen=True)
class Exit:
    """The last item ``exec.stream`` yields: how the run ended. ``run`` is the finished run
    with every field (``result``, ``stdout``...)."""

    status: str
    exit_code: int
    signal: Optional[int]
    reason: str
    duration_ms: int
    run: Any = field(repr=False, compare=False, default=None)
    type: str = field(default="exit", init=False, repr=False)


@dataclass
class RunState:
    """What the SDK knows of one run; shared by the asyncio and the sync run objects."""

    id: str
    boot_id: str = ""
    pid: int = 0
    end: Optional[Dict[str, Any]] = None
    gaps: list = field(default_factory=list)


class RunFields:
    """The fields every run object has (sync :class:`boxd.Run` and :class:`boxd.aio.AsyncRun`).

    Attributes (read-only):
        id: the run id.
        status: ``"running"`` until the run ends, then ``"completed"`` (exit 0), ``"failed"``
            (non-zero exit, signal, timeout, oom, spawn failure) or ``"cancelled"``.
        result: stdout when completed, stderr otherwise, with one final newline removed
            (``echo hello`` gives ``"hello"``), as the agent defines it (PROTOCOL.md 4.3).
        output: stdout with one final newline removed.
        exit_code: 0-255 (128+N for signal N), None while running.
        stdout, stderr: the run's output (the last ``max_event / 4`` bytes of each, 256 KiB by
            default; ``truncated`` says when some were cut).
        reason: ``"exit"``, ``"signal"``, ``"timeout"``, ``"cancel"``, ``"spawn"``, ``"oom"``.
        signal: the signal that killed the main process, else None.
        duration_ms: start to end, monotonic.
        pid: the main process's pid (0 while the run is starting).
        truncated: some output is not in ``stdout``/``stderr``/``result`` (``logs()`` has the
            retained rest).
        end: the agent's ``end`` event as a dict (cpu_user_us, max_rss_kb, started_ns...).
        gaps: :class:`Gap` items seen while following (normally empty).
    """

    _state: "RunState"

    @property
    def id(self) -> str:
        return self._state.id

    @property
    def pid(self) -> int:
        return self._state.pid

    @property
    def end(self) -> Optional[Dict[str, Any]]:
        return self._state.end

    @property
    def done(self) -> bool:
        """True once the run has ended."""
        return self._state.end is not None

    def _e(self, key: str, default: Any = None) -> Any:
        end = self._state.end
        return default if end is None else end.get(key, default)

    @property
    def status(self) -> str:
        return self._e("status", "running")

    @property
    def exit_code(self) -> Optional[int]:
        return self._e("exit_code")

    @property
    def reason(self) -> Optional[str]:
        return self._e("reason")

    @property
    def signal(self) -> Optional[int]:
        return self._e("signal")

    @property
    def duration_ms(self) -> Optional[int]:
        return self._e("duration_ms")

    @property
    def stdout(self) -> str:
        return _as_text(self._e("stdout"))

    @property
    def stderr(self) -> str:
        return _as_text(self._e("stderr"))

    @property
    def stdout_bytes(self) -> bytes:
        """``stdout`` as the exact bytes."""
        v = self._e("stdout")
        return b"" if v is None else _as_bytes(v)

    @property
    def stderr_bytes(self) -> bytes:
        """``stderr`` as the exact bytes."""
        v = self._e("stderr")
        return b"" if v is None else _as_bytes(v)

    @property
    def result(self) -> str:
        return _as_text(self._e("result"))

    @property
    def output(self) -> str:
        out = self.stdout
        return out[:-1] if out.endswith("\n") else out

    @property
    def truncated(self) -> bool:
        return bool(self._e("output_truncated", False))

    @property
    def gaps(self) -> list:
        return list(self._state.gaps)

    def __repr__(self) -> str:
        if self._state.end is None:
            return "%s(id=%r, status='running', pid=%r)" % (type(self).__name__, self.id,
                                                              self.pid)
        return "%s(id=%r, status=%r, exit_code=%r, reason=%r, result=%r)" % (
            type(self).__name__, self.id, self.status, self.exit_code, self.reason,
            self.result[:80])
