"""The sandbox's results files: rendered fast (by table lookup) yet exactly as csv.writer
would, from any thread, and stored at acceptance."""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import aiohttp
import pytest

import bulkjob
from bulkjob.sandbox import _results
from bulkjob.sandbox._results import FOUND, NOT_FOUND, _values, header, results_csv
from tests.conftest import SandboxFactory, make_ids, settings_for

KIND = "targetContactDetails"


def _reference(ids: list[str], *, company_details: bool, rate: float, failed: bool) -> str:
    """The plain way: a dict of values per id through csv.writer (the layout's definition)."""
    columns = header(KIND, id_column=None, company_details=company_details)
    fields = columns[1:-1]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for id_ in ids:
        if failed:
            writer.writerow((id_, *[""] * len(fields), "failed"))
        elif _results.is_unmatched(id_, rate):
            writer.writerow((id_, *[""] * len(fields), NOT_FOUND))
        else:
            values = _values(id_)
            writer.writerow((id_, *(values[f] for f in fields), FOUND))
    return out.getvalue()


@pytest.mark.parametrize("company_details", [False, True])
@pytest.mark.parametrize("rate", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("failed", [False, True])
@pytest.mark.parametrize("odd", [False, True])
def test_fast_rendering_is_byte_identical_to_csv_writer(
    company_details: bool, rate: float, failed: bool, odd: bool
) -> None:
    """Every layout and fate, with ids that need quoting or not: the same bytes."""
    ids = make_ids(2_000) + (["a,b", 'q"x', "", " sp "] if odd else [])
    got = results_csv(KIND, ids, company_details=company_details, no_match_rate=rate, failed=failed)
    assert got == _reference(ids, company_details=company_details, rate=rate, failed=failed)
    rows = list(csv.reader(io.StringIO(got, newline="")))[1:]
    assert [row[0] for row in rows] == ids


def test_tables_built_by_many_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendering runs in worker threads: the first renderings, all at once, agree."""
    monkeypatch.setattr(_results, "_TABLES", None)
    ids = make_ids(500)
    start = threading.Barrier(8)
    got: list[str | BaseException] = []

    def render() -> None:
        start.wait()
        try:
            got.append(results_csv(KIND, ids, company_details=True))
        except BaseException as exc:  # a half-built table: KeyError
            got.append(exc)

    threads = [threading.Thread(target=render) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [_reference(ids, company_details=True, rate=0.0, failed=False)] * 8


async def test_a_stored_file_is_served_and_a_changed_job_rendered_again(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The file stored at acceptance is what the results request serves; a job whose fate
    changed afterwards (a test's doing) is rendered again, not served stale."""
    sb = await sandbox(failed_results=True)
    values = make_ids(300)
    report = await bulkjob.submit_async(ids=values, settings=settings_for(sb, chunk_size=100))
    first, second = (job.job_id for job in report.jobs[:2])
    sb.ledger.jobs[second].fails = True
    statuses = {}
    async with aiohttp.ClientSession() as session:
        for job_id in (first, second):
            url = f"{sb.base_url}/target/contact/job/{job_id}/results"
            async with session.get(url, headers={"accessToken": "sandbox-token"}) as r:
                assert r.status == 200
                lines = (await r.text()).splitlines()[1:]
            statuses[job_id] = {line.rsplit(",", 1)[1] for line in lines}
    assert statuses == {first: {FOUND}, second: {"failed"}}
