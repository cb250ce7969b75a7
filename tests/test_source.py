"""Tests for bulkjob._source: the pre-pass, the main pass and their accounting."""

from __future__ import annotations

import gzip
import io
import os
import string
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkjob._errors import InputError
from bulkjob._source import IdSource, InputSummary, InvalidSample, Origin, SourceStats

ALPHABET = string.ascii_letters + string.digits + "_-"


def make_id(n: int) -> str:
    """A valid default-pattern id, distinct for each n."""
    return f"id{n:062d}"


def write(path: Path, text: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to path and return it."""
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def lines_file(path: Path, values: list[str], newline: str = "\n") -> Path:
    """Write one value per line, newline-terminated."""
    return write(path, "".join(v + newline for v in values))


def run(source: IdSource) -> list[tuple[str, str, int]]:
    """Check and drain a source, closing it."""
    with source:
        source.check()
        return list(source)


def problem_of(source: IdSource) -> InputError:
    """The InputError that checking the source raises."""
    with source, pytest.raises(InputError) as info:
        source.check()
    return info.value


# -- data classes ---------------------------------------------------------------------


def test_origin_str_is_path_colon_line() -> None:
    """Origin renders as path:line."""
    assert str(Origin("ids.txt", 7)) == "ids.txt:7"


def test_stats_start_at_zero() -> None:
    """A fresh SourceStats has every counter at zero and no samples."""
    stats = SourceStats()
    assert (stats.ids_read, stats.ids_invalid, stats.ids_duplicate, stats.blank) == (0, 0, 0, 0)
    assert stats.invalid_samples == []


# -- plain lists ----------------------------------------------------------------------


def test_plain_list_yields_ids_with_path_and_line(tmp_path: Path) -> None:
    """Each id comes with the path as given and its 1-based line."""
    path = lines_file(tmp_path / "ids.txt", [make_id(1), make_id(2)])
    assert run(IdSource([str(path)])) == [(make_id(1), str(path), 1), (make_id(2), str(path), 2)]


def test_blank_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    """Blank and whitespace-only lines are not ids but are counted as blank."""
    path = write(tmp_path / "ids.txt", f"\n{make_id(1)}\n   \n\t\n{make_id(2)}\n")
    source = IdSource([str(path)])
    assert [line for _, _, line in run(source)] == [2, 5]
    assert (source.stats.blank, source.stats.ids_read) == (3, 2)


def test_crlf_and_surrounding_whitespace_are_tolerated(tmp_path: Path) -> None:
    """CRLF endings and spaces around an id do not make it invalid."""
    path = write(tmp_path / "ids.txt", f"  {make_id(1)} \r\n\t{make_id(2)}\r\n")
    assert [v for v, _, _ in run(IdSource([str(path)]))] == [make_id(1), make_id(2)]


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    """An id on an unterminated last line is still yielded."""
    path = write(tmp_path / "ids.txt", f"{make_id(1)}\n{make_id(2)}")
    assert [line for _, _, line in run(IdSource([str(path)]))] == [1, 2]


def test_bom_is_dropped_at_the_start_of_each_file(tmp_path: Path) -> None:
    """A UTF-8 BOM opening each file is not part of the first id."""
    a = write(tmp_path / "a.txt", "\ufeff" + make_id(1) + "\n")
    b = write(tmp_path / "b.txt", "\ufeff" + make_id(2) + "\n")
    source = IdSource([str(a), str(b)])
    assert [v for v, _, _ in run(source)] == [make_id(1), make_id(2)]
    assert source.stats.ids_invalid == 0


def test_invalid_ids_are_counted_with_samples(tmp_path: Path) -> None:
    """A value that does not fullmatch the pattern is counted and sampled with its origin."""
    path = lines_file(tmp_path / "ids.txt", [make_id(1), "short", make_id(2)])
    source = IdSource([str(path)])
    assert len(run(source)) == 2
    assert source.stats.ids_invalid == 1
    assert source.stats.invalid_samples == [
        InvalidSample(Origin(str(path), 2), "short", "does not match id_pattern")
    ]


def test_line_with_separators_is_invalid_not_split(tmp_path: Path) -> None:
    """A line holding two ids separated by a comma or space is one invalid value."""
    path = lines_file(tmp_path / "ids.txt", [f"{make_id(1)},{make_id(2)}", f"{make_id(3)} x"])
    source = IdSource([str(path)])
    assert run(source) == []
    assert (source.stats.ids_read, source.stats.ids_invalid) == (2, 2)


def test_long_invalid_value_is_truncated_in_sample(tmp_path: Path) -> None:
    """Samples keep 80 characters of a long value followed by an ellipsis."""
    path = lines_file(tmp_path / "ids.txt", ["x" * 200])
    source = IdSource([str(path)])
    run(source)
    assert source.stats.invalid_samples[0].value == "x" * 80 + "…"


def test_samples_are_capped_at_max_samples(tmp_path: Path) -> None:
    """Only the first max_samples invalid values are kept, all are counted."""
    path = lines_file(tmp_path / "ids.txt", [f"bad{i}" for i in range(20)])
    source = IdSource([str(path)], max_samples=3)
    run(source)
    assert source.stats.ids_invalid == 20
    assert [s.value for s in source.stats.invalid_samples] == ["bad0", "bad1", "bad2"]


def test_custom_id_pattern_is_used(tmp_path: Path) -> None:
    """id_pattern replaces the default rule."""
    path = lines_file(tmp_path / "ids.txt", ["123", "abc"])
    assert [v for v, _, _ in run(IdSource([str(path)], id_pattern=r"\d+"))] == ["123"]


def test_files_are_read_in_the_given_order(tmp_path: Path) -> None:
    """Ids of several files come file after file, each with its own path and lines."""
    a = lines_file(tmp_path / "a.txt", [make_id(1)])
    b = lines_file(tmp_path / "b.txt", [make_id(2), make_id(3)])
    assert run(IdSource([str(b), str(a)])) == [
        (make_id(2), str(b), 1),
        (make_id(3), str(b), 2),
        (make_id(1), str(a), 1),
    ]


def test_iterating_without_check_runs_check(tmp_path: Path) -> None:
    """The main pass performs the pre-pass itself when it was not called."""
    path = write(tmp_path / "ids.bin", b"\x00")
    with IdSource([str(path)]) as source, pytest.raises(InputError, match="binary"):
        list(source)


def test_stopping_early_counts_only_what_was_seen(tmp_path: Path) -> None:
    """Closing the main pass mid-block leaves counters matching the ids yielded."""
    path = lines_file(tmp_path / "ids.txt", [make_id(i) for i in range(10)])
    with IdSource([str(path)]) as source:
        records = iter(source)
        for _ in range(3):
            next(records)
        records.close()  # type: ignore[attr-defined]
        assert source.stats.ids_read == 3


def test_lines_split_across_small_blocks(tmp_path: Path) -> None:
    """Ids and multi-byte characters split between read blocks are reassembled."""
    path = lines_file(tmp_path / "ids.txt", ["\ufeff" + make_id(1), "é" * 3, make_id(2)])
    source = IdSource([str(path)], block_size=5)
    assert [(v, line) for v, _, line in run(source)] == [(make_id(1), 1), (make_id(2), 3)]
    assert source.stats.invalid_samples[0].value == "ééé"


# -- dedupe ---------------------------------------------------------------------------


def test_dedupe_drops_repeats_across_files(tmp_path: Path) -> None:
    """With dedupe, an id seen before in any file is counted duplicate and not yielded."""
    a = lines_file(tmp_path / "a.txt", [make_id(1), make_id(2), make_id(1)])
    b = lines_file(tmp_path / "b.txt", [make_id(2), make_id(3)])
    source = IdSource([str(a), str(b)], dedupe=True)
    assert [v for v, _, _ in run(source)] == [make_id(1), make_id(2), make_id(3)]
    assert (source.stats.ids_read, source.stats.ids_duplicate) == (5, 2)


def test_without_dedupe_repeats_are_yielded(tmp_path: Path) -> None:
    """Without dedupe every valid occurrence is yielded."""
    path = lines_file(tmp_path / "ids.txt", [make_id(1), make_id(1)])
    source = IdSource([str(path)])
    assert len(run(source)) == 2
    assert source.stats.ids_duplicate == 0


# -- gzip -----------------------------------------------------------------------------


def test_gzip_is_detected_by_magic_not_name(tmp_path: Path) -> None:
    """A gzip file named .txt is decompressed; its lines are counted after decompression."""
    path = write(tmp_path / "ids.txt", gzip.compress(f"{make_id(1)}\n{make_id(2)}\n".encode()))
    with IdSource([str(path)]) as source:
        assert source.check() == InputSummary(files=(str(path),), lines=2, bytes=130)
        assert [v for v, _, _ in source] == [make_id(1), make_id(2)]


def test_gz_name_without_gzip_data_is_read_as_text(tmp_path: Path) -> None:
    """A plain text file named .gz is read as it is."""
    path = lines_file(tmp_path / "ids.gz", [make_id(1)])
    assert len(run(IdSource([str(path)]))) == 1


def test_corrupt_gzip_is_an_input_error(tmp_path: Path) -> None:
    """Damaged gzip data fails the pre-pass."""
    data = bytearray(gzip.compress((make_id(1) + "\n").encode() * 100))
    data[20:40] = b"\xff" * 20
    path = write(tmp_path / "ids.gz", bytes(data))
    assert "corrupt gzip data" in str(problem_of(IdSource([str(path)])))


def test_truncated_gzip_is_an_input_error(tmp_path: Path) -> None:
    """A gzip stream cut short fails the pre-pass."""
    data = gzip.compress((make_id(1) + "\n").encode() * 100)
    path = write(tmp_path / "ids.gz", data[: len(data) // 2])
    assert "corrupt gzip data" in str(problem_of(IdSource([str(path)])))


# -- zstd -----------------------------------------------------------------------------


def _zstd(text: str, **kw: object) -> bytes:
    return zstandard.ZstdCompressor(**kw).compress(text.encode())  # type: ignore[arg-type]


def test_zstd_is_detected_by_magic_not_name(tmp_path: Path) -> None:
    """A zstd file (frames one after another) named .txt is decompressed, as gzip is."""
    one, two = f"{make_id(1)}\n", f"{make_id(2)}\n"
    path = write(tmp_path / "ids.txt", _zstd(one) + _zstd(two, write_checksum=True))
    with IdSource([str(path)]) as source:
        assert source.check() == InputSummary(files=(str(path),), lines=2, bytes=130)
        assert [v for v, _, _ in source] == [make_id(1), make_id(2)]


def test_zstd_csv_and_tsv(tmp_path: Path) -> None:
    """CSV and TSV inputs may be zstd, with the same suffix rules as gzip (.tsv.zst)."""
    csv_path = write(tmp_path / "in.csv.zst", _zstd(f"id,n\n{make_id(1)},1\n{make_id(1)},2\n"))
    source = IdSource([str(csv_path)], column="id", dedupe=True)
    assert [v for v, _, _ in run(source)] == [make_id(1)]
    assert source.stats.ids_duplicate == 1
    tsv_path = write(tmp_path / "in.tsv.zst", _zstd(f"n\tid\n1\t{make_id(3)}\n"))
    assert [v for v, _, _ in run(IdSource([str(tsv_path)], column="id"))] == [make_id(3)]


@pytest.mark.parametrize("damage", ["cut", "checksum", "trailing"])
def test_damaged_zstd_is_an_input_error(tmp_path: Path, damage: str) -> None:
    """A zstd stream cut short, with a wrong checksum, or followed by what is no frame
    fails the pre-pass with the file named: never fewer ids without a word."""
    data = bytearray(_zstd((make_id(1) + "\n") * 100, write_checksum=True))
    if damage == "cut":
        data = data[: len(data) - 2]
    elif damage == "checksum":
        data[-1] ^= 1
    else:
        data += b"tail"
    path = write(tmp_path / "ids.zst", bytes(data))
    error = problem_of(IdSource([str(path)]))
    assert "corrupt zstd data" in str(error) and str(path) in str(error)


# -- pre-pass errors ------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    """A missing input is named in the error."""
    path = tmp_path / "nope.txt"
    assert str(problem_of(IdSource([str(path)]))) == f"{path}: no such file"


def test_directory(tmp_path: Path) -> None:
    """A directory is not a list of ids."""
    assert "is a directory" in str(problem_of(IdSource([str(tmp_path)])))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission is reported as such."""
    path = lines_file(tmp_path / "ids.txt", [make_id(1)])
    path.chmod(0)
    try:
        assert "permission denied" in str(problem_of(IdSource([str(path)])))
    finally:
        path.chmod(0o600)


def test_nul_byte_is_binary_with_line(tmp_path: Path) -> None:
    """A NUL byte marks binary data, reported on its line."""
    path = write(tmp_path / "ids.txt", f"{make_id(1)}\n{make_id(2)}\nab\x00c\n")
    error = problem_of(IdSource([str(path)]))
    assert (error.line, error.problem) == (3, "binary data (NUL byte), not a text list of ids")


def test_non_utf8_reports_byte_and_line(tmp_path: Path) -> None:
    """An invalid UTF-8 byte is named with the line it is on."""
    path = write(tmp_path / "ids.txt", f"{make_id(1)}\n".encode() * 4 + b"caf\xe9\n")
    assert str(problem_of(IdSource([str(path)]))) == (
        f"{path}:5: not UTF-8 text: invalid byte 0xe9"
    )


def test_non_utf8_line_is_right_across_blocks(tmp_path: Path) -> None:
    """The line of a bad byte is exact when it lies blocks after the start."""
    path = write(tmp_path / "ids.txt", b"a\n" * 50 + b"\xff\n")
    assert problem_of(IdSource([str(path)], block_size=7)).line == 51


def test_truncated_character_at_end_is_not_utf8(tmp_path: Path) -> None:
    """A multi-byte character cut off by the end of the file is reported."""
    path = write(tmp_path / "ids.txt", make_id(1).encode() + b"\n\xc3")
    assert "not UTF-8 text" in str(problem_of(IdSource([str(path)])))


def test_empty_inputs_have_no_ids(tmp_path: Path) -> None:
    """Empty or whitespace-only inputs fail the pre-pass."""
    a = write(tmp_path / "a.txt", "")
    b = write(tmp_path / "b.txt", "\ufeff \n\r\n\t\n")
    assert "no ids (empty file / only blank lines)" in str(problem_of(IdSource([str(a), str(b)])))


def test_one_empty_file_among_others_is_fine(tmp_path: Path) -> None:
    """An empty file next to a non-empty one simply contributes nothing."""
    a = write(tmp_path / "a.txt", "")
    b = lines_file(tmp_path / "b.txt", [make_id(1)])
    assert len(run(IdSource([str(a), str(b)]))) == 1


def test_summary_counts_lines_and_bytes(tmp_path: Path) -> None:
    """The summary counts physical lines (an unterminated last line too) and bytes."""
    path = write(tmp_path / "ids.txt", "a\n\nb")
    with IdSource([str(path)]) as source:
        assert source.check() == InputSummary(files=(str(path),), lines=3, bytes=4)


def test_strict_rejects_first_invalid_id_in_check(tmp_path: Path) -> None:
    """strict=True turns the first invalid id into a pre-pass error naming the pattern."""
    path = lines_file(tmp_path / "ids.txt", [make_id(1), "y" * 100, "bad"])
    error = problem_of(IdSource([str(path)], strict=True))
    assert str(error) == (
        f"{path}:2: invalid id '{'y' * 80}…': does not match id_pattern [A-Za-z0-9_-]{{64}}"
    )


def test_strict_accepts_valid_input(tmp_path: Path) -> None:
    """strict=True passes a clean input and leaves the main pass counters untouched."""
    path = lines_file(tmp_path / "ids.txt", [make_id(1), "", make_id(2)])
    with IdSource([str(path)], strict=True) as source:
        source.check()
        assert source.stats.ids_read == 0
        assert len(list(source)) == 2


def test_file_changed_after_check_fails_main_pass(tmp_path: Path) -> None:
    """A decode error met only in the main pass is still an InputError with file:line."""
    path = lines_file(tmp_path / "ids.txt", [make_id(1), make_id(2)])
    with IdSource([str(path)]) as source:
        source.check()
        write(path, f"{make_id(1)}\n".encode() + b"\xfe\n")
        with pytest.raises(InputError, match=r":2: not UTF-8 text: invalid byte 0xfe"):
            list(source)


# -- standard input -------------------------------------------------------------------


def test_dash_reads_standard_input(tmp_path: Path) -> None:
    """A "-" input reads the given stdin stream and names it <stdin>."""
    stdin = io.BytesIO(f"{make_id(1)}\n".encode())
    assert run(IdSource(["-"], stdin=stdin)) == [(make_id(1), "<stdin>", 1)]


def test_no_inputs_means_standard_input(tmp_path: Path) -> None:
    """An empty input list reads standard input too."""
    stdin = io.BytesIO(gzip.compress(f"{make_id(1)}\n".encode()))
    assert [v for v, _, _ in run(IdSource([], stdin=stdin))] == [make_id(1)]


def test_stdin_spool_is_removed_on_close(tmp_path: Path) -> None:
    """The temporary copy of standard input is deleted by close()."""
    source = IdSource(["-"], stdin=io.BytesIO(f"{make_id(1)}\n".encode()))
    with source:
        source.check()
        spool = source._spool
        assert spool is not None
        assert os.path.exists(spool)
    assert not os.path.exists(spool)


# -- CSV / TSV ------------------------------------------------------------------------


def test_csv_column_is_read(tmp_path: Path) -> None:
    """With column, ids come from that header's cells with the record's line."""
    path = write(tmp_path / "in.csv", f"name,id\nx,{make_id(1)}\ny, {make_id(2)} \n")
    assert run(IdSource([str(path)], column="id")) == [
        (make_id(1), str(path), 2),
        (make_id(2), str(path), 3),
    ]


def test_csv_origin_is_where_the_record_starts(tmp_path: Path) -> None:
    """A quoted multi-line field before an id does not shift the id's line."""
    path = write(tmp_path / "in.csv", f'note,id\n"a\nb\nc",{make_id(1)}\nz,{make_id(2)}\n')
    assert [line for _, _, line in run(IdSource([str(path)], column="id"))] == [2, 5]


def test_tab_in_header_means_tsv(tmp_path: Path) -> None:
    """A header line holding a tab selects the tab delimiter."""
    path = write(tmp_path / "in.csv", f"id\tnote\n{make_id(1)}\ta,b\n")
    assert [v for v, _, _ in run(IdSource([str(path)], column="id"))] == [make_id(1)]


def test_tsv_name_means_tsv(tmp_path: Path) -> None:
    """A .tsv name selects the tab delimiter even for a one-column header."""
    path = write(tmp_path / "in.tsv", f"id\n{make_id(1)}\n")
    assert len(run(IdSource([str(path)], column="id"))) == 1


def test_header_bom_and_spaces_are_stripped(tmp_path: Path) -> None:
    """The column is found when its header cell has a BOM or surrounding spaces."""
    path = write(tmp_path / "in.csv", f"\ufeff id ,x\n{make_id(1)},1\n")
    assert len(run(IdSource([str(path)], column="id"))) == 1


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    """An absent column fails the pre-pass and lists the header."""
    path = write(tmp_path / "in.csv", "a,b,c\n1,2,3\n")
    assert str(problem_of(IdSource([str(path)], column="id"))) == (
        f"{path}:1: no column 'id' in header; columns are: a, b, c"
    )


def test_short_row_is_invalid_not_dropped(tmp_path: Path) -> None:
    """A row without a cell for the column is an invalid id, never silently lost."""
    path = write(tmp_path / "in.csv", f"a,id\n1,{make_id(1)}\nlonely\n")
    source = IdSource([str(path)], column="id")
    assert len(run(source)) == 1
    assert source.stats.invalid_samples == [
        InvalidSample(Origin(str(path), 3), "", "row has no value for column 'id'")
    ]


def test_empty_cells_and_rows_are_blank(tmp_path: Path) -> None:
    """An empty cell or an empty row counts as blank, not invalid."""
    path = write(tmp_path / "in.csv", f"a,id\n1,\n\n,\n2,{make_id(1)}\n")
    source = IdSource([str(path)], column="id")
    assert len(run(source)) == 1
    assert (source.stats.blank, source.stats.ids_invalid, source.stats.ids_read) == (3, 0, 1)


def test_strict_reports_short_row(tmp_path: Path) -> None:
    """strict=True turns a row without the column into a pre-pass error."""
    path = write(tmp_path / "in.csv", f"a,id\n1,{make_id(1)}\nlonely\n")
    error = problem_of(IdSource([str(path)], column="id", strict=True))
    assert (error.line, error.problem) == (3, "row has no value for column 'id'")


def test_gzipped_csv_with_dedupe(tmp_path: Path) -> None:
    """CSV input may be gzipped and deduped like plain lists."""
    text = f"id\n{make_id(1)}\n{make_id(1)}\n"
    path = write(tmp_path / "in.csv.gz", gzip.compress(text.encode()))
    source = IdSource([str(path)], column="id", dedupe=True)
    assert len(run(source)) == 1
    assert source.stats.ids_duplicate == 1


# -- properties -----------------------------------------------------------------------

valid_ids = st.text(alphabet=ALPHABET, min_size=64, max_size=64)
other_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\n\x00\ufeff"),
    max_size=70,
)
padding = st.sampled_from(["", " ", "\t", "\r", " \r"])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.one_of(valid_ids, other_text), padding), min_size=1, max_size=40),
    block_size=st.integers(min_value=1, max_value=300),
    dedupe=st.booleans(),
)
def test_parser_accounts_for_every_line(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[str, str]],
    block_size: int,
    dedupe: bool,
) -> None:
    """Whatever the lines and block size, the main pass matches a line-by-line reference."""
    lines = [value + pad for value, pad in rows]
    path = write(tmp_path_factory.mktemp("prop") / "ids.txt", "\n".join(lines) + "\n")
    expected: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    blank = invalid = duplicate = 0
    for number, line in enumerate(lines, 1):
        value = line.strip()
        if not value:
            blank += 1
        elif len(value) != 64 or not set(value) <= set(ALPHABET):
            invalid += 1
        elif dedupe and value in seen:
            duplicate += 1
        else:
            seen.add(value)
            expected.append((value, str(path), number))
    source = IdSource([str(path)], dedupe=dedupe, block_size=block_size)
    if blank == len(lines):
        assert "no ids" in str(problem_of(source))
        return
    assert run(source) == expected
    stats = source.stats
    assert (stats.blank, stats.ids_invalid, stats.ids_duplicate) == (blank, invalid, duplicate)
    assert stats.ids_read - stats.ids_invalid - stats.ids_duplicate == len(expected)
