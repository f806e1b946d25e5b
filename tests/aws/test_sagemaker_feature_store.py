"""SageMaker Feature Store backend against moto's server.

moto runs CreateFeatureGroup / DescribeFeatureGroup and S3. Stubbed at the boto3 level
(botocore Stubber limited to these operations: tests/aws/stubs.py, tests/aws/sagemaker_fakes.py),
because moto 5.2 does not implement them:

* ``sagemaker-featurestore-runtime.PutRecord`` - the fake plays SageMaker: it keeps the online
  record and writes the record to the offline store in moto's S3 as SageMaker does (one
  Parquet file under ``<ResolvedOutputS3Uri>/year=/month=/day=/hour=/``, with ``write_time``,
  ``api_invocation_time`` and ``is_deleted``);
* ``GetRecord`` / ``BatchGetRecord`` - answered from what PutRecord kept online.

The point-in-time export then reads the offline store from S3 with the production code.
"""
from __future__ import annotations

import io
from datetime import datetime

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.common.aws import load_aws_config
from include.data import feature_store
from include.data.feature_store_base import (
    REVIEWS,
    Feature,
    FeatureGroup,
    FeatureStoreError,
    FeatureValidationError,
    SchemaChangeError,
)
from include.data.feature_store_sagemaker import SageMakerFeatureStore
from tests.aws.conftest import BUCKET, REGION
from tests.aws.sagemaker_fakes import FeatureStoreFake, install


@pytest.fixture
def fs(aws_account):
    cfg = load_aws_config().validate()
    runtime = cfg.client("sagemaker-featurestore-runtime")
    fake = FeatureStoreFake(runtime, REGION)
    store = SageMakerFeatureStore(cfg, runtime=runtime, poll_s=0.01, put_workers=2)
    return store, fake


def _rows(ids: list[str], day: str, body: str = "fits well", splits: list[str] | None = None) -> pa.Table:
    n = len(ids)
    splits = splits or [("train", "validation", "test")[i % 3] for i in range(n)]
    return pa.table({
        "review_id": ids,
        "event_time": pa.array([datetime.fromisoformat(day)] * n, pa.timestamp("us")),
        "date": pa.array([datetime.fromisoformat(day).date()] * n, pa.date32()),
        "product_category": ["Dresses"] * n,
        "review_body": [f"{body} {i}" for i in ids],
        "star_rating": pa.array([5] * n, pa.int8()),
        "sentiment": pa.array([1] * n, pa.int8()),
        "label_id": pa.array([2] * n, pa.int8()),
        "input_ids": pa.array([[101, 2000 + k, 102] for k in range(n)], pa.list_(pa.int32())),
        "attention_mask": pa.array([[1, 1, 1]] * n, pa.list_(pa.int8())),
        "split_type": splits,
    })


def test_create_feature_group_sends_the_definition_once_and_refuses_an_incompatible_change(fs):
    store, _ = fs
    assert store.create_feature_group(REVIEWS) == "created"
    desc = boto3.client("sagemaker", region_name=REGION).describe_feature_group(FeatureGroupName="reviews-features")
    assert (desc["RecordIdentifierFeatureName"], desc["EventTimeFeatureName"]) == ("review_id", "event_time")
    types = {d["FeatureName"]: d["FeatureType"] for d in desc["FeatureDefinitions"]}
    assert types == {"review_id": "String", "event_time": "String", "date": "String", "product_category": "String",
                     "review_body": "String", "star_rating": "Integral", "sentiment": "Integral",
                     "label_id": "Integral", "input_ids": "String", "attention_mask": "String",
                     "split_type": "String"}
    assert desc["OfflineStoreConfig"]["S3StorageConfig"]["S3Uri"] == f"s3://{BUCKET}/rs/feature-store"
    assert desc["RoleArn"] == store.cfg.role_arn
    request = store.create_request(REVIEWS)  # moto keeps no online-store or Glue settings: check what we send
    assert request["OnlineStoreConfig"] == {"EnableOnlineStore": True}
    assert request["OfflineStoreConfig"]["DisableGlueTableCreation"] is False
    assert request["OfflineStoreConfig"]["DataCatalogConfig"]["Database"] == "review_sentiment"
    assert store.create_feature_group(REVIEWS) == "exists"
    retyped = FeatureGroup(REVIEWS.name, "review_id", "event_time",
                           tuple(Feature(f.name, "int64" if f.name == "star_rating" else f.type)
                                 for f in REVIEWS.features if f.name != "x"))
    with pytest.raises(SchemaChangeError, match="star_rating"):
        store.create_feature_group(retyped)


def test_a_group_created_before_its_definition_was_saved_is_compared_not_recreated(fs):
    store, _ = fs
    store.create_feature_group(REVIEWS)
    boto3.client("s3", region_name=REGION).delete_object(Bucket=BUCKET, Key="rs/feature-store/reviews_features/"
                                                                           "definition.json")
    assert store.create_feature_group(REVIEWS) == "exists"  # ResourceInUse, then the definitions agree
    assert store.describe_feature_group(REVIEWS.name) == REVIEWS


def test_ingest_puts_every_record_to_both_stores_as_strings(fs):
    store, fake = fs
    store.create_feature_group(REVIEWS)
    out = store.ingest(REVIEWS.name, _rows(["r1", "r2", "r3"], "2024-01-01"), source="run-1")
    assert out["records"] == 3 and len(fake.puts) == 3
    put = next(p for p in fake.puts if p["Record"][0]["ValueAsString"] == "r2")
    assert put["FeatureGroupName"] == "reviews-features"
    assert put["TargetStores"] == ["OnlineStore", "OfflineStore"]
    values = {r["FeatureName"]: r["ValueAsString"] for r in put["Record"]}
    assert values["event_time"] == "2024-01-01T00:00:00.000Z"
    assert values["date"] == "2024-01-01"
    assert values["input_ids"] == "[101, 2001, 102]"
    assert values["label_id"] == "2"


def test_bad_records_are_refused_before_any_put(fs):
    store, fake = fs
    store.create_feature_group(REVIEWS)
    with pytest.raises(FeatureValidationError, match="unknown feature"):
        store.ingest(REVIEWS.name, _rows(["r1"], "2024-01-01").append_column("colour", pa.array(["red"])))
    with pytest.raises(FeatureValidationError, match="appears twice"):
        store.ingest(REVIEWS.name, _rows(["r1", "r1"], "2024-01-01"))
    assert fake.puts == []


def test_point_in_time_export_as_of_a_day_does_not_see_later_updates(fs, tmp_path):
    store, fake = fs
    store.create_feature_group(REVIEWS)
    ids = [f"r{i}" for i in range(6)]
    store.ingest(REVIEWS.name, _rows(ids, "2024-01-01", body="first"))
    store.ingest(REVIEWS.name, _rows(ids, "2024-01-01", body="first"))  # a re-run: appended again by SageMaker
    store.ingest(REVIEWS.name, _rows(["r0", "r9"], "2024-01-02", body="second", splits=["train", "train"]))
    dest = f"s3://{BUCKET}/rs/runs/review_sentiment_pipeline/d1/preprocess/channels"
    out = store.export_point_in_time(REVIEWS.name, datetime(2024, 1, 1), dest)
    assert out["rows"] == {"train": 2, "validation": 2, "test": 2}  # one row per review despite the re-run
    s3 = boto3.client("s3", region_name=REGION)
    train = pq.read_table(io.BytesIO(s3.get_object(
        Bucket=BUCKET, Key="rs/runs/review_sentiment_pipeline/d1/preprocess/channels/train/part-00000.parquet")
        ["Body"].read()))
    assert train.column("review_id").to_pylist() == ["r0", "r3"]
    assert train.column("review_body").to_pylist() == ["first r0", "first r3"]  # r0's update of day 2 unseen
    assert train.schema.field("input_ids").type == pa.list_(pa.int32())
    assert train.schema.field("label_id").type == pa.int8()
    assert train.column("input_ids").to_pylist() == [[101, 2000, 102], [101, 2003, 102]]
    later = store.point_in_time(REVIEWS.name, datetime(2024, 1, 2))
    by_id = dict(zip(later.column("review_id").to_pylist(), later.column("review_body").to_pylist(), strict=True))
    assert (by_id["r0"], by_id["r9"], len(by_id)) == ("second r0", "second r9", 7)
    assert store.point_in_time(REVIEWS.name, datetime(2024, 1, 2), record_ids=["r9"]).num_rows == 1


def test_online_lookups_through_get_record_and_batch_get_record(fs):
    store, fake = fs
    store.create_feature_group(REVIEWS)
    store.ingest(REVIEWS.name, _rows(["r1", "r2"], "2024-01-01"))
    record = store.get_record(REVIEWS.name, "r1")
    assert record["review_id"] == "r1" and record["input_ids"] == [101, 2000, 102]
    assert (record["label_id"], record["event_time"], record["date"]) == (2, "2024-01-01 00:00:00", "2024-01-01")
    assert store.get_record(REVIEWS.name, "nobody") is None
    both = store.batch_get_record(REVIEWS.name, ["r1", "r2", "nobody"])
    assert sorted(both) == ["r1", "r2"] and both["r2"]["review_body"] == "fits well r2"
    assert both["r1"] == record


def test_the_pipeline_step_ingests_and_exports_through_the_same_function(aws_account, tmp_path, monkeypatch):
    # preprocess's feature-store part (ingest_run_features) on REVIEWS_BACKEND=aws
    fake, _ = install(monkeypatch, REGION, tmp_path / "endpoint")
    features = tmp_path / "features"
    for split, ids in (("train", ["a", "b"]), ("validation", ["c"]), ("test", ["d"])):
        (features / split).mkdir(parents=True)
        pq.write_table(_rows(ids, "2024-01-01", splits=[split] * len(ids)).drop_columns(["event_time"]),
                       features / split / "part-00000.parquet")
    dest = f"s3://{BUCKET}/rs/runs/review_sentiment_pipeline/d1/preprocess/channels"
    out = feature_store.get_feature_store().ingest_run_features(features, "2024-01-01", "d1", dest)
    assert out["rows"] == {"train": 2, "validation": 1, "test": 1}
    assert out["as_of"] == "2024-01-01T00:00:00"
    assert len(fake.puts) == 4
    assert isinstance(feature_store.get_feature_store(), SageMakerFeatureStore)
    # what the AutoML DAG reads: the latest run's snapshot, exported as of its event time
    store = feature_store.get_feature_store()
    assert store.latest_snapshot() == "d1"
    assert store.export_snapshot("d1", tmp_path / "automl") == {"train": 2, "validation": 1, "test": 1}
    assert pq.read_table(tmp_path / "automl" / "test" / "part-00000.parquet").column("review_id").to_pylist() == ["d"]
    with pytest.raises(FeatureStoreError, match="no ingestion"):
        feature_store.get_feature_store().export_snapshot("never-ran", tmp_path / "none")


def test_a_new_feature_is_added_with_update_feature_group(aws_account):
    # UpdateFeatureGroup is not in moto 5.2: stubbed (botocore Stubber, that operation only).
    from tests.aws.stubs import OperationStubber

    cfg = load_aws_config().validate()
    sm = cfg.client("sagemaker")
    store = SageMakerFeatureStore(cfg, sm=sm, poll_s=0.01)
    store.create_feature_group(REVIEWS)
    grown = FeatureGroup(REVIEWS.name, REVIEWS.record_identifier, REVIEWS.event_time,
                         REVIEWS.features + (Feature("helpful_votes", "int32", "Positive feedback count."),),
                         REVIEWS.description, version=2)
    stub = OperationStubber(sm, "UpdateFeatureGroup")
    stub.add_response("update_feature_group", {"FeatureGroupArn": f"arn:aws:sagemaker:{REGION}:123456789012:"
                                                                  "feature-group/reviews-features"},
                      {"FeatureGroupName": "reviews-features",
                       "FeatureAdditions": [{"FeatureName": "helpful_votes", "FeatureType": "Integral"}]})
    stub.activate()
    assert store.create_feature_group(grown) == "updated"
    stub.assert_no_pending_responses()
    assert store.describe_feature_group(REVIEWS.name) == grown
    assert store.create_feature_group(grown) == "exists"  # no second UpdateFeatureGroup (none is queued)


def test_list_feature_groups_reads_list_feature_groups(aws_account):
    # ListFeatureGroups is not in moto 5.2: stubbed (botocore Stubber, that operation only).
    from tests.aws.stubs import OperationStubber

    cfg = load_aws_config().validate()
    sm = cfg.client("sagemaker")
    stub = OperationStubber(sm, "ListFeatureGroups")
    stub.add_response("list_feature_groups", {"FeatureGroupSummaries": [{
        "FeatureGroupName": "reviews-features", "FeatureGroupStatus": "Created", "CreationTime": datetime(2024, 1, 1),
        "FeatureGroupArn": f"arn:aws:sagemaker:{REGION}:123456789012:feature-group/reviews-features"}]}, {})
    stub.activate()
    groups = SageMakerFeatureStore(cfg, sm=sm).list_feature_groups()
    assert [(g["name"], g["status"], g["records"]) for g in groups] == [("reviews-features", "Created", None)]
    stub.assert_no_pending_responses()


def _offline_objects(store) -> int:
    bucket, prefix = store.offline_uri(REVIEWS.name)[len("s3://"):].split("/", 1)
    pages = boto3.client("s3", region_name=REGION).get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                                             Prefix=prefix)
    return sum(len(page.get("Contents", [])) for page in pages)


def test_a_rerun_of_the_same_day_puts_nothing_and_a_day_with_5_changed_reviews_puts_5(fs):
    store, fake = fs
    store.create_feature_group(REVIEWS)
    ids = [f"r{i:02d}" for i in range(20)]
    assert store.ingest(REVIEWS.name, _rows(ids, "2024-01-01"), source="d1")["records"] == 20
    again = store.ingest(REVIEWS.name, _rows(ids, "2024-01-01"), source="d1-rerun")
    assert (again["records"], again["duplicates_skipped"], len(fake.puts)) == (0, 20, 20)
    day2 = _rows(ids, "2024-01-02").to_pylist()  # same reviews a day later (the event time moves on) ...
    for row in day2:
        row["date"] = datetime(2024, 1, 1).date()  # (the review's date stays)
    for row in day2[:5]:
        row["review_body"] = "changed " + row["review_id"]  # ... five of them edited
    out = store.ingest(REVIEWS.name, pa.Table.from_pylist(day2, schema=_rows(ids, "2024-01-02").schema), source="d2")
    assert (out["records"], out["duplicates_skipped"]) == (5, 15)
    assert sorted(values["ValueAsString"] for p in fake.puts[20:] for values in p["Record"]
                  if values["FeatureName"] == "review_id") == ids[:5]
    now = store.point_in_time(REVIEWS.name, datetime(2024, 1, 2))
    bodies = dict(zip(now.column("review_id").to_pylist(), now.column("review_body").to_pylist(), strict=True))
    assert len(bodies) == 20 and bodies["r00"] == "changed r00" and bodies["r19"] == "fits well r19"
    before = store.point_in_time(REVIEWS.name, datetime(2024, 1, 1))
    assert set(before.column("review_body").to_pylist()) == {f"fits well {i}" for i in ids}
    assert store.snapshot(REVIEWS.name, "d1-rerun") == ("d1-rerun", datetime(2024, 1, 1))  # logged though 0 put


def test_a_backfill_before_a_stored_version_is_put_though_its_content_is_the_same(fs):
    store, fake = fs
    store.create_feature_group(REVIEWS)
    store.ingest(REVIEWS.name, _rows(["r1"], "2024-01-03"))
    assert store.ingest(REVIEWS.name, _rows(["r1"], "2024-01-01"))["records"] == 1  # nothing in force on day 1
    assert store.point_in_time(REVIEWS.name, datetime(2024, 1, 2)).num_rows == 1


def test_a_manifest_written_meanwhile_by_another_ingestion_is_merged_not_lost(fs):
    store, _ = fs
    store.create_feature_group(REVIEWS)
    offline = store.offline_uri(REVIEWS.name)
    stale = store._load_manifest(REVIEWS.name, offline)  # read before the other ingestion wrote
    store.ingest(REVIEWS.name, _rows(["a"], "2024-01-01"))
    store._save_manifest(REVIEWS.name, offline, stale, [(("b", datetime(2024, 1, 1)), "h-b")])
    assert sorted(store._load_manifest(REVIEWS.name, offline)[0]) == ["a", "b"]
    assert store.ingest(REVIEWS.name, _rows(["a"], "2024-01-01"))["records"] == 0


def test_point_in_time_reads_list_only_the_days_up_to_as_of(fs):
    store, _ = fs
    store.create_feature_group(REVIEWS)
    for day in range(1, 7):  # six days of three new reviews: 18 objects in the offline store
        store.ingest(REVIEWS.name, _rows([f"d{day}-{k}" for k in range(3)], f"2024-01-0{day}"))
        assert store.last_read == {"days": 1, "objects": 3}  # the wait read only the day it put
    assert _offline_objects(store) == 18
    assert store.point_in_time(REVIEWS.name, datetime(2024, 1, 2)).num_rows == 6
    assert store.last_read == {"days": 2, "objects": 6}  # a listing of every object would see 18
    assert store.point_in_time(REVIEWS.name, datetime(2024, 1, 6, 12)).num_rows == 18
    assert store.last_read["objects"] == 18
    assert store._day_prefixes(store.offline_uri(REVIEWS.name).rstrip("/") + "/",
                               datetime(2023, 12, 1).date(), datetime(2024, 1, 3).date())[-1].endswith("day=03/")
