"""One owner of a chunk's fate: write-ahead, send, verdict, proof, and resend or settle.

Everything that keeps an id from being lost or paid twice happens in this module, in
this order::

    take(chunk)   the journal says accepted / rejected earlier  -> the report, as it was
                  sending / unknown / ambiguous (a lost answer) -> park it
                  anything else                                 -> send it
    send          in a limiter slot: stop requested? -> journal 'sending' (durable) -> POST
                  classify_submit(answer):
                    accepted          -> journal 'accepted'                  -> report
                    429 / 401         -> pause or new token, same request again
                    not sent          -> backoff, again (bounded in attempts and time)
                    quota, queue full -> journal 'pending', stop the run (or wait for room)
                    rejected          -> journal 'rejected'                  -> report
                    unknown           -> journal 'unknown' with its id set   -> park it
    park          the run carries on; a proof settles the chunk later:
    prove         list the account's jobs created around the send (server clock);
                  read each candidate's results, the most likely first:
                    exactly the chunk's ids       -> journal 'accepted' + evidence
                    every candidate holds others  -> journal 'pending' + evidence -> send
                      (believed only once ``reconcile_grace`` has passed since the send)
                    only unreadable ones left     -> journal 'ambiguous' (exit 8)
                    some still running            -> look again later

Counts and creation times only *order* the candidates; what decides is content (see
:mod:`bulkjob._evidence`). A chunk is never sent again while a job may hold it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Literal

from ._answers import (
    Accepted,
    Refused,
    Retry,
    Throttled,
    TokenRefused,
    Unknown,
    classify_submit,
)
from ._chunker import Chunk
from ._client import ApiClient, Tries
from ._errors import (
    AuthError,
    BulkJobError,
    JobRejectedError,
    JournalError,
    QueueFullError,
    RequestError,
    StopRequested,
    Transient,
    TransportError,
    UnreachableError,
)
from ._evidence import (
    FINAL_STATUSES,
    IdSet,
    JobReader,
    Proof,
    Proven,
    Unprovable,
    Waiting,
)
from ._jobqueue import JobQueue
from ._journal import UNSETTLED, ChunkRow, ChunkState, Journal
from ._logging import get_logger, redact
from ._report import RunReport, StopSignal
from ._retry import retrying
from ._settings import Settings

__all__ = ["AmbiguousPolicy", "Submitter"]

log = get_logger()

#: What to do with a chunk whose proof is impossible: stop (exit 8), resend, give up.
AmbiguousPolicy = Literal["stop", "resubmit", "abandon"]


@dataclass(frozen=True, slots=True)
class Sent:
    """When a submit's last request left and ended, on our clock, and the server's clock
    difference known when it left (None before any answer)."""

    at: float
    lost_at: float
    offset: float | None


@dataclass(slots=True)
class _Parked:
    """A chunk whose submit has an unknown outcome."""

    seq: int
    ids: IdSet
    sent_at: float  # our clock: when its last request left (at the earliest)
    lost_at: float  # our clock: when its outcome became unknown (or a crash was found)
    offset: float | None  # the server's clock minus ours when it was sent, if known
    chunk: Chunk | None  # None when proven from the journal alone: it cannot be resent here
    reason: str
    looked: bool = False  # in a round yet


class Submitter:
    """Owns every chunk of one command from read to settled (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        client: ApiClient,
        journal: Journal | None,
        report: RunReport,
        stop: StopSignal,
        rows: Mapping[int, ChunkRow] | None = None,
        *,
        ambiguous: AmbiguousPolicy = "stop",
    ) -> None:
        self._settings = settings
        self._client = client
        self._journal = journal
        self._report = report
        self._stop = stop
        self._rows = dict(rows or {})
        self._policy = ambiguous
        #: The policy is for what the user was told about: chunks ambiguous at the start.
        self._told = {r.seq for r in self._rows.values() if r.state is ChunkState.AMBIGUOUS}
        #: Jobs known to hold one of this run's chunks: never a candidate for another.
        self._known = {r.job_id for r in self._rows.values() if r.job_id}
        #: This run's name in the account's registry of jobs.
        self.run_id = journal.run_id if journal is not None else uuid.uuid4().hex
        self._reader = JobReader(settings, client, self.run_id)
        #: The account's job queue: room for each send, the run's open jobs.
        self.queue = JobQueue(settings, client, journal, stop, run=self.run_id)
        for row in self._rows.values():  # jobs of earlier commands may still hold slots
            if row.job_id and row.job_status not in FINAL_STATUSES:
                self.queue.opened(row.job_id, row.seq)
        self._sends = asyncio.Semaphore(settings.concurrency)
        self._parked: dict[int, _Parked] = {}
        # Parked chunks keep their ids for a resend: this bounds that memory (~1 MB a chunk
        # of 10,000 ids) and holds new sends back while so many answers are unproven.
        self._max_parked = max(16, 4 * settings.concurrency)
        self._changed = asyncio.Event()  # a chunk parked or settled, or the run stopping
        stop.listeners.append(self._changed.set)
        self._new_park = asyncio.Event()  # wakes the prover early
        self._lost: dict[int, int] = {}  # chunk -> submits in a row without a usable answer
        self._prover: asyncio.Task[None] | None = None
        self._resends: set[asyncio.Task[None]] = set()
        self._to_send: dict[int, Chunk] = {}  # proven not accepted, being sent again
        #: Chunks proven not accepted that this command cannot send (no input here).
        self.to_resend: list[int] = []

    def __repr__(self) -> str:
        return f"<Submitter parked={len(self._parked)} resending={len(self._resends)}>"

    @property
    def awaiting_proof(self) -> int:
        """Chunks parked right now."""
        return len(self._parked)

    # -- taking chunks ----------------------------------------------------------------------

    async def take(self, chunk: Chunk) -> None:
        """Decide ``chunk``'s fate as far as can be now; parked chunks are settled later."""
        row = self._rows.pop(chunk.seq, None)
        state = row.state if row is not None else None
        if row is not None and state is ChunkState.ACCEPTED and row.job_id:
            self._report.add_accepted(chunk, row.job_id, earlier=True)
        elif row is not None and state in (ChunkState.REJECTED, ChunkState.ABANDONED):
            self._report.add_rejected(chunk, row.last_error or str(state))
        elif row is not None and state in UNSETTLED:
            if self._stop.is_set:
                ambiguous = state is ChunkState.AMBIGUOUS
                self._report.add_pending(chunk, awaiting_proof=True, ambiguous=ambiguous)
                return
            reason = row.last_error or f"left {state} by an earlier command"
            await self._park(chunk, row, reason)
        elif self._stop.is_set:
            self._report.add_pending(chunk)
        else:
            try:
                if self._journal is not None and row is None:
                    await self._record(self._journal.add(chunk))
                # Back-pressure: a full parking lot holds new sends (not resends) back.
                while len(self._parked) >= self._max_parked and not self._stop.is_set:
                    self._changed.clear()
                    await self._changed.wait()
            except asyncio.CancelledError:
                self._report.add_pending(chunk)
                raise
            await self._send(chunk)

    async def adopt_journal(self) -> None:
        """Park every unsettled chunk of the journal that can be proven without the input
        (``wait``): their id sets were journaled when they were parked."""
        assert self._journal is not None
        for row in self._journal.rows(*UNSETTLED):
            hashes = self._journal.id_hashes(row.seq)
            if row.id_set is None or hashes is None:
                self.to_resend.append(row.seq)  # left 'sending' by a crash: resume proves it
                continue
            ids = IdSet.stored(row.id_set, hashes)
            sent_at, lost_at = self._send_window(row)
            reason = row.last_error or "unknown outcome"
            if row.state is ChunkState.AMBIGUOUS:
                self._told.add(row.seq)
            self._parked[row.seq] = _Parked(
                row.seq, ids, sent_at, lost_at, row.server_offset, None, reason
            )
        self._wake_prover()

    async def finish(self, *, prove: bool = True) -> None:
        """Wait until every parked chunk is proven and resent (unless the run stops), then
        account for what is still parked as pending, awaiting proof."""
        try:
            while prove and not self._stop.is_set and (self._parked or self._to_send):
                if self._parked and (self._prover is None or self._prover.done()):
                    self._wake_prover()  # a prover that ended with chunks left is restarted
                self._changed.clear()
                signals = [
                    asyncio.ensure_future(self._changed.wait()),
                    asyncio.ensure_future(self._stop.event.wait()),
                ]
                prover = [self._prover] if self._prover is not None else []
                try:
                    await asyncio.wait(
                        [*signals, *self._resends, *prover], return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for signal in signals:
                        signal.cancel()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop proving and resending; what is parked counts as pending, awaiting proof."""
        tasks = [t for t in (self._prover, *self._resends) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.queue.close()
        q = self.queue
        self._report.running_job_limit, self._report.running_job_limit_source = q.limit, q.source
        self._report.queue_full_answers, self._report.status_polls = q.queue_full, q.polls
        for chunk in self._to_send.values():  # a resend cancelled before it began
            self._report.add_pending(chunk)
        self._to_send.clear()
        for parked in sorted(self._parked.values(), key=lambda p: p.seq):
            if parked.chunk is not None:
                self._report.add_pending(parked.chunk, awaiting_proof=True)
            else:
                self._report.awaiting_proof.append(parked.seq)
        self._parked.clear()

    # -- sending ----------------------------------------------------------------------------

    async def _send(self, chunk: Chunk) -> None:
        """Send ``chunk`` until it is accepted, refused or parked; every way out of here
        puts it in exactly one of the report's buckets, or in the parking lot."""
        waits = self._settings.on_queue_full == "wait"
        try:
            while True:
                async with self.queue.place() as place:
                    async with self._sends:
                        verdict, sent = await self.post(chunk)
                    if isinstance(verdict, Accepted):
                        place.job(verdict.job_id, chunk.seq)
                    elif isinstance(verdict, Unknown):
                        place.unproven(chunk.seq)
                    elif isinstance(verdict.error, QueueFullError) and waits:
                        self.queue.full(verdict.error, place)
                        continue  # a place is waited for again: the server said so
                break
        except asyncio.CancelledError:
            self._report.add_pending(chunk)  # the journal has it 'sending' if it may have left
            raise
        except StopRequested:
            self._report.add_pending(chunk)
            await self._settle(chunk.seq, ChunkState.PENDING, "stopped before sending")
            return
        except BulkJobError as exc:  # retries exhausted, credentials refused, journal failed
            self._report.add_pending(chunk)
            self._stop.request(exc.stop_reason, str(exc), error=exc)
            if exc.stop_reason != "journal":
                await self._settle(chunk.seq, ChunkState.PENDING, str(exc))
            return
        if isinstance(verdict, Accepted):
            self._lost.pop(chunk.seq, None)
            self._accepted(chunk.seq, verdict.job_id, chunk)
            if self._journal is not None:
                write = self._journal.accepted(chunk.seq, verdict.job_id, status=verdict.status)
                await self._record(write)
            await self._register(verdict.job_id, chunk)  # after the journal: it comes first
        elif isinstance(verdict, Unknown):
            log.warning("chunk.unknown_outcome", chunk=chunk.seq, reason=verdict.reason)
            await self._park(chunk, sent, verdict.reason)
        elif isinstance(verdict.error, JobRejectedError):
            reason = redact(verdict.error.server_message or str(verdict.error))
            err = verdict.error
            self._report.add_rejected(chunk, reason, err.status, err.error_number)
            await self._settle(chunk.seq, ChunkState.REJECTED, reason)
        else:  # quota, queue full, auth, protocol: nothing was created, and the run stops
            self._report.add_pending(chunk)
            self._stop.request(verdict.error.stop_reason, str(verdict.error))
            await self._settle(chunk.seq, ChunkState.PENDING, str(verdict.error))

    async def post(self, chunk: Chunk) -> tuple[Accepted | Refused | Unknown, Sent]:
        """Submit once as far as the outcome goes: a 429, a 401 or a connection that was
        never made prove nothing was created, and only those are sent again here."""
        s = self._settings
        params = {"retrieveCompanyDetails": "true"} if s.retrieve_company_details else {}
        if s.webhook:
            params["webhook"] = s.webhook
        body = chunk.take_body()
        try:
            async for attempt in retrying(s, self._client.on_retry):
                with attempt:
                    tries = Tries(chunk=chunk.seq)
                    while True:
                        token = await self._client.token()
                        async with self._client.limiter:
                            if self._stop.is_set:
                                raise StopRequested(f"chunk {chunk.seq}: the run is stopping")
                            if self._journal is not None:
                                await self._journal.sending(chunk)  # write-ahead, durable
                            offset, sent_at = self._client.server_offset, time.time()
                            answer = await self._client.exchange(
                                "POST", s.job_kind.path, token=token, params=params, body=body
                            )
                        sent = Sent(sent_at, time.time(), offset)
                        verdict = classify_submit(answer, self._client.rules, chunk.seq)
                        if not isinstance(verdict, Throttled | TokenRefused):
                            break
                        await self._client.recover(verdict, tries, token)
                    if isinstance(verdict, Retry):
                        raise Transient(verdict.reason, status=verdict.status)
                    self._client.succeeded()
                    return verdict, sent
        except Transient as exc:
            raise TransportError(
                f"gave up after {s.max_attempts} attempts: {exc.reason}",
                status=exc.status,
                chunk=chunk.seq,
            ) from None
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    def _accepted(self, seq: int, job_id: str, chunk: Chunk | None) -> None:
        self._known.add(job_id)  # before any await: a proof round may be reading candidates
        if chunk is not None:
            self._report.add_accepted(chunk, job_id)

    async def _register(self, job_id: str, chunk: Chunk | None) -> None:
        """Tell the account's other bulkjob processes: ``job_id`` holds a chunk of ours, so
        it is no candidate for their lost answers (they rule it out without downloading)."""
        try:
            digest = chunk.digest if chunk is not None else ""
            await self._client.limiter.store.register_job(job_id, digest, self.run_id)
        except Exception as exc:  # only a saving for others: never a failure of this chunk
            log.warning("job.register_failed", job_id=job_id, error=str(exc))

    async def _settle(
        self, seq: int, state: ChunkState, error: str | None, evidence: str | None = None
    ) -> None:
        if self._journal is not None:
            error = redact(error or "") or None
            await self._record(self._journal.settle(seq, state, error, evidence=evidence))

    async def _record(self, write: Awaitable[None]) -> bool:
        """Await a journal write; a failing journal stops the run (what it could not
        record stays as the journal last had it: resume proves what needs proof)."""
        try:
            await write
        except JournalError as exc:
            self._stop.request("journal", str(exc))
            return False
        return True

    # -- parking and proving ----------------------------------------------------------------

    async def _park(self, chunk: Chunk, sent: Sent | ChunkRow, reason: str) -> None:
        # Synchronous (~10 ms for 10,000 ids, and only for lost answers): the chunk is in
        # the parking lot before any await, so a cancellation cannot leave it nowhere.
        ids = IdSet.of(chunk.ids)
        if isinstance(sent, Sent):
            sent_at, lost_at, offset = sent.at, sent.lost_at, sent.offset
        else:  # a journal row: its send as journaled, or anywhere since the run began
            sent_at, lost_at = self._send_window(sent)
            offset = sent.server_offset
            if sent.state is ChunkState.AMBIGUOUS:
                self._told.add(sent.seq)
        reason = redact(reason)
        parked = _Parked(chunk.seq, ids, sent_at, lost_at, offset, chunk, reason)
        self._parked[chunk.seq] = parked
        self._lost[chunk.seq] = self._lost.get(chunk.seq, 0) + 1
        if self._journal is not None:
            write = self._journal.park(
                chunk.seq, ids.digest, ids.hashes, reason, lost_at=lost_at, server_offset=offset
            )
            await self._record(write)
        self._wake_prover()

    def _send_window(self, row: ChunkRow) -> tuple[float, float]:
        """(sent, lost) times of a journaled chunk. A row a crash left ``sending`` lost its
        answer when the crash was found: now. One without a send time may have been sent
        any time since the run began."""
        lost_at = row.lost_at if row.state is not ChunkState.SENDING and row.lost_at else None
        lost_at = lost_at or time.time()
        if row.sent_at is not None:
            return row.sent_at, lost_at
        assert self._journal is not None
        created = self._journal.meta("created")
        return (float(created) if isinstance(created, int | float) else 0.0), lost_at

    def _wake_prover(self) -> None:
        self._changed.set()
        self._new_park.set()
        if self._parked and (self._prover is None or self._prover.done()):
            self._prover = asyncio.create_task(self._prove_loop())

    async def _prove_loop(self) -> None:
        """Rounds of proof while chunks are parked: when a grace runs out, then backing off
        (x1.5 a round, up to 10x) while candidate jobs are still running. Rounds are at
        least half a ``proof_poll_interval`` apart, however many chunks park: each round
        looks at every parked chunk, so a burst of lost answers costs a few rounds, not
        one each."""
        s = self._settings
        delay = s.proof_poll_interval
        failures = 0
        while self._parked and not self._stop.is_set:
            last_round = time.monotonic()
            try:
                settled = await self._prove_round()
                failures = 0
            except AuthError as exc:
                self._stop.request("auth", str(exc))
                return
            except UnreachableError as exc:  # never answered: no round can do better
                self._stop.request(exc.stop_reason, str(exc), error=exc)
                return
            except RequestError as exc:  # the list or a result could not be read: later
                failures += 1
                log.warning("proof.failed", error=str(exc), in_a_row=failures)
                if failures >= s.max_attempts:
                    self._stop.request("transport", f"cannot prove lost answers: {exc}")
                    return
                settled = False
            except BulkJobError as exc:  # the journal
                self._stop.request(exc.stop_reason, str(exc))
                return
            except Exception as exc:  # a bug or an answer nobody foresaw: stop, never hang
                log.error("proof.crashed", error=f"{type(exc).__name__}: {exc}")
                self._stop.request("protocol", f"cannot prove lost answers: {exc!r}")
                return
            delay = (
                s.proof_poll_interval if settled else min(delay * 1.5, 10 * s.proof_poll_interval)
            )
            await self._until_next_round(last_round, delay)

    async def _until_next_round(self, last_round: float, delay: float) -> None:
        """Sleep until the next round is due: ``delay`` after the last one, or as soon as a
        parked chunk's grace runs out, but not before half a poll interval has passed. A
        chunk parking meanwhile only moves that moment earlier."""
        s = self._settings
        while not self._stop.is_set:
            wall, mono = time.time(), time.monotonic()
            # Due: the backed-off delay, a grace running out, or a chunk whose grace ran
            # out before any round looked at it.
            dues = [last_round + delay]
            for p in self._parked.values():
                left = p.lost_at + s.reconcile_grace - wall
                if left > 0 or not p.looked:
                    dues.append(mono + max(left, 0.0) + 0.01)
            due = min(dues)
            pause = max(due, last_round + s.proof_poll_interval / 2) - mono
            if pause <= 0:
                return
            self._new_park.clear()
            wakers = [
                asyncio.ensure_future(self._stop.event.wait()),
                asyncio.ensure_future(self._new_park.wait()),
            ]
            try:
                done, _ = await asyncio.wait(
                    wakers, timeout=pause, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waker in wakers:
                    waker.cancel()
            if not done:
                return  # the time came

    async def _prove_round(self) -> bool:
        """One look at the account for every parked chunk; True if any was settled."""
        s = self._settings
        parked = sorted(self._parked.values(), key=lambda p: p.sent_at)
        known_offset = self._client.server_offset
        look = await self._reader.look(*self._period(parked))
        if known_offset is None and self._client.server_offset is not None:
            look = await self._reader.look(*self._period(parked))  # now on the server's clock
        settled = False
        for p in parked:
            if p.seq not in self._parked or self._stop.is_set:
                continue
            p.looked = True
            since, until = self._period([p])
            ready_at = p.lost_at + s.reconcile_grace
            proof = await self._reader.prove(p.ids, since, until, ready_at, look, self._known)
            settled |= await self._apply(p, proof)
        return settled

    def _period(self, parked: list[_Parked]) -> tuple[float, float]:
        """When, on the server's clock, the jobs of these sends can have been created: from
        the earliest send (less ``reconcile_skew``) to the latest loss plus the grace (and
        ``reconcile_skew``). The server's clock may have stepped around a send: the period
        spans every clock difference seen from the send on, and the one in force then."""
        s = self._settings

        def offsets(p: _Parked) -> list[float]:
            # Sent before any answer told the server's clock: assume it was ours then.
            then = p.offset if p.offset is not None else 0.0
            return [then, *self._client.offsets_since(p.sent_at)]

        since = min(p.sent_at + min(offsets(p)) for p in parked) - s.reconcile_skew
        until = max(p.lost_at + max(offsets(p)) for p in parked) + s.reconcile_grace
        return since, until + s.reconcile_skew

    async def _apply(self, p: _Parked, proof: Proof) -> bool:
        """Act on a proof; True if the chunk left the parking lot."""
        if isinstance(proof, Waiting):
            return False
        del self._parked[p.seq]
        self._changed.set()
        self._report.proven_chunks.append(p.seq)
        log.info("chunk.proven", chunk=p.seq, outcome=type(proof).__name__, evidence=proof.evidence)
        if isinstance(proof, Proven):
            self._lost.pop(p.seq, None)
            self.queue.opened(proof.job_id, p.seq)
            self._accepted(p.seq, proof.job_id, p.chunk)
            if self._journal is not None:
                await self._record(
                    self._journal.accepted(p.seq, proof.job_id, evidence=proof.evidence)
                )
            await self._register(proof.job_id, p.chunk)  # after the journal
            return True
        self.queue.settled(p.seq)  # not a job of its own, or none will ever be known
        policy = self._policy if p.seq in self._told else "stop"
        self._told.discard(p.seq)  # the user's word covers one decision, not every resend
        if isinstance(proof, Unprovable) and policy != "resubmit":
            if policy == "abandon":
                if p.chunk is not None:
                    self._report.add_rejected(p.chunk, f"abandoned by request: {proof.evidence}")
                await self._settle(
                    p.seq, ChunkState.ABANDONED, "abandoned by request", proof.evidence
                )
            else:
                if p.chunk is not None:
                    self._report.add_pending(p.chunk, ambiguous=True)
                else:
                    self._report.ambiguous_chunks.append(p.seq)
                await self._settle(p.seq, ChunkState.AMBIGUOUS, p.reason, proof.evidence)
            return True
        # Not accepted (or resubmitted by request): it goes again, from 'pending'. Where it
        # goes is decided before the journal write: a chunk is never nowhere across an await.
        resend = False
        if p.chunk is None:
            self.to_resend.append(p.seq)
        elif (lost := self._lost.get(p.seq, 0)) >= self._settings.max_attempts:
            self._report.add_pending(p.chunk)
            self._stop.request(
                "transport", f"chunk {p.seq}: {lost} submits in a row got no usable answer"
            )
        else:
            self._to_send[p.seq] = p.chunk
            resend = True
        await self._settle(p.seq, ChunkState.PENDING, p.reason, proof.evidence)
        if resend and p.seq in self._to_send:
            task = asyncio.create_task(self._resend(p.seq))
            self._resends.add(task)
            task.add_done_callback(self._resends.discard)
            self._changed.set()
        return True

    async def _resend(self, seq: int) -> None:
        chunk = self._to_send[seq]
        try:
            await self._send(chunk)
        finally:
            self._to_send.pop(seq, None)
