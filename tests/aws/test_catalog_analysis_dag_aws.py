"""review_catalog_analysis end to end with dag.test() on the aws backend, against moto's server:
real reviews landed on S3 -> Glue partitions (write-audit-publish) -> the questions on Athena ->
plots and report on S3.

moto does not execute SQL: the Athena answers are queued through moto's API
(POST /moto-api/static/athena/query-results) in the order the queries run, and the test
asserts the query strings sent. Drift is left without a baseline (skipped) so that no other
task consumes a queued answer.
"""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import boto3
import pandas as pd

from include.analytics import analysis
from include.common import aws
from include.common.config import safe_name
from include.data.catalog import get_catalog
from include.data.catalog_glue import athena_sql
from include.data.landing import land_daily_drops
from tests.aws.conftest import BUCKET, REGION
from tests.aws.test_athena_analysis import ANSWERS, DB, _queries_sent, _queue
from tests.integration.conftest import DS, run_dag


def test_analysis_dag_on_aws_publishes_glue_partitions_and_writes_the_athena_report_to_s3(
        aws_account, aws_env, reviews_home, airflow_db, tmp_path):
    drops = land_daily_drops(tmp_path / "landing", date.fromisoformat(DS), days=2, limit=600)
    cfg = aws.load_aws_config()
    aws.upload_dir(cfg, tmp_path / "landing", cfg.s3_uri("landing/reviews"))
    _queue(aws_env, [pd.DataFrame({"reviews": [600]}), *ANSWERS.values()])

    dr, states = run_dag("review_catalog_analysis")
    assert str(dr.state).endswith("success"), states
    assert all(s.endswith("success") for s in states.values()), states

    days = sorted(d.ds for d in drops)
    assert get_catalog().registered_partitions() == days
    glue = boto3.client("glue", region_name=REGION)
    parts = glue.get_partitions(DatabaseName=DB, TableName="reviews_raw")["Partitions"]
    assert sum(int(p["Parameters"]["rows"]) for p in parts) == 600
    assert all(p["Parameters"]["passed"] == "true" for p in parts)

    params = {"ds_from": date(1970, 1, 1), "ds_to": date(9999, 12, 31), "top_n": 3, "min_reviews": 20,
              "bin_width": 10}
    expected = [athena_sql(analysis.COUNT_SQL, params, DB)] + [athena_sql(q.sql, params, DB)
                                                               for q in analysis.QUESTIONS]
    assert sorted(_queries_sent()) == sorted(expected)

    run = cfg.s3_uri(f"runs/review_catalog_analysis/{safe_name(dr.run_id)}")
    keys = {Path(k).name for k in aws.list_keys(cfg, run + "/")}
    assert {"report.html", "summary.json", "validation_report.html", "validation.json"} <= keys
    assert {f"{q.name}.png" for q in analysis.QUESTIONS} <= keys
    summary = json.loads(aws.read_bytes(cfg, f"{run}/analysis/summary.json"))
    assert summary["reviews"] == int(ANSWERS["reviews_per_category"]["reviews"].sum())  # what Athena answered
    assert all(k.startswith(f"s3://{BUCKET}/") for k in summary["plots"].values())
