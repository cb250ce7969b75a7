"""What the sandbox writes on the wire: API bodies in JSON or XML, the faults' bodies, and the
webhook calls it makes.

The API's own bodies follow the request's ``Accept`` (XML by default, as documented). The fault
bodies are what a client meets when something between it and the API misbehaves: a gateway's
HTML error page, a body cut off mid-way, a well-formed body that lacks the one field that
matters, an HTML page served with a 200. A client must treat every one of them as "no usable
answer", never as a verdict on the submit.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import formatdate
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web

from ._ledger import ABORTED, FAILED, FINISHED, JobRecord
from ._state import AccountState, webhook_reach

__all__ = [
    "API_PREFIX",
    "TOKEN_PATH",
    "WebhookCaller",
    "comma_list",
    "drop",
    "error_body",
    "format_expiration",
    "format_iso",
    "garbage",
    "gateway_page",
    "http_date",
    "render",
    "route",
    "status_body",
    "timestamp",
    "to_xml",
    "wants_json",
]

API_PREFIX = "/api/v1"
TOKEN_PATH = "/Auth/login/v1/token"
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
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
_FINAL = (FINISHED, FAILED, ABORTED)
# A webhook target that hangs holds one task, not the server: it is given up after this long.
_WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
}
# What a proxy or load balancer in front of an API might answer with a 200 of its own: a page
# for people, not for the client that sent the request.
_NOTICE_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Request received</title></head>\n"
    "<body><h1>Thank you</h1><p>Your request has been received and is being processed.</p>"
    "</body></html>\n"
)


def wants_json(request: web.Request) -> bool:
    if request.path.startswith(TOKEN_PATH):
        # The token endpoint picks its format from the path, as the real one does.
        return request.path.endswith(".json")
    # XML is the documented default: anything but an explicit JSON preference gets XML.
    return "application/json" in request.headers.get("Accept", "").lower()


def serialize(request: web.Request, root: str, data: Mapping[str, object]) -> tuple[str, str]:
    """(body text, content type) of ``data`` in the format the request asks for."""
    if wants_json(request):
        return json.dumps(data), "application/json"
    # A JSON body that is one object under the root's name ({"accessTokenDetails": {...}})
    # is that same element in XML, not the element nested in itself.
    if list(data) == [root]:
        return _XML_DECLARATION + to_xml(root, data[root]), "application/xml"
    return _XML_DECLARATION + to_xml(root, data), "application/xml"


def render(
    request: web.Request,
    root: str,
    data: Mapping[str, object],
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    text, content_type = serialize(request, root, data)
    return web.Response(text=text, status=status, content_type=content_type, headers=headers)


def status_body(job: JobRecord, status: str) -> dict[str, object]:
    """A job's status answer: ``totalProcessed`` once it is finished."""
    data: dict[str, object] = {"jobId": job.job_id, "status": status, "type": job.kind}
    if status == FINISHED:
        data["totalProcessed"] = job.ids
    return data


def error_body(status: int, error_number: str, message: str, diagnostic: int) -> dict[str, object]:
    """The API's error body; ``diagnostic`` numbers it, as the real ``diagnosticCode`` does."""
    return {
        "errorType": _ERROR_TYPES.get(status, "Error"),
        "status": status,
        "errorNumber": error_number,
        "message": message,
        "diagnosticCode": f"SBX-{diagnostic:08d}",
    }


def gateway_page(status: int) -> web.Response:
    """A 5xx as a gateway in front of the API would write it (nginx's page), not as the API."""
    title = f"{status} {_REASONS.get(status, 'Error')}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return web.Response(text=page, status=status, content_type="text/html")


def garbage(request: web.Request, kind: str, answer: Mapping[str, object]) -> web.Response:
    """A 200 that does not carry the submit ``answer`` usably, garbled the ``kind`` way."""
    if kind == "html":
        return web.Response(text=_NOTICE_PAGE, content_type="text/html")
    if kind == "no_job_id":
        without = {k: v for k, v in answer.items() if k != "jobId"}
        return render(request, "BulkJobStatus", without)
    if kind != "truncated":
        raise ValueError(f"unknown garbage kind {kind!r}")
    text, content_type = serialize(request, "BulkJobStatus", answer)
    # Cut inside the job id: the part that is left cannot be mistaken for a whole id.
    job_id = str(answer["jobId"])
    cut = text.index(job_id) + len(job_id) // 2
    return web.Response(text=text[:cut], content_type=content_type)


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


def http_date(timestamp: float) -> str:
    """RFC 7231 IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), as the Date header wants."""
    return formatdate(timestamp, usegmt=True)


def route(request: web.Request) -> str:
    """What an API request is, for the ledger's per-route counts."""
    path = request.path.removeprefix(API_PREFIX + "/")
    if path.startswith("admin/"):
        return path.removeprefix("admin/")
    if request.method == "POST":
        return "submit"
    if request.method == "DELETE":
        return "cancel"
    return "results" if path.endswith("/results") else "status"


async def drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer; the client sees a server disconnect."""
    # Drain the body first: closing while the client is still uploading can surface as a
    # broken pipe on its side instead of the disconnect this fault is meant to simulate.
    await request.read()
    if request.transport is not None:
        request.transport.close()
    # Nothing can be written to a closed transport; aiohttp discards this quietly.
    return web.Response(status=204)


def timestamp(value: str | None) -> float | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # the API's times are UTC
    return parsed.timestamp()


def comma_list(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class WebhookCaller:
    """Each job's webhook call, made once, when the job's status is final.

    A job's status is computed from its timestamps, so nothing inside the server notices the
    moment a job finishes; a timer per job, armed at acceptance for the time it ends (again when
    a cancel moves it), makes the call whether or not a client asks for the status.
    """

    __slots__ = ("_calls", "_session", "_state", "_timers")

    def __init__(self, state: AccountState) -> None:
        self._state = state
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._calls: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<WebhookCaller armed={len(self._timers)} calling={len(self._calls)}>"

    def arm(self, job: JobRecord) -> None:
        """Set (or move) the job's call to its final status plus ``webhook_delay``."""
        if job.webhook is None:
            return
        now = time.monotonic()
        end = job.processing_end
        final = now if end is None else end  # no end: cancelled, just now
        due = final + self._state.config.webhook_delay
        old = self._timers.pop(job.job_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        # call_at reads the loop's clock, the job's times are time.monotonic(): pass the delay.
        self._timers[job.job_id] = loop.call_at(loop.time() + (due - now), self._due, job, final)

    def _due(self, job: JobRecord, final: float) -> None:
        del self._timers[job.job_id]
        # The loop may run a timer up to its clock resolution early: read the status at the
        # time it was armed for. Not final there means a test moved the job on: wait again.
        status = job.status(max(time.monotonic(), final))
        url = job.webhook
        if status not in _FINAL or url is None:
            self.arm(job)
            return
        state, webhooks = self._state, self._state.ledger.webhooks
        rate = state.config.webhook_loss_rate
        if rate and state.webhooks_rng.random() < rate:
            webhooks["lost"] += 1
            return
        if webhook_reach(url) != "loopback":
            webhooks["failed"] += 1  # a name reserved for examples: it resolves nowhere
            return
        body = {"jobId": job.job_id, "status": status, "type": job.kind}
        task = asyncio.get_running_loop().create_task(self._call(url, body))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, url: str, body: Mapping[str, str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_WEBHOOK_TIMEOUT)
        try:
            async with self._session.post(url, json=body) as response:
                await response.read()
                sent = 200 <= response.status < 300
        except (aiohttp.ClientError, OSError, TimeoutError):
            sent = False
        self._state.ledger.webhooks["sent" if sent else "failed"] += 1

    async def close(self) -> None:
        """Cancel the calls not due yet and those under way; close the client session."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        calls = list(self._calls)
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()
