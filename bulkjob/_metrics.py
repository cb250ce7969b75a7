"""Prometheus metrics of one run, served on ``metrics_host:metrics_port`` while it lasts.

Needs ``prometheus_client`` (``pip install 'bulkjob[metrics]'``); the runner imports this
module only when ``metrics_port`` is set. Nothing is counted twice: there are no metric
objects to increment, only a custom collector that reads the run's live counters
(:class:`~bulkjob._counts.RunCounts`) at each scrape, into a registry of the run's own,
so two runs in one process never share or add up their numbers.

The endpoint is served by aiohttp on the run's own event loop, so a scrape reads the
counters between two steps of the run, never in the middle of one.

Metrics (counters end in ``_total``):

- ``bulkjob_ids_expected``, ``bulkjob_ids_pending``; ``bulkjob_ids_{read,submitted,
  rejected,invalid,duplicate}_total``
- ``bulkjob_jobs_accepted_total``, ``bulkjob_jobs{state="open|final|awaiting_proof"}``,
  ``bulkjob_chunks_rejected_total``
- ``bulkjob_requests_total{kind="submit|status|results|cancel|admin|token"}``,
  ``bulkjob_throttled_total`` (429s), ``bulkjob_retries_total``
- ``bulkjob_throttle_pauses_total``, ``bulkjob_throttle_paused_seconds_total``
- ``bulkjob_queue_jobs`` (places held), ``bulkjob_queue_limit`` (when known),
  ``bulkjob_queue_full_total``
- ``bulkjob_run_elapsed_seconds``
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._counts import RunCounts
from ._errors import ConfigError
from ._logging import get_logger

__all__ = ["MetricsServer", "RunCollector"]

log = get_logger()
PATH = "/metrics"


class RunCollector(Collector):
    """Reads ``counts()`` at every scrape and turns it into metric families."""

    def __init__(self, counts: Callable[[], RunCounts]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        """The metric families of the run as it is now."""
        c = self._counts()
        yield _gauge("bulkjob_ids_expected", "Ids the pre-pass found (input lines)", c.ids_expected)
        for name, value in (
            ("read", c.ids_read),
            ("submitted", c.ids_submitted),
            ("rejected", c.ids_rejected),
            ("invalid", c.ids_invalid),
            ("duplicate", c.ids_duplicate),
        ):
            yield CounterMetricFamily(f"bulkjob_ids_{name}", f"Ids {name}", value=value)
        yield _gauge("bulkjob_ids_pending", "Valid ids not accepted or rejected yet", c.ids_pending)
        yield CounterMetricFamily(
            "bulkjob_jobs_accepted", "Jobs the server accepted", value=c.jobs_accepted
        )
        jobs = GaugeMetricFamily(
            "bulkjob_jobs", "The run's jobs by state, as far as it knows", labels=["state"]
        )
        jobs.add_metric(["open"], c.jobs_open)
        jobs.add_metric(["final"], c.jobs_final)
        jobs.add_metric(["awaiting_proof"], c.awaiting_proof)
        yield jobs
        yield CounterMetricFamily(
            "bulkjob_chunks_rejected", "Chunks the server refused", value=c.chunks_rejected
        )
        requests = CounterMetricFamily(
            "bulkjob_requests", "Requests sent, by kind", labels=["kind"]
        )
        for kind, n in sorted(c.requests.items()):
            requests.add_metric([kind], n)
        yield requests
        yield CounterMetricFamily("bulkjob_throttled", "429 answers", value=c.throttled)
        yield CounterMetricFamily("bulkjob_retries", "Requests retried", value=c.retries)
        yield CounterMetricFamily(
            "bulkjob_throttle_pauses",
            "Pauses of every request after a 429",
            value=c.throttle_pauses,
        )
        yield CounterMetricFamily(
            "bulkjob_throttle_paused_seconds",
            "Seconds of those pauses (overlapping pauses counted once)",
            value=c.throttle_paused_s,
        )
        yield _gauge(
            "bulkjob_queue_jobs",
            "Places of the account's job queue held: open jobs, sends, unproven answers",
            c.queue_taken,
        )
        if c.queue_limit is not None:
            yield _gauge("bulkjob_queue_limit", "The running-job limit kept to", c.queue_limit)
        yield CounterMetricFamily(
            "bulkjob_queue_full", "Queue-full answers met", value=c.queue_full
        )
        yield _gauge("bulkjob_run_elapsed_seconds", "Seconds since the run started", c.elapsed_s)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class MetricsServer:
    """``GET /metrics`` on ``host:port`` (0: any free port) for one run's collector."""

    __slots__ = ("_host", "_port", "_registry", "_runner", "url")

    def __init__(self, host: str, port: int, counts: Callable[[], RunCounts]) -> None:
        self._host = host
        self._port = port
        self._registry = CollectorRegistry(auto_describe=True)
        self._registry.register(RunCollector(counts))
        self._runner: web.AppRunner | None = None
        #: The URL to scrape, once started.
        self.url = ""

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url or 'stopped'}>"

    async def start(self) -> None:
        """Listen; raises ConfigError when the address cannot be used."""
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            sock = socket.create_server((self._host, self._port))
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"metrics_port {self._host}:{self._port}: cannot listen: {exc.strerror}"
            ) from None
        await web.SockSite(runner, sock).start()
        self._runner = runner
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{host}:{sock.getsockname()[1]}{PATH}"
        log.info("metrics.serving", url=self.url)

    async def close(self) -> None:
        """Stop serving; safe twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
