"""Bad input fails the run at register_dataset with the file and problem named; the catalog
keeps exactly what it had."""
from __future__ import annotations

import pytest

from include.data import catalog_duckdb, quality
from include.data.catalog import get_catalog
from tests.integration.conftest import DS, TINY, run_dag

HEADER = "review_id,product_category,review_body,star_rating,review_date\n"


def _catalog_snapshot() -> list[tuple]:
    con = catalog_duckdb.connect(read_only=True)
    try:
        return con.execute("SELECT * FROM reviews.reviews_raw ORDER BY ds, source_file, source_line").fetchall()
    finally:
        con.close()


def _bad_files(folder):
    folder.mkdir()
    (folder / "missing_column.csv").write_text("review_id,product_category,review_body\nr1,Dresses,nice\n")
    (folder / "empty.csv").write_bytes(b"")
    (folder / "latin1.csv").write_bytes((HEADER + "r1,Dresses,très jolie robe,5,2026-11-20\n").encode("latin-1"))
    return folder


@pytest.mark.parametrize("case, expected", [
    ("does_not_exist.csv", "does_not_exist.csv"),
    ("missing_column.csv", "star_rating"),
    ("empty.csv", "empty"),
    ("latin1.csv", "UTF-8"),
])
def test_bad_input_fails_at_register_and_leaves_catalog_unchanged(landed, tmp_path, capfd, case, expected):
    get_catalog().register_partition(DS)  # something already catalogued (staged, then published) that must survive
    quality.validate_partitions([DS], "setup", 0.05, tmp_path / "setup-report")
    before = _catalog_snapshot()
    assert before
    bad = _bad_files(tmp_path / "bad") / case
    dr, states = run_dag("review_sentiment_pipeline", **{**TINY, "input_data_uri": bad.as_uri()})
    assert str(dr.state).endswith("failed")
    assert states["register_dataset"].endswith("failed"), states
    assert not states["preprocess"].endswith("success")
    out = capfd.readouterr()
    log = out.out + out.err
    assert "RegistrationError" in log and case in log and expected.lower() in log.lower(), log[-3000:]
    assert _catalog_snapshot() == before
