"""The byte merge of results files, against the same merge done with the csv module."""

from __future__ import annotations

import codecs
import csv
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkjob._errors import ConfigError, ProtocolError
from bulkjob._merge import merge_files, read_header, remove_parts
from tests.conftest import parsed_merge

BOM = codecs.BOM_UTF8
HEADER = ["newContactId", "company, name", 'say "hi"', "notes\nmultiline"]
ROWS = [
    ["id1", "Acme, Inc.", 'a "quoted" word', "one\ntwo"],
    ["id2", "Globex", "", "line\r\nbreak"],
    ["id3", "", "plain", ""],
]


def csv_text(records: Sequence[Sequence[str]], line_end: str = "\n") -> str:
    """``records`` as the csv module writes them."""
    out = io.StringIO()
    csv.writer(out, lineterminator=line_end).writerows(records)
    return out.getvalue()


def write(path: Path, text: str, *, bom: bool = False) -> Path:
    """``text`` in UTF-8 at ``path``, after a byte order mark if ``bom``."""
    path.write_bytes((BOM if bom else b"") + text.encode())
    return path


def merged(files: Sequence[Path], tmp_path: Path) -> bytes:
    """What ``merge_files`` writes for ``files``, into a file in ``tmp_path``."""
    dest = tmp_path / "merged" / "all.csv"
    dest.parent.mkdir(exist_ok=True)
    written = merge_files(files, dest)
    data = dest.read_bytes()
    assert written == len(data)
    return data


def test_quoted_commas_and_newlines_in_header_and_rows(tmp_path: Path) -> None:
    """Quoted commas, quotes and newlines, the header's too, come out as the parsed merge."""
    files = [write(tmp_path / f"{i}.csv", csv_text([HEADER, *ROWS[i:]])) for i in range(len(ROWS))]
    assert merged(files, tmp_path) == parsed_merge(files)


def test_crlf_files_keep_their_line_ends(tmp_path: Path) -> None:
    """CRLF files merge byte for byte, their line ends untouched."""
    files = [write(tmp_path / f"{i}.csv", csv_text([HEADER, *ROWS], "\r\n")) for i in range(2)]
    data = merged(files, tmp_path)
    assert data == parsed_merge(files, ["\r\n", "\r\n"])
    assert data.count(b"newContactId") == 1


def test_headers_compared_without_their_line_ends(tmp_path: Path) -> None:
    """An LF file and a CRLF file have the same header; each keeps its own line ends."""
    lf = write(tmp_path / "lf.csv", csv_text([HEADER, ROWS[0]]))
    crlf = write(tmp_path / "crlf.csv", csv_text([HEADER, ROWS[1]], "\r\n"))
    assert merged([lf, crlf], tmp_path) == parsed_merge([lf, crlf], ["\n", "\r\n"])


def test_only_the_first_files_byte_order_mark_is_kept(tmp_path: Path) -> None:
    """The first file's BOM opens the output; a later file's is neither compared nor copied."""
    files = [write(tmp_path / f"{i}.csv", csv_text([HEADER, ROWS[i]]), bom=True) for i in (0, 1)]
    data = merged(files, tmp_path)
    assert data == parsed_merge(files)
    assert data.startswith(BOM)
    assert data.count(BOM) == 1


def test_a_later_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    """A first file without a BOM gives an output without one, whatever later files have."""
    plain = write(tmp_path / "a.csv", csv_text([HEADER, ROWS[0]]))
    marked = write(tmp_path / "b.csv", csv_text([HEADER, ROWS[1]]), bom=True)
    data = merged([plain, marked], tmp_path)
    assert data == parsed_merge([plain, marked])
    assert BOM not in data


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    """Empty files (no bytes, or a BOM alone) are skipped; header-only files add nothing."""
    files = [
        write(tmp_path / "0.csv", ""),
        write(tmp_path / "1.csv", csv_text([HEADER])),
        write(tmp_path / "2.csv", "", bom=True),
        write(tmp_path / "3.csv", csv_text([HEADER, ROWS[0]])),
        write(tmp_path / "4.csv", csv_text([HEADER])),
    ]
    data = merged(files, tmp_path)
    assert data == parsed_merge(files)
    assert data == csv_text([HEADER, ROWS[0]]).encode()


def test_only_empty_files_merge_into_an_empty_file(tmp_path: Path) -> None:
    """Nothing but empty files: an empty output, not an error."""
    assert merged([write(tmp_path / "0.csv", "")], tmp_path) == b""


def test_a_missing_final_line_end_is_supplied_before_more_rows(tmp_path: Path) -> None:
    """A file without a final line end gets its own before the next rows; the last keeps none."""
    cut = csv_text([HEADER, ROWS[0]], "\r\n").removesuffix("\r\n")
    a = write(tmp_path / "a.csv", cut)
    b = write(tmp_path / "b.csv", csv_text([HEADER, ROWS[1]]).removesuffix("\n"))
    data = merged([a, b], tmp_path)
    assert data == parsed_merge([a, b], ["\r\n", "\n"])
    assert data.startswith(cut.encode() + b"\r\n")
    assert not data.endswith(b"\n")


def test_a_header_only_file_without_line_end_then_rows(tmp_path: Path) -> None:
    """A lone header without a line end gets ``\\n`` before the next file's rows."""
    a = write(tmp_path / "a.csv", csv_text([HEADER]).removesuffix("\n"))
    b = write(tmp_path / "b.csv", csv_text([HEADER, ROWS[2]]))
    assert merged([a, b], tmp_path) == csv_text([HEADER, ROWS[2]]).encode()


def test_header_mismatch_names_the_file_and_writes_nothing(tmp_path: Path) -> None:
    """Different columns: a ProtocolError naming the file; no output, no part file left."""
    a = write(tmp_path / "a.csv", csv_text([HEADER, ROWS[0]]))
    b = write(tmp_path / "b.csv", csv_text([[*HEADER[:-1], "other"], ROWS[1]]))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ProtocolError, match=r"b\.csv: its columns differ"):
        merge_files([a, b], out / "all.csv")
    assert list(out.iterdir()) == []


def test_header_mismatch_leaves_a_stream_untouched(tmp_path: Path) -> None:
    """Headers are all checked before the first byte goes to a stream."""
    a = write(tmp_path / "a.csv", csv_text([HEADER, ROWS[0]]))
    b = write(tmp_path / "b.csv", csv_text([HEADER[:2], ROWS[1][:2]]))
    stream = io.BytesIO()
    with pytest.raises(ProtocolError, match=r"b\.csv"):
        merge_files([a, b], stream)
    assert stream.getvalue() == b""


def test_merge_into_a_stream(tmp_path: Path) -> None:
    """A binary stream gets the same bytes as a file would, and stays open."""
    files = [write(tmp_path / f"{i}.csv", csv_text([HEADER, ROWS[i]])) for i in (0, 1)]
    stream = io.BytesIO()
    assert merge_files(files, stream) == len(stream.getvalue())
    assert stream.getvalue() == parsed_merge(files)


def test_merging_into_a_results_file_is_refused(tmp_path: Path) -> None:
    """The destination cannot be one of the files merged: it would be overwritten."""
    a = write(tmp_path / "a.csv", csv_text([HEADER, ROWS[0]]))
    with pytest.raises(ConfigError, match="one of the results files"):
        merge_files([a], tmp_path / "." / "a.csv")
    assert a.read_text() == csv_text([HEADER, ROWS[0]])


def test_read_header_ends_after_a_quoted_newline(tmp_path: Path) -> None:
    """The header's end is where the csv module's first record ends, BOM included."""
    text = csv_text([HEADER, ROWS[0]], "\r\n")
    path = write(tmp_path / "a.csv", text, bom=True)
    with path.open("rb") as src:
        found = read_header(src, path)
    assert found == (HEADER, len(BOM) + len(csv_text([HEADER], "\r\n").encode()), b"\r\n")


def test_a_header_without_end_is_refused(tmp_path: Path) -> None:
    """A first record still going after 1 MiB of lines is no header: ProtocolError."""
    path = write(tmp_path / "a.csv", '"x\n",' * (1 << 18) + "y\n")
    with pytest.raises(ProtocolError, match=r"a\.csv: no header within"), path.open("rb") as src:
        read_header(src, path)


def test_a_header_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 in the header: a ProtocolError naming the file."""
    path = tmp_path / "a.csv"
    path.write_bytes(b"id,caf\xe9\nx,y\n")
    with pytest.raises(ProtocolError, match=r"a\.csv: its header is not UTF-8"):
        merge_files([path], tmp_path / "all.csv")


def test_remove_parts_deletes_and_lists(tmp_path: Path) -> None:
    """The merged files are deleted and listed; one already gone is no error."""
    a = write(tmp_path / "a.csv", "x\n")
    gone = tmp_path / "gone.csv"
    assert remove_parts([a, gone]) == (a, gone)
    assert list(tmp_path.iterdir()) == []


# -- the property: any table, cut into files of any shape, merges as the csv module would ------

#: Field pieces: the characters that need quoting, a non-ASCII one, and both line ends.
_FIELD = st.lists(st.sampled_from(["a", "b", " ", ",", '"', "é", "\n", "\r\n"]), max_size=5).map(
    "".join
)


@st.composite
def _tables(draw: st.DrawFn) -> tuple[list[str], list[tuple[list[list[str]], str, bool, bool]]]:
    """A header and files: (rows, line end, BOM, ends with a line end); some files empty."""
    width = draw(st.integers(1, 4))
    record = st.lists(_FIELD, min_size=width, max_size=width)
    header = draw(record)
    files = draw(
        st.lists(
            st.tuples(
                st.lists(record, max_size=4),
                st.sampled_from(["\n", "\r\n"]),
                st.booleans(),
                st.booleans(),
            ),
            min_size=1,
            max_size=4,
        )
    )
    return header, files


@given(_tables(), st.sets(st.integers(0, 3)))
def test_byte_merge_equals_parsed_merge(
    table: tuple[list[str], list[tuple[list[list[str]], str, bool, bool]]], empty: set[int]
) -> None:
    """Any table, in files of any line end, BOM, final line end or none: as the parsed merge."""
    header, specs = table
    with tempfile.TemporaryDirectory(prefix="bulkjob-merge-") as tmp:
        root = Path(tmp)
        files: list[Path] = []
        line_ends: list[str] = []
        for i, (rows, end, bom, final_end) in enumerate(specs):
            text = "" if i in empty else csv_text([header, *rows], end)
            if not final_end:
                text = text.removesuffix(end)
                if not rows:
                    end = "\n"  # a lone header without a line end: the merge supplies \n
            files.append(write(root / f"{i}.csv", text, bom=bom and i not in empty))
            line_ends.append(end)
        assert merged(files, root) == parsed_merge(files, line_ends)
