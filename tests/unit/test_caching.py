"""Step caching (include/pipeline/caching.py): keys, hits, misses and holders whose outputs are gone."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from include.common.config import get_settings
from include.common.io import uri_to_path, write_json_atomic
from include.pipeline import caching
from include.pipeline.caching import CacheKey, run_cached
from include.pipeline.context import RunInfo

DAG = "review_sentiment_pipeline"


def _info(run_id: str, ds: str = "2026-11-20") -> RunInfo:
    return RunInfo(dag_id=DAG, run_id=run_id, ds=ds)


def _key(data: str = "d1", params: str = "p1", code: str = "c" * 64) -> CacheKey:
    return CacheKey("train", data={"channel": data}, params={"lr": params}, code=code)


class Step:
    """A step that writes one file under its run-scoped prefix and counts its executions."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, info: RunInfo) -> dict:
        self.calls += 1
        out = uri_to_path(info.uri("train")) / "model.bin"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"weights of " + info.run_id.encode())
        return {"model_uri": out.as_uri(), "job": {"job_name": f"job-{info.run_id}"}}


def _run(step: Step, run_id: str, key: CacheKey | None = None, enabled: bool = True) -> dict:
    info = _info(run_id)
    return run_cached(info, key or _key(), ["train"], lambda: step(info), enabled=enabled)


def test_same_key_reuses_the_outputs_in_the_new_runs_own_folder_and_says_cache_hit(reviews_home, caplog):
    step = Step()
    first = _run(step, "run-1")
    assert first["cache"] == {"hit": False, "key": _key().value} and step.calls == 1
    with caplog.at_level(logging.INFO, logger="airflow.task"):
        second = _run(step, "run-2")
    assert step.calls == 1, "a hit does not run the step"
    assert second["cache"] == {"hit": True, "key": _key().value, "source_run_id": "run-1", "copied_from": "run-1"}
    # the result points into run-2's folder, which holds its own copy of the outputs
    model = uri_to_path(second["model_uri"])
    assert "/run-2/train/" in model.as_posix() and model.read_bytes() == b"weights of run-1"
    assert second["job"] == {"job_name": "job-run-1"}, "the job that made the outputs is kept"
    hit = [r.getMessage() for r in caplog.records if "cache hit" in r.getMessage()]
    assert hit and _key().value in hit[0] and "run-1" in hit[0], caplog.text


def test_deleting_the_source_run_keeps_the_copy_and_a_later_hit_uses_the_copy(reviews_home):
    step = Step()
    _run(step, "run-1")
    _run(step, "run-2")
    shutil.rmtree(uri_to_path(_info("run-1").uri("train")).parent)
    third = _run(step, "run-3")
    assert step.calls == 1
    assert third["cache"]["copied_from"] == "run-2" and third["cache"]["source_run_id"] == "run-1"
    assert uri_to_path(third["model_uri"]).read_bytes() == b"weights of run-1"
    holders = uri_to_path(get_settings().uri(f"cache/{DAG}/train/{_key().value}"))
    assert sorted(p.stem for p in holders.glob("*.json")) == ["run-2", "run-3"], "run-1's stale entry was dropped"


def test_when_no_holder_is_intact_the_step_runs_again(reviews_home, caplog):
    step = Step()
    _run(step, "run-1")
    (uri_to_path(_info("run-1").uri("train")) / "model.bin").write_bytes(b"truncated")  # changed size
    with caplog.at_level(logging.INFO, logger="airflow.task"):
        again = _run(step, "run-2")
    assert step.calls == 2 and again["cache"]["hit"] is False
    assert "changed size" in caplog.text and "cache miss" in caplog.text


@pytest.mark.parametrize("changed, key", [
    ("data", _key(data="d2")), ("params", _key(params="p2")), ("code", _key(code="e" * 64))])
def test_a_change_to_any_part_misses_and_the_log_names_it(reviews_home, caplog, changed, key):
    step = Step()
    _run(step, "run-1")
    assert key.value != _key().value
    caplog.clear()  # run-1's own miss
    with caplog.at_level(logging.INFO, logger="airflow.task"):
        result = _run(step, "run-2", key=key)
    assert step.calls == 2 and result["cache"] == {"hit": False, "key": key.value}
    miss = next(r.getMessage() for r in caplog.records if "cache miss" in r.getMessage())
    assert f"differs in {changed}" in miss and "run-1" in miss, miss


def test_use_cache_off_recomputes_and_records_the_new_outputs(reviews_home, caplog):
    step = Step()
    _run(step, "run-1")
    with caplog.at_level(logging.INFO, logger="airflow.task"):
        off = _run(step, "run-2", enabled=False)
    assert step.calls == 2 and off["cache"]["hit"] is False and "use_cache is off" in caplog.text
    # run-2's fresh outputs serve the next run
    assert _run(step, "run-3")["cache"]["copied_from"] in ("run-1", "run-2")


def test_files_added_after_the_step_do_not_make_a_copy_stale(reviews_home):
    step = Step()
    _run(step, "run-1")
    (uri_to_path(_info("run-1").uri("train")) / "report.html").write_text("rendered for run-1")
    _run(step, "run-2")  # copies report.html along, then the task re-renders it (atomically: a new file)
    report = uri_to_path(_info("run-2").uri("train")) / "report.html"
    report.unlink()
    report.write_text("rendered for run-2, a longer page")
    shutil.rmtree(uri_to_path(_info("run-1").uri("train")).parent)
    assert _run(step, "run-3")["cache"]["copied_from"] == "run-2" and step.calls == 1


def test_rerunning_the_same_run_reuses_its_own_outputs_in_place(reviews_home):
    step = Step()
    _run(step, "run-1")
    again = _run(step, "run-1")
    assert step.calls == 1 and again["cache"]["copied_from"] == "run-1"
    assert uri_to_path(again["model_uri"]).read_bytes() == b"weights of run-1"


def test_an_unreadable_entry_is_ignored(reviews_home):
    step = Step()
    folder = uri_to_path(get_settings().uri(f"cache/{DAG}/train/{_key().value}"))
    folder.mkdir(parents=True)
    (folder / "broken.json").write_text("{not json")
    assert _run(step, "run-1")["cache"]["hit"] is False and step.calls == 1
    write_json_atomic(folder / "x.json", {"run_id": "x", "created_at": 9e99})  # no manifest: dropped
    assert _run(step, "run-2")["cache"]["copied_from"] == "run-1"
    assert not (folder / "x.json").exists()


def test_code_digest_follows_the_scripts_content_not_bytecode(tmp_path):
    code = tmp_path / "scripts"
    code.mkdir()
    (code / "train.py").write_text("print('v1')\n")
    before = caching.code_digest(code.as_uri())
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0bytecode")
    assert caching.code_digest(code.as_uri()) == before
    (code / "train.py").write_text("print('v2')\n")
    assert caching.code_digest(code.as_uri()) != before
    with pytest.raises(caching.CacheError, match="nothing to hash"):
        caching.tree_digest(tmp_path / "missing")


def test_preprocess_key_follows_the_published_deliveries(landed_day):
    from include.data import quality
    from include.data.catalog import get_catalog

    info = _info("r", ds=landed_day["ds"])
    prof = {"max_seq_length": 32, "train_split_percentage": 0.9, "validation_split_percentage": 0.05,
            "balance_dataset": "true"}
    code = landed_day["code_uri"]
    empty = caching.preprocess_key(info, prof, None, "", code)
    get_catalog().register_partition(landed_day["ds"])
    quality.validate_partitions([landed_day["ds"]], "setup", 0.05, landed_day["tmp"] / "report")
    published = caching.preprocess_key(info, prof, None, "", code)
    assert published.data["deliveries"][0]["delivery_id"].startswith(landed_day["ds"])
    assert published.parts["data"] != empty.parts["data"] and published.parts["params"] == empty.parts["params"]
    longer = caching.preprocess_key(info, {**prof, "max_seq_length": 64}, None, "", code)
    assert longer.parts["params"] != published.parts["params"] and longer.value != published.value
    json.dumps(published.data)  # JSON-able: it is written into the cache entry


@pytest.fixture
def landed_day(reviews_home, tmp_path):
    from datetime import date

    from include.data.landing import land_daily_drops
    from include.jobs.runner_base import SCRIPTS_DIR

    ds = "2026-11-20"
    land_daily_drops(uri_to_path(get_settings().landing_uri), date.fromisoformat(ds), days=1, limit=200)
    return {"ds": ds, "tmp": tmp_path, "code_uri": SCRIPTS_DIR.as_uri()}
