"""Bad landed input: each case gives a clear message (or is quarantined) and leaves what is
already catalogued untouched."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from include.data import catalog_base, catalog_duckdb, quality
from include.data.catalog import get_catalog

HEADER = "review_id,product_category,review_body,star_rating,review_date\n"
GOOD_ROWS = "g1,Dresses,Lovely dress,5,2026-01-01\ng2,Knits,Too thin,2,2026-01-01\ng3,Pants,Fine,3,2026-01-01\n"


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _snapshot() -> dict:
    con = catalog_duckdb.connect()
    try:
        return {t: sorted(map(repr, con.execute(f"SELECT * FROM {t}").fetchall()))
                for t in (catalog_base.RAW, catalog_base.QUARANTINE, catalog_base.PARTITIONS)}
    finally:
        con.close()


@pytest.fixture
def catalogued(reviews_home, tmp_path) -> dict:
    """A catalog with one registered and validated partition; returns its snapshot."""
    get_catalog().register_partition("2026-01-01", str(_write(tmp_path / "good.csv", HEADER + GOOD_ROWS)))
    quality.validate_partitions(["2026-01-01"], "setup", 0.0, tmp_path / "setup-report")
    return _snapshot()


def _refused(path: Path, *needles: str, ds: str = "2026-01-01") -> str:
    with pytest.raises(catalog_base.RegistrationError) as info:
        get_catalog().register_partition(ds, str(path))
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    return message


def test_header_only_csv_is_refused_and_catalog_unchanged(catalogued, tmp_path):
    bad = _write(tmp_path / "header_only.csv", HEADER)
    _refused(bad, str(bad), "header but no data rows")
    assert _snapshot() == catalogued


def test_semicolon_delimited_file_is_refused_naming_the_delimiter(catalogued, tmp_path):
    bad = _write(tmp_path / "semi.csv", HEADER.replace(",", ";") + "x;Dresses;ok;5;2026-01-01\n")
    _refused(bad, str(bad), "semicolon", "comma-separated")
    assert _snapshot() == catalogued


def test_latin1_file_is_refused_with_line_and_byte_offset(catalogued, tmp_path):
    text = HEADER + "l1,Dresses,Nice,5,2026-01-02\nl2,Knits,Très joli,4,2026-01-02\n"
    bad = _write(tmp_path / "latin1.csv", text.encode("latin-1"))
    offset = text.encode("latin-1").index("è".encode("latin-1"))
    _refused(bad, str(bad), "not valid UTF-8", "line 3", f"byte offset {offset}", "0xe8")
    assert _snapshot() == catalogued


def test_zip_renamed_to_csv_is_refused(catalogued, tmp_path):
    bad = tmp_path / "drop.csv"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("part-00000.csv", HEADER + GOOD_ROWS)
    _refused(bad, str(bad), "ZIP archive", "unzip")
    assert _snapshot() == catalogued


def test_empty_file_missing_column_and_missing_path_are_refused(catalogued, tmp_path):
    empty = _write(tmp_path / "empty.csv", b"")
    _refused(empty, str(empty), "empty file")
    no_rating = _write(tmp_path / "no_rating.csv", "review_id,product_category,review_body\nx,Dresses,ok\n")
    _refused(no_rating, str(no_rating), "missing column(s) star_rating")
    _refused(tmp_path / "nowhere", "does not exist")
    binary = _write(tmp_path / "binary.csv", HEADER.encode() + b"x,Dresses,\x00\x01,5,\n")
    _refused(binary, "NUL byte")
    assert _snapshot() == catalogued


def test_unbalanced_quote_is_refused_without_dumping_the_line(catalogued, tmp_path):
    bad = _write(tmp_path / "broken.csv", HEADER + 'b1,Dresses,"never closed ' + "x" * 5000 + ",5,\n")
    message = _refused(bad, str(bad), "unbalanced double quote", "opened on line 2")
    assert len(message) < 1500
    assert _snapshot() == catalogued


def test_a_failed_drop_in_a_folder_keeps_the_good_file_out_too(catalogued, tmp_path):
    folder = tmp_path / "ds=2026-01-01"
    _write(folder / "part-00000.csv", HEADER + "n1,Dresses,New,5,\n")
    _write(folder / "part-00001.csv", HEADER)  # header only
    _refused(folder, "part-00001.csv", "no data rows")
    assert _snapshot() == catalogued


def test_quoted_newlines_load_with_the_line_each_record_starts_on(reviews_home, tmp_path):
    text = (HEADER + 'q1,Dresses,"first line\nsecond line\nthird",5,\n'
            + 'q2,Knits,"one ""quoted"" word",4,\n' + 'q3,Pants,"a\r\nb",3,\n' + "q4,Jeans,plain,2,\n")
    src = _write(tmp_path / "multi.csv", text)
    assert get_catalog().register_partition("2026-01-03", str(src))["rows"] == 4
    con = catalog_duckdb.connect()
    rows = con.execute(f"SELECT review_id, review_body, source_line FROM {catalog_base.STAGING} ORDER BY source_line").fetchall()
    con.close()
    assert rows == [("q1", "first line\nsecond line\nthird", 2), ("q2", 'one "quoted" word', 5),
                    ("q3", "a\r\nb", 6), ("q4", "plain", 8)]


def test_blank_lines_take_the_exact_slow_path_for_line_numbers(reviews_home, tmp_path):
    src = _write(tmp_path / "blank.csv", HEADER + "b1,Dresses,x,5,\n\n\nb2,Knits,\"y\nz\",4,\nb3,Pants,w,3,\n")
    get_catalog().register_partition("2026-01-03", str(src))
    con = catalog_duckdb.connect()
    lines = con.execute(f"SELECT review_id, source_line FROM {catalog_base.STAGING} ORDER BY source_line").fetchall()
    con.close()
    assert lines == [("b1", 2), ("b2", 5), ("b3", 7)]


def test_bad_star_ratings_are_quarantined_with_rule_file_and_line(reviews_home, tmp_path):
    src = _write(tmp_path / "ratings.csv", HEADER + "r1,Dresses,ok,five,\nr2,Dresses,ok,0,\nr3,Dresses,ok,6,\n"
                 + "r4,Dresses,fine,5,\n")
    get_catalog().register_partition("2026-01-04", str(src))
    with pytest.raises(quality.DataQualityError, match="star_rating_integer_1_5=3"):
        quality.validate_partitions(["2026-01-04"], "r", 0.5, tmp_path / "rep")
    con = catalog_duckdb.connect()
    got = con.execute(f"SELECT review_id, rule, source_file, source_line, value FROM {catalog_base.QUARANTINE} "
                      "ORDER BY source_line").fetchall()
    con.close()
    assert got == [("r1", "star_rating_integer_1_5", str(src), 2, "five"),
                   ("r2", "star_rating_integer_1_5", str(src), 3, "0"),
                   ("r3", "star_rating_integer_1_5", str(src), 4, "6")]


def test_duplicate_ids_across_two_drops_are_reported_and_the_later_drop_wins(reviews_home, tmp_path):
    d1 = _write(tmp_path / "d1.csv", HEADER + "same,Dresses,old text,1,\nonly1,Knits,a,4,\n")
    d2 = _write(tmp_path / "d2.csv", HEADER + "same,Dresses,new text,5,\nonly2,Knits,b,4,\n")
    get_catalog().register_partition("2026-01-05", str(d1))
    get_catalog().register_partition("2026-01-06", str(d2))
    result = quality.validate_partitions(["2026-01-05", "2026-01-06"], "dup", 0.0, tmp_path / "rep")
    assert result["duplicate_ids_across_partitions"] == 1 and result["bad_rows"] == 0
    dest = tmp_path / "clean.parquet"
    assert get_catalog().export_clean("2026-01-06", dest) == 3
    import pandas as pd

    clean = pd.read_parquet(dest).set_index("review_id")
    assert clean.loc["same", "review_body"] == "new text" and clean.loc["same", "star_rating"] == 5


def test_20mb_single_review_is_quarantined_not_crashing(reviews_home, tmp_path):
    src = tmp_path / "huge.csv"
    with open(src, "w", encoding="utf-8") as fh:
        fh.write(HEADER + "ok1,Dresses,fine,5,\n")
        fh.write('huge,Dresses,"' + "word " * 4_000_000 + '",4,\n')  # 20 MB of text
        fh.write("ok2,Knits,also fine,4,\n")
    assert src.stat().st_size > 20_000_000
    get_catalog().register_partition("2026-01-07", str(src))
    result = quality.validate_partitions(["2026-01-07"], "huge", 0.5, tmp_path / "rep")
    assert result["rule_counts"]["review_body_length_1_5000"] == 1 and result["bad_rows"] == 1
    con = catalog_duckdb.connect()
    line, value = con.execute(f"SELECT source_line, value FROM {catalog_base.QUARANTINE}").fetchall()[0]
    con.close()
    assert line == 3 and len(value) == 200  # the stored value is cut, not 20 MB
    assert get_catalog().export_clean("2026-01-07", tmp_path / "clean.parquet") == 2
    assert (tmp_path / "rep" / "validation_report.html").stat().st_size < 2_000_000
