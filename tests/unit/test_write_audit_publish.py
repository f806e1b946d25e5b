"""Write-audit-publish: a delivery replaces the published day only after it passes the gate.

Each gate-failing kind of re-delivery leaves the published partition exactly as it was, stays
inspectable (staged rows, quarantine, ``data_status``) and has its report at the printed path;
a passing re-delivery replaces the day in one transaction.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from include.data import catalog_base, catalog_duckdb, quality
from include.data.catalog import get_catalog
from include.data.synthetic import generate_reviews
from include.pipeline import steps
from include.pipeline.context import RunInfo

DS = "2026-04-01"
HEADER = "review_id,product_category,review_body,star_rating,review_date\n"
LONG = "word " * 40_000  # 200 KB, far over the 5,000-character rule

# kind -> (three delivered rows, text the failure must name)
BAD_DELIVERIES = {
    "duplicate_ids": ("x1,Dresses,Lovely,5,\nx1,Knits,Too thin,2,\nx3,Pants,Fine,3,\n", "review_id_unique=1"),
    "bad_ratings": ("x1,Dresses,Lovely,0,\nx2,Knits,Too thin,2,\nx3,Pants,Fine,3,\n", "star_rating_integer_1_5=1"),
    "empty_text": ("x1,Dresses,,5,\nx2,Knits,Too thin,2,\nx3,Pants,Fine,3,\n", "review_body_not_null=1"),
    "oversized_text": (f'x1,Dresses,"{LONG}",5,\nx2,Knits,Too thin,2,\nx3,Pants,Fine,3,\n', "review_body_length_1_5000=1"),
    "unseen_categories": ("x1,Tops,Lovely,5,\nx2,Knits,Too thin,2,\nx3,Pants,Fine,3,\n",
                          "'Tops': 1 of 3 rows"),
    "duplicate_texts": ("x1,Dresses,Lovely,5,\nx2,Knits,Lovely,2,\nx3,Pants,Fine,3,\n",
                        "max_duplicate_text_fraction"),
}


def _csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _published_rows(ds: str = DS) -> list[tuple]:
    con = catalog_duckdb.connect()
    try:
        return con.execute(f"SELECT * FROM {catalog_base.RAW} WHERE ds = ? ORDER BY source_file, source_line", [ds]).fetchall()
    finally:
        con.close()


def _info(run_id: str) -> RunInfo:
    return RunInfo(dag_id="review_sentiment_pipeline", run_id=run_id, ds=DS, try_number=1)


def _good_csv(path: Path, n: int, seed: int) -> Path:
    df = generate_reviews(n, seed=seed, start_date=DS, days=1)
    df["review_id"] = [f"s{seed}-{i}" for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    df[["review_id", "product_category", "review_body", "star_rating", "review_date"]].to_csv(path, index=False)
    return path


@pytest.fixture
def published(reviews_home, tmp_path) -> dict:
    """Day DS published from 120 good reviews through the steps both DAGs use."""
    staged = steps.register_backlog(DS, _good_csv(tmp_path / "good.csv", 120, seed=5).as_uri(), run_id="setup")
    steps.validate_dataset(_info("setup"), staged["partitions"], 0.05)
    rows = _published_rows()
    assert len(rows) == 120
    return {"rows": rows, "partition": catalog_duckdb.partition_status()}


@pytest.mark.parametrize("kind", sorted(BAD_DELIVERIES))
def test_a_gate_failing_redelivery_leaves_the_published_day_as_it_was(published, tmp_path, capsys, kind):
    rows, needle = BAD_DELIVERIES[kind]
    bad = _csv(tmp_path / f"{kind}.csv", HEADER + rows)
    run_id = f"bad-{kind}"
    staged = steps.register_backlog(DS, bad.as_uri(), run_id=run_id)
    assert staged["partitions"] == [DS]
    with pytest.raises(quality.DataQualityError) as info:
        steps.validate_dataset(_info(run_id), staged["partitions"], 0.05)
    message = str(info.value)
    assert needle in message, message
    # The published partition: the same rows, byte for byte, and the same bookkeeping.
    assert _published_rows() == published["rows"]
    assert catalog_duckdb.partition_status() == published["partition"]
    # The report outlives the task: in the run's validate/ folder, at the printed path.
    printed = re.search(r"validation report: (\S+)", capsys.readouterr().out).group(1)
    assert Path(printed).is_file() and f"{run_id}/validate/" in printed
    assert f"Report: {printed}" in message and "FAILED" in Path(printed).read_text(encoding="utf-8")
    assert (Path(printed).parent / "gx_data_docs" / "index.html").is_file()
    # The rejected delivery stays inspectable under its run id.
    delivery = staged["deliveries"][0]["delivery_id"]
    waiting = get_catalog().data_status()["deliveries"]
    assert [(d["delivery_id"], d["status"], d["audit_run_id"], d["staged_rows"]) for d in waiting] == [
        (delivery, "rejected", run_id, 3)]
    assert waiting[0]["report_path"] == printed and waiting[0]["reason"] in message


def test_unseen_category_failure_names_column_values_share_tolerance_and_param(published, tmp_path):
    staged = steps.register_backlog(DS, _csv(tmp_path / "u.csv", HEADER + BAD_DELIVERIES["unseen_categories"][0]).as_uri(),
                                    run_id="u")
    with pytest.raises(quality.DataQualityError) as info:
        steps.validate_dataset(_info("u"), staged["partitions"], 0.05)
    message = str(info.value)
    for part in ("product_category", "'Tops': 1 of 3 rows", "33.3%", "tolerance 5.0%", "unseen_category_tolerance"):
        assert part in message, message
    assert "observed None" not in message and "Worst rules: none" not in message


def test_row_level_failures_are_quarantined_under_the_rejected_delivery(published, tmp_path):
    staged = steps.register_backlog(DS, _csv(tmp_path / "r.csv", HEADER + BAD_DELIVERIES["bad_ratings"][0]).as_uri(),
                                    run_id="q")
    with pytest.raises(quality.DataQualityError):
        steps.validate_dataset(_info("q"), staged["partitions"], 0.05)
    con = catalog_duckdb.connect()
    got = con.execute(f"SELECT delivery_id, run_id, rule, source_line, value FROM {catalog_base.QUARANTINE} "
                      "WHERE run_id = 'q'").fetchall()
    con.close()
    assert got == [(staged["deliveries"][0]["delivery_id"], "q", "star_rating_integer_1_5", 2, "0")]
    # ... and they do not hide any published row from the export.
    assert get_catalog().export_clean(DS, tmp_path / "clean.parquet") == 120


def test_an_identical_redelivery_is_a_noop_that_says_so(published, tmp_path, capsys):
    before = catalog_duckdb.table_counts()
    again = steps.register_backlog(DS, (tmp_path / "good.csv").as_uri(), run_id="again")
    assert again["partitions"] == [] and again["deliveries"][0]["status"] == "unchanged"
    assert "identical to the published one" in capsys.readouterr().out
    assert catalog_duckdb.table_counts() == before
    assert steps.validate_dataset(_info("again"), again["partitions"], 0.05)["skipped"] is True


def test_a_passing_redelivery_replaces_the_day_atomically_for_a_concurrent_reader(published, tmp_path):
    old_id = catalog_duckdb.partition_status()[0]["delivery_id"]
    staged = steps.register_backlog(DS, _good_csv(tmp_path / "new.csv", 3000, seed=9).as_uri(), run_id="new")
    new_id = staged["deliveries"][0]["delivery_id"]
    seen: list[list[tuple]] = []
    stop = threading.Event()

    def reader() -> None:
        con = catalog_duckdb.connect()  # same process: another connection to the same database
        try:
            while not stop.is_set():
                seen.append(con.execute(f"SELECT delivery_id, count(*) FROM {catalog_base.RAW} WHERE ds = ? "
                                        "GROUP BY delivery_id", [DS]).fetchall())
        finally:
            con.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        while not seen:  # the reader has started reading the old partition
            thread.join(0.01)
        steps.validate_dataset(_info("new"), staged["partitions"], 0.05)
        n_before = len(seen)
        while len(seen) < n_before + 3:  # ... and reads the new one afterwards
            thread.join(0.01)
    finally:
        stop.set()
        thread.join()
    states = {tuple(s) for s in seen}
    assert states <= {((old_id, 120),), ((new_id, 3000),)}, states  # never a mix, never none
    assert ((old_id, 120),) in states and ((new_id, 3000),) in states
    assert catalog_duckdb.partition_status()[0]["delivery_id"] == new_id
    assert catalog_duckdb.table_counts()["reviews_staging"] == 0  # the staged rows moved, not copied
    assert get_catalog().export_clean(DS, tmp_path / "clean.parquet") == 3000


def test_backlog_with_a_bad_day_publishes_nothing_and_a_rejected_backlog_day_is_not_restaged(reviews_home, tmp_path):
    landing = catalog_base.landing_root()
    _good_csv(landing / "ds=2026-04-01" / "part-00000.csv", 50, seed=1)
    _csv(landing / "ds=2026-04-02" / "part-00000.csv", HEADER + "".join(f"z{i},Dresses,Text {i},0,\n" for i in range(20)))
    _good_csv(landing / "ds=2026-04-03" / "part-00000.csv", 50, seed=3)
    staged = steps.register_backlog("2026-04-03", run_id="b1")
    assert staged["partitions"] == ["2026-04-01", "2026-04-02", "2026-04-03"]
    with pytest.raises(quality.DataQualityError, match="2026-04-02"):
        steps.validate_dataset(_info("b1"), staged["partitions"], 0.05)
    assert get_catalog().registered_partitions() == [] and catalog_duckdb.table_counts()["reviews_raw"] == 0
    # Only the bad day is rejected; the good ones, refused with the batch, stay staged.
    assert [(d["ds"], d["status"]) for d in get_catalog().data_status()["deliveries"]] == [
        ("2026-04-01", "staged"), ("2026-04-02", "rejected"), ("2026-04-03", "staged")]
    # Next night: the bad landed day (not the run's own) is not staged again; the others pass.
    (landing / "ds=2026-04-04").mkdir()
    _good_csv(landing / "ds=2026-04-04" / "part-00000.csv", 50, seed=4)
    staged = steps.register_backlog("2026-04-04", run_id="b2")
    assert staged["partitions"] == ["2026-04-01", "2026-04-03", "2026-04-04"]
    steps.validate_dataset(_info("b2"), staged["partitions"], 0.05)
    assert get_catalog().registered_partitions() == ["2026-04-01", "2026-04-03", "2026-04-04"]


def test_rejected_rows_are_purged_after_the_retention_period(published, tmp_path, monkeypatch):
    staged = steps.register_backlog(DS, _csv(tmp_path / "r.csv", HEADER + BAD_DELIVERIES["empty_text"][0]).as_uri(),
                                    run_id="old")
    with pytest.raises(quality.DataQualityError):
        steps.validate_dataset(_info("old"), staged["partitions"], 0.05)
    assert catalog_duckdb.table_counts()["reviews_staging"] == 3
    monkeypatch.setenv("REVIEWS_REJECTED_RETENTION_DAYS", "0")
    steps.register_backlog(DS, (tmp_path / "good.csv").as_uri(), run_id="later")  # any registration purges
    counts = catalog_duckdb.table_counts()
    assert counts["reviews_staging"] == 0 and counts["reviews_raw"] == 120
    assert [d["status"] for d in get_catalog().data_status()["deliveries"]] == ["expired"]
    monkeypatch.setenv("REVIEWS_REJECTED_RETENTION_DAYS", "two weeks")
    with pytest.raises(catalog_base.CatalogError, match="REVIEWS_REJECTED_RETENTION_DAYS"):
        catalog_base.retention_days()
