"""A sandbox served from a thread of its own, for notebooks and plain scripts.

A notebook cell runs inside the kernel's event loop. A sandbox started on that loop is
served only while the cell awaits, but the blocking :func:`bulkjob.submit` runs its run
on another thread and waits for it, so the kernel's loop never gets to answer: a
deadlock. Served from its own loop on a daemon thread, the sandbox answers whatever the
calling thread does, blocking or not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._server import Sandbox

__all__ = ["serve_in_thread"]

#: How long to wait for the server thread to start listening, and to finish closing.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


@contextlib.contextmanager
def serve_in_thread(sandbox: Sandbox, host: str, port: int) -> Iterator[Sandbox]:
    """Start ``sandbox`` on ``host:port`` on a new loop in a daemon thread; stop it on exit.

    A failure to start (the port is taken) is raised here, in the caller's thread.
    """
    ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = (
        concurrent.futures.Future()
    )

    async def serve() -> None:
        stop = asyncio.Event()
        try:
            await sandbox.start(host, port)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        try:
            ready.set_result((asyncio.get_running_loop(), stop))
            await stop.wait()
        finally:
            await sandbox.close()
            # Closed transports let go of their sockets in callbacks scheduled just now:
            # one more turn of the loop runs them before asyncio.run closes it.
            await asyncio.sleep(0)

    thread = threading.Thread(
        target=asyncio.run, args=(serve(),), name="bulkjob-sandbox", daemon=True
    )
    thread.start()
    loop, stop = ready.result(START_TIMEOUT)
    try:
        yield sandbox
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(STOP_TIMEOUT)
