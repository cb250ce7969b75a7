"""One writer per journal: an exclusive, non-blocking lock on the journal file itself.

The journal file is locked with ``flock`` (``msvcrt.locking`` on Windows) for the whole
of a command that may change it or send for it. Locking the file, not a name beside it,
means a symlink or a hard link to the same journal meets the same lock. The kernel
drops the lock when its process dies, ``kill -9`` included, so a lock left by a dead
process is simply free: there is no pid to check and no stale file to judge.

``flock`` and SQLite's own POSIX locks do not interact. The descriptor that holds the
lock is closed only after SQLite's connection is: closing any descriptor of a file drops
the process's POSIX locks on it, SQLite's included.

Beside the journal, ``JOURNAL.lock`` (named after the journal's real path) says who holds
it: pid, host, command and start time, for the one-line error a second process gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from ._errors import JournalError, JournalLockedError

__all__ = ["JournalLock", "lock_path"]


def lock_path(journal: str | os.PathLike[str]) -> Path:
    """Where the holder of ``journal`` is named: beside its real path."""
    real = Path(os.path.realpath(journal))
    return real.with_name(real.name + ".lock")


class JournalLock:
    """An exclusive lock on one journal, held until :meth:`release`."""

    __slots__ = ("_created", "_fd", "command", "journal", "path")

    def __init__(self, journal: str | os.PathLike[str], command: str = "bulkjob") -> None:
        self.journal = Path(journal)
        self.path = lock_path(journal)
        self.command = command
        self._fd: int | None = None
        self._created = False

    def __repr__(self) -> str:
        return f"<JournalLock {self.journal} {'held' if self.held else 'free'}>"

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    @classmethod
    def acquire(cls, journal: str | os.PathLike[str], command: str = "bulkjob") -> JournalLock:
        """Take the lock of ``journal`` or raise :class:`JournalLockedError` at once.

        A journal that does not exist yet is created empty, to hold the lock; it is
        removed again on release if nothing was ever written to it.
        """
        lock = cls(journal, command)
        lock.take()
        return lock

    def take(self) -> None:
        """Lock now, or raise JournalLockedError naming the holder (nothing is changed)."""
        if self._fd is not None:
            return
        name = str(self.journal)
        for _ in range(100):  # only a journal replaced under us makes this loop
            fd, created = self._open(name)
            if not _try_lock(fd):
                os.close(fd)
                raise JournalLockedError(name, _describe(self.path))
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.journal))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)  # removed or replaced since we opened it: lock its successor
                continue
            self._fd, self._created = fd, created
            self._write_holder()
            return
        raise JournalError(name, "the file keeps changing under us")

    def _open(self, name: str) -> tuple[int, bool]:
        """A descriptor of the journal (created empty if missing: a symlink's target, when
        it dangles), and whether this call created it."""
        real = Path(os.path.realpath(self.journal))
        for _ in range(10):
            try:
                return os.open(real, os.O_RDONLY), False  # flock needs no write access
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise JournalError(name, f"cannot open to lock: {exc.strerror}") from None
            try:
                real.parent.mkdir(parents=True, exist_ok=True)
                return os.open(real, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                continue  # created by someone else a moment ago: open theirs
            except OSError as exc:
                raise JournalError(name, f"cannot create: {exc.strerror}") from None
        raise JournalError(name, "cannot open to lock: the file keeps appearing and vanishing")

    def release(self) -> None:
        """Unlock (and tidy up); safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # In a read-only directory these stay; that is harmless.
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            if self._created and os.fstat(fd).st_size == 0:
                # Ours, and never written: as if never claimed (the target, not a symlink).
                Path(os.path.realpath(self.journal)).unlink()
        os.close(fd)  # closing drops the lock

    def __enter__(self) -> JournalLock:
        self.take()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _write_holder(self) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # A full disk: the lock still holds, only the holder's name is missing.
        with contextlib.suppress(OSError):
            self.path.write_text(json.dumps(info), encoding="utf-8")


def _describe(info_file: Path) -> str:
    try:
        info = json.loads(info_file.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return (
        f"pid {info.get('pid')} on host {info.get('host', '?')} "
        f"({info.get('command', 'bulkjob')}, since {info.get('since', '?')})"
    )


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
