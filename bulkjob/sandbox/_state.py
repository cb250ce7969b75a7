"""The sandbox server's state: the account it simulates and the jobs on it.

Nothing here speaks HTTP. :mod:`bulkjob._sandbox` turns requests into calls on
:class:`AccountState` and turns :class:`SandboxRefusal` into error bodies. Keeping the rules
(throttle, quota, running-job limit, job lifecycle) apart from the transport lets them be read,
and reasoned about, in one place.

The running-job limit refuses a submit while ``running_job_limit`` jobs are accepted or
processing, with the queue-full 400 that names the limit. With ``queue_in_order`` processing
also waits for a slot: a job starts once fewer than the limit process, in acceptance order (see
"the processing queue" below). Since a submit is refused at the limit, a queue forms from other
clients' jobs (``add_foreign_job`` is never refused: such a job was accepted elsewhere) or
after the limit is lowered; a client under test meets it as jobs that stay ``accepted``. A
queued job's start is fixed when it joins the queue (from the limit then) and moves only when
a job ahead of it is cancelled.

Where the real API's behaviour is not public (see ``API_NOTES.md``), the sandbox picks one
plausible rule and says so in a comment, so that the client is tested against *a* strict server
rather than against a guess dressed up as a fact.
"""

from __future__ import annotations

import collections
import functools
import heapq
import math
import random
import re
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .._errors import SandboxRefusal
from ._config import SandboxConfig
from ._ledger import (
    ABORTED,
    ACCEPTED,
    FAILED,
    FINISHED,
    PROCESSING,
    STATUSES,
    JobRecord,
    Ledger,
)

__all__ = [
    "ABORTED",
    "ACCEPTED",
    "FAILED",
    "FINISHED",
    "JOB_KINDS",
    "PROCESSING",
    "STATUSES",
    "AccountState",
    "JobRecord",
    "Ledger",
    "SandboxConfig",
    "SandboxRefusal",
]

#: URL path (under ``/api/v1``) of each job kind -> the ``type`` string the API reports.
JOB_KINDS: dict[str, str] = {
    "target/contact/job": "targetContactDetails",
    "contact/job": "contactDetails",
    "target/company/fetch/job": "targetCompanyDetails",
    "company/techProfile/job": "companyTechProfile",
}

#: What ``/admin/usage`` reports as allocated when the quota is unlimited: the real API has no
#: "unlimited", so the sandbox answers with a number no test run can reach.
UNLIMITED_CREDITS = 2**31 - 1

# Error numbers. Only 400-105 (validation) is public; the others are the sandbox's own, chosen so
# that a client which classifies 400s by message *and* number is exercised (API_NOTES: the real
# numbers for quota and queue-full are unknown).
VALIDATION = "400-105"
QUOTA = "400-201"
QUEUE_FULL = "400-301"
NOT_FINISHED = "400-401"
NOT_CANCELLABLE = "400-402"
JOB_FAILED = "400-403"

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_RESERVED_SUFFIXES = (
    ".example",
    ".test",
    ".invalid",
    ".example.com",
    ".example.net",
    ".example.org",
)
_RESERVED_DOMAINS = frozenset({"example.com", "example.net", "example.org"})

_JOB_ID_ALPHABET = string.ascii_lowercase + string.digits
_JOB_ID_LENGTH = 20


@dataclass(frozen=True, slots=True)
class ThrottleVerdict:
    """Whether a request was admitted; when not, how long until it would be."""

    admitted: bool
    retry_after: float = 0.0


class AccountState:
    """The simulated account: tokens, throttle window, credits and jobs, under one config."""

    def __init__(self, config: SandboxConfig, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        # A generator per purpose, so that minting job ids, drawing which jobs fail or how long
        # they take does not shift the fault sequence a seed promises: the same seed gives the
        # same faults whatever the traffic looks like (and the same failing jobs and durations
        # whatever the faults).
        seed = config.seed
        self.faults_rng = random.Random(seed)
        self.ids_rng = random.Random(None if seed is None else seed + 1)
        self.outcomes_rng = random.Random(None if seed is None else seed + 2)
        self.durations_rng = random.Random(None if seed is None else seed + 3)
        self.webhooks_rng = random.Random(None if seed is None else seed + 4)
        self.minted_tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.admitted: collections.deque[float] = collections.deque()
        self.lockout_until = 0.0
        self.consumed = 0
        #: Called with (job, its ids) when a job is accepted (the server stores its results).
        self.accept_listeners: list[Callable[[JobRecord, Sequence[str]], None]] = []

    def wall_time(self) -> float:
        """The server's wall clock: POSIX time shifted by ``clock_skew``."""
        return time.time() + self.config.clock_skew

    # -- auth ---------------------------------------------------------------------------------

    def token_valid(self, token: str | None, now: float) -> bool:
        if not token:
            return False
        if token in self.config.access_tokens:
            return True
        expiry = self.minted_tokens.get(token)
        return expiry is not None and now < expiry

    def mint_token(self, token: str, now: float) -> None:
        self.minted_tokens[token] = now + self.config.token_lifetime

    # -- throttle -----------------------------------------------------------------------------

    def throttle(self, now: float) -> ThrottleVerdict:
        """Admit or refuse one request: a sliding window shared by every token of the account."""
        limit = self.config.throttle_requests
        if limit is None:
            return ThrottleVerdict(True)
        window = self.config.throttle_window
        if self.config.lockout and now < self.lockout_until:
            # The lockout is not extended by requests made during it: API_NOTES only says the
            # token is denied "until a full window has passed", so the sandbox takes the mild
            # reading and a client that keeps knocking is not punished further.
            return ThrottleVerdict(False, self.lockout_until - now)
        # Forget admissions that have left the half-open window (now - window, now].
        while self.admitted and self.admitted[0] <= now - window:
            self.admitted.popleft()
        if len(self.admitted) >= limit:
            if self.config.lockout:
                # A lockout may outlast the window (lockout_seconds): a client that trusts the
                # window rather than Retry-After knocks again too early and gets another 429.
                lasts = self.config.lockout_seconds
                lasts = window if lasts is None else lasts
                self.lockout_until = now + lasts
                self.ledger.lockouts += 1
                return ThrottleVerdict(False, lasts)
            return ThrottleVerdict(False, self.admitted[0] + window - now)
        self.admitted.append(now)
        return ThrottleVerdict(True)

    # -- jobs ---------------------------------------------------------------------------------

    def running_jobs(self, now: float) -> int:
        return sum(1 for j in self.ledger.jobs.values() if j.status(now) in (ACCEPTED, PROCESSING))

    def new_job_id(self) -> str:
        while True:
            job_id = "".join(self.ids_rng.choices(_JOB_ID_ALPHABET, k=_JOB_ID_LENGTH))
            if job_id not in self.ledger.jobs:
                return job_id

    def submit(
        self,
        kind: str,
        body: bytes,
        *,
        retrieve_company_details: bool,
        webhook: str | None,
        now: float,
    ) -> JobRecord:
        """Validate and accept one job, or raise :class:`SandboxRefusal` with nothing changed."""
        config = self.config
        ids = self._parse_ids(body)
        webhook = webhook or None  # an empty parameter is no webhook
        if webhook is not None and webhook_reach(webhook) is None:
            self.ledger.rejected["webhook"] += 1
            raise SandboxRefusal(400, VALIDATION, "webhook must be a loopback URL in the sandbox")
        limit = config.running_job_limit
        if limit is not None and self.running_jobs(now) >= limit:
            self.ledger.rejected["queue_full"] += 1
            raise SandboxRefusal(400, QUEUE_FULL, config.queue_full_text.format(limit=limit))
        if config.quota is not None and len(ids) > config.quota:
            self.ledger.rejected["quota"] += 1
            raise SandboxRefusal(
                400,
                QUOTA,
                f"Insufficient transaction quota available: the job needs {len(ids)} credits, "
                f"{config.quota} remain.",
            )
        # The real API debits credits when processing starts; the sandbox debits at acceptance
        # so that a test can read the quota right after a submit without racing the lifecycle.
        self._debit(len(ids))
        # Drawn only when the rate is set, so that a config without failing jobs consumes
        # nothing from the generator; credits stay consumed when the job fails.
        fails = bool(config.job_fail_rate) and self.outcomes_rng.random() < config.job_fail_rate
        job = self._new_job(
            kind,
            ids,
            now=now,
            processing_after=config.processing_after,
            finished_after=self._duration(),
            fails=fails,
            retrieve_company_details=retrieve_company_details,
            webhook=webhook,
            id_list=tuple(ids) if config.track_ids else None,
        )
        self._place(job)
        self.ledger.record_job(job, ids, track_ids=config.track_ids)
        for listener in self.accept_listeners:
            listener(job, ids)
        return job

    def add_foreign_job(
        self,
        ids: Sequence[str],
        *,
        kind: str,
        finished_after: float | None,
        fail: bool,
        now: float,
    ) -> JobRecord:
        """A job "another client" submitted: see :meth:`bulkjob.Sandbox.add_foreign_job`."""
        config = self.config
        if kind not in JOB_KINDS.values():
            raise ValueError(f"kind: must be one of {', '.join(JOB_KINDS.values())}, got {kind!r}")
        if finished_after is not None and not 0.0 <= finished_after < math.inf:
            raise ValueError(
                f"finished_after: must be a number of seconds >= 0, got {finished_after}"
            )
        ids = list(ids)
        if not 0 < len(ids) <= config.max_ids_per_job:
            raise ValueError(f"ids: must hold 1 to {config.max_ids_per_job} ids, got {len(ids)}")
        # The same rules as a submit body: another client's ids went through the same server.
        pattern = re.compile(config.id_pattern or r"[^\s]+")
        bad = next((i for i in ids if not pattern.fullmatch(i)), None)
        if bad is not None:
            raise ValueError(f"ids: invalid id {bad!r}")
        if config.quota is not None and len(ids) > config.quota:
            raise ValueError(f"ids: the job needs {len(ids)} credits, {config.quota} remain")
        # Other clients draw on the same quota (API_NOTES: shared by all of an account's tokens).
        self._debit(len(ids))
        job = self._new_job(
            kind,
            ids,
            now=now,
            # With finished_after given, "finished after" means from now: processing at once.
            processing_after=config.processing_after if finished_after is None else 0.0,
            finished_after=self._duration() if finished_after is None else finished_after,
            fails=fail,
            foreign=True,
            id_list=tuple(ids),
        )
        self._place(job)
        self.ledger.record_foreign_job(job)
        return job

    # -- the processing queue (queue_in_order) ----------------------------------------------------
    #
    # Status is computed from timestamps, never from a clock ticking inside the server, so a
    # queued job's start is computed when it joins the queue: every job ahead of it already has
    # its start and end, and nothing but a cancel changes them (a job cannot be cancelled once
    # it processes, and durations are drawn at acceptance). The queue is first in, first out:
    # a job never starts before one accepted earlier. With every job ahead starting no later
    # than it, "how many process at t" is "how many ahead end after t", which only falls as t
    # grows: the earliest free slot is the limit-th latest end among the jobs ahead.

    def _place(self, job: JobRecord) -> None:
        """Fix a new job's start in the queue (queue_in_order only; nothing otherwise)."""
        if not self.config.queue_in_order:
            return
        ahead = [j for j in self.ledger.jobs.values() if not j.cancelled]
        job.start_at = self._slot_start(job.created_monotonic + job.processing_after, ahead)

    def _requeue(self, now: float) -> list[JobRecord]:
        """Place again every queued job not started by ``now``; return those that moved.

        Called after a cancel: the cancelled job's place goes to the jobs behind it. They are
        placed again in acceptance order, each behind the jobs already placed, none before now.
        """
        waiting = [
            j
            for j in self.ledger.jobs.values()
            if j.start_at is not None and not j.cancelled and j.start_at > now
        ]
        if not waiting:
            return []
        ids = {j.job_id for j in waiting}
        placed = [j for j in self.ledger.jobs.values() if not j.cancelled and j.job_id not in ids]
        moved = []
        for job in waiting:
            ready = max(now, job.created_monotonic + job.processing_after)
            start = self._slot_start(ready, placed)
            if start != job.start_at:
                job.start_at = start
                moved.append(job)
            placed.append(job)
        return moved

    def _slot_start(self, ready: float, ahead: Sequence[JobRecord]) -> float:
        """The earliest time from ``ready`` on that no job ahead starts later than and that
        fewer than ``running_job_limit`` of them process at."""
        start = ready
        ends = []
        for other in ahead:
            other_start, other_end = other.processing_start, other.processing_end
            if other_start is None or other_end is None:
                continue
            start = max(start, other_start)
            ends.append(other_end)
        limit = self.config.running_job_limit
        if limit is not None and len(ends) >= limit:
            start = max(start, heapq.nlargest(limit, ends)[-1])
        return start

    def _duration(self) -> float:
        """A new job's processing time: ``finished_after``, spread by ``finished_jitter``."""
        base, jitter = self.config.finished_after, self.config.finished_jitter
        if not (base and jitter):
            return base
        # Uniform around the mean, so that jitter changes how jobs interleave but not how
        # long a batch of them takes on average.
        return base * self.durations_rng.uniform(1.0 - jitter, 1.0 + jitter)

    def _debit(self, n: int) -> None:
        if self.config.quota is not None:
            self.config.quota -= n
        self.consumed += n

    def _new_job(
        self,
        kind: str,
        ids: Sequence[str],
        *,
        now: float,
        processing_after: float,
        finished_after: float,
        fails: bool,
        id_list: tuple[str, ...] | None,
        retrieve_company_details: bool = False,
        webhook: str | None = None,
        foreign: bool = False,
    ) -> JobRecord:
        config = self.config
        return JobRecord(
            job_id=self.new_job_id(),
            kind=kind,
            ids=len(ids),
            # The server's clock at acceptance: changing clock_skew later moves the clock,
            # not the history of jobs already listed.
            created=self.wall_time(),
            created_monotonic=now,
            credits=len(ids),
            no_match_rate=config.no_match_rate,
            id_column=config.results_id_column,
            processing_after=processing_after,
            finished_after=finished_after,
            fails=fails,
            retrieve_company_details=retrieve_company_details,
            webhook=webhook,
            foreign=foreign,
            id_list=id_list,
        )

    def _parse_ids(self, body: bytes) -> list[str]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.invalid(f"The request body is not UTF-8 text: {exc.reason}.") from None
        pattern_text = self.config.id_pattern
        if pattern_text is not None:
            # Fast path, one C-level match for the whole body: every line a clean valid id.
            whole = _whole_body_pattern(pattern_text).fullmatch(text)
            if whole is not None:
                ids = text.split("\n")
                if ids and ids[-1] == "":
                    ids.pop()
                if 0 < len(ids) <= self.config.max_ids_per_job:
                    return ids
        # Split on "\n" only (str.splitlines would also split on form feeds and U+2028, which
        # could turn one bad id into two); a trailing "\r" is the other half of a CRLF.
        numbered = [(n, line.strip()) for n, line in enumerate(text.split("\n"), start=1)]
        numbered = [(n, line) for n, line in numbered if line]
        if not numbered:
            raise self.invalid("The request body contains no ids.")
        if len(numbered) > self.config.max_ids_per_job:
            raise self.invalid(
                f"The request contains {len(numbered)} ids; "
                f"at most {self.config.max_ids_per_job} are allowed."
            )
        if self.config.id_pattern is not None:
            pattern = re.compile(self.config.id_pattern)
            for n, line in numbered:
                if not pattern.fullmatch(line):
                    shown = line if len(line) <= 80 else line[:77] + "..."
                    raise self.invalid(f"Invalid id on line {n}: {shown!r}.")
        return [line for _, line in numbered]

    def invalid(self, message: str) -> SandboxRefusal:
        self.ledger.rejected["validation"] += 1
        return SandboxRefusal(400, VALIDATION, message)

    def job(self, kind: str, job_id: str) -> JobRecord:
        """The job of that kind and id, or a 404 refusal (jobs are not visible across kinds)."""
        job = self.ledger.jobs.get(job_id)
        if job is None or job.kind != kind:
            raise SandboxRefusal(404, "404-101", "Invalid ID, record not found")
        return job

    def cancel(self, job: JobRecord, now: float) -> list[JobRecord]:
        """Abort a job still queued and give its credits back; refuse once it has started.

        Returns the queued jobs whose start moved earlier into the place it freed.
        """
        status = job.status(now)
        if status != ACCEPTED:
            self.ledger.rejected["not_cancellable"] += 1
            raise SandboxRefusal(
                400, NOT_CANCELLABLE, f"Job cannot be cancelled: its status is {status}."
            )
        job.cancelled = True
        if self.config.quota is not None:
            self.config.quota += job.credits
        self.consumed -= job.credits
        job.credits = 0
        return self._requeue(now)

    def add_quota(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"n: must be >= 0, got {n}")
        # An unlimited quota stays unlimited: adding to "no limit" cannot create one.
        if self.config.quota is not None:
            self.config.quota += n

    def usage(self) -> tuple[int, int]:
        """(allocated, consumed) credits. Allocated = what remains + what was consumed, which
        equals the initial quota plus every add_quota, and stays right if a test sets the quota."""
        if self.config.quota is None:
            return UNLIMITED_CREDITS, self.consumed
        return self.config.quota + self.consumed, self.consumed


def webhook_reach(url: str) -> str | None:
    """Whether the sandbox may call ``url``: "loopback", "reserved", or None (refused).

    The sandbox calls webhooks on this machine only, so that no test reaches outside. Hosts
    under the names reserved for examples and tests (RFC 2606: ``.example``, ``.test``,
    ``.invalid``, ``example.com``...) are accepted too but never called: no such name
    resolves, so their calls count as failed, as a real server's would.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- read for its ValueError on a port that is not a number
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        return None
    if host in _LOOPBACK_HOSTS:
        return "loopback"
    if host.endswith(_RESERVED_SUFFIXES) or host in _RESERVED_DOMAINS:
        return "reserved"
    return None


@functools.lru_cache(maxsize=8)
def _whole_body_pattern(id_pattern: str) -> re.Pattern[str]:
    """Matches a body made only of valid ids, one per line, nothing else."""
    return re.compile(f"(?:(?:{id_pattern})\n)*(?:{id_pattern})?")
