"""The sandbox's control routes: steer a sandbox that runs in another process, over HTTP.

Tests that start ``bulkjob sandbox`` as a subprocess cannot reach its :class:`SandboxConfig`
or ledger in memory; these routes give them the same handles:

- ``GET /_sandbox/config``: the current config as a JSON object;
- ``POST /_sandbox/config``: a JSON object of fields to change, all or nothing (400 naming the
  field for an unknown field or a bad value; JSON lists become tuples);
- ``GET /_sandbox/ledger``: the ledger's counts (:meth:`Ledger.counts`), with ``max_running``
  and the running-job limit's ``utilisation`` (null without a limit);
- ``POST /_sandbox/jobs``: ``{"ids": [...], "kind": ..., "finished_after": ..., "fail": ...}``
  adds another client's job (:meth:`bulkjob.Sandbox.add_foreign_job`), answers ``{"jobId"}``.

They live outside ``/api/v1`` and need no token, so they are never counted as API requests,
never throttled and never faulted: steering the server must not change what it measures.
Errors are ``{"error": "..."}`` with status 400, always JSON.
"""

from __future__ import annotations

import dataclasses
import json
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from .._errors import ConfigError
from ._config import apply_changes
from ._state import AccountState

__all__ = ["CONTROL_PREFIX", "control_routes"]

CONTROL_PREFIX = "/_sandbox"


def control_routes(state: AccountState) -> list[web.RouteDef]:
    """The control routes, bound to one account state (whose config may be swapped later)."""

    async def get_config(request: web.Request) -> web.Response:
        return web.json_response(dataclasses.asdict(state.config))

    async def post_config(request: web.Request) -> web.Response:
        changes = await _json_object(request)
        try:
            changed = apply_changes(state.config, changes)
        except ConfigError as exc:
            raise _BadRequest(str(exc)) from None
        return web.json_response({"changed": changed})

    async def get_ledger(request: web.Request) -> web.Response:
        limit = state.config.running_job_limit
        return web.json_response(state.ledger.counts(running_job_limit=limit))

    async def post_job(request: web.Request) -> web.Response:
        spec = await _json_object(request)
        unknown = set(spec) - {"ids", "kind", "finished_after", "fail"}
        if unknown:
            raise _BadRequest(f"{', '.join(sorted(unknown))}: no such field")
        ids = spec.get("ids")
        kind = spec.get("kind", "targetContactDetails")
        finished_after = spec.get("finished_after")
        fail = spec.get("fail", False)
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise _BadRequest("ids: must be a list of strings")
        if not isinstance(kind, str):
            raise _BadRequest("kind: must be a string")
        if finished_after is not None and (
            isinstance(finished_after, bool) or not isinstance(finished_after, int | float)
        ):
            raise _BadRequest("finished_after: must be a number of seconds or null")
        if not isinstance(fail, bool):
            raise _BadRequest("fail: must be true or false")
        try:
            job = state.add_foreign_job(
                ids,
                kind=kind,
                finished_after=None if finished_after is None else float(finished_after),
                fail=fail,
                now=time.monotonic(),
            )
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        return web.json_response({"jobId": job.job_id})

    return [
        web.get(CONTROL_PREFIX + "/config", _answering_errors(get_config)),
        web.post(CONTROL_PREFIX + "/config", _answering_errors(post_config)),
        web.get(CONTROL_PREFIX + "/ledger", _answering_errors(get_ledger)),
        web.post(CONTROL_PREFIX + "/jobs", _answering_errors(post_job)),
    ]


async def _json_object(request: web.Request) -> dict[str, object]:
    try:
        data = json.loads(await request.text())
    except ValueError as exc:
        raise _BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _BadRequest("the body must be a JSON object")
    return data


class _BadRequest(Exception):
    """A control request refused with a 400 and ``{"error": message}``."""


def _answering_errors(handler: Handler) -> Handler:
    # Answered here rather than raised as an aiohttp HTTPException: the server's middleware
    # turns those into the API's error body, and these routes are not the API.
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return wrapped
