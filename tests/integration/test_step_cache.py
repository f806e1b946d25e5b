"""Step caching end to end with dag.test(): re-running a day with the same input data, params and
job code reuses preprocess/train/evaluate; a change to the params, the code or the data misses."""
from __future__ import annotations

import json
import shutil
from datetime import date, timedelta

from include.common.config import get_settings
from include.common.io import uri_to_path
from tests.integration.conftest import DS, TINY

DAG = "review_sentiment_pipeline"
STEPS = ("preprocess", "train", "evaluate")
# No registration (min_accuracy above 1): the runs stop after check_accuracy, which keeps them short.
CONF = {**TINY, "ds": DS, "min_accuracy": 1.01}


def _run(n: int, **conf):
    """Run n: its own logical date (so its own run id), always the partition DS."""
    from include.pipeline.cli import load_dag, logical_date_for

    day = date.fromisoformat(DS) + timedelta(days=n)
    dr = load_dag().test(logical_date=logical_date_for(day), run_conf={**CONF, **conf})
    assert str(dr.state).endswith("success"), dr.run_id
    return dr.run_id


def _cache(run_id: str) -> dict[str, dict]:
    """Each cached step's ``cache`` record, from the run's lineage files."""
    lineage = uri_to_path(get_settings().run_uri(DAG, run_id, "_lineage"))
    return {s: json.loads((lineage / f"{s}.json").read_text())["result"]["cache"] for s in STEPS}


def _log(capfd, caplog) -> str:
    """What the runs logged since the last call: the task log reaches stdout or the logging
    handlers depending on how Airflow's logging was set up in this session, so read both."""
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    caplog.clear()
    return text


def _line(log: str, words: str) -> str:
    return next((line for line in log.splitlines() if words in line), "")


def test_a_rerun_reuses_the_steps_and_params_code_or_data_changes_miss(landed, capfd, caplog, monkeypatch, tmp_path):
    first = _run(0)
    assert not any(c["hit"] for c in _cache(first).values())
    _log(capfd, caplog)

    # 1. Same data, params and code: all three steps are cache hits from the first run.
    second = _run(1)
    log = _log(capfd, caplog)
    cache = _cache(second)
    for step in STEPS:
        assert cache[step]["hit"] and cache[step]["source_run_id"] == first, (step, cache)
        hit = _line(log, f"cache hit: {step} key {cache[step]['key']}")
        assert hit and first in hit, (step, log[-4000:])
    assert cache["preprocess"]["key"] == _cache(first)["preprocess"]["key"]
    run2 = uri_to_path(get_settings().run_uri(DAG, second, "x")).parent
    # the second run holds its own copy of every output (the source run may be deleted)
    assert len(list((run2 / "train").glob("rs-train-*/output/model.tar.gz"))) == 1
    for split in ("train", "validation", "test"):
        assert list((run2 / "preprocess" / "channels" / split).glob("part-*.parquet")), split
    assert (run2 / "export" / "clean.parquet").is_file() and (run2 / "evaluate" / "evaluation.json").is_file()
    # the report was rendered for the second run, the results point into its folder
    assert second in (run2 / "evaluate" / "report.html").read_text()
    evaluated = json.loads((run2 / "_lineage" / "evaluate.json").read_text())["result"]
    assert uri_to_path(evaluated["evaluation_uri"]).is_relative_to(run2)
    shutil.rmtree(uri_to_path(get_settings().run_uri(DAG, first, "x")).parent)  # the source run goes away

    # 2. A training param changes: preprocess still hits (from the second run's copy), train misses.
    third = _run(2, learning_rate=2e-4)
    log = _log(capfd, caplog)
    cache = _cache(third)
    assert cache["preprocess"]["hit"] and cache["preprocess"]["copied_from"] == second
    assert not cache["train"]["hit"] and not cache["evaluate"]["hit"]
    assert "differs in params" in _line(log, "cache miss: train"), log[-4000:]
    assert "differs in data" in _line(log, "cache miss: evaluate"), "a new model is new input data for evaluate"

    # 3. The job code changes (include/scripts/ as the runner ships it): every step misses.
    from include.jobs import runner_local

    scripts = tmp_path / "scripts"
    shutil.copytree(runner_local.SCRIPTS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    with open(scripts / "preprocess.py", "a") as fh:
        fh.write("\n# a change to the job code\n")
    with monkeypatch.context() as patch:
        patch.setattr(runner_local, "SCRIPTS_DIR", scripts)
        fourth = _run(3)
    log = _log(capfd, caplog)
    assert not any(c["hit"] for c in _cache(fourth).values())
    assert "differs in code" in _line(log, "cache miss: preprocess"), log[-4000:]

    # 4. The day's data changes (a new delivery for DS): preprocess misses on the data.
    import pandas as pd

    drop = next(uri_to_path(get_settings().landing_uri).glob(f"ds={DS}/*.csv"))
    pd.read_csv(drop, dtype=str, keep_default_na=False).iloc[:-5].to_csv(drop, index=False)  # 5 reviews fewer
    fifth = _run(4)
    log = _log(capfd, caplog)
    assert not _cache(fifth)["preprocess"]["hit"]
    assert "differs in data" in _line(log, "cache miss: preprocess"), log[-4000:]
