"""One writer per journal: an exclusive, non-blocking lock on a file beside it.

``JOURNAL.lock`` is locked with ``flock`` (``msvcrt.locking`` on Windows) for the whole
of a command that may change the journal or send for it. The kernel drops the lock when
its process dies, ``kill -9`` included, so a lock left by a dead process is simply free:
there is no pid to check and no stale file to judge. The holder writes its pid, host,
command and start time into the file, for the one-line error a second process gets.

Removing the file on release races with a process that opened it just before: that one
would lock an unlinked inode while a third creates a fresh file. So after locking, the
holder checks that the path still names the inode it locked, and starts over if not.
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
    """Where the lock of ``journal`` lives."""
    path = Path(journal)
    return path.with_name(path.name + ".lock")


class JournalLock:
    """An exclusive lock on one journal, held until :meth:`release`."""

    __slots__ = ("_fd", "command", "path")

    def __init__(self, journal: str | os.PathLike[str], command: str = "bulkjob") -> None:
        self.path = lock_path(journal)
        self.command = command
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"<JournalLock {self.path} {'held' if self.held else 'free'}>"

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    @classmethod
    def acquire(cls, journal: str | os.PathLike[str], command: str = "bulkjob") -> JournalLock:
        """Take the lock of ``journal`` or raise :class:`JournalLockedError` at once."""
        lock = cls(journal, command)
        lock.take()
        return lock

    def take(self) -> None:
        """Lock now, or raise JournalLockedError naming the holder (nothing is changed)."""
        if self._fd is not None:
            return
        journal = str(self.path)[: -len(".lock")]
        for _ in range(100):  # only a release racing with us makes this loop
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise JournalError(
                    journal, f"cannot create its lock file: {exc.strerror}"
                ) from None
            if not _try_lock(fd):
                holder = _describe(fd)
                os.close(fd)
                raise JournalLockedError(journal, holder)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)  # the file was removed by the previous holder: try its successor
                continue
            self._fd = fd
            self._write_holder()
            return
        raise JournalError(journal, "its lock file keeps changing under us")

    def release(self) -> None:
        """Unlock and remove the lock file; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # In a read-only directory the file stays, unlocked, and that is harmless.
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
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
        assert self._fd is not None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        data = json.dumps(info).encode()
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, data)
        except OSError:
            pass  # a full disk: the lock still holds, only the holder's name is missing


def _describe(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096) or b"{}")
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
