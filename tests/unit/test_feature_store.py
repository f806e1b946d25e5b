"""The feature store (include/data/feature_store.py, online_store.py) on real DuckDB, Parquet,
SQLite and the machine's Redis, in a temporary state dir."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.common.config import ConfigError, get_settings
from include.data import feature_store as fs
from include.data.feature_store_base import (
    REVIEWS,
    Feature,
    FeatureGroup,
    FeatureStoreError,
    FeatureValidationError,
    SchemaChangeError,
)

D1, D2, D3 = datetime(2026, 11, 18), datetime(2026, 11, 19), datetime(2026, 11, 20)


def _records(ids: list[str], when: datetime | list[datetime], body: str = "text", split: str = "train") -> pa.Table:
    n = len(ids)
    times = when if isinstance(when, list) else [when] * n
    return pa.table({
        "review_id": pa.array(ids, pa.string()), "event_time": pa.array(times, pa.timestamp("us")),
        "review_body": [f"{body} {i}" for i in ids], "label_id": pa.array([i % 3 for i in range(n)], pa.int8()),
        "sentiment": pa.array([i % 3 - 1 for i in range(n)], pa.int8()),
        "star_rating": pa.array([1 + i % 5 for i in range(n)], pa.int8()),
        "input_ids": pa.array([[101, 7 + i, 102] for i in range(n)], pa.list_(pa.int32())),
        "split_type": [split] * n,
    })


@pytest.fixture
def store(reviews_home):
    s = fs.get_feature_store()
    assert s.create_feature_group(REVIEWS) == "created"
    yield s
    s.online.close()


def _offline_rows(store) -> int:
    return store.query("SELECT count(*) FROM feature_store.reviews_features")[1][0][0]


def test_creating_a_feature_group_twice_is_a_noop(store):
    assert store.create_feature_group(REVIEWS) == "exists"
    assert store.describe_feature_group("reviews_features") == REVIEWS
    assert [g["name"] for g in store.list_feature_groups()] == ["reviews_features"]


def test_an_incompatible_schema_change_is_an_error_naming_the_field(store):
    retyped = tuple(Feature(f.name, "string" if f.name == "label_id" else f.type) for f in REVIEWS.features)
    with pytest.raises(SchemaChangeError, match="'label_id' changed type from int8 to string"):
        store.create_feature_group(FeatureGroup("reviews_features", "review_id", "event_time", retyped, version=2))
    removed = tuple(f for f in REVIEWS.features if f.name != "split_type")
    with pytest.raises(SchemaChangeError, match="'split_type' was removed"):
        store.create_feature_group(FeatureGroup("reviews_features", "review_id", "event_time", removed, version=2))
    added = FeatureGroup("reviews_features", "review_id", "event_time", REVIEWS.features + (Feature("helpful", "int32"),),
                         version=2)
    assert store.create_feature_group(added) == "updated"
    assert store.describe_feature_group("reviews_features").version == 2


def test_point_in_time_read_does_not_see_a_record_updated_after_as_of(store):
    store.ingest("reviews_features", _records(["a", "b"], D1, body="old"))
    store.ingest("reviews_features", _records(["a"], D3, body="new"))
    at_d2 = {r["review_id"]: r for r in store.point_in_time("reviews_features", D2).to_pylist()}
    assert at_d2["a"]["review_body"] == "old a" and at_d2["b"]["review_body"] == "old b"
    at_d3 = {r["review_id"]: r for r in store.point_in_time("reviews_features", D3).to_pylist()}
    assert at_d3["a"]["review_body"] == "new a"
    assert store.point_in_time("reviews_features", datetime(2026, 11, 17)).num_rows == 0
    assert store.get_record("reviews_features", "a")["review_body"] == "new a"


def _shards(folder, table: pa.Table) -> None:
    for split in ("train", "validation", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
        part = table.filter(pa.compute.equal(table["split_type"], split)).drop_columns(["event_time"])
        pq.write_table(part, folder / split / "part-00000.parquet")


def test_a_backfilled_run_trains_on_what_was_known_at_its_day(store, tmp_path):
    uri = get_settings().uri
    _shards(tmp_path / "d2", _records(["r1", "r2"], D2, body="old", split="train"))
    fs.get_feature_store().ingest_run_features(tmp_path / "d2", "2026-11-19", "run-d2", uri("ch/d2"))
    _shards(tmp_path / "d3", _records(["r1", "r2"], D3, body="new", split="train"))
    fs.get_feature_store().ingest_run_features(tmp_path / "d3", "2026-11-20", "run-d3", uri("ch/d3"))
    # The backfill of 2026-11-19 recomputes its features; the store answers with what was known then.
    _shards(tmp_path / "bf", _records(["r1", "r2"], D2, body="recomputed", split="train"))
    out = fs.get_feature_store().ingest_run_features(tmp_path / "bf", "2026-11-19", "backfill-d2", uri("ch/bf"))
    assert out["ingestion"]["records"] == 0 and out["ingestion"]["duplicates_skipped"] == 2
    assert out["rows"] == {"train": 2, "validation": 0, "test": 0}
    channel = pq.read_table(get_settings().store_root / "ch" / "bf" / "train")
    assert sorted(channel["review_body"].to_pylist()) == ["old r1", "old r2"]
    assert {"input_ids", "label_id", "star_rating"} <= set(channel.column_names)
    for split in ("validation", "test"):  # the training job needs a shard in every channel
        assert (get_settings().store_root / "ch" / "bf" / split / "part-00000.parquet").exists()
    assert store.get_record("reviews_features", "r1")["review_body"] == "new r1", "online never rolls back"


def test_snapshots_name_the_latest_run_and_export_what_it_knew(store, tmp_path):
    # What the AutoML DAG reads (FeatureStore.snapshot behind latest_snapshot / export_snapshot).
    uri = get_settings().uri
    assert fs.get_feature_store().latest_snapshot() is None
    _shards(tmp_path / "d2", _records(["r1", "r2"], D2, body="old", split="train"))
    fs.get_feature_store().ingest_run_features(tmp_path / "d2", "2026-11-19", "run-d2", uri("ch/d2"))
    _shards(tmp_path / "d3", _records(["r1", "r3"], D3, body="new", split="train"))
    fs.get_feature_store().ingest_run_features(tmp_path / "d3", "2026-11-20", "run-d3", uri("ch/d3"))
    assert fs.get_feature_store().latest_snapshot() == "run-d3"
    assert store.snapshot("reviews_features", "run-d2")[1] == datetime(2026, 11, 19)
    with pytest.raises(FeatureStoreError, match="no validation, test rows"):
        fs.get_feature_store().export_snapshot("run-d2", tmp_path / "out")
    with pytest.raises(FeatureStoreError, match="no ingestion"):
        fs.get_feature_store().export_snapshot("never", tmp_path / "out")


def test_reingesting_a_day_adds_no_duplicates(store):
    first = store.ingest("reviews_features", _records(["a", "b", "c"], D1))
    again = store.ingest("reviews_features", _records(["a", "b", "c"], D1, body="changed"))
    assert (first["records"], again["records"], again["duplicates_skipped"]) == (3, 0, 3)
    assert _offline_rows(store) == 3
    assert len(list(store.offline_root("reviews_features").rglob("*.parquet"))) == 1
    assert store.get_record("reviews_features", "a")["review_body"] == "text a", "first write wins, online too"


CRASH = textwrap.dedent("""
    import os, pathlib, signal, sys
    from datetime import datetime
    import pyarrow as pa
    from include.data import feature_store as fs
    real = pathlib.Path.rename
    def rename(self, target):  # the process dies right after the first partition file is in place
        out = real(self, target)
        os.kill(os.getpid(), signal.SIGKILL)
        return out
    pathlib.Path.rename = rename
    ids = [f"n{i}" for i in range(10)]
    fs.get_feature_store().ingest("reviews_features", pa.table({
        "review_id": ids, "event_time": pa.array([datetime(2026, 11, 18 + i % 2) for i in range(10)], pa.timestamp("us")),
        "review_body": ["crash"] * 10}))
""")


def test_an_ingestion_killed_half_way_leaves_no_partial_partition_visible(store):
    store.ingest("reviews_features", _records(["a", "b"], D1))
    proc = subprocess.run([sys.executable, "-c", CRASH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    root = store.offline_root("reviews_features")
    assert len(list(root.glob("event_date=*/*.parquet"))) == 2, "the killed ingestion left a file in a partition"
    assert _offline_rows(store) == 2, "but no reader sees it"
    assert store.query("SELECT count(*) FROM feature_store.reviews_features WHERE review_body = 'crash'")[1][0][0] == 0
    assert store.get_record("reviews_features", "n0") is None
    # The next ingestion removes the leftover and the retried batch lands whole.
    store.ingest("reviews_features", _records([f"n{i}" for i in range(10)], D2))
    assert len(list(root.rglob("*.parquet"))) == 2 and _offline_rows(store) == 12
    assert not list(root.glob(".staging-*"))


@pytest.mark.parametrize(("table", "message"), [
    (pa.table({"event_time": pa.array([D1], pa.timestamp("us"))}), "lack the record identifier feature 'review_id'"),
    (pa.table({"review_id": ["a"]}), "lack the event time feature 'event_time'"),
    (pa.table({"review_id": ["a", None], "event_time": pa.array([D1, D1], pa.timestamp("us"))}),
     "record 1 .* no record identifier"),
    (pa.table({"review_id": ["a", "b"], "event_time": pa.array([D1, None], pa.timestamp("us"))}),
     "record 1 .* no event time"),
    (pa.table({"review_id": ["a"], "event_time": pa.array([D1], pa.timestamp("us")), "label_id": ["positive"]}),
     "feature 'label_id' is string, expected int8"),
    (pa.table({"review_id": ["a"], "event_time": pa.array([D1], pa.timestamp("us")), "label_id": [300]}),
     "feature 'label_id' does not fit int8"),
    (pa.table({"review_id": ["a"], "event_time": pa.array([D1], pa.timestamp("us")), "colour": ["red"]}),
     "unknown feature.* colour"),
    (pa.table({"review_id": ["a", "a"], "event_time": pa.array([D1, D1], pa.timestamp("us"))}),
     "review_id='a' appears twice"),
])
def test_bad_records_are_rejected_naming_the_problem_and_nothing_is_written(store, table, message):
    with pytest.raises(FeatureValidationError, match=message):
        store.ingest("reviews_features", table)
    assert _offline_rows(store) == 0 and not list(store.offline_root("reviews_features").rglob("*.parquet"))
    assert store.online.count("reviews_features") == 0


def test_ingesting_into_an_unknown_group_names_it(store):
    with pytest.raises(FeatureValidationError, match="'nope' does not exist"):
        store.ingest("nope", _records(["a"], D1))


def _assert_online_matches_offline(store) -> None:
    latest = {r["review_id"]: r for r in store.point_in_time("reviews_features", datetime(2100, 1, 1)).to_pylist()}
    online = store.batch_get_record("reviews_features", [*latest, "missing"])
    assert set(online) == set(latest) and store.online.count("reviews_features") == len(latest)
    for rid, rec in latest.items():
        got = online[rid]
        assert got["event_time"].startswith(rec["event_time"].date().isoformat())
        assert (got["review_body"], got["input_ids"], got["label_id"]) == (rec["review_body"], rec["input_ids"],
                                                                           rec["label_id"])
        assert store.get_record("reviews_features", rid) == got


def test_online_store_holds_the_latest_record_and_agrees_with_the_offline_store(store):
    store.ingest("reviews_features", _records(["a", "b", "c"], D2, body="mid"))
    store.ingest("reviews_features", _records(["a", "d"], D3, body="late"))
    store.ingest("reviews_features", _records(["b", "e"], D1, body="early"))  # an old day arriving late
    _assert_online_matches_offline(store)
    assert store.get_record("reviews_features", "b")["review_body"] == "mid b"
    assert store.get_record("reviews_features", "zzz") is None


def test_redis_online_store_agrees_with_the_offline_store(reviews_home, monkeypatch):
    prefix = f"test-fs-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setenv("REVIEWS_ONLINE_STORE", "redis")
    monkeypatch.setenv("REVIEWS_REDIS_PREFIX", prefix)
    store = fs.get_feature_store()
    store.create_feature_group(REVIEWS)
    try:
        assert type(store.online).__name__ == "RedisOnlineStore"
        store.ingest("reviews_features", _records(["a", "b"], D2, body="mid"))
        store.ingest("reviews_features", _records(["a"], D1, body="early"))
        store.ingest("reviews_features", _records(["b"], D3, body="late"))
        _assert_online_matches_offline(store)
        assert store.get_record("reviews_features", "a")["review_body"] == "mid a"
    finally:
        store.online.clear("reviews_features")
        assert store.online.count("reviews_features") == 0
        store.online.close()


def test_cli_lists_groups_with_counts_and_runs_sql(store, capsys):
    store.ingest("reviews_features", _records(["a", "b"], D1))
    store.ingest("reviews_features", _records(["a"], D2))
    assert fs.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "reviews_features" in out and out.splitlines()[1].split()[1:5] == ["1", "3", "2", "2"]
    assert fs.main(["query", "SELECT review_id, count(*) AS n FROM feature_store.reviews_features "
                             "GROUP BY 1 ORDER BY 1"]) == 0
    assert capsys.readouterr().out.split() == ["review_id", "n", "a", "2", "b", "1"]
    assert fs.main(["query", "SELECT * FROM feature_store.nope"]) == 2
    assert "query failed" in capsys.readouterr().err


def test_the_aws_backend_without_an_aws_config_names_what_is_missing(reviews_home, monkeypatch):
    # The SageMaker Feature Store itself is tested against moto in tests/aws/test_sagemaker_feature_store.py.
    monkeypatch.setenv("REVIEWS_BACKEND", "aws")
    for var in ("REVIEWS_AWS_CONF", "REVIEWS_AWS_REGION", "REVIEWS_AWS_BUCKET", "REVIEWS_AWS_ROLE_ARN",
                "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="bucket is not set"):
        fs.get_feature_store()
