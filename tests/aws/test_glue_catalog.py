"""The catalog on the aws backend (include/data/catalog_glue.py) against moto's server on loopback:
S3 objects, Glue tables and partitions, write-audit-publish, the quality gate's quarantine and
report, the clean export. The steps call the same functions as on the local backend."""
from __future__ import annotations

import io
import json

import boto3
import pandas as pd
import pytest

from include.common import aws
from include.data import catalog_base, quality
from include.data.catalog import get_catalog
from include.data.catalog_glue import QUARANTINE_TABLE, RAW_TABLE, STAGING_TABLE, GlueCatalog
from include.pipeline import steps
from include.pipeline.context import RunInfo
from tests.aws.conftest import BUCKET, REGION

HEADER = "review_id,product_category,review_body,star_rating,review_date\n"
GOOD = HEADER + "a,Dresses,Lovely dress,5,\nb,Knits,Too small,2,\nc,Blouses,Fine blouse,3,\n"
ROOT = f"s3://{BUCKET}/rs"
DB = "review_sentiment"


@pytest.fixture
def aws_catalog(aws_account, reviews_home):
    """The aws backend's catalog in a fresh moto account."""
    return get_catalog()


def _land(text: str | bytes, ds: str, name: str = "part-00000.csv") -> str:
    key = f"rs/landing/reviews/ds={ds}/{name}"
    boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key=key,
                                                      Body=text.encode() if isinstance(text, str) else text)
    return f"s3://{BUCKET}/{key}"


def _keys(prefix: str) -> list[str]:
    cfg = aws.load_aws_config()
    return sorted(aws.list_keys(cfg, f"{ROOT}/{prefix}"))


def _parquet(key: str) -> pd.DataFrame:
    body = boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body))


def _partitions(table: str) -> list[dict]:
    glue = boto3.client("glue", region_name=REGION)
    return sorted(glue.get_partitions(DatabaseName=DB, TableName=table)["Partitions"], key=lambda p: p["Values"])


def test_get_catalog_picks_glue_on_the_aws_backend(aws_catalog):
    assert isinstance(aws_catalog, GlueCatalog)


def test_register_stages_on_s3_and_the_gate_publishes_a_glue_partition(aws_catalog, tmp_path):
    _land(GOOD, "2026-03-01")
    assert get_catalog().landing_partitions() == ["2026-03-01"]
    staged = get_catalog().register_partition("2026-03-01", run_id="r1")
    assert staged["status"] == "staged" and staged["rows"] == 3
    assert staged["files"] == [f"{ROOT}/landing/reviews/ds=2026-03-01/part-00000.csv"]
    # write-audit-publish: staged, not yet published
    assert get_catalog().registered_partitions() == []
    assert [p["Values"] for p in _partitions(STAGING_TABLE)] == [[staged["delivery_id"]]]
    assert _keys("reviews/") == []

    result = quality.validate_partitions(["2026-03-01"], "r1", 0.0, tmp_path / "report")
    assert result["passed"] and result["rows"] == 3 and result["bad_rows"] == 0
    assert get_catalog().registered_partitions() == ["2026-03-01"]
    (part,) = _partitions(RAW_TABLE)
    folder = f"rs/reviews/ds=2026-03-01/{staged['delivery_id']}/"
    assert part["StorageDescriptor"]["Location"] == f"s3://{BUCKET}/{folder}"
    assert part["Parameters"]["delivery_id"] == staged["delivery_id"] and part["Parameters"]["passed"] == "true"
    assert part["Parameters"]["rows"] == "3" and part["Parameters"]["validation_run_id"] == "r1"
    assert _keys("reviews/") == [folder + "part-00000.parquet"]
    rows = _parquet(folder + "part-00000.parquet")
    assert rows["review_id"].tolist() == ["a", "b", "c"] and rows["source_line"].tolist() == [2, 3, 4]
    assert set(rows["source_file"]) == {staged["files"][0]}
    # the staged object and its Glue partition are gone once published
    assert _keys("staging/") == [] and _partitions(STAGING_TABLE) == []
    table = boto3.client("glue", region_name=REGION).get_table(DatabaseName=DB, Name=RAW_TABLE)["Table"]
    assert [k["Name"] for k in table["PartitionKeys"]] == ["ds"]
    assert table["StorageDescriptor"]["Location"] == f"{ROOT}/reviews/"
    assert {c["Name"] for c in table["StorageDescriptor"]["Columns"]} >= {"review_id", "review_body", "source_line"}


def test_reregistering_a_day_replaces_its_partition_and_leaves_no_stale_objects(aws_catalog, tmp_path):
    _land(GOOD, "2026-03-01")
    first = get_catalog().register_partition("2026-03-01")
    quality.validate_partitions(["2026-03-01"], "r1", 0.5, tmp_path / "r1")
    _land(HEADER + "d,Dresses,New text,4,\ne,Knits,Another,1,\n", "2026-03-01")
    second = get_catalog().register_partition("2026-03-01")
    assert second["delivery_id"] != first["delivery_id"]
    # until the gate passes it, the first delivery stays published
    assert _partitions(RAW_TABLE)[0]["Parameters"]["delivery_id"] == first["delivery_id"]
    quality.validate_partitions(["2026-03-01"], "r2", 0.5, tmp_path / "r2")
    (part,) = _partitions(RAW_TABLE)
    assert part["Parameters"]["delivery_id"] == second["delivery_id"]
    assert _keys("reviews/") == [f"rs/reviews/ds=2026-03-01/{second['delivery_id']}/part-00000.parquet"]
    assert _parquet(_keys("reviews/")[0])["review_id"].tolist() == ["d", "e"]
    # the same content again: nothing to do
    assert get_catalog().register_partition("2026-03-01")["status"] == "unchanged"
    records = [json.loads(aws.read_bytes(aws.load_aws_config(), f"s3://{BUCKET}/{k}"))
               for k in _keys("catalog/deliveries/ds=2026-03-01/")]
    assert sorted(r["status"] for r in records) == ["published", "superseded"]


@pytest.mark.parametrize("body, expected", [
    (HEADER.encode() + b"a,Dresses,caf\xe9 cr\xe8me,5,\n", "not valid UTF-8 at line 2"),
    ("review_id,product_category,star_rating\na,Dresses,5\n", "missing column(s) review_body"),
    (HEADER + 'a,Dresses,"never closed,5,\n', "unbalanced double quote"),
])
def test_a_bad_file_is_refused_naming_the_s3_object_and_nothing_is_written(aws_catalog, body, expected):
    uri = _land(body, "2026-03-02")
    with pytest.raises(catalog_base.RegistrationError) as err:
        get_catalog().register_partition("2026-03-02")
    assert str(err.value).startswith(f"{uri}: ") and expected in str(err.value)
    assert _keys("staging/") == [] and _keys("reviews/") == [] and _keys("catalog/") == []
    assert boto3.client("glue", region_name=REGION).get_databases()["DatabaseList"] == []


def test_bad_rows_go_to_the_glue_quarantine_table_and_the_clean_export_skips_them(aws_catalog, tmp_path):
    _land(HEADER + "a,Dresses,Good one,5,\na,Dresses,Same id again,4,\nb,Knits,Rated seven,7,\n"
          "c,Blouses,Fine,3,2026-02-27\n", "2026-03-03")
    staged = get_catalog().register_partition("2026-03-03")
    result = quality.validate_partitions(["2026-03-03"], "r1", 0.6, tmp_path / "rep")
    assert result["passed"] and result["bad_rows"] == 2
    assert result["rule_counts"]["review_id_unique"] == 1 and result["rule_counts"]["star_rating_integer_1_5"] == 1
    (part,) = _partitions(QUARANTINE_TABLE)
    assert part["Values"] == [staged["delivery_id"]]
    (key,) = _keys(f"quarantine/reviews/delivery_id={staged['delivery_id']}/")
    q = _parquet(key).sort_values("source_line")
    assert q[["review_id", "rule", "source_line", "value", "run_id"]].values.tolist() == [
        ["a", "review_id_unique", 3, "a", "r1"], ["b", "star_rating_integer_1_5", 4, "7", "r1"]]
    assert set(q["source_file"]) == {staged["files"][0]}

    rows = get_catalog().export_clean("2026-03-03", tmp_path / "clean.parquet")
    clean = pd.read_parquet(tmp_path / "clean.parquet")
    assert rows == 2 and clean["review_id"].tolist() == ["a", "c"]
    assert clean["star_rating"].tolist() == [5, 3] and str(clean["review_date"].iloc[1])[:10] == "2026-02-27"
    with pytest.raises(catalog_base.CatalogError, match=r"no validated partition with ds in \[2026-01-01, 2026-01-31\]"):
        get_catalog().export_clean("2026-01-31", tmp_path / "none.parquet", ds_from="2026-01-01")


def test_a_failing_gate_rejects_the_delivery_and_leaves_the_published_day_alone(aws_catalog, tmp_path):
    _land(GOOD, "2026-03-04")
    first = get_catalog().register_partition("2026-03-04")
    quality.validate_partitions(["2026-03-04"], "r1", 0.0, tmp_path / "r1")
    _land(HEADER + "x,Dresses,ok,5,\ny,Dresses,bad,9,\n", "2026-03-04")
    second = get_catalog().register_partition("2026-03-04")
    with pytest.raises(quality.DataQualityError, match=f"Rejected delivery {second['delivery_id']}"):
        quality.validate_partitions(["2026-03-04"], "r2", 0.1, tmp_path / "r2")
    (part,) = _partitions(RAW_TABLE)
    assert part["Parameters"]["delivery_id"] == first["delivery_id"]
    assert _keys("reviews/") == [f"rs/reviews/ds=2026-03-04/{first['delivery_id']}/part-00000.parquet"]
    # the rejected rows stay inspectable (staging + quarantine), and are not staged again on request
    assert [p["Values"] for p in _partitions(STAGING_TABLE)] == [[second["delivery_id"]]]
    assert [p["Values"] for p in _partitions(QUARANTINE_TABLE)] == [[second["delivery_id"]]]
    again = get_catalog().register_partition("2026-03-04", retry_rejected=False)
    assert again["status"] == "rejected"
    # make data-status reads the same from Glue and the delivery records
    status = get_catalog().data_status()
    assert status["staging_table"] == f"{DB}.{STAGING_TABLE}" and DB in status["catalog"]
    assert [(p["ds"], p["delivery_id"], p["rows"], p["passed"]) for p in status["partitions"]] == [
        ("2026-03-04", first["delivery_id"], 3, True)]
    (rejected,) = status["deliveries"]
    assert (rejected["delivery_id"], rejected["status"], rejected["staged_rows"], rejected["quarantined_rows"]) == (
        second["delivery_id"], "rejected", 2, 1)
    assert rejected["audit_run_id"] == "r2" and "bad row fraction" in rejected["reason"]


def test_validate_step_writes_the_report_to_the_runs_s3_prefix(aws_catalog):
    _land(GOOD, "2026-03-05")
    registered = steps.register_backlog("2026-03-05", run_id="manual__1")
    assert registered["partitions"] == ["2026-03-05"]
    info = RunInfo(dag_id="review_sentiment_pipeline", run_id="manual__1", ds="2026-03-05")
    result = steps.validate_dataset(info, registered["partitions"], 0.05)
    prefix = "runs/review_sentiment_pipeline/manual__1/validate/"
    assert result["report_path"] == f"{ROOT}/{prefix}validation_report.html"
    keys = _keys(prefix)
    assert {f"rs/{prefix}validation_report.html", f"rs/{prefix}validation.json",
            f"rs/{prefix}gx_data_docs/index.html"} <= set(keys)
    report = json.loads(aws.read_bytes(aws.load_aws_config(), f"{ROOT}/{prefix}validation.json"))
    assert report["passed"] is True and report["rows"] == 3 and report["ds_list"] == ["2026-03-05"]
    assert get_catalog().registered_partitions() == ["2026-03-05"]


def test_a_rejected_delivery_is_purged_after_the_retention_period(aws_catalog, tmp_path, monkeypatch):
    _land(HEADER + "x,Dresses,ok,5,\ny,Dresses,bad,9,\n", "2026-03-06")
    rejected = get_catalog().register_partition("2026-03-06")
    with pytest.raises(quality.DataQualityError):
        quality.validate_partitions(["2026-03-06"], "r1", 0.1, tmp_path / "r1")
    _land(GOOD, "2026-03-07")
    get_catalog().register_partition("2026-03-07")  # within the retention period: the rejected rows stay
    assert [p["Values"] for p in _partitions(QUARANTINE_TABLE)] == [[rejected["delivery_id"]]]
    monkeypatch.setenv("REVIEWS_REJECTED_RETENTION_DAYS", "0")
    _land(GOOD, "2026-03-08")
    get_catalog().register_partition("2026-03-08")  # the next registration purges it
    assert [d["status"] for d in get_catalog().data_status()["deliveries"] if d["ds"] == "2026-03-06"] == ["expired"]
    assert _keys(f"staging/reviews/delivery_id={rejected['delivery_id']}/") == []
    assert _partitions(QUARANTINE_TABLE) == [] and _keys("quarantine/") == []
    assert _keys("catalog/rejected/") == []
    assert rejected["delivery_id"] not in [p["Values"][0] for p in _partitions(STAGING_TABLE)]
