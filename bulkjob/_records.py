"""What the input source hands on: ids with their origin, and the counts of a pass."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "IDS",
    "IdRecord",
    "IdRun",
    "IdsName",
    "InputSummary",
    "InvalidSample",
    "Origin",
    "SourceStats",
]

#: (id, display path, 1-based line): plain tuples, because the hot path makes one per id.
IdRecord = tuple[str, str, int]


@dataclass(slots=True)
class IdRun:
    """Valid ids from consecutive lines of one input: ``ids[i]`` is on line ``line + i``.

    The usual block of the main pass, handed on whole so that the chunker cuts it by
    slicing, with no tuple per id. Whoever reads it sets ``taken``, how many of its ids
    it handed on: the source counts those as read (exactly, also when stopped mid-run).
    """

    ids: list[str]
    path: str
    line: int
    taken: int = 0


class IdsName(str):
    """The display name of ids given as a Python iterable (``ids=``).

    A class of its own, not just the text ``"ids"``: an input file may well be called
    ``ids``, and its lines must still read ``ids:7``. Only this object, which the source
    puts on every record of an iterable, makes an origin read ``ids[6]`` (0-based, as
    the caller indexes the iterable) instead of a 1-based line.
    """

    __slots__ = ()

    def origin_of(self, line: int) -> str:
        """How line ``line`` of the spool is named: the item's 0-based index."""
        return f"{self}[{line - 1}]"


IDS = IdsName("ids")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a value came from: the path as the user gave it and a 1-based line
    (for ``ids=``, :data:`IDS` and the item's index + 1)."""

    path: str
    line: int

    def __str__(self) -> str:
        if isinstance(self.path, IdsName):
            return self.path.origin_of(self.line)
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class InvalidSample:
    """One rejected value, kept so the report can show what was wrong and where."""

    origin: Origin
    value: str
    reason: str


@dataclass(slots=True)
class SourceStats:
    """Counts of the main pass; ``ids_read - ids_invalid - ids_duplicate`` ids were yielded."""

    ids_read: int = 0
    ids_invalid: int = 0
    ids_duplicate: int = 0
    blank: int = 0
    invalid_samples: list[InvalidSample] = field(default_factory=list)

    @property
    def ids_valid(self) -> int:
        """Ids yielded so far (up to one block behind while the pass is running)."""
        return self.ids_read - self.ids_invalid - self.ids_duplicate


@dataclass(frozen=True, slots=True)
class InputSummary:
    """Result of the pre-pass: enough to size progress bars and ETAs."""

    files: tuple[str, ...]
    lines: int
    bytes: int
