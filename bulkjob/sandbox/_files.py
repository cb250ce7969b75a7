"""The sandbox's stored results files: rendered once, in a worker thread, when a job is accepted.

A real server serves a job's results as a stored file; it does not compute them while the
client waits. Rendering a 10,000-row file takes the sandbox tens of milliseconds, and done
in the results request it sat in the client's critical path (the client waits, then parses,
then waits again). So each job's file is rendered right after acceptance, in a thread (in a
separate sandbox process, alongside the client's own work), to a temporary directory, and a
results request reads the stored bytes.

Bounded: only the last :data:`KEEP_FILES` accepted jobs keep their file (on disk, not in
memory); an older job's results are rendered again on request, as before. A job whose
results' inputs changed after acceptance (a test setting ``fails`` on a ledger record) is
rendered again too: the stored file is used only while it is still the job's.

When the sandbox does not track ids (benchmarks), a job's file holds placeholder ids and is
a function of its key alone (kind, count, fate, layout): jobs with the same key share one
file, rendered once, as a server would serve one stored file for identical results.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._ledger import JobRecord

__all__ = ["KEEP_FILES", "ResultsFiles"]

#: Accepted jobs whose results file stays stored (on disk): a client downloads a job soon
#: after it finishes, so the last few hundred cover any run; older ones are rendered again.
KEEP_FILES = 256

_Key = tuple[str, int, bool, bool, float, str | None]


def _key(job: JobRecord) -> _Key:
    """What a job's results depend on besides its ids: a stored file is used only while
    this is unchanged."""
    return (
        job.kind,
        job.ids,
        job.fails,
        job.retrieve_company_details,
        job.no_match_rate,
        job.id_column,
    )


@dataclass(slots=True)
class _Stored:
    key: _Key
    rendering: asyncio.Future[Path]
    shared: bool = False  # an untracked job's file, shared with the jobs of its key


class ResultsFiles:
    """Results files rendered at acceptance, kept for the last :data:`KEEP_FILES` jobs."""

    def __init__(self, keep: int = KEEP_FILES) -> None:
        self._keep = keep
        # Where to store is settled when the sandbox is made, not at its first job.
        self._parent = tempfile.gettempdir()
        self._dir: Path | None = None
        self._stored: collections.OrderedDict[str, _Stored] = collections.OrderedDict()
        #: Files of untracked jobs, by key (shared; at most ``keep`` of them too).
        self._shared: collections.OrderedDict[_Key, asyncio.Future[Path]] = (
            collections.OrderedDict()
        )

    def __repr__(self) -> str:
        return f"<ResultsFiles stored={len(self._stored)} keep={self._keep}>"

    def accepted(self, job: JobRecord, ids: Sequence[str]) -> None:
        """Start rendering ``job``'s results file (called on the server's loop). The job
        renders it (:meth:`JobRecord.results_csv`): the same file as rendered on request,
        placeholder ids included when the sandbox does not track ids."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no server loop: rendered on request, as before
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="bulkjob-sandbox-results-", dir=self._parent))
        key = _key(job)
        if job.id_list is None:  # placeholder ids: the same key, the same file
            rendering = self._shared.get(key)
            if rendering is None:
                path = self._dir / f"shared-{len(self._shared)}-{job.job_id}.csv"
                rendering = loop.run_in_executor(None, _render, job, path)
                self._shared[key] = rendering
                _bound(self._shared, self._keep)
            self._stored[job.job_id] = _Stored(key, rendering, shared=True)
        else:
            path = self._dir / f"{job.job_id}.csv"
            rendering = loop.run_in_executor(None, _render, job, path)
            self._stored[job.job_id] = _Stored(key, rendering)
        while len(self._stored) > self._keep:
            _, old = self._stored.popitem(last=False)
            if not old.shared:
                old.rendering.add_done_callback(_remove)

    async def read(self, job: JobRecord) -> bytes | None:
        """``job``'s stored results file, or None when it has none (any more)."""
        stored = self._stored.get(job.job_id)
        if stored is None or stored.key != _key(job):
            return None
        try:
            path = await asyncio.shield(stored.rendering)
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:  # dropped (and removed) while we waited
            return None

    async def close(self) -> None:
        """Wait for renderings in progress, then remove every stored file."""
        pending = [s.rendering for s in self._stored.values()]
        self._stored.clear()
        self._shared.clear()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._dir, True)
            self._dir = None


def _render(job: JobRecord, path: Path) -> Path:
    path.write_text(job.results_csv(), encoding="utf-8", newline="")
    return path


def _bound(shared: collections.OrderedDict[_Key, asyncio.Future[Path]], keep: int) -> None:
    while len(shared) > keep:
        _, old = shared.popitem(last=False)
        old.add_done_callback(_remove)


def _remove(rendering: asyncio.Future[Path]) -> None:
    if rendering.cancelled() or rendering.exception() is not None:
        return
    with contextlib.suppress(OSError):
        rendering.result().unlink()
