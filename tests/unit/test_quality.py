"""The data-quality gate: GX suite as code, quarantine, report, thresholds."""
from __future__ import annotations

import json

import great_expectations as gx
import pytest

from include.data import catalog_base, catalog_duckdb, quality
from include.data.catalog import get_catalog
from include.data.synthetic import generate_reviews, write_landing


@pytest.fixture
def synthetic_partition(reviews_home):
    """2,000 synthetic reviews with 4% bad rows, registered as 2026-01-01."""
    df = generate_reviews(2000, seed=11, bad_fraction=0.04)
    write_landing(df, catalog_base.landing_root())
    get_catalog().register_partition("2026-01-01")
    return df


def test_suite_is_a_gx_expectation_suite_covering_every_rule():
    suite = quality.build_suite(quality.GateParams(max_bad_row_fraction=0.05))
    assert isinstance(suite, gx.ExpectationSuite)
    rules = {e.meta["rule"] for e in suite.expectations}
    assert {r.name for r in quality.ROW_RULES} <= rules
    assert {"schema", "row_count_min", "duplicate_texts_max", "product_category_expected_set"} <= rules
    assert all(e.meta["level"] in ("row", "table") for e in suite.expectations)


def test_bad_rows_are_quarantined_per_rule_and_counted(synthetic_partition, tmp_path):
    kinds = synthetic_partition.attrs["bad_kinds"]
    result = quality.validate_partitions(["2026-01-01"], "run-1", 0.05, tmp_path / "rep")
    counts = result["rule_counts"]
    assert counts["star_rating_integer_1_5"] == kinds["rating_word"] + kinds["rating_zero"] + kinds["rating_six"]
    assert counts["review_id_not_null"] == kinds["null_id"]
    assert counts["review_id_unique"] == kinds["duplicate_id"]
    assert counts["review_body_not_null"] == kinds["empty_body"]
    assert counts["review_body_length_1_5000"] == kinds["long_body"]
    assert result["rows"] == 2000 and result["bad_rows"] == 80 and result["bad_fraction"] == 0.04
    assert result["passed"] is True and result["gx_rows_validated"] == 2000
    con = catalog_duckdb.connect()
    q = con.execute(f"SELECT count(DISTINCT (source_file, source_line)), min(run_id), max(run_id) "
                    f"FROM {catalog_base.QUARANTINE}").fetchall()[0]
    con.close()
    assert q == (80, "run-1", "run-1")


def test_revalidation_replaces_earlier_quarantine_rows(synthetic_partition, tmp_path):
    quality.validate_partitions(["2026-01-01"], "run-1", 0.05, tmp_path / "a")
    quality.validate_partitions(["2026-01-01"], "run-2", 0.05, tmp_path / "b")
    con = catalog_duckdb.connect()
    runs = con.execute(f"SELECT run_id, count(*) FROM {catalog_base.QUARANTINE} GROUP BY run_id").fetchall()
    con.close()
    assert runs == [("run-2", 80)]


def test_gate_fails_above_max_bad_fraction_naming_the_worst_rules(synthetic_partition, tmp_path):
    with pytest.raises(quality.DataQualityError) as info:
        quality.validate_partitions(["2026-01-01"], "run-3", 0.01, tmp_path / "rep")
    message = str(info.value)
    assert "bad row fraction 0.0400" in message and "max_bad_row_fraction 0.01" in message
    assert "star_rating_integer_1_5=" in message and "validation_report.html" in message
    assert (tmp_path / "rep" / "validation_report.html").exists()  # the report is written anyway
    assert catalog_duckdb.partition_status() == []  # nothing published
    assert [d["status"] for d in get_catalog().data_status()["deliveries"]] == ["rejected"]


def test_table_level_expectations_fail_the_gate(reviews_home, tmp_path):
    df = generate_reviews(200, seed=2)
    df.loc[:49, "product_category"] = "Gadgets"  # 25% unseen categories
    df.loc[50:99, "review_body"] = "Same text for everyone."  # 25% duplicate texts
    write_landing(df, catalog_base.landing_root())
    get_catalog().register_partition("2026-01-01")
    with pytest.raises(quality.DataQualityError) as info:
        quality.validate_partitions(["2026-01-01"], "t", 0.5, tmp_path / "rep", min_rows=500)
    message = str(info.value)
    for rule in ("row_count_min", "duplicate_texts_max", "product_category_expected_set"):
        assert rule in message, message
    # Unseen categories are tolerated up to the configured share.
    result = quality.validate_partitions(["2026-01-01"], "t", 0.5, tmp_path / "rep2",
                                         unseen_category_tolerance=0.3, max_duplicate_text_fraction=0.3)
    assert result["passed"] and result["bad_rows"] == 0


def test_report_and_gx_artifacts_are_written(synthetic_partition, tmp_path):
    result = quality.validate_partitions(["2026-01-01"], "run-4", 0.05, tmp_path / "rep")
    page = (tmp_path / "rep" / "validation_report.html").read_text(encoding="utf-8")
    assert "PASSED" in page and "star_rating_integer_1_5" in page and "expect_column_values_to_be_in_set" in page
    assert (tmp_path / "rep" / "gx_data_docs" / "index.html").exists()
    gx_result = json.loads((tmp_path / "rep" / "gx_validation_result.json").read_text())
    assert gx_result["statistics"]["evaluated_expectations"] >= 12
    summary = json.loads((tmp_path / "rep" / "validation.json").read_text())
    assert summary["bad_rows"] == result["bad_rows"] and summary["report_path"] == result["report_path"]


def test_unregistered_partition_is_an_error(reviews_home, tmp_path):
    with pytest.raises(catalog_base.CatalogError, match="not registered"):
        quality.validate_partitions(["2030-01-01"], "x", 0.1, tmp_path)


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="max_bad_row_fraction"):
        quality.GateParams(max_bad_row_fraction=1.5)


def test_above_gx_max_rows_gx_checks_a_sample_and_sql_still_checks_every_row(synthetic_partition, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(quality, "GX_MAX_ROWS", 500)
    result = quality.validate_partitions(["2026-01-01"], "s", 0.05, tmp_path / "rep")
    assert result["gx_rows_validated"] == 500 and result["rows"] == 2000 and result["bad_rows"] == 80
    assert "deterministic sample of 500 rows" in (tmp_path / "rep" / "validation_report.html").read_text()


def test_gx_and_sql_agree_on_the_rules_they_both_count(synthetic_partition, tmp_path):
    result = quality.validate_partitions(["2026-01-01"], "c", 0.05, tmp_path / "rep")
    gx_rows = json.loads((tmp_path / "rep" / "validation.json").read_text())["gx_results"]
    by = {(g["rule"], g["expectation"]): g for g in gx_rows}
    for rule, expectation in (("review_body_length_1_5000", "expect_column_value_lengths_to_be_between"),
                              ("star_rating_integer_1_5", "expect_column_values_to_be_in_set"),
                              ("review_body_not_null", "expect_column_values_to_not_be_null"),
                              ("review_id_not_null", "expect_column_values_to_not_be_null")):
        assert by[(rule, expectation)]["unexpected_count"] == result["rule_counts"][rule], rule
