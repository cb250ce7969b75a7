"""The sandbox server: a local look-alike of the InsideView bulk job API, on aiohttp.web.

It serves the token endpoint and, under ``/api/v1``, the four routes of each job kind plus
``/admin/usage`` and ``/admin/jobs``. It is strict where the public docs are explicit (the
``accessToken`` header, Content-Type, XML by default, the error body shape) and invents a
documented rule where they are silent (see :mod:`bulkjob._sandbox_state`).

Every API request goes through the same checks, in this order, so that a test can tell which
one fired::

    count it -> drop fault -> accessToken -> throttle -> latency -> 5xx fault -> the endpoint

Faults are drawn from ``random.Random(config.seed)``, so a seeded run is reproducible.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from xml.sax.saxutils import escape

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ._sandbox_state import (
    ACCEPTED,
    FINISHED,
    JOB_KINDS,
    NOT_FINISHED,
    STATUSES,
    AccountState,
    JobRecord,
    Ledger,
    SandboxConfig,
    SandboxRefusal,
)

__all__ = ["JobRecord", "Ledger", "Sandbox", "SandboxConfig"]

API_PREFIX = "/api/v1"
TOKEN_PATH = "/Auth/login/v1/token"
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
_ERROR_TYPES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_FAULT_STATUSES = (500, 502, 503)
_UNAUTHORIZED = "Cannot use API's without setting a valid accessToken in header."
_MAX_RESULTS_PER_PAGE = 50
# Large enough that an over-long job reaches the id-count check and gets the documented 400
# rather than aiohttp's 413: 10,000 ids of 64 characters is about 650 kB.
_CLIENT_MAX_SIZE = 64 * 1024 * 1024
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Sandbox:
    """A running (once started) sandbox server with its config, ledger and account state."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.ledger = Ledger()
        self._state = AccountState(config or SandboxConfig(), self.ledger)
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._diagnostics = 0

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return f"<Sandbox {where} {self.ledger!r}>"

    @property
    def config(self) -> SandboxConfig:
        return self._state.config

    @config.setter
    def config(self, config: SandboxConfig) -> None:
        # The account state reads the config on every request; swapping it keeps one source.
        self._state.config = config

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sandbox is not started")
        return self._port

    @property
    def _url_host(self) -> str:
        # A wildcard address is where the server listens, not where a client should connect.
        if self._host in ("", "0.0.0.0", "::"):
            return "127.0.0.1"
        return f"[{self._host}]" if ":" in self._host else self._host

    @property
    def base_url(self) -> str:
        return f"http://{self._url_host}:{self.port}{API_PREFIX}"

    @property
    def token_url(self) -> str:
        return f"http://{self._url_host}:{self.port}{TOKEN_PATH}.json"

    def add_quota(self, n: int) -> None:
        """Give the account ``n`` more credits (an unlimited quota stays unlimited)."""
        self._state.add_quota(n)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = an ephemeral port, read it from :attr:`port`)."""
        if self._runner is not None:
            raise RuntimeError("the sandbox is already started")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        # Binding the socket ourselves is the public way to learn which port 0 became.
        sock = socket.create_server((host, port), family=infos[0][0])
        runner = web.AppRunner(
            self._build_app(), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        self._port = sock.getsockname()[1]

    async def close(self) -> None:
        """Stop serving; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the application ----------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware()], client_max_size=_CLIENT_MAX_SIZE)
        app.router.add_post(TOKEN_PATH + ".json", self._token)
        app.router.add_post(TOKEN_PATH, self._token)
        for path, kind in JOB_KINDS.items():
            base = f"{API_PREFIX}/{path}"
            app.router.add_post(base, self._for_kind(self._submit, kind))
            app.router.add_get(base + "/{job_id}", self._for_kind(self._status, kind))
            app.router.add_delete(base + "/{job_id}", self._for_kind(self._cancel, kind))
            app.router.add_get(base + "/{job_id}/results", self._for_kind(self._results, kind))
        app.router.add_get(API_PREFIX + "/admin/usage", self._usage)
        app.router.add_get(API_PREFIX + "/admin/jobs", self._jobs)
        return app

    @staticmethod
    def _for_kind(
        endpoint: Callable[[web.Request, str], Awaitable[web.StreamResponse]], kind: str
    ) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await endpoint(request, kind)

        return handler

    def _middleware(self) -> Middleware:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                if request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/"):
                    return await self._api_request(request, handler)
                return await handler(request)
            except SandboxRefusal as refusal:
                return self._error(request, refusal.status, refusal.error_number, refusal.message)
            except web.HTTPException as exc:
                # aiohttp's own 404/405/413 carry a plain-text body; the API answers every
                # error with its error body, and a client's parser should only ever meet that.
                if exc.status < 400:
                    raise
                return self._error(request, exc.status, f"{exc.status}-100", exc.reason)

        return middleware

    async def _api_request(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        state, config, ledger = self._state, self.config, self.ledger
        now = time.monotonic()
        ledger.requests += 1
        ledger.request_times.append(now)
        if config.drop_rate and state.faults_rng.random() < config.drop_rate:
            ledger.faults["drop"] += 1
            return await _drop(request)
        if not state.token_valid(request.headers.get("accessToken"), now):
            raise SandboxRefusal(401, "401-101", _UNAUTHORIZED)
        verdict = state.throttle(now)
        if not verdict.admitted:
            ledger.throttled += 1
            headers = {}
            if config.retry_after:
                headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after)))
            return self._error(request, 429, "429-101", "Request is throttled.", headers=headers)
        if config.latency:
            await asyncio.sleep(config.latency)
        if config.fault_5xx_rate and state.faults_rng.random() < config.fault_5xx_rate:
            ledger.faults["5xx"] += 1
            status = state.faults_rng.choice(_FAULT_STATUSES)
            return self._error(request, status, f"{status}-100", "Simulated server fault.")
        return await handler(request)

    # -- endpoints ----------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        form = await request.post()
        params.update((k, v) for k, v in form.items() if isinstance(v, str))
        config = self.config
        if (params.get("clientId"), params.get("clientSecret")) != (
            config.client_id,
            config.client_secret,
        ):
            raise SandboxRefusal(401, "401-102", "Invalid client credentials.")
        if params.get("grantType") != "cred":
            raise SandboxRefusal(400, "400-101", "grantType must be cred.")
        token = secrets.token_urlsafe(24)
        self._state.mint_token(token, time.monotonic())
        details = {
            "accessToken": token,
            "tokenType": "bearer",
            "expirationTime": format_expiration(time.time() + config.token_lifetime),
        }
        return self._render(request, "accessTokenDetails", {"accessTokenDetails": details})

    async def _submit(self, request: web.Request, kind: str) -> web.StreamResponse:
        if "Content-Type" not in request.headers or request.content_type not in (
            "text/plain",
            "application/octet-stream",
        ):
            raise SandboxRefusal(
                415,
                "415-101",
                "The Content-Type mandatory is not valid, please refer to the API documentation.",
            )
        try:
            body = await request.read()
        except ConnectionError:
            # The client gave up (timed out) while the latency fault held the request:
            # there is no body to judge and nobody to answer.
            return web.Response(status=499)
        flag = request.query.get("retrieveCompanyDetails", "false").lower()
        if flag not in ("true", "false"):
            raise self._state.invalid("retrieveCompanyDetails must be true or false.")
        # Nothing awaits between the checks and the acceptance inside submit(): two concurrent
        # submits cannot both pass the quota or running-job check.
        job = self._state.submit(
            kind,
            body,
            retrieve_company_details=flag == "true",
            webhook=request.query.get("webhook"),
            now=time.monotonic(),
        )
        rate = self.config.drop_after_accept_rate
        if rate and self._state.faults_rng.random() < rate:
            self.ledger.faults["drop_after_accept"] += 1
            return await _drop(request)
        # The submit answer is the job at acceptance, even when (finished_after = 0) it is
        # already done by the time the answer is written: the API documents only "accepted".
        return self._job_status(request, job, ACCEPTED)

    async def _status(self, request: web.Request, kind: str) -> web.StreamResponse:
        return self._job_status(request, self._state.job(kind, request.match_info["job_id"]))

    async def _cancel(self, request: web.Request, kind: str) -> web.StreamResponse:
        job = self._state.job(kind, request.match_info["job_id"])
        self._state.cancel(job, time.monotonic())
        return self._job_status(request, job)

    async def _results(self, request: web.Request, kind: str) -> web.StreamResponse:
        job = self._state.job(kind, request.match_info["job_id"])
        if job.status() != FINISHED:
            self.ledger.rejected["not_finished"] += 1
            raise SandboxRefusal(400, NOT_FINISHED, "Job is not finished")
        return web.Response(
            text=job.results_csv(),
            content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job.job_id}.csv"'},
        )

    async def _usage(self, request: web.Request) -> web.StreamResponse:
        allocated, consumed = self._state.usage()
        credits = {"allocatedCredits": allocated, "consumedCredits": consumed}
        return self._render(request, "usage", {"creditsForAccount": credits})

    async def _jobs(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        invalid = self._state.invalid
        types = _comma_list(query.get("jobTypes"))
        if types is not None and not types <= set(JOB_KINDS.values()):
            raise invalid(f"Unknown jobTypes: {', '.join(sorted(types - set(JOB_KINDS.values())))}")
        statuses = _comma_list(query.get("jobStatuses"))
        # "failed" is a documented status the sandbox never produces; filtering on it is valid.
        known = {*STATUSES, "failed"}
        if statuses is not None and not statuses <= known:
            raise invalid(f"Unknown jobStatuses: {', '.join(sorted(statuses - known))}")
        try:
            start = _timestamp(query.get("start"))
            end = _timestamp(query.get("end"))
            page = int(query.get("page", "1"))
            per_page = int(query.get("resultsPerPage", str(_MAX_RESULTS_PER_PAGE)))
        except ValueError as exc:
            raise invalid(f"Invalid query parameter: {exc}") from None
        if page < 1 or not 1 <= per_page <= _MAX_RESULTS_PER_PAGE:
            raise invalid(f"page must be >= 1, resultsPerPage from 1 to {_MAX_RESULTS_PER_PAGE}.")
        now = time.monotonic()
        rows = []
        for job in reversed(self.ledger.jobs.values()):  # insertion order is creation order
            status = job.status(now)
            if types is not None and job.kind not in types:
                continue
            if statuses is not None and status not in statuses:
                continue
            if start is not None and job.created < start:
                continue
            if end is not None and job.created > end:
                continue
            rows.append(
                {
                    "jobId": job.job_id,
                    "type": job.kind,
                    "status": status,
                    "ids": job.ids,
                    "creditsConsumed": job.credits,
                    "created": format_iso(job.created),
                }
            )
        first = (page - 1) * per_page
        listing = {
            "jobs": rows[first : first + per_page],
            "page": page,
            "resultsPerPage": per_page,
            "totalResults": len(rows),
        }
        return self._render(request, "jobsList", listing)

    # -- bodies -------------------------------------------------------------------------------

    def _job_status(
        self, request: web.Request, job: JobRecord, status: str | None = None
    ) -> web.Response:
        status = status or job.status()
        data: dict[str, object] = {"jobId": job.job_id, "status": status, "type": job.kind}
        if status == FINISHED:
            data["totalProcessed"] = job.ids
        return self._render(request, "BulkJobStatus", data)

    def _error(
        self,
        request: web.Request,
        status: int,
        error_number: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        self._diagnostics += 1
        body = {
            "errorType": _ERROR_TYPES.get(status, "Error"),
            "status": status,
            "errorNumber": error_number,
            "message": message,
            "diagnosticCode": f"SBX-{self._diagnostics:08d}",
        }
        return self._render(request, "error", body, status=status, headers=headers)

    @staticmethod
    def _render(
        request: web.Request,
        root: str,
        data: Mapping[str, object],
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        if _wants_json(request):
            return web.Response(
                text=json.dumps(data),
                status=status,
                content_type="application/json",
                headers=headers,
            )
        # A JSON body that is one object under the root's name ({"accessTokenDetails": {...}})
        # is that same element in XML, not the element nested in itself.
        if list(data) == [root]:
            return web.Response(
                text=_XML_DECLARATION + to_xml(root, data[root]),
                status=status,
                content_type="application/xml",
                headers=headers,
            )
        return web.Response(
            text=_XML_DECLARATION + to_xml(root, data),
            status=status,
            content_type="application/xml",
            headers=headers,
        )


async def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer; the client sees a server disconnect."""
    # Drain the body first: closing while the client is still uploading can surface as a
    # broken pipe on its side instead of the disconnect this fault is meant to simulate.
    await request.read()
    if request.transport is not None:
        request.transport.close()
    # Nothing can be written to a closed transport; aiohttp discards this quietly.
    return web.Response(status=204)


def _wants_json(request: web.Request) -> bool:
    if request.path.startswith(TOKEN_PATH):
        # The token endpoint picks its format from the path, as the real one does.
        return request.path.endswith(".json")
    # XML is the documented default: anything but an explicit JSON preference gets XML.
    return "application/json" in request.headers.get("Accept", "").lower()


def to_xml(name: str, value: object) -> str:
    """A minimal serializer: mappings nest, sequences repeat their singular name."""
    if isinstance(value, Mapping):
        inner = "".join(to_xml(str(k), v) for k, v in value.items())
    elif isinstance(value, Sequence) and not isinstance(value, str):
        item = name[:-1] if name.endswith("s") else "item"
        inner = "".join(to_xml(item, v) for v in value)
    elif isinstance(value, bool):
        inner = "true" if value else "false"
    elif value is None:
        return f"<{name}/>"
    else:
        inner = escape(str(value))
    return f"<{name}>{inner}</{name}>"


def format_expiration(timestamp: float) -> str:
    """``Tue, Jul 21, 2015 09:08:17 PM GMT``, built by hand so no locale can change it."""
    t = datetime.fromtimestamp(timestamp, UTC)
    hour = t.hour % 12 or 12
    meridiem = "AM" if t.hour < 12 else "PM"
    return (
        f"{_DAYS[t.weekday()]}, {_MONTHS[t.month - 1]} {t.day:02d}, {t.year} "
        f"{hour:02d}:{t.minute:02d}:{t.second:02d} {meridiem} GMT"
    )


def format_iso(timestamp: float) -> str:
    """ISO-8601 in UTC with milliseconds and a ``Z``."""
    iso = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return iso.replace("+00:00", "Z")


def _timestamp(value: str | None) -> float | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # the API's times are UTC
    return parsed.timestamp()


def _comma_list(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}
