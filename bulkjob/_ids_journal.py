"""How a run of ``ids=`` meets its journal: its spool adopted, or proven the same stream.

A new run moves its spool to ``<journal>.ids.zst`` (:func:`~bulkjob._ids.spool_path`)
before the journal records the run, so the journal never names a spool that is not
fully on disk. The same submit called again with the same journal (a scheduler's retry)
spools the caller's ids once more and compares digests: the same stream resumes, from
the journal's own spool; another one is refused as another run's journal. ``resume``
finds the spool through the journal and never needs the caller's iterator.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
from hashlib import blake2b
from pathlib import Path

from ._errors import ConfigError, InputError, JournalError
from ._ids import IdSpool, spool_path
from ._journal import Journal
from ._journal_schema import read_only
from ._store_local import process_alive, process_start

__all__ = ["check_given", "recorded_spool", "settle", "spool_for", "spool_place"]

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
    adopting it is a rename within one file system; else the system's temp directory.

    The name says which process writes it (host, pid, start time). A run killed while
    it spooled leaves its file behind (10M ids: hundreds of MB); the next spool beside
    the same journal removes those of writers gone from this host. A live writer's, and
    another host's, stay: the journal is not locked yet while a spool is written."""
    pid = os.getpid()
    writer = f"{_host_tag()}-{pid}-{process_start(pid) or 0}-"
    if journal is None:
        return None, _TEMP_PREFIX + writer
    path = journal.path if isinstance(journal, Journal) else Path(journal)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_spools(path.parent, f"{path.name}.ids-")
    return path.parent, f"{path.name}.ids-{writer}"


def _host_tag() -> str:
    """This host in a file name: a short hash of its name (any characters, any length)."""
    return blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def _remove_dead_spools(directory: Path, prefix: str) -> None:
    """Temporary spools named ``prefix<host>-<pid>-<start>-….tmp`` whose writer, a process
    of this host, is gone."""
    host = _host_tag()
    for found in directory.glob(glob.escape(prefix) + "*.tmp"):
        tag, pid, started, *_ = [*found.name[len(prefix) :].split("-"), "", "", ""]
        if tag != host or not pid.isdigit():
            continue  # another host's, or a name from before writers were named
        if not process_alive(int(pid), "" if started == "0" else started):
            with contextlib.suppress(OSError):
                found.unlink()


def _ids_record(journal: str | os.PathLike[str] | Journal) -> dict[str, object] | None:
    """What ``journal`` recorded of its run's ids, when that was a run of ``ids=``."""
    if isinstance(journal, Journal):
        record = journal.ids_record() if journal.started else None
    elif Path(journal).is_file():
        record = None
        with contextlib.suppress(JournalError, IndexError, ValueError):
            rows = read_only(Path(journal), "SELECT value FROM run WHERE key = 'ids'")[0]
            record = json.loads(str(rows[0][0]))
    else:
        return None
    return record if isinstance(record, dict) else None


def spool_for(journal: str | os.PathLike[str] | Journal) -> Path:
    """Where the run of ``journal`` keeps its ids: the path it recorded (a journal written
    before spools were zstd names its ``.ids.gz``), else where a new run puts them."""
    record = _ids_record(journal)
    if record is not None and isinstance(record.get("path"), str):
        return Path(str(record["path"]))
    return spool_path(journal.path if isinstance(journal, Journal) else journal)


def recorded_spool(journal: str | os.PathLike[str] | Journal | None, resume: bool) -> str | None:
    """The spool a resumed journal recorded, when its run was one of ``ids=``."""
    if journal is None or not (resume or isinstance(journal, Journal)):
        return None
    record = _ids_record(journal)
    if record is None:
        return None
    path = str(record.get("path"))
    if not os.path.isfile(path):
        raise _gone(path)
    return path


def _gone(path: str) -> InputError:
    return InputError(
        path,
        0,
        "the journal's copy of the run's ids is gone (moved or deleted since the journal "
        "named it here): the run cannot be resumed",
    )


def settle(journal: Journal, spool: IdSpool, resuming: bool, final: Path) -> Path:
    """Put a run's spool in place for ``journal``; return the path the run reads.

    A new run adopts it as ``final`` (:func:`spool_for`: what the journal records as the
    run's input). A resume proves it the stream recorded (same digest) and reads the
    journal's copy; this one is deleted. Raises InputError, before anything is sent, for a
    journal of other ids, or one whose copy is gone.
    """
    if not resuming:
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
    recorded = str(record["path"])
    if not os.path.isfile(recorded):
        raise _gone(recorded)
    spool.discard()
    return Path(recorded)
