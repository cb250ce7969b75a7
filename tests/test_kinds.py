"""Tests for the other id-list job kinds: same pipeline, their own endpoint and type."""

from __future__ import annotations

import pytest

from bulkjob._kinds import KINDS
from bulkjob._runner import Runner
from bulkjob._settings import Settings
from tests.conftest import IdsWriter, SandboxFactory, settings_for


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_each_kind_goes_to_its_endpoint(
    sandbox: SandboxFactory, ids: IdsWriter, kind: str
) -> None:
    """Every kind submits through the pipeline and the server files jobs of its type."""
    sb = await sandbox()
    report = await Runner(settings_for(sb, kind=kind), [str(ids(250))]).run()
    assert report.ids_submitted == 250
    assert {job.kind for job in sb.ledger.jobs.values()} == {KINDS[kind].job_type}


def test_chunk_size_is_bounded_by_the_kind() -> None:
    """A chunk size above the kind's per-job limit is a config error naming the field."""
    with pytest.raises(ValueError, match="chunk_size"):
        Settings(kind="company-tech", chunk_size=KINDS["company-tech"].max_ids + 1)
