"""The bulk id-list job endpoints bulkjob can drive: path, per-job id limit, result type.

All four take a newline-separated id list as the body and answer ``{jobId, status, type}``.
The per-job limits other than the seed's 10,000 are not published; they are set to the
same documented maximum and can be lowered with ``chunk_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "JobKind"]


@dataclass(frozen=True, slots=True)
class JobKind:
    """One bulk endpoint: where to POST, how many ids a job may hold, the job ``type``,
    and the results column that is expected to hold each input id (not documented
    publicly: the ``results_id_column`` setting overrides it)."""

    name: str
    path: str
    max_ids: int
    job_type: str
    id_column: str


KINDS: dict[str, JobKind] = {
    k.name: k
    for k in (
        JobKind(
            "new-contact-details",
            "target/contact/job",
            10_000,
            "targetContactDetails",
            "newContactId",
        ),
        JobKind("contact-details", "contact/job", 10_000, "contactDetails", "contactId"),
        JobKind(
            "new-company-details",
            "target/company/fetch/job",
            10_000,
            "targetCompanyDetails",
            "companyId",
        ),
        JobKind(
            "company-tech", "company/techProfile/job", 10_000, "companyTechProfile", "companyId"
        ),
    )
}
