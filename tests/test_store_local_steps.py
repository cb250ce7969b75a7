"""The local store's two kinds of step keep one window: a slot taken in one statement when
the window has room (SQLite 3.35+), and the whole transaction otherwise (a pause, a full
window, every few steps to clear old rows, an older SQLite). Either way the same slots,
waits and pauses; and old completions do not pile up in the file."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
from pathlib import Path

import pytest

import bulkjob._store_local as store_local
from bulkjob._settings import Settings
from bulkjob._window_store import open_store
from tests.conftest import TOKEN


def _store(tmp_path: Path, most: int, per: float) -> store_local.LocalStore:
    settings = Settings(
        access_token=TOKEN, state_dir=str(tmp_path), max_requests=most, per_seconds=per
    )
    store = open_store(settings)
    assert isinstance(store, store_local.LocalStore)
    return store


@pytest.fixture(params=["one statement", "whole transaction"])
def one_statement(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param == "whole transaction":
        monkeypatch.setattr(store_local, "_RETURNING", False)
    return bool(store_local._RETURNING)


async def test_a_full_window_and_a_pause_hold_either_way(
    tmp_path: Path, one_statement: bool
) -> None:
    store = _store(tmp_path, 5, 60.0)
    try:
        slots = [(await store.acquire())[0] for _ in range(5)]
        assert None not in slots and len(set(slots)) == 5
        assert await store.acquire() == (None, math.inf)  # every slot in flight
        assert slots[0] is not None
        await store.release(slots[0], reset_backoff=True)
        slot, wait = await store.acquire()  # its completion is still in the window
        assert slot is None and 0 < wait <= store.params.window
        state = await store.state()
        assert (state.in_flight, state.recent) == (4, 1)
        for held in slots[1:]:
            assert held is not None
            await store.release(held, reset_backoff=False)
        await store.throttled(30.0)
        slot, wait = await store.acquire()
        assert slot is None and 25.0 < wait <= 30.0  # the pause, not the window
    finally:
        await store.close()


async def test_a_success_after_a_429_starts_the_backoff_anew_either_way(
    tmp_path: Path, one_statement: bool
) -> None:
    store = _store(tmp_path, 1000, 60.0)
    try:
        slot = (await store.acquire())[0]  # a request sent before the 429s
        assert slot is not None
        first = (await store.throttled(None))[0]
        assert (await store.throttled(None))[0] == 2 * first  # doubling
        await store.release(slot, reset_backoff=True)  # its answer: a success
        assert (await store.throttled(None))[0] == first
    finally:
        await store.close()


async def test_old_completions_do_not_pile_up(tmp_path: Path, one_statement: bool) -> None:
    """Hundreds of requests through a short window: the rows that left it are cleared
    (by the whole transaction: at a store's first take, then every _SWEEP_SECONDS)."""
    store = _store(tmp_path, 1000, 0.01)
    try:
        for _ in range(400):
            slot, _ = await store.acquire()
            assert slot is not None
            await store.release(slot, reset_backoff=False)
            await asyncio.sleep(0.001)
        with contextlib.closing(sqlite3.connect(store.path)) as db, db:
            (rows,) = db.execute("SELECT COUNT(*) FROM slots").fetchone()
        assert rows <= store_local._SWEEP_EVERY + 20, rows
    finally:
        await store.close()
