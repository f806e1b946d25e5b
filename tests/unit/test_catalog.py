"""The DuckDB catalog: registration, bookkeeping, comments, export."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from include.data import catalog_base, catalog_duckdb, quality
from include.data.catalog import get_catalog
from include.data.synthetic import generate_reviews, write_landing

HEADER = "review_id,product_category,review_body,star_rating,review_date\n"


def _csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_register_landing_partition_reads_every_csv_of_the_day(reviews_home):
    df = generate_reviews(300, seed=1, days=2)
    write_landing(df, catalog_base.landing_root())
    write_landing(generate_reviews(50, seed=2, start_date="2026-01-01"), catalog_base.landing_root(), part=1)
    assert get_catalog().landing_partitions() == ["2026-01-01", "2026-01-02"]
    result = get_catalog().register_partition("2026-01-01")
    expected = int((df["review_date"] == "2026-01-01").sum()) + 50
    assert result["ds"] == "2026-01-01" and result["rows"] == expected and len(result["files"]) == 2
    assert result["bytes"] == sum(Path(f).stat().st_size for f in result["files"])
    # write-audit-publish: registration only stages; the gate publishes
    assert result["status"] == "staged" and get_catalog().registered_partitions() == []
    assert catalog_duckdb.table_counts()["reviews_staging"] == expected and catalog_duckdb.table_counts()["reviews_raw"] == 0


def test_reregistering_a_partition_stages_it_and_the_published_one_stays_until_the_gate_passes(reviews_home, tmp_path):
    first = _csv(tmp_path / "a.csv", HEADER + "a,Dresses,x,5,\nb,Dresses,y,4,\n")
    get_catalog().register_partition("2026-02-01", str(first))
    quality.validate_partitions(["2026-02-01"], "r1", 0.0, tmp_path / "rep")
    assert catalog_duckdb.partition_status()[0]["passed"] is True
    second = _csv(tmp_path / "b.csv", HEADER + "c,Knits,z,3,\n")
    get_catalog().register_partition("2026-02-01", second.as_uri())  # file:// URIs work too
    status = catalog_duckdb.partition_status()
    assert len(status) == 1 and status[0]["rows"] == 2 and status[0]["passed"] is True
    assert get_catalog().export_clean("2026-02-01", tmp_path / "x.parquet") == 2
    quality.validate_partitions(["2026-02-01"], "r2", 0.0, tmp_path / "rep2")
    status = catalog_duckdb.partition_status()
    assert len(status) == 1 and status[0]["rows"] == 1 and status[0]["validation_run_id"] == "r2"
    assert catalog_duckdb.table_counts()["reviews_raw"] == 1 and catalog_duckdb.table_counts()["reviews_staging"] == 0


def test_review_date_column_is_optional(reviews_home, tmp_path):
    src = _csv(tmp_path / "nodate.csv", "review_id,product_category,review_body,star_rating\na,Dresses,x,5\n")
    get_catalog().register_partition("2026-02-02", str(src))
    quality.validate_partitions(["2026-02-02"], "r", 0.0, tmp_path / "rep")
    get_catalog().export_clean("2026-02-02", tmp_path / "c.parquet")
    assert str(pd.read_parquet(tmp_path / "c.parquet")["review_date"][0]) == "2026-02-02"


def test_bad_ds_is_refused(reviews_home, tmp_path):
    with pytest.raises(catalog_base.RegistrationError, match="YYYY-MM-DD"):
        get_catalog().register_partition("yesterday", str(tmp_path))


def test_tables_and_columns_carry_comments_in_the_reviews_schema(reviews_home):
    con = catalog_duckdb.connect()
    tables = dict(con.execute("SELECT table_name, comment FROM duckdb_tables() WHERE schema_name = 'reviews'").fetchall())
    cols = con.execute("SELECT column_name, comment FROM duckdb_columns() "
                       "WHERE schema_name = 'reviews' AND table_name = 'reviews_raw'").fetchall()
    con.close()
    assert set(tables) == {"reviews_raw", "reviews_quarantine", "partitions", "reviews_staging", "deliveries"}
    assert all(tables.values())
    assert len(cols) == 9 and all(comment for _, comment in cols)


def test_export_clean_is_typed_filtered_by_range_and_skips_quarantine(reviews_home, tmp_path):
    for ds, rows in (("2026-03-01", "a,Dresses,x,5,2026-02-27\nb,Dresses,y,five,\n"),
                     ("2026-03-02", "c,Knits,z,1,\n"), ("2026-03-03", "d,Knits,w,2,\n")):
        get_catalog().register_partition(ds, str(_csv(tmp_path / f"{ds}.csv", HEADER + rows)))
    quality.validate_partitions(["2026-03-01", "2026-03-02", "2026-03-03"], "r", 0.5, tmp_path / "rep")
    dest = tmp_path / "out" / "clean.parquet"
    n = get_catalog().export_clean("2026-03-02", dest, ds_from="2026-03-01")
    df = pd.read_parquet(dest)
    assert n == 2 and sorted(df["review_id"]) == ["a", "c"]
    import pyarrow.parquet as pq

    schema = {f.name: str(f.type) for f in pq.read_schema(dest)}
    assert schema == {"review_id": "string", "product_category": "string", "review_body": "string",
                      "star_rating": "int32", "review_date": "date32[day]", "ds": "date32[day]"}
    assert str(df.set_index("review_id").loc["a", "review_date"]) == "2026-02-27"
    assert not list(dest.parent.glob(".*tmp*"))  # atomic: no temp file left behind


def test_failed_gate_keeps_partition_out_of_export(reviews_home, tmp_path):
    get_catalog().register_partition("2026-03-05", str(_csv(tmp_path / "ok.csv", HEADER + "a,Dresses,x,5,\n")))
    get_catalog().register_partition("2026-03-06", str(_csv(tmp_path / "bad.csv", HEADER + "b,Dresses,x,0,\n")))
    quality.validate_partitions(["2026-03-05"], "r", 0.0, tmp_path / "rep1")
    with pytest.raises(quality.DataQualityError):
        quality.validate_partitions(["2026-03-06"], "r", 0.0, tmp_path / "rep2")
    assert get_catalog().export_clean("2026-03-06", tmp_path / "c.parquet") == 1
    assert [(p["ds"], p["passed"]) for p in catalog_duckdb.partition_status()] == [("2026-03-05", True)]
    assert [(d["ds"], d["status"]) for d in get_catalog().data_status()["deliveries"]] == [("2026-03-06", "rejected")]


def test_registered_partitions_of_an_empty_state_dir_is_empty(reviews_home):
    assert get_catalog().registered_partitions() == [] and get_catalog().landing_partitions() == []
