"""The sandbox server: a local look-alike of the InsideView bulk job API, on aiohttp.web.

It serves the token endpoint and, under ``/api/v1``, the four routes of each job kind plus
``/admin/usage`` and ``/admin/jobs``. It is strict where the public docs are explicit (the
``accessToken`` header, Content-Type, XML by default, the error body shape) and invents a
documented rule where they are silent (see :mod:`bulkjob._sandbox_state`).

Every API request goes through the same checks, in this order, so that a test can tell which
one fired::

    count it -> drop fault -> accessToken -> throttle -> latency -> 5xx fault -> the endpoint

and a submit that passes them, once its job is created and paid, may still lose its answer::

    drop_after_accept -> accept_then_5xx -> accept_then_garbage -> the documented answer

Results files carry the submitted ids in their first column, one row per id line, and rows
for unmatched ids exist with their fields empty (see :mod:`bulkjob._sandbox_results`).

Faults are drawn from ``random.Random(config.seed)``, so a seeded run is reproducible. Every
response carries one ``Date`` header from the server's clock, which ``clock_skew`` shifts.

A job submitted with ``?webhook=URL`` gets one call when it reaches a final status (finished,
failed, or aborted by a cancel), ``webhook_delay`` seconds later, whether or not anyone asks for
its status: a ``POST`` with ``Content-Type: application/json`` and the body
``{"jobId": ..., "status": ..., "type": ...}``. The real payload and method are not public
(API_NOTES); this is the sandbox's pick, the same three fields as a status answer. Only
loopback URLs are called, so that no test reaches outside (others are refused at submit, see
:func:`bulkjob._sandbox_state.webhook_reach`). A share ``webhook_loss_rate`` of calls is never
made; a call that fails is counted and never retried (``ledger.webhooks``). Calls not made by
the time the server closes are not made (see :class:`bulkjob._sandbox_bodies.WebhookCaller`).

Outside ``/api/v1``, ``/_sandbox/...`` lets a test in another process change the config, read
the ledger and add other clients' jobs (see :mod:`bulkjob._sandbox_control`); those requests
are neither counted nor throttled.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .._errors import SandboxRefusal
from ._background import serve_in_thread
from ._bodies import (
    API_PREFIX,
    TOKEN_PATH,
    WebhookCaller,
    comma_list,
    drop,
    error_body,
    format_expiration,
    format_iso,
    garbage,
    gateway_page,
    http_date,
    render,
    route,
    status_body,
    timestamp,
)
from ._control import control_routes
from ._files import ResultsFiles
from ._state import (
    ACCEPTED,
    FAILED,
    FINISHED,
    JOB_FAILED,
    JOB_KINDS,
    NOT_FINISHED,
    STATUSES,
    AccountState,
    JobRecord,
    Ledger,
    SandboxConfig,
)

__all__ = ["JobRecord", "Ledger", "Sandbox", "SandboxConfig"]

_FAULT_STATUSES = (500, 502, 503)
_UNAUTHORIZED = "Cannot use API's without setting a valid accessToken in header."
_MAX_RESULTS_PER_PAGE = 50
# Large enough that an over-long job reaches the id-count check and gets the documented 400
# rather than aiohttp's 413: 10,000 ids of 64 characters is about 650 kB.
_CLIENT_MAX_SIZE = 64 * 1024 * 1024


class Sandbox:
    """A running (once started) sandbox server with its config, ledger and account state."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.ledger = Ledger()
        self._state = AccountState(config or SandboxConfig(), self.ledger)
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._diagnostics = 0
        self._webhooks = WebhookCaller(self._state)
        self._files = ResultsFiles()
        self._state.accept_listeners.append(self._files.accepted)

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

    @property
    def token(self) -> str:
        """An access token this sandbox accepts (the config's first fixed one)."""
        if not self.config.access_tokens:
            raise RuntimeError("this sandbox has no fixed token: mint one from client_id")
        return self.config.access_tokens[0]

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> Iterator[Sandbox]:
        """``with Sandbox.running() as sb:`` a started sandbox served from a thread of its
        own, stopped at the end of the block: for notebooks, where a sandbox on the
        kernel's loop would deadlock a blocking ``bulkjob.submit``, and plain scripts.

        Its counts (``sb.ledger.requests``, ``ids_accepted``...) can be read from the
        caller's thread at any time; collections (``ledger.jobs``, ``accepted_ids``) once
        the calls that fill them have returned.
        """
        with serve_in_thread(cls(config), host, port) as sandbox:
            yield sandbox

    def add_quota(self, n: int) -> None:
        """Give the account ``n`` more credits (an unlimited quota stays unlimited)."""
        self._state.add_quota(n)

    def add_foreign_job(
        self,
        ids: Sequence[str],
        *,
        kind: str = "targetContactDetails",
        finished_after: float | None = None,
        fail: bool = False,
    ) -> str:
        """Create a job as if another client of the account had submitted it; return its id.

        Another run, another tool or a person in the web UI: the job is listed in
        ``/admin/jobs``, its status, results and cancel work like any job's, it counts towards
        the running-job limit and draws on the quota, but its ids go to ``ledger.foreign_ids``,
        never to ``ledger.accepted_ids`` or ``ids_accepted``, so a test's "every id paid once"
        stays about the client under test. ``kind`` is a job type (``contactDetails``...);
        ``finished_after`` (seconds from now: processing at once, or with ``queue_in_order`` as
        soon as a slot is free) defaults to the config's lifecycle; ``fail`` makes it end
        ``failed``. Raises ValueError for a bad kind, id or a quota too small.
        """
        job = self._state.add_foreign_job(
            ids, kind=kind, finished_after=finished_after, fail=fail, now=time.monotonic()
        )
        return job.job_id

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
        # After the runner: no request is left to arm a call. Calls not due yet are not made.
        await self._webhooks.close()
        await self._files.close()

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
        app.on_response_prepare.append(self._stamp_date)
        app.router.add_routes(control_routes(self._state))
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

    async def _stamp_date(self, request: web.Request, response: web.StreamResponse) -> None:
        # aiohttp adds a Date from the real clock only when none is set (so there is exactly
        # one): this hook runs first, on every response, errors and fault pages included.
        response.headers["Date"] = http_date(self._state.wall_time())

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
        what = route(request)
        ledger.routes[what] += 1
        # submit_faults_only: the plain faults hit job submits only, so that a test can lose
        # submits before acceptance while the job list and results stay readable.
        faulty = what == "submit" or not config.submit_faults_only
        if faulty and config.drop_rate and state.faults_rng.random() < config.drop_rate:
            ledger.faults["drop"] += 1
            return await drop(request)
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
        if faulty and config.fault_5xx_rate and state.faults_rng.random() < config.fault_5xx_rate:
            ledger.faults["5xx"] += 1
            return self._server_fault(request, state.faults_rng.choice(_FAULT_STATUSES))
        return await handler(request)

    # -- endpoints ----------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        form = await request.post()
        params.update((k, v) for k, v in form.items() if isinstance(v, str))
        config = self.config
        self.ledger.token_requests += 1
        if config.token_latency:
            await asyncio.sleep(config.token_latency)
        rng = self._state.faults_rng
        if config.token_fault_rate and rng.random() < config.token_fault_rate:
            kind = rng.choice(config.token_fault_kinds)
            self.ledger.faults[f"token_{kind}"] += 1
            if kind == "reset":
                return await drop(request)
            if kind == "garbage":
                return web.Response(text='{"accessTokenDetails": {"acc', content_type="text/html")
            return self._server_fault(request, rng.choice(_FAULT_STATUSES))
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
            "expirationTime": format_expiration(self._state.wall_time() + config.token_lifetime),
        }
        return render(request, "accessTokenDetails", {"accessTokenDetails": details})

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
        self._webhooks.arm(job)
        # The job exists and is paid from here on: each fault below leaves the client without
        # a usable answer to a submit that did happen. Each rate is drawn only when set, so
        # that adding a knob does not shift the fault sequence of configs that leave it off.
        config, rng, faults = self.config, self._state.faults_rng, self.ledger.faults
        if config.drop_after_accept_rate and rng.random() < config.drop_after_accept_rate:
            faults["drop_after_accept"] += 1
            return await drop(request)
        if config.accept_then_5xx_rate and rng.random() < config.accept_then_5xx_rate:
            faults["accept_then_5xx"] += 1
            return self._server_fault(request, rng.choice(_FAULT_STATUSES))
        # The submit answer is the job at acceptance, even when (finished_after = 0) it is
        # already done by the time the answer is written: the API documents only "accepted".
        answer = status_body(job, ACCEPTED)
        if config.accept_then_garbage_rate and rng.random() < config.accept_then_garbage_rate:
            faults["accept_then_garbage"] += 1
            return garbage(request, rng.choice(config.garbage_kinds), answer)
        return render(request, "BulkJobStatus", answer)

    async def _status(self, request: web.Request, kind: str) -> web.StreamResponse:
        return self._job_status(request, self._state.job(kind, request.match_info["job_id"]))

    async def _cancel(self, request: web.Request, kind: str) -> web.StreamResponse:
        job = self._state.job(kind, request.match_info["job_id"])
        moved = self._state.cancel(job, time.monotonic())
        # The aborted job's call is due now; the jobs that took its place finish earlier.
        for changed in (job, *moved):
            self._webhooks.arm(changed)
        return self._job_status(request, job)

    async def _results(self, request: web.Request, kind: str) -> web.StreamResponse:
        job = self._state.job(kind, request.match_info["job_id"])
        status = job.status()
        # Whether a failed job's file is served is not public (API_NOTES only says "see results
        # file"), so both are offered: a client must cope with either.
        if status == FAILED and not self.config.failed_results:
            self.ledger.rejected["job_failed"] += 1
            raise SandboxRefusal(400, JOB_FAILED, "Job failed: no results file is available.")
        if status not in (FINISHED, FAILED):
            self.ledger.rejected["not_finished"] += 1
            raise SandboxRefusal(400, NOT_FINISHED, "Job is not finished")
        # The file stored at acceptance; rendered now only when it is no longer stored.
        data = await self._files.read(job)
        if data is None:
            data = job.results_csv().encode()
        if self.config.results_cut_rate and (
            self._state.faults_rng.random() < self.config.results_cut_rate
        ):
            self.ledger.faults["results_cut"] += 1
            data += b'cut-short,"an open quote\n'  # the file ends inside a quoted field
        return web.Response(
            body=data,
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{job.job_id}.csv"'},
        )

    async def _usage(self, request: web.Request) -> web.StreamResponse:
        allocated, consumed = self._state.usage()
        credits = {"allocatedCredits": allocated, "consumedCredits": consumed}
        return render(request, "usage", {"creditsForAccount": credits})

    async def _jobs(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        invalid = self._state.invalid
        types = comma_list(query.get("jobTypes"))
        if types is not None and not types <= set(JOB_KINDS.values()):
            raise invalid(f"Unknown jobTypes: {', '.join(sorted(types - set(JOB_KINDS.values())))}")
        statuses = comma_list(query.get("jobStatuses"))
        if statuses is not None and not statuses <= set(STATUSES):
            raise invalid(f"Unknown jobStatuses: {', '.join(sorted(statuses - set(STATUSES)))}")
        if not self.config.time_filters and ("start" in query or "end" in query):
            raise invalid("start and end must be dates in the form MM/DD/YYYY.")
        try:
            start = timestamp(query.get("start"))
            end = timestamp(query.get("end"))
            page = int(query.get("page", "1"))
            per_page = int(query.get("resultsPerPage", str(_MAX_RESULTS_PER_PAGE)))
        except ValueError as exc:
            raise invalid(f"Invalid query parameter: {exc}") from None
        if page < 1 or not 1 <= per_page <= _MAX_RESULTS_PER_PAGE:
            raise invalid(f"page must be >= 1, resultsPerPage from 1 to {_MAX_RESULTS_PER_PAGE}.")
        now = time.monotonic()
        lag = self.config.list_lag
        rows = []
        for job in reversed(self.ledger.jobs.values()):  # insertion order is creation order
            # The listing lags behind acceptance (API_NOTES): a client that lists right after
            # a lost answer must not read "no such job" as "not accepted".
            if now - job.created_monotonic < lag:
                continue
            status = job.status(now)
            if types is not None and job.kind not in types:
                continue
            if statuses is not None and status not in statuses:
                continue
            # start and end are read on the server's clock, the one job.created is on: a client
            # whose clock is ahead of the server's asks for a window the server thinks is later.
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
        return render(request, "jobsList", listing)

    # -- bodies -------------------------------------------------------------------------------

    def _job_status(
        self, request: web.Request, job: JobRecord, status: str | None = None
    ) -> web.Response:
        return render(request, "BulkJobStatus", status_body(job, status or job.status()))

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
        body = error_body(status, error_number, message, self._diagnostics)
        return render(request, "error", body, status=status, headers=headers)

    def _server_fault(self, request: web.Request, status: int) -> web.Response:
        """A simulated 5xx: the API's error body, or a gateway's HTML page with fault_html."""
        if self.config.fault_html:
            return gateway_page(status)
        return self._error(request, status, f"{status}-100", "Simulated server fault.")
