"""How a run of ``ids=`` meets its journal: its spool adopted, or proven the same stream.

A new run moves its spool to ``<journal>.ids.gz`` (:func:`~bulkjob._ids.spool_path`)
before the journal records the run, so the journal never names a spool that is not
fully on disk. The same submit called again with the same journal (a scheduler's retry)
spools the caller's ids once more and compares digests: the same stream resumes, from
the journal's own spool; another one is refused as another run's journal. ``resume``
finds the spool through the journal and never needs the caller's iterator.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ._errors import ConfigError, InputError, JournalError
from ._ids import IdSpool, spool_path
from ._journal import Journal
from ._journal_schema import read_only

__all__ = ["check_given", "recorded_spool", "settle", "spool_place"]

_TEMP_PREFIX = "bulkjob-ids-"


def check_given(inputs: object, ids: object) -> None:
    """One of input paths and ``ids=``, never both, never neither (a ConfigError)."""
    if isinstance(inputs, str):
        raise ConfigError("inputs: expected a list of paths, not one string")
    given = bool(inputs)
    if given and ids is not None:
        raise ConfigError("ids: give input paths or ids=, not both")
    if not given and ids is None:
        raise ConfigError("inputs: give input paths ('-' for standard input) or ids=")


def spool_place(journal: str | os.PathLike[str] | Journal | None) -> tuple[Path | None, str]:
    """(directory, name prefix) of a new temporary spool: beside the journal, so that
    adopting it is a rename within one file system; else the system's temp directory."""
    if journal is None:
        return None, _TEMP_PREFIX
    path = journal.path if isinstance(journal, Journal) else Path(journal)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent, f"{path.name}.ids-"


def recorded_spool(journal: str | os.PathLike[str] | Journal | None, resume: bool) -> str | None:
    """The spool a resumed journal recorded, when its run was one of ``ids=``."""
    if isinstance(journal, Journal):
        record = journal.ids_record() if journal.started else None
    elif resume and journal is not None and Path(journal).is_file():
        record = None
        with contextlib.suppress(JournalError, IndexError, ValueError):
            rows = read_only(Path(journal), "SELECT value FROM run WHERE key = 'ids'")[0]
            record = json.loads(str(rows[0][0]))
    else:
        return None
    if not isinstance(record, dict):
        return None
    path = str(record.get("path"))
    if not os.path.isfile(path):
        raise InputError(
            path, 0, "the journal's copy of the run's ids is gone: the run cannot be resumed"
        )
    return path


def settle(journal: Journal, spool: IdSpool, resuming: bool) -> Path:
    """Put a run's spool in place for ``journal``; return the path the run reads.

    A new run adopts it. A resume proves it the stream recorded (same digest) and reads
    the journal's copy; this one is deleted. Raises InputError, before anything is sent,
    for a journal of other ids.
    """
    if not resuming:
        final = spool_path(journal.path)
        spool.adopt(final)
        return final
    record = journal.ids_record()
    where = str(journal.path)
    if record is None:
        raise InputError(
            where, 0, "a journal of a run of files is here, not of ids=: choose another journal"
        )
    if record.get("digest") != spool.digest:
        raise InputError(
            where,
            0,
            f"a journal of another run is here: its ids differ from these "
            f"({record.get('items')} items recorded, {spool.items} given): "
            "choose another journal",
        )
    spool.discard()
    return Path(str(record["path"]))
