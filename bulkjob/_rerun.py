"""The same submit again: an idempotent run that resumes its own journal.

A scheduler's retry (an Airflow task run twice, a cron job after a crash) calls the
same ``submit`` with the same ``journal``. When that journal already recorded chunks
and describes *this* run — the same input paths, of the recorded sizes, cut by the
same chunk-shaping settings — the submit becomes a resume of it; the resume then reads
the inputs again and proves every journaled chunk holds the same ids before anything
is sent, as ``bulkjob resume`` does. A journal of any other run is refused, saying how
it differs, and nothing is sent.

Standard input cannot be read twice or compared: a run over ``-`` is never reopened.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ._config import FIXED_ON_RESUME
from ._errors import InputError
from ._journal import Journal
from ._lock import JournalLock
from ._logging import get_logger
from ._settings import Settings

__all__ = ["claim_or_reopen", "open_for_dry_run", "open_for_submit"]

log = get_logger()


def open_for_submit(
    path: str | os.PathLike[str],
    command: str,
    settings: Settings,
    inputs: Sequence[str],
    *,
    resume_if_exists: bool,
) -> tuple[Journal, bool]:
    """The journal a submit records into, locked, and whether the submit is a resume.

    Without ``resume_if_exists`` a journal holding chunks is refused, as any other run's.
    """
    if resume_if_exists:
        return claim_or_reopen(path, command, settings, inputs)
    return Journal.claim(path, command), False


def open_for_dry_run(
    path: str | os.PathLike[str],
    command: str,
    settings: Settings,
    inputs: Sequence[str],
    *,
    resume_if_exists: bool,
) -> Journal | None:
    """The journal a submit's dry run forecasts from: the one the submit would resume
    (locked, as a resume's dry run holds it), or None when the submit would start anew.

    Refused exactly as :func:`open_for_submit` refuses the real submit, and nothing is
    created: a path without chunks is left as it is.
    """
    if not Journal.has_chunks(path):
        return None
    if not resume_if_exists:
        Journal.ensure_new(path)  # raises: the real submit's refusal
    journal, resuming = claim_or_reopen(path, command, settings, inputs)
    if not resuming:  # the chunks went in between the look and the lock: a new run after all
        journal.close_sync()
        return None
    return journal


def claim_or_reopen(
    path: str | os.PathLike[str], command: str, settings: Settings, inputs: Sequence[str]
) -> tuple[Journal, bool]:
    """Lock ``path``: a claimed journal for a new run, or this run's journal reopened.

    Returns the journal and whether it is a resume. Raises InputError, before anything
    is written, when ``path`` holds a journal of another run.
    """
    lock = JournalLock.acquire(path, command)
    try:
        # Decided under the lock: no one else can add chunks between the look and the use.
        if not Journal.has_chunks(path):
            return Journal(path, lock=lock), False
        journal = Journal.open(path, command, lock=lock)
    except BaseException:
        lock.release()
        raise
    try:
        _check_same_run(journal, settings, inputs)
        journal.check_identity()
    except BaseException:
        journal.close_sync()
        raise
    log.info("journal.reopened", journal=str(path), reason="same inputs and chunking")
    return journal, True


def _check_same_run(journal: Journal, settings: Settings, inputs: Sequence[str]) -> None:
    """Raise InputError unless ``journal`` recorded a run of ``inputs`` cut as ``settings`` cuts."""
    where = str(journal.path)
    if "-" in inputs:
        raise InputError(
            where,
            0,
            "a journal of a run is here and standard input cannot be proven to be its "
            f"input: resume it with `bulkjob resume {where}` or choose another --journal",
        )
    recorded = journal.inputs()
    now = [str(Path(p).resolve()) for p in inputs]
    if recorded != now:
        raise InputError(
            where,
            0,
            f"a journal of another run is here (its inputs: {', '.join(recorded)}): "
            "choose another --journal",
        )
    shown = settings.public()
    was = journal.recorded_settings()
    for name in FIXED_ON_RESUME:
        if name in was and was[name] != shown[name]:
            raise InputError(
                where,
                0,
                f"a journal of another run is here ({name} {was[name]!r}, this run "
                f"{shown[name]!r}): choose another --journal",
            )
