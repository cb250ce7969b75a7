"""The account's job queue as every bulkjob run of it sees it: its places, who waits, its limit.

The running-job limit belongs to the account, like the request throttle: three runs in
wait mode on one account, each keeping its own count, send into a queue that the others
have filled and meet a queue-full 400 at every try. So the queue's state sits in the same
:class:`~bulkjob._window_store.WindowStore` as the window, as one small *book* that every
store changes in one atomic step (:meth:`WindowStore.queue`):

- **places**: one per send in flight, lost answer not yet proven, or job queued or running,
  each with its run and its holder (host, pid, start time);
- **waiters**: the runs waiting for a place, each since when;
- **the limit**: the account's running-job limit as the runs learned it (a setting, a
  queue-full message, or the open jobs at a queue-full), shared so that one run's lesson
  spares the others their own 400s.

A place is granted only while the account's places are fewer than the limit, and then only
to the run that deserves it most: among the runs waiting, the one holding the fewest places,
and of those the one waiting longest. So no run starves, whoever polls fastest. A run that
stops asking for a while (:data:`WAITER_FRESH`) loses its turn, not its places.

A holder that is gone (its process dead on this host; its lease lapsed across hosts) or that
closed with jobs still open leaves *orphans*: places whose job still runs on the server but
that nobody polls. They keep counting against the limit (the server counts those jobs), and
every run waiting for a place polls them (:attr:`QueueView.orphans`) and frees one when its
job is final or cannot be read. A resumed run adopts the orphans of its own jobs.

This module is pure: it changes a book (plain data, JSON in the stores) and never waits.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "QUEUE_POLL",
    "WAITER_FRESH",
    "Book",
    "QueueView",
    "adopt",
    "free",
    "holding",
    "learned",
    "leave",
    "load",
    "new_book",
    "place_job",
    "refused",
    "take",
    "waiting",
]

#: Seconds between a waiting run's asks for a place: a place another run frees is seen
#: this late at most.
QUEUE_POLL = 0.1
#: A waiter not heard from for this long (seconds) no longer holds its turn: long enough
#: that a run on a busy host (it asks every QUEUE_POLL) keeps it; a place it deserves stays
#: free at most this long after it stopped asking without leaving (a dead one is reaped).
WAITER_FRESH = 3.0

#: The book: ``{"limit", "account_limit", "source", "next", "places", "waiters"}``.
Book = dict[str, Any]
#: Whether a holder (its key) is still there, given when it was last heard from.
Alive = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class QueueView:
    """What a run learns from the book at an ask for a place."""

    #: Whether the send may go; and its place (None while no limit is known: nothing to
    #: share, so the book does not grow with every job of a run that meets no limit).
    granted: bool
    place: str | None
    #: The account's limit as the runs know it (None: not known yet), and whence.
    limit: int | None
    account_limit: int | None
    source: str | None
    #: The account's places, this one included.
    taken: int
    #: (place, job) of jobs nobody polls: their holder is gone.
    orphans: tuple[tuple[str, str], ...] = ()
    #: Seconds the account's runs hold back after a queue-full (0: none).
    held_for: float = 0.0


def new_book() -> Book:
    return {
        "limit": None,
        "account_limit": None,
        "source": None,
        "next": 1,
        "places": {},
        "waiters": {},
    }


def _reap(book: Book, now: float, alive: Alive) -> None:
    """Places of holders that are gone become orphans (with a job) or go (without one);
    their waits, and waits not renewed lately, end."""
    places: dict[str, dict[str, Any]] = book["places"]
    gone = {p["holder"] for p in places.values() if p["holder"] and not alive(p["holder"])}
    for place_id, place in list(places.items()):
        if place["holder"] in gone:
            _orphan(places, place_id)
    waiters: dict[str, dict[str, Any]] = book["waiters"]
    for run, waiter in list(waiters.items()):
        if now - waiter["seen"] > WAITER_FRESH or not alive(waiter["holder"]):
            del waiters[run]


def waiting(book: Book, run: str, now: float) -> int:
    """How many other runs wait for a place right now (a run with open jobs and no send
    waiting polls them only while someone waits for their places)."""
    return sum(
        1
        for name, waiter in book["waiters"].items()
        if name != run and now - waiter["seen"] <= WAITER_FRESH
    )


def _orphan(places: dict[str, dict[str, Any]], place_id: str) -> None:
    if places[place_id]["job"]:
        places[place_id]["holder"] = ""
    else:  # a send whose holder is gone: its own run's resume settles what it became
        del places[place_id]


def _view(book: Book, cap: int | None) -> QueueView:
    """The book as a run with ``cap`` sees it; nothing granted."""
    places: dict[str, dict[str, Any]] = book["places"]
    limit: int | None = book["limit"]
    if cap is not None:
        limit = cap if limit is None else min(limit, cap)
    orphans = tuple((pid, str(p["job"])) for pid, p in places.items() if not p["holder"])
    return QueueView(
        False, None, limit, book["account_limit"], book["source"], len(places), orphans[:16]
    )


def take(book: Book, run: str, holder: str, cap: int | None, now: float, alive: Alive) -> QueueView:
    """Ask for a place for a send of ``run``; ``cap`` is the run's own setting, if any.

    Granted while the account's places are fewer than the limit and no fresher claim
    stands before this run's (see the module docstring); else the run waits in line."""
    _reap(book, now, alive)
    places: dict[str, dict[str, Any]] = book["places"]
    waiters: dict[str, dict[str, Any]] = book["waiters"]
    if not places and book["account_limit"] is not None:
        # No bulkjob job anywhere: a limit lowered for other clients' jobs is a guess
        # from back then; the account's own limit stands until a refusal says otherwise.
        book["limit"] = book["account_limit"]
    view = _view(book, cap)
    if view.limit is None:
        return dataclasses.replace(view, granted=True)
    mine = waiters.setdefault(run, {"since": now, "holder": holder})
    mine["seen"] = now
    hold = book.get("hold_until", 0.0) - now
    if hold > 0:
        return dataclasses.replace(view, held_for=hold)
    if len(places) >= view.limit:
        return view
    held: dict[str, int] = {}
    for place in places.values():
        held[place["run"]] = held.get(place["run"], 0) + 1

    def rank(name: str) -> tuple[int, float]:
        return held.get(name, 0), waiters[name]["since"]

    if min(waiters, key=rank) != run:
        return view  # another run deserves this place more: it gets its turn first
    place_id = _new_place(book, run, holder, None, now)
    del waiters[run]  # the run's next ask queues behind the others again
    return dataclasses.replace(view, granted=True, place=place_id, taken=len(places))


def _new_place(book: Book, run: str, holder: str, job: str | None, now: float) -> str:
    place_id = str(book["next"])
    book["next"] += 1
    book["places"][place_id] = {"run": run, "holder": holder, "job": job, "at": now}
    return place_id


def place_job(book: Book, place: str, job: str) -> None:
    """The send holding ``place`` became ``job``: the place is the job's until it is final."""
    if place in book["places"]:
        book["places"][place]["job"] = job


def free(book: Book, place: str, *, final: bool = False) -> None:
    """The place's job is final (``final``: the server has room for certain, so any hold
    after a queue-full ends), or its send became no job: the place is free."""
    book["places"].pop(place, None)
    if final:
        book["hold_until"] = 0.0


def adopt(book: Book, run: str, holder: str, job: str, now: float) -> str:
    """``job`` of ``run`` is open (a resumed run's, or a lost answer proven a job): its place
    (an orphan of an earlier process, or a new one over the limit: the job is there)."""
    places: dict[str, dict[str, Any]] = book["places"]
    for place_id, place in places.items():
        if place["job"] == job:
            place.update(run=run, holder=holder)
            return place_id
    return _new_place(book, run, holder, job, now)


def learned(book: Book, limit: int, account_limit: int | None, source: str | None) -> None:
    """A run learned (or lowered, or raised) the limit: every run of the account uses it."""
    book["limit"], book["source"] = limit, source
    if account_limit is not None:
        book["account_limit"] = account_limit


def refused(
    book: Book,
    place: str | None,
    account_limit: int | None,
    hold: float,
    now: float,
    cap: int | None = None,
) -> None:
    """The send holding ``place`` met a queue-full: the limit comes down to the account's
    other places (another client's jobs hold the rest), never below one; with ``hold``,
    every run of the account holds back that long (seconds), so none loses its turn.
    ``cap``: the refused run's own setting, the limit it went by when the book had none."""
    if hold > 0:
        book["hold_until"] = max(book.get("hold_until", 0.0), now + hold)
    limit = book["limit"] if book["limit"] is not None else cap
    if limit is not None:
        others = len(book["places"]) - (place in book["places"])
        book["limit"] = max(1, min(limit, others))
        book["source"] = book["source"] or "open jobs"
    if account_limit is not None:
        book["account_limit"] = account_limit


def leave(book: Book, holder: str, run: str) -> None:
    """Run ``run`` of ``holder`` closes: its jobs still open become orphans, its sends and
    its wait go (another run of the same process keeps its own)."""
    places: dict[str, dict[str, Any]] = book["places"]
    for place_id, place in list(places.items()):
        if place["holder"] == holder and place["run"] == run:
            _orphan(places, place_id)
    book["waiters"].pop(run, None)


def load(text: str | bytes | None) -> Book:
    """A book as a store keeps it (JSON); a missing, unreadable or ill-shaped one is a new
    book (the book is the runs' shared count, not a record: the next refusal relearns)."""
    if not text:
        return new_book()
    try:
        book = json.loads(text)
        if not (
            isinstance(book, dict)
            and isinstance(book.get("next"), int)
            and isinstance(book.get("places"), dict)
            and isinstance(book.get("waiters"), dict)
        ):
            raise ValueError("not a queue book")
        for place in book["places"].values():
            if not isinstance(place, dict) or not {"run", "holder", "job"} <= place.keys():
                raise ValueError("a place of the wrong shape")
        for waiter in book["waiters"].values():
            if not isinstance(waiter, dict) or not {"since", "seen", "holder"} <= waiter.keys():
                raise ValueError("a waiter of the wrong shape")
        for key in ("limit", "account_limit"):
            if book.get(key) is not None and not isinstance(book[key], int):
                raise ValueError(f"{key} is not a number")
    except (ValueError, TypeError, AttributeError):
        return new_book()
    return book


def holding(book: Book, alive: Alive) -> dict[str, int]:
    """Places per holder, "" for orphans (a holder that is gone holds orphans already):
    for ``bulkjob throttle``, which changes nothing."""
    counts: dict[str, int] = {}
    for place in book["places"].values():
        holder = place["holder"] if place["holder"] and alive(place["holder"]) else ""
        counts[holder] = counts.get(holder, 0) + 1
    return counts
