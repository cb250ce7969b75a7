"""A small HTTP receiver for the API's job webhooks: it hears that a job finished.

The submit endpoint takes ``webhook=URL`` ("URL to receive Job status"); the method and the
payload the API sends there are not public. So the receiver takes any method on any path
and looks for a job id (``jobId``, ``job_id`` or ``id``) in a JSON or XML body, a form, or
the query string. It believes nothing: a call only makes the run look at that job's status
at once (or at every open job's, when no id can be read), the same status call a poll
makes. A lost webhook costs only the time until the next poll.

``--webhook-listen HOST:PORT`` starts it; the URL given to the API is ``webhook`` when set
(behind a proxy, say), else ``http://HOST:PORT/bulkjob/webhook``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import TracebackType
from urllib.parse import parse_qs

from aiohttp import web

from ._errors import ConfigError
from ._logging import get_logger
from ._wire import parse_body

__all__ = ["WebhookReceiver", "job_id_in"]

log = get_logger()
PATH = "/bulkjob/webhook"
_ID_FIELDS = ("jobId", "job_id", "jobID", "id")


def job_id_in(content_type: str, body: str, query: dict[str, str]) -> str | None:
    """The job id a webhook call names, wherever it put it; None when it names none."""
    candidates: list[dict[str, object]] = [dict(query)]
    data = parse_body(content_type, body)
    candidates.append(data)
    for value in data.values():  # {"job": {...}} and the like
        if isinstance(value, dict):
            candidates.append(value)
    if "=" in body and not body.lstrip().startswith(("{", "<")):
        candidates.append({k: v[0] for k, v in parse_qs(body).items()})
    for fields in candidates:
        for name in _ID_FIELDS:
            value = fields.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


class WebhookReceiver:
    """Listens on ``HOST:PORT`` and calls ``on_call(job_id or None)`` for every request."""

    __slots__ = ("_listen", "_on_call", "_runner", "calls", "url")

    def __init__(
        self, listen: str, on_call: Callable[[str | None], None], url: str | None = None
    ) -> None:
        self._listen = listen
        self._on_call = on_call
        self._runner: web.AppRunner | None = None
        #: The URL the API is given; known once started.
        self.url = url or ""
        self.calls = 0

    def __repr__(self) -> str:
        return f"<WebhookReceiver {self._listen} calls={self.calls}>"

    async def start(self) -> None:
        """Listen; raises ConfigError when the address cannot be used."""
        host, _, port_text = self._listen.rpartition(":")
        host = host.strip("[]")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            sock = socket.create_server((host, int(port_text)))
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"webhook_listen {self._listen}: cannot listen: {exc.strerror}"
            ) from None
        await web.SockSite(runner, sock).start()
        self._runner = runner
        if not self.url:
            if host in ("", "0.0.0.0", "::"):
                await self.close()
                raise ConfigError(
                    f"webhook_listen {self._listen}: listening on every address, so the URL "
                    "to give the API is not known: set webhook to it"
                )
            bound = sock.getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            self.url = f"http://{shown}:{bound}{PATH}"
        log.info("webhook.listening", listen=self._listen, url=self.url)

    async def close(self) -> None:
        """Stop listening; safe twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.Response:
        # Bytes, decoded leniently: a sender's wrong charset must not turn into a 500.
        raw = await request.read() if request.can_read_body else b""
        body = raw.decode(request.charset or "utf-8", errors="replace")
        job_id = job_id_in(request.content_type, body, dict(request.query))
        self.calls += 1
        log.info("webhook.called", job_id=job_id)
        self._on_call(job_id)
        return web.Response(status=204)
