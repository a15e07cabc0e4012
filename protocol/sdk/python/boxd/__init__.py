"""boxd: the Python SDK for the boxd agent (protocol/PROTOCOL.md).

Sync API::

    from boxd import Box

    with Box.connect(socket="unix:/run/boxd.sock") as box:
        run = box.exec.command("echo hello")
        print(run.result, run.status)        # hello completed

asyncio API of the same shape: :mod:`boxd.aio` (``AsyncBox``, also exported here).

Modules: :mod:`boxd.sync` (Box, Exec, Run), :mod:`boxd.aio` (AsyncBox, AsyncExec, AsyncRun),
:mod:`boxd.types` (RunLog, OutputChunk, Gap, Exit, the run fields), :mod:`boxd.errors` (one
exception class per protocol error code, all under BoxError).
"""

from ._version import __version__
from .aio import AsyncBox, AsyncExec, AsyncRun
from .errors import *  # noqa: F401,F403 - the typed errors are part of the API
from .errors import __all__ as _errors_all
from .sync import Box, Exec, Run
from .types import Exit, Gap, OutputChunk, RunLog

__all__ = ["Box", "Exec", "Run", "AsyncBox", "AsyncExec", "AsyncRun", "RunLog", "OutputChunk",
           "Gap", "Exit", "__version__"] + list(_errors_all)
