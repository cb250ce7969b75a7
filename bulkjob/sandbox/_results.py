"""The sandbox's results files: one CSV row per submitted id, derived from the id alone.

The real column layout is not public (API_NOTES). The sandbox's layout, chosen so that a client
can prove from a results file which ids a job held:

- the first column is the submitted id, under the kind's name (``newContactId`` for new contact
  details, ``contactId`` for contact details, ``companyId`` for both company kinds) unless the
  config's ``results_id_column`` names one for every kind;
- then the contact fields (contact kinds), then the company fields (company kinds always,
  contact kinds only when the job was submitted with ``retrieveCompanyDetails=true``);
- last, ``matchStatus``: ``found``, ``not found``, or ``failed`` in a failed job's file.

Exactly one row per id line of the submitted body, in submission order: an id sent twice in one
body has two rows. **Rows for unmatched ids exist, with their fields empty**: an id the
simulated data set does not know still comes back, with its id and ``matchStatus`` ``not
found``, so the id column always holds every submitted id. Whether an id is unmatched is fixed
by a hash of the id (``no_match_rate`` is the share), and so is every field of a found row: the
same id gives the same row in every job and every run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterable

__all__ = ["ID_COLUMNS", "MATCH_STATUS", "header", "is_unmatched", "results_csv"]

#: Job type -> the name of the results' id column.
ID_COLUMNS: dict[str, str] = {
    "targetContactDetails": "newContactId",
    "contactDetails": "contactId",
    "targetCompanyDetails": "companyId",
    "companyTechProfile": "companyId",
}
MATCH_STATUS = "matchStatus"
FOUND = "found"
NOT_FOUND = "not found"
FAILED = "failed"

_CONTACT_KINDS = frozenset({"targetContactDetails", "contactDetails"})
_CONTACT_FIELDS = ("firstName", "lastName", "email", "jobTitle", "phone")
_COMPANY_FIELDS = ("companyName", "website", "industry", "city", "country")
_TECH_FIELDS = ("technologies",)

_FIRST_NAMES = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken")
_LAST_NAMES = ("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
_TITLES = ("CTO", "Engineer", "Analyst", "Director", "Architect", "Manager", "Researcher", "CEO")
_COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell")
_INDUSTRIES = ("Software", "Retail", "Energy", "Finance", "Health", "Media", "Logistics", "Biotech")
_CITIES = ("Austin", "Boston", "Denver", "Leeds", "Lyon", "Oslo", "Porto", "Seattle")
_COUNTRIES = ("US", "US", "US", "GB", "FR", "NO", "PT", "US")
_TECHNOLOGIES = ("Python", "PostgreSQL", "Kafka", "React", "Go", "Redis", "Java", "Terraform")


def header(kind: str, *, id_column: str | None, company_details: bool) -> tuple[str, ...]:
    """The results file's header for a job of type ``kind``."""
    return (id_column or ID_COLUMNS[kind], *_fields(kind, company_details), MATCH_STATUS)


def _fields(kind: str, company_details: bool) -> tuple[str, ...]:
    if kind in _CONTACT_KINDS:
        return _CONTACT_FIELDS + (_COMPANY_FIELDS if company_details else ())
    if kind == "companyTechProfile":
        return _COMPANY_FIELDS + _TECH_FIELDS
    return _COMPANY_FIELDS


def is_unmatched(id_: str, no_match_rate: float) -> bool:
    """Whether ``id_`` is one the simulated data set does not know, at that rate.

    A hash of its own (salted apart from the fields' hash) mapped onto [0, 1): the same id
    always gets the same answer, and an id unmatched at one rate is unmatched at every higher one.
    """
    digest = hashlib.sha256(b"no-match\0" + id_.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < no_match_rate


def _pick(options: tuple[str, ...], byte: int) -> str:
    return options[byte % len(options)]


def _values(id_: str) -> dict[str, str]:
    """Every field of ``id_``'s found row (the reference the fast tables are built from)."""
    return _values_of(hashlib.sha256(id_.encode()).digest())


def _values_of(d: bytes) -> dict[str, str]:
    first = _pick(_FIRST_NAMES, d[0])
    last = _pick(_LAST_NAMES, d[1])
    company = _pick(_COMPANIES, d[2])
    return {
        "firstName": first,
        "lastName": last,
        "email": f"{first}.{last}@{company}.example".lower(),
        "jobTitle": _pick(_TITLES, d[3]),
        # 555-0100 to 555-0199 are reserved for fiction: no real person gets a call.
        "phone": f"+1-555-01{d[4] % 100:02d}",
        "companyName": company,
        "website": f"www.{company.lower()}.example",
        "industry": _pick(_INDUSTRIES, d[5]),
        "city": _pick(_CITIES, d[6]),
        "country": _pick(_COUNTRIES, d[6]),
        "technologies": ";".join(sorted({_pick(_TECHNOLOGIES, d[7]), _pick(_TECHNOLOGIES, d[8])})),
    }


# -- rendering fast ---------------------------------------------------------------------------
# Every field depends on a few bytes of the id's digest, each through ``byte % 8`` (or % 100):
# so each field is one lookup in a table indexed by the byte(s) it depends on, built once
# from _values_of. A row is then a digest, a few lookups and one join: about a third of
# building the dict and going through csv.writer, and what lets the sandbox keep up with a
# client that downloads a 10,000-row file per job as fast as it parses it.

#: The values one digest byte takes.
_BY_BYTE = range(256)


def _table(field: str, positions: tuple[int, ...]) -> tuple[str, ...]:
    """``field``'s value for every combination of the digest bytes at ``positions``."""
    out = []
    for key in range(8 ** len(positions)) if len(positions) > 1 else _BY_BYTE:
        d = bytearray(9)
        if len(positions) == 1:
            d[positions[0]] = key
        else:
            for k, pos in enumerate(positions):
                d[pos] = (key >> (3 * k)) & 7
        out.append(_values_of(bytes(d))[field])
    return tuple(out)


#: Field -> the digest bytes it depends on (see _values_of).
_POSITIONS: dict[str, tuple[int, ...]] = {
    "firstName": (0,),
    "lastName": (1,),
    "email": (0, 1, 2),
    "jobTitle": (3,),
    "phone": (4,),
    "companyName": (2,),
    "website": (2,),
    "industry": (5,),
    "city": (6,),
    "country": (6,),
    "technologies": (7, 8),
}
#: Characters that make csv.writer quote a field (QUOTE_MINIMAL): such rows take its path.
_NEEDS_QUOTING = re.compile(r'[,"\r\n]')


_TABLES: dict[str, tuple[str, ...]] | None = None


def _tables() -> dict[str, tuple[str, ...]]:
    """The lookup tables, built at first use. Rendering runs in worker threads: the tables
    are built whole, then published in one assignment, so no thread sees them half-built
    (two threads may both build them; the result is the same)."""
    global _TABLES
    tables = _TABLES
    if tables is None:
        tables = {f: _table(f, pos) for f, pos in _POSITIONS.items()}
        _TABLES = tables
    return tables


def _getter(fields: tuple[str, ...]) -> Callable[[bytes], str]:
    """A function from an id's digest to its found row's fields, joined by commas."""
    tables = _tables()
    parts = [_lookup(tables[f], _POSITIONS[f]) for f in fields]
    return lambda d: ",".join([part(d) for part in parts])


def _lookup(table: tuple[str, ...], pos: tuple[int, ...]) -> Callable[[bytes], str]:
    """One field: its table, indexed by the digest byte(s) it depends on (mod 8 when several)."""
    if len(pos) == 1:
        (a,) = pos
        return lambda d: table[d[a]]
    if len(pos) == 2:
        a, b = pos
        return lambda d: table[(d[a] & 7) | (d[b] & 7) << 3]
    a, b, c = pos
    return lambda d: table[(d[a] & 7) | (d[b] & 7) << 3 | (d[c] & 7) << 6]


def results_csv(
    kind: str,
    ids: Iterable[str],
    *,
    id_column: str | None = None,
    company_details: bool = False,
    no_match_rate: float = 0.0,
    failed: bool = False,
) -> str:
    """The whole results file (see the module docstring for its layout)."""
    columns = header(kind, id_column=id_column, company_details=company_details)
    fields = columns[1:-1]
    blank = "," * len(fields)
    row_of = _getter(fields)
    sha256 = hashlib.sha256
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    ids = list(ids)
    if not all(ids) or _NEEDS_QUOTING.search("".join(ids)) is not None:
        for id_ in ids:  # some id needs quoting: csv.writer knows how
            writer.writerow((id_, *_row(id_, fields, no_match_rate, failed)))
    elif failed:
        out.write("".join([f"{id_}{blank},{FAILED}\n" for id_ in ids]))
    elif no_match_rate > 0.0:
        for id_ in ids:
            if is_unmatched(id_, no_match_rate):
                out.write(f"{id_}{blank},{NOT_FOUND}\n")
            else:
                out.write(f"{id_},{row_of(sha256(id_.encode()).digest())},{FOUND}\n")
    else:  # every id is matched (is_unmatched is never true at rate 0)
        out.write(
            "".join([f"{id_},{row_of(sha256(id_.encode()).digest())},{FOUND}\n" for id_ in ids])
        )
    return out.getvalue()


def _row(id_: str, fields: tuple[str, ...], no_match_rate: float, failed: bool) -> list[str]:
    """The fields after the id, the slow and simple way (for ids that need quoting)."""
    if failed:
        return [*([""] * len(fields)), FAILED]
    if is_unmatched(id_, no_match_rate):
        return [*([""] * len(fields)), NOT_FOUND]
    values = _values(id_)
    return [*(values[f] for f in fields), FOUND]
