"""A sandbox server in its own process, for benchmarks: ``python -m benchmarks._server ...``.

It serves :class:`bulkjob.Sandbox` on an ephemeral loopback port and, on a second loopback
port, ``GET /bench/ledger``: the ledger's counts as JSON. The first line on stdout is one JSON
object with ``base_url``, ``token_url`` and ``ledger_url``. SIGTERM (or SIGINT) stops it.

Running the server in another process keeps client and server from sharing one GIL, so a
benchmark measures the client rather than the two of them taking turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys

from aiohttp import web

from bulkjob import Sandbox, SandboxConfig


def _ledger_stats(sandbox: Sandbox) -> dict[str, object]:
    ledger = sandbox.ledger
    window = sandbox.config.throttle_window
    tracked = sandbox.config.track_ids
    return {
        "requests": ledger.requests,
        "throttled": ledger.throttled,
        "lockouts": ledger.lockouts,
        "jobs": len(ledger.jobs),
        "ids_accepted": ledger.ids_accepted,
        "unique_ids": len(ledger.accepted_ids) if tracked else None,
        "duplicates": ledger.duplicates if tracked else None,
        "largest_job": ledger.largest_job,
        "max_in_window": ledger.max_in_window(window) if ledger.request_times else 0,
        "faults": dict(ledger.faults),
        "rejected": dict(ledger.rejected),
        # The first API request on the host's monotonic clock (one clock for every
        # process on Linux): when the clients' start-up ended.
        "first_request_at": min(ledger.request_times, default=None),
        "sustained_rate": _sustained_rate(
            [job.accepted_at for job in ledger.jobs.values()], sandbox.config.throttle_window
        ),
    }


def _sustained_rate(times: list[float], window: float) -> float | None:
    """Jobs per second as the server saw them once the first window has passed: the
    average, over the moments from one window after the first job to the last job, of
    the jobs accepted in the window ending at that moment, per window length (exactly:
    each job counts for the part of its ``window`` seconds inside that span).

    Averaging the window's count over time is the rate itself over whole windows (each
    job counts for the ``window`` seconds it stays in), and it never reads above N per
    window while the server never saw more than N in one, whatever the bursts' phase.
    Jobs rather than requests: a request refused with a 429 is no work done; a token or a
    status request (none in ``bench shared``) takes a slot and makes no job. The clients'
    start-up and the first window, sent as fast as they start, are left out: this is
    the rate a long run keeps. None when the jobs span less than two windows."""
    if len(times) < 2 or max(times) - min(times) < 2 * window:
        return None
    first, last = min(times) + window, max(times)
    inside = sum(max(0.0, min(t + window, last) - max(t, first)) for t in times)
    return inside / (last - first) / window


async def _serve(config: SandboxConfig) -> None:
    sandbox = Sandbox(config)
    await sandbox.start("127.0.0.1", 0)

    async def ledger(_: web.Request) -> web.Response:
        return web.json_response(_ledger_stats(sandbox))

    app = web.Application()
    app.router.add_get("/bench/ledger", ledger)
    control = web.AppRunner(app, handle_signals=False, access_log=None)
    await control.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(control, sock).start()
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        info = {
            "base_url": sandbox.base_url,
            "token_url": sandbox.token_url,
            "ledger_url": f"http://127.0.0.1:{port}/bench/ledger",
        }
        print(json.dumps(info), flush=True)
        await stop.wait()
    finally:
        await control.cleanup()
        await sandbox.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks._server")
    p.add_argument("--throttle", type=int, default=None, metavar="N")
    p.add_argument("--window", type=float, default=300.0, metavar="S")
    p.add_argument("--no-track-ids", action="store_true")
    p.add_argument("--latency", type=float, default=0.0, metavar="S")
    args = p.parse_args(argv)
    config = SandboxConfig(
        throttle_requests=args.throttle,
        throttle_window=args.window,
        track_ids=not args.no_track_ids,
        latency=args.latency,
    )
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
