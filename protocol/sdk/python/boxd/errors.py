"""Typed errors of the boxd SDK.

Every error the SDK raises is a :class:`BoxError`, with ``.code`` (a stable string) and
``.message`` (for people). Each protocol error code of PROTOCOL.md section 6 has its own class
(``not_found`` is :class:`NotFoundError`, and so on); errors that happen on the client's side
(the connection was lost, the box rebooted, no reply in time) have codes of their own, listed in
:data:`CLIENT_CODES`. A code a newer agent sends that this SDK does not know becomes a plain
:class:`BoxError` carrying that code.

Timeouts: :class:`RequestTimeoutError` is the *client's* timeout (``request_timeout`` in
``Box.connect``: how long the SDK waits for the agent to answer a request). It never stops a
run. A run's own ``timeout`` (milliseconds, enforced by the agent, which kills the run's whole
process tree) is not an exception: the run ends with ``status == "failed"`` and
``reason == "timeout"``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "BoxError", "BadRequestError", "UnknownTypeError", "TooLargeError", "NeedHelloError",
    "DeniedError", "UnauthorizedError", "BadVersionError", "NotFoundError", "RunEndedError",
    "LimitError", "SpawnFailedError", "ShuttingDownError", "UnknownLangError", "InternalError",
    "NotADirectoryError_", "IsADirectoryError_", "ExistsError", "PermissionDeniedError",
    "NoSpaceError", "RefusedError", "ChecksumMismatchError", "UnsupportedError",
    "IOErrorFromAgent", "TunnelConnectFailedError",
    "ConnectionLostError", "BootChangedError", "RequestTimeoutError", "WaitTimeoutError",
    "ProtocolError", "CapabilityError", "BoxClosedError", "ERROR_CLASSES", "CLIENT_CODES",
    "error_from_reply",
]


class BoxError(Exception):
    """Base of every error the SDK raises.

    Attributes:
        code: the stable error code: a protocol code (``"not_found"``...) or a client code
            (``"connection_lost"``...).
        message: a human-readable explanation; it may change between versions.
        reply: the agent's ``error`` reply as a dict, or None for a client-side error.
        id: the run id the error is about, when there is one.
    """

    code: str = "error"

    def __init__(self, message: str, code: Optional[str] = None,
                 reply: Optional[Mapping[str, Any]] = None, id: Optional[str] = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.reply: Optional[Dict[str, Any]] = dict(reply) if reply is not None else None
        self.id = id if id is not None else (reply or {}).get("id")

    def __str__(self) -> str:
        return "%s: %s" % (self.code, self.message)


# ---- one class per protocol error code (PROTOCOL.md section 6) ---------------------------------

class BadRequestError(BoxError):
    """``bad_request``: the agent could not accept the request as sent (a malformed field)."""
    code = "bad_request"


class UnknownTypeError(BoxError):
    """``unknown_type``: the agent does not know this request type (an older agent)."""
    code = "unknown_type"


class TooLargeError(BoxError):
    """``too_large``: a frame or field over the agent's limit (e.g. ``code`` over ``max_code``)."""
    code = "too_large"


class NeedHelloError(BoxError):
    """``need_hello``: a request before ``hello``. The SDK always says hello first, so this
    means a peer that is not speaking the boxd protocol correctly."""
    code = "need_hello"


class DeniedError(BoxError):
    """``denied``: the agent's policy forbids it (another ``user``, a weaker ``seccomp``)."""
    code = "denied"


class UnauthorizedError(BoxError):
    """``unauthorized``: ``hello`` without the right token. Pass ``token=`` or ``token_file=``
    (or set ``$BOXD_TOKEN_FILE``). Not retried: a reconnect would be refused the same way."""
    code = "unauthorized"


class BadVersionError(BoxError):
    """``bad_version``: the agent does not speak protocol version 1. ``.versions`` lists those
    it does."""
    code = "bad_version"

    @property
    def versions(self) -> list:
        return list((self.reply or {}).get("versions") or [])


class NotFoundError(BoxError):
    """``not_found``: no run with that id (it never existed, or the agent forgot it)."""
    code = "not_found"


class RunEndedError(BoxError):
    """``run_ended``: the request needs a live run or its open stdin."""
    code = "run_ended"


class LimitError(BoxError):
    """``limit``: a configured limit would be exceeded; ``.limit`` names it (``"max_runs"``,
    ``"max_subs"``, ``"stdin_bytes"``, ``"code_waiting"``)."""
    code = "limit"

    @property
    def limit(self) -> Optional[str]:
        return (self.reply or {}).get("limit")


class SpawnFailedError(BoxError):
    """``spawn_failed``: the run could not be started. ``.errno``, ``.errno_name`` and ``.stage``
    (PROTOCOL.md 4.6: ``chdir``, ``exec``, ``user``...) say why; the run is recorded under
    ``.id`` as failed with reason ``spawn``."""
    code = "spawn_failed"

    @property
    def errno(self) -> Optional[int]:
        return (self.reply or {}).get("errno")

    @property
    def errno_name(self) -> Optional[str]:
        return (self.reply or {}).get("errno_name")

    @property
    def stage(self) -> Optional[str]:
        return (self.reply or {}).get("stage")


class ShuttingDownError(BoxError):
    """``shutting_down``: the agent is stopping and accepts no new runs."""
    code = "shutting_down"


class UnknownLangError(BoxError):
    """``unknown_lang``: no such language, or no interpreter for it on this box.
    ``.available`` lists the languages the box can run."""
    code = "unknown_lang"

    @property
    def available(self) -> list:
        return list((self.reply or {}).get("available") or [])


class InternalError(BoxError):
    """``internal``: the agent failed internally (out of memory, /tmp unwritable); the request
    had no effect and may be retried."""
    code = "internal"


# ---- file request codes (PROTOCOL.md 12.6) ------------------------------------------------------

class NotADirectoryError_(BoxError):
    """``not_a_directory``: a component of the path (or the listed path) is not a directory."""
    code = "not_a_directory"


class IsADirectoryError_(BoxError):
    """``is_a_directory``: the path is a directory where a file is needed."""
    code = "is_a_directory"


class ExistsError(BoxError):
    """``exists``: the path exists (``overwrite=False``, a non-empty directory...)."""
    code = "exists"


class PermissionDeniedError(BoxError):
    """``permission_denied``: the acting user may not do this."""
    code = "permission_denied"


class NoSpaceError(BoxError):
    """``no_space``: the file system is full or the quota reached; nothing partial is left."""
    code = "no_space"


class RefusedError(BoxError):
    """``refused``: boxd never reads or writes this (a FIFO, device, socket, /proc, /sys, a
    magic link)."""
    code = "refused"


class ChecksumMismatchError(BoxError):
    """``checksum_mismatch``: the uploaded data's sha256 is not the one announced; nothing was
    written. Upload again."""
    code = "checksum_mismatch"


class UnsupportedError(BoxError):
    """``unsupported`` (from the agent): its kernel lacks what file requests need (openat2)."""
    code = "unsupported"


class IOErrorFromAgent(BoxError):
    """``io_error``: the box's file system reported an I/O error."""
    code = "io_error"


class TunnelConnectFailedError(BoxError):
    """``connect_failed``: a ``tunnel_open``'s connect inside the box failed; the reply's
    ``errno_name`` says why (``ECONNREFUSED``: nothing listens there; ``EACCES``: the user may
    not connect to that socket). PROTOCOL.md section 13."""
    code = "connect_failed"


# ---- client-side errors --------------------------------------------------------------------------

class ConnectionLostError(BoxError):
    """``connection_lost``: the connection dropped and could not be re-established within
    ``reconnect_timeout``, or it dropped while a request that is not safe to repeat (``stdin``
    data, ``signal``) was unanswered, so whether it took effect is unknown."""
    code = "connection_lost"


class BootChangedError(BoxError):
    """``boot_changed``: after a reconnect the agent reported another ``boot_id``: the box
    rebooted or boxd restarted, and every run this client knew of is gone. ``.old_boot_id`` and
    ``.new_boot_id`` say which. The Box stays connected to the new agent."""
    code = "boot_changed"

    def __init__(self, message: str, old_boot_id: str = "", new_boot_id: str = ""):
        super().__init__(message)
        self.old_boot_id = old_boot_id
        self.new_boot_id = new_boot_id


class RequestTimeoutError(BoxError):
    """``request_timeout``: the agent did not answer within the client's ``request_timeout``
    (seconds, set in ``Box.connect``). A client-side limit only: nothing is cancelled on the
    agent. Not to be confused with a run's ``timeout`` (milliseconds), after which the agent
    kills the run (``reason == "timeout"``)."""
    code = "request_timeout"


class WaitTimeoutError(BoxError):
    """``wait_timeout``: ``run.wait(wait_timeout=S)`` gave up after S seconds. The run goes on."""
    code = "wait_timeout"


class ProtocolError(BoxError):
    """``protocol``: the peer sent something PROTOCOL.md does not allow (a bad frame, a
    non-map body, a refused hypervisor ``CONNECT`` handshake)."""
    code = "protocol"


class CapabilityError(UnsupportedError):
    """``unsupported``, found by the client: the agent does not offer what was asked (its
    ``hello`` capabilities lack it); ``.capability`` names the missing one."""
    code = "unsupported"

    def __init__(self, message: str, capability: str = ""):
        super().__init__(message)
        self.capability = capability


class BoxClosedError(BoxError):
    """``closed``: the Box was closed with ``close()``; connect again."""
    code = "closed"


#: The protocol error codes and their classes.
ERROR_CLASSES: Dict[str, Type[BoxError]] = {
    cls.code: cls for cls in (
        BadRequestError, UnknownTypeError, TooLargeError, NeedHelloError, DeniedError,
        UnauthorizedError, BadVersionError, NotFoundError, RunEndedError, LimitError,
        SpawnFailedError, ShuttingDownError, UnknownLangError, InternalError,
        NotADirectoryError_, IsADirectoryError_, ExistsError, PermissionDeniedError,
        NoSpaceError, RefusedError, ChecksumMismatchError, UnsupportedError, IOErrorFromAgent,
        TunnelConnectFailedError)
}

#: The client-side codes and their classes.
CLIENT_CODES: Dict[str, Type[BoxError]] = {
    cls.code: cls for cls in (
        ConnectionLostError, BootChangedError, RequestTimeoutError, WaitTimeoutError,
        ProtocolError, BoxClosedError)
}


def error_from_reply(reply: Mapping[str, Any]) -> BoxError:
    """Builds the typed exception for an agent ``error`` reply (a dict)."""
    code = reply.get("code")
    code = code if isinstance(code, str) else "error"
    message = reply.get("message")
    message = message if isinstance(message, str) else "the agent answered error %s" % code
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        return BoxError(message, code=code, reply=reply)
    return cls(message, reply=reply)
