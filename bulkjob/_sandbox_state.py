"""The sandbox server's state: its settings, its ledger, and the account it simulates.

Nothing here speaks HTTP. :mod:`bulkjob._sandbox` turns requests into calls on
:class:`AccountState` and turns :class:`SandboxRefusal` into error bodies. Keeping the rules
(throttle, quota, running-job limit, job lifecycle) apart from the transport lets them be read,
and reasoned about, in one place.

Where the real API's behaviour is not public (see ``API_NOTES.md``), the sandbox picks one
plausible rule and says so in a comment, so that the client is tested against *a* strict server
rather than against a guess dressed up as a fact.
"""

from __future__ import annotations

import collections
import csv
import functools
import hashlib
import io
import math
import random
import re
import string
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ._errors import ConfigError

__all__ = [
    "JOB_KINDS",
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

ACCEPTED = "accepted"
PROCESSING = "processing"
FINISHED = "finished"
ABORTED = "aborted"
STATUSES = (ACCEPTED, PROCESSING, FINISHED, ABORTED)

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

_JOB_ID_ALPHABET = string.ascii_lowercase + string.digits
_JOB_ID_LENGTH = 20
# The results file's columns are invented: the real layout is not public.
_CSV_HEADER = ("id", "status", "firstName", "lastName", "email", "companyName")
_FIRST_NAMES = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken")
_LAST_NAMES = ("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
_COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell")


@dataclass(kw_only=True)
class SandboxConfig:
    """How the sandbox behaves. Mutable on purpose: tests change it while the server runs."""

    access_tokens: tuple[str, ...] = ("sandbox-token",)
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    token_lifetime: float = 3600.0
    throttle_requests: int | None = None
    throttle_window: float = 300.0
    lockout: bool = True
    retry_after: bool = False
    quota: int | None = None
    running_job_limit: int | None = None
    processing_after: float = 0.0
    finished_after: float = 0.0
    max_ids_per_job: int = 10_000
    id_pattern: str | None = r"[A-Za-z0-9_-]{64}"
    fault_5xx_rate: float = 0.0
    latency: float = 0.0
    drop_rate: float = 0.0
    drop_after_accept_rate: float = 0.0
    seed: int | None = 0
    track_ids: bool = True

    def __post_init__(self) -> None:
        # Validated once at construction (later mutation is the caller's business): a bad value
        # here would otherwise surface as a confusing server-side exception mid-test.
        for name in ("fault_5xx_rate", "drop_rate", "drop_after_accept_rate"):
            _check(name, getattr(self, name), 0.0, 1.0)
        for name in ("token_lifetime", "latency", "processing_after", "finished_after"):
            _check(name, getattr(self, name), 0.0, math.inf)
        _check("throttle_window", self.throttle_window, 1e-6, math.inf)
        for name in ("throttle_requests", "running_job_limit"):
            value = getattr(self, name)
            if value is not None:
                _check(name, value, 1, math.inf)
        if self.quota is not None:
            _check("quota", self.quota, 0, math.inf)
        _check("max_ids_per_job", self.max_ids_per_job, 1, math.inf)
        if self.id_pattern is not None:
            try:
                re.compile(self.id_pattern)
            except re.error as exc:
                raise ConfigError(f"id_pattern: invalid regular expression: {exc}") from None


def _check(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be from {low:g} to {high:g}, got {value}")


@dataclass
class JobRecord:
    """One accepted job. Its status is computed from its timestamps whenever it is asked for."""

    job_id: str
    kind: str
    ids: int
    created: float
    created_monotonic: float
    credits: int
    cancelled: bool = False
    retrieve_company_details: bool = False
    webhook: str | None = None
    # Copied from the config at acceptance, so that changing the config later does not rewrite
    # the history of jobs already running.
    processing_after: float = 0.0
    finished_after: float = 0.0
    # The ids themselves, for the results file; None when the config does not track ids.
    id_list: tuple[str, ...] | None = field(default=None, repr=False)

    def status(self, now: float | None = None) -> str:
        """The job's status at monotonic time ``now`` (default: the current time)."""
        if self.cancelled:
            return ABORTED
        elapsed = (time.monotonic() if now is None else now) - self.created_monotonic
        if elapsed < self.processing_after:
            return ACCEPTED
        if elapsed < self.processing_after + self.finished_after:
            return PROCESSING
        return FINISHED

    def results_csv(self) -> str:
        """The results file: a header and one invented but deterministic row per id.

        The real column layout is not public. Each row is derived from a hash of its id, so the
        same id always gets the same person. When the sandbox does not track ids (benchmarks), it
        no longer knows them and writes placeholder ids ``untracked-0000001`` and so on instead.
        """
        ids = self.id_list
        if ids is None:
            ids = tuple(f"untracked-{n:07d}" for n in range(1, self.ids + 1))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_CSV_HEADER)
        for id_ in ids:
            digest = hashlib.sha256(id_.encode()).digest()
            first = _FIRST_NAMES[digest[0] % len(_FIRST_NAMES)]
            last = _LAST_NAMES[digest[1] % len(_LAST_NAMES)]
            company = _COMPANIES[digest[2] % len(_COMPANIES)]
            email = f"{first}.{last}@{company}.example".lower()
            writer.writerow((id_, "found", first, last, email, company))
        return out.getvalue()


class Ledger:
    """Everything the sandbox saw and did, for tests and benchmarks to assert on."""

    def __init__(self) -> None:
        self.requests = 0
        self.request_times: list[float] = []
        self.throttled = 0
        self.lockouts = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()
        self.jobs: dict[str, JobRecord] = {}
        self.accepted_ids: collections.Counter[str] = collections.Counter()
        self.ids_accepted = 0
        self.largest_job = 0

    def __repr__(self) -> str:
        return (
            f"<Ledger requests={self.requests} throttled={self.throttled} "
            f"lockouts={self.lockouts} jobs={len(self.jobs)} ids_accepted={self.ids_accepted} "
            f"duplicates={self.duplicates}>"
        )

    @property
    def duplicates(self) -> int:
        """Ids accepted more than once, counted once per extra acceptance (needs ``track_ids``)."""
        return sum(n - 1 for n in self.accepted_ids.values() if n > 1)

    def max_in_window(self, window: float) -> int:
        """The most request arrivals inside any half-open interval ``[t, t + window)``."""
        return max_in_window(self.request_times, window)

    def record_job(self, job: JobRecord, ids: Sequence[str], *, track_ids: bool) -> None:
        self.jobs[job.job_id] = job
        self.ids_accepted += len(ids)
        self.largest_job = max(self.largest_job, len(ids))
        if track_ids:
            self.accepted_ids.update(ids)


def max_in_window(times: Iterable[float], window: float) -> int:
    """Sliding-window maximum over sorted arrival times, with two pointers (O(n))."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        # Half-open: two arrivals exactly ``window`` apart never share a window, which is how
        # a server that forgets a request once it is ``window`` old would count them.
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


class SandboxRefusal(Exception):
    """A request the sandbox answers with an error body: status, errorNumber and message."""

    def __init__(self, status: int, error_number: str, message: str) -> None:
        self.status = status
        self.error_number = error_number
        self.message = message
        super().__init__(f"{status} {error_number}: {message}")


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
        # Two generators, so that minting job ids does not shift the fault sequence a seed
        # promises: the same seed gives the same faults whatever the traffic looks like.
        self.faults_rng = random.Random(config.seed)
        self.ids_rng = random.Random(None if config.seed is None else config.seed + 1)
        self.minted_tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.admitted: collections.deque[float] = collections.deque()
        self.lockout_until = 0.0
        self.consumed = 0

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
                self.lockout_until = now + window
                self.ledger.lockouts += 1
                return ThrottleVerdict(False, window)
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
        limit = config.running_job_limit
        if limit is not None and self.running_jobs(now) >= limit:
            self.ledger.rejected["queue_full"] += 1
            raise SandboxRefusal(
                400,
                QUEUE_FULL,
                f"{limit} jobs are already running. "
                "Please try again once the previous jobs are finished.",
            )
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
        if config.quota is not None:
            config.quota -= len(ids)
        self.consumed += len(ids)
        job = JobRecord(
            job_id=self.new_job_id(),
            kind=kind,
            ids=len(ids),
            created=time.time(),
            created_monotonic=now,
            credits=len(ids),
            retrieve_company_details=retrieve_company_details,
            webhook=webhook,
            processing_after=config.processing_after,
            finished_after=config.finished_after,
            id_list=tuple(ids) if config.track_ids else None,
        )
        self.ledger.record_job(job, ids, track_ids=config.track_ids)
        return job

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

    def cancel(self, job: JobRecord, now: float) -> None:
        """Abort a job still queued and give its credits back; refuse once it has started."""
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


@functools.lru_cache(maxsize=8)
def _whole_body_pattern(id_pattern: str) -> re.Pattern[str]:
    """Matches a body made only of valid ids, one per line, nothing else."""
    return re.compile(f"(?:(?:{id_pattern})\n)*(?:{id_pattern})?")
