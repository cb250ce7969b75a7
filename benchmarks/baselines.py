"""What a user would write instead of bulkjob: the two baselines of ``benchmarks/throttle.py``.

Both read the same file, cut it into jobs of ``chunk_size`` ids and POST each job once to the
submit endpoint. Neither knows the server's lockout rule; each uses the tools the way their
documentation shows.

* :func:`textbook` — ``asyncio.gather`` over every job, an ``asyncio.Semaphore`` for
  concurrency, ``aiolimiter.AsyncLimiter(max_requests, per_seconds)`` for the rate, and a tenacity
  ``@retry`` (exponential backoff, 10 attempts) on 429 and 5xx.
* :func:`sequential` — one request at a time with a fixed ``per_seconds / max_requests`` sleep
  between requests; a 429 or 5xx sleeps one window and tries again.
* :func:`pyrate` — :func:`textbook` with PyrateLimiter's in-memory sliding-window log
  (``Limiter(Rate(max_requests, per_seconds))``, blocking acquire) instead of aiolimiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

JOB_PATH = "target/contact/job"


class Throttled(Exception):
    """The server answered 429."""


class ServerError(Exception):
    """The server answered 5xx."""


def read_jobs(path: Path, chunk_size: int) -> Iterator[bytes]:
    """The file's non-blank lines, ``chunk_size`` per job body."""
    with path.open("rb") as f:
        ids = [line.strip() for line in f if line.strip()]
    for i in range(0, len(ids), chunk_size):
        yield b"\n".join(ids[i : i + chunk_size])


def _headers(token: str) -> dict[str, str]:
    return {
        "accessToken": token,
        "Content-Type": "text/plain",
        "Accept": "application/json",
    }


async def pyrate(
    base_url: str,
    path: Path,
    *,
    max_requests: int,
    per_seconds: float,
    token: str,
    chunk_size: int = 100,
    concurrency: int = 8,
) -> dict[str, int]:
    """gather + Semaphore + PyrateLimiter's sliding-window log + tenacity on 429."""
    from pyrate_limiter import Duration, Limiter, Rate

    limiter = Limiter(Rate(max_requests, int(Duration.SECOND) * per_seconds))

    class _Acquire:
        async def __aenter__(self) -> None:
            await limiter.try_acquire_async("bulk")

        async def __aexit__(self, *exc: object) -> None:
            return None

    return await textbook(
        base_url,
        path,
        max_requests=max_requests,
        per_seconds=per_seconds,
        token=token,
        chunk_size=chunk_size,
        concurrency=concurrency,
        limiter=_Acquire(),
    )


async def textbook(
    base_url: str,
    path: Path,
    *,
    max_requests: int,
    per_seconds: float,
    token: str,
    chunk_size: int = 100,
    concurrency: int = 8,
    limiter: Any = None,
) -> dict[str, int]:
    """The idiomatic gather + Semaphore + AsyncLimiter + tenacity script.

    The backoff is scaled to the window (``multiplier=per_seconds``, at most ten windows) so
    that the baseline is not penalised for a constant tuned to a five-minute window.
    Returns ``{"ok": jobs accepted, "failed": jobs given up on}``.
    """
    url = f"{base_url.rstrip('/')}/{JOB_PATH}"
    limiter = limiter if limiter is not None else AsyncLimiter(max_requests, per_seconds)
    semaphore = asyncio.Semaphore(concurrency)

    @retry(
        retry=retry_if_exception_type((Throttled, ServerError, aiohttp.ClientConnectionError)),
        wait=wait_exponential(multiplier=per_seconds, min=per_seconds, max=10 * per_seconds),
        stop=stop_after_attempt(10),
        reraise=True,
    )
    async def submit_job(session: aiohttp.ClientSession, body: bytes) -> str:
        async with limiter, session.post(url, data=body, headers=_headers(token)) as resp:
            if resp.status == 429:
                raise Throttled()
            if resp.status >= 500:
                raise ServerError(resp.status)
            resp.raise_for_status()
            answer = await resp.json()
            return str(answer["jobId"])

    async def one(session: aiohttp.ClientSession, body: bytes) -> str:
        async with semaphore:
            return await submit_job(session, body)

    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(one(session, body) for body in read_jobs(path, chunk_size)),
            return_exceptions=True,
        )
    failed = sum(1 for r in results if isinstance(r, BaseException))
    return {"ok": len(results) - failed, "failed": failed}


async def sequential(
    base_url: str,
    path: Path,
    *,
    max_requests: int,
    per_seconds: float,
    token: str,
    chunk_size: int = 100,
    max_attempts: int = 10,
) -> dict[str, int]:
    """One job after the other, a fixed sleep between requests; 429/5xx: wait a window."""
    url = f"{base_url.rstrip('/')}/{JOB_PATH}"
    gap = per_seconds / max_requests
    ok = failed = 0
    async with aiohttp.ClientSession() as session:
        for body in read_jobs(path, chunk_size):
            for _ in range(max_attempts):
                async with session.post(url, data=body, headers=_headers(token)) as resp:
                    status = resp.status
                    await resp.read()
                await asyncio.sleep(gap)
                if status == 429 or status >= 500:
                    await asyncio.sleep(per_seconds)
                    continue
                if status == 200:
                    ok += 1
                else:
                    failed += 1
                break
            else:
                failed += 1
    return {"ok": ok, "failed": failed}
