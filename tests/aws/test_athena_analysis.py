"""The analysis DAG's questions through Athena (awswrangler, ``ctas_approach=False``) against moto.

moto does not execute SQL: Athena returns no rows unless results are queued through moto's
API (POST /moto-api/static/athena/query-results), one result per query in the order the
queries run. So these tests queue the answers, and assert what moto CAN prove: the exact
query strings sent (the DuckDB questions in Athena's dialect, parameters bound as typed
literals), and that the plots and the report land on S3 under the run's prefix. Whether the
SQL is right on real Athena is not provable here; the same questions run on DuckDB in
tests/unit/test_analysis.py.
"""
from __future__ import annotations

import json
import urllib.request
from datetime import date

import boto3
import pandas as pd
import pytest

from include.analytics import analysis, drift
from include.common import aws
from include.data import catalog_base
from include.data.catalog_glue import athena_sql
from include.pipeline import steps
from include.pipeline.context import RunInfo
from tests.aws.conftest import BUCKET, REGION

DB = "review_sentiment"
ATHENA_TYPES = {"object": "varchar", "str": "varchar", "int64": "bigint", "float64": "double"}
CATS = ["Dresses", "Knits", "Blouses"]

ANSWERS = {  # what the queued Athena results say, question by question (QUESTIONS order)
    "reviews_per_category": pd.DataFrame({"product_category": CATS, "reviews": [30, 20, 10]}),
    "avg_rating_per_category": pd.DataFrame({"product_category": CATS, "avg_star_rating": [4.2, 3.9, 3.1],
                                             "reviews": [30, 20, 10]}),
    "reviews_per_rating_and_category": pd.DataFrame({"product_category": ["Dresses", "Dresses", "Knits", "Blouses"],
                                                     "star_rating": [5, 1, 4, 3], "reviews": [25, 5, 20, 10]}),
    "sentiment_per_category": pd.DataFrame({"product_category": ["Dresses", "Dresses", "Knits", "Blouses"],
                                            "sentiment": ["positive", "negative", "positive", "neutral"],
                                            "reviews": [25, 5, 20, 10], "pct_of_category": [83.33, 16.67, 100.0, 100.0]}),
    "review_length_words": pd.DataFrame({"words_from": [0, 10, 20], "bin_width": [10, 10, 10], "reviews": [12, 30, 18]}),
    "most_least_positive_categories": pd.DataFrame({
        "group": ["most positive", "least positive"], "product_category": ["Knits", "Blouses"],
        "reviews": [20, 10], "positive_share": [1.0, 0.0], "avg_star_rating": [4.0, 3.0]}),
}


def _queue(moto_url: str, frames: list[pd.DataFrame]) -> None:
    """Queue one Athena result per frame in moto (header row first, as Athena returns it)."""
    results = []
    for df in frames:
        header = {"Data": [{"VarCharValue": c} for c in df.columns]}
        rows = [{"Data": [{"VarCharValue": str(v)} for v in row]} for row in df.itertuples(index=False)]
        info = [{"Name": c, "Label": c, "Type": ATHENA_TYPES[str(df[c].dtype)], "CatalogName": "hive",
                 "SchemaName": "", "TableName": "", "Precision": 0, "Scale": 0, "Nullable": "UNKNOWN",
                 "CaseSensitive": True} for c in df.columns]
        results.append({"rows": [header, *rows], "column_info": info})
    request = urllib.request.Request(f"{moto_url}/moto-api/static/athena/query-results", method="POST",
                                     data=json.dumps({"region": REGION, "results": results}).encode(),
                                     headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(request, timeout=10).status == 201


def _queries_sent() -> list[str]:
    client = boto3.client("athena", region_name=REGION)
    ids = client.list_query_executions()["QueryExecutionIds"]
    return [client.get_query_execution(QueryExecutionId=i)["QueryExecution"]["Query"] for i in ids]


@pytest.fixture
def aws_analysis(aws_account, aws_env, reviews_home):
    return aws_env


def test_the_analysis_step_asks_athena_and_writes_plots_and_report_to_s3(aws_analysis):
    _queue(aws_analysis, [pd.DataFrame({"reviews": [60]}), *ANSWERS.values()])
    info = RunInfo(dag_id="review_catalog_analysis", run_id="manual__a1", ds="2026-03-05")
    result = steps.analyse(info, "2026-03-01", "2026-03-05", top_n=3)

    params = {"ds_from": date(2026, 3, 1), "ds_to": date(2026, 3, 5), "top_n": 3, "min_reviews": 20, "bin_width": 10}
    expected = [athena_sql(analysis.COUNT_SQL, params, DB)] + [athena_sql(q.sql, params, DB) for q in analysis.QUESTIONS]
    assert sorted(_queries_sent()) == sorted(expected)
    length = athena_sql(next(q.sql for q in analysis.QUESTIONS if q.name == "review_length_words"), params, DB)
    assert "cardinality(regexp_split(trim(review_body), '\\s+'))" in length
    assert "(words / 10) * 10 AS words_from" in length and "GROUP BY 1" in length
    for sql in expected:
        assert "$" not in sql and "QUALIFY" not in sql and "reviews.reviews_typed" not in sql
        assert f"FROM {DB}.reviews_raw r" in sql and f"FROM {DB}.reviews_quarantine q" in sql
        assert "ds BETWEEN DATE '2026-03-01' AND DATE '2026-03-05'" in sql

    prefix = "rs/runs/review_catalog_analysis/manual__a1/analysis/"
    keys = set(aws.list_keys(aws.load_aws_config(), f"s3://{BUCKET}/{prefix}"))
    assert {prefix + n for n in ("report.html", "summary.json", *(f"{q.name}.png" for q in analysis.QUESTIONS))} <= keys
    assert result["report_path"] == f"s3://{BUCKET}/{prefix}report.html"
    assert result["plots"]["review_length_words"] == f"s3://{BUCKET}/{prefix}review_length_words.png"
    assert result["reviews"] == 60
    summary = json.loads(aws.read_bytes(aws.load_aws_config(), f"s3://{BUCKET}/{prefix}summary.json"))
    assert summary["answers"]["reviews_per_category"][0] == {"product_category": "Dresses", "reviews": 30}
    report = aws.read_bytes(aws.load_aws_config(), f"s3://{BUCKET}/{prefix}report.html").decode()
    assert "Which product categories have the most reviews?" in report and "Blouses" in report


def test_no_rows_in_the_range_is_a_clear_error_naming_the_glue_partitions(aws_analysis):
    _queue(aws_analysis, [pd.DataFrame({"reviews": [0]})])
    with pytest.raises(analysis.AnalysisError, match=r"no valid reviews .* registered partitions: none"):
        analysis.answer_questions("2026-01-01", "2026-01-31")
    assert len(_queries_sent()) == 1


def test_only_dates_and_numbers_are_bound_into_athena_sql():
    sql = f"SELECT count(*) FROM {catalog_base.TYPED} WHERE ds = $ds_to AND review_id = $who"
    with pytest.raises(catalog_base.CatalogError, match=r"\$who=.x' OR 1=1.: only dates and numbers"):
        athena_sql(sql, {"ds_to": date(2026, 1, 1), "who": "x' OR 1=1"}, DB)
    with pytest.raises(catalog_base.CatalogError, match=r"\$missing has no value"):
        athena_sql("SELECT $missing", {}, DB)
    with pytest.raises(catalog_base.CatalogError, match="glue_database 'db; drop'"):
        athena_sql("SELECT 1", {}, "db; drop")


def test_check_drift_reads_the_baseline_from_s3_asks_athena_and_writes_its_report_to_s3(aws_analysis):
    import io

    baseline = pd.DataFrame({"product_category": ["Dresses"] * 50 + ["Knits"] * 50,
                             "review_body": ["nice and warm"] * 100, "star_rating": [5] * 80 + [1] * 20})
    buf = io.BytesIO()
    baseline.to_parquet(buf, index=False)
    baseline_uri = f"s3://{BUCKET}/rs/runs/review_sentiment_pipeline/r0/export/clean.parquet"
    aws.write_bytes(aws.load_aws_config(), baseline_uri, buf.getvalue())
    # moto answers with what is queued: a current mix shifted to 1-star reviews
    _queue(aws_analysis, [pd.DataFrame({"product_category": ["Dresses"] * 10, "review_body": ["cold"] * 10,
                                        "star_rating": [1] * 10})])
    info = RunInfo(dag_id="review_catalog_analysis", run_id="manual__d1", ds="2026-03-05")
    result = steps.check_drift(info, {"partitions": ["2026-03-04", "2026-03-05"]}, baseline_uri, 0.2)

    (sent,) = _queries_sent()
    assert sent == athena_sql(drift.CURRENT_SQL,
                              {"ds": [date(2026, 3, 4), date(2026, 3, 5)]}, DB)
    assert "WHERE contains(ARRAY[DATE '2026-03-04', DATE '2026-03-05'], ds)" in sent
    assert result["drift"] and "star_rating" in result["drifted"] and result["rows_baseline"] == 100
    prefix = "rs/runs/review_catalog_analysis/manual__d1/drift/"
    assert result["report_path"] == f"s3://{BUCKET}/{prefix}drift_report.html"
    keys = set(aws.list_keys(aws.load_aws_config(), f"s3://{BUCKET}/{prefix}"))
    assert {prefix + "drift_report.html", prefix + "drift.json", prefix + "drift_star_rating.png"} <= keys
