"""review_sentiment_pipeline end to end with dag.test() on a tiny training budget."""
from __future__ import annotations

import json

import duckdb

from include.config import get_settings, uri_to_path
from tests.integration.conftest import DS, TINY, run_dag


def _store(*parts: str):
    return uri_to_path(get_settings().uri("/".join(parts)))


def test_pipeline_runs_end_to_end_and_publishes_every_artifact(landed):
    dr, states = run_dag("review_sentiment_pipeline", **TINY)
    assert str(dr.state).endswith("success"), states
    for task in ("register_dataset", "validate_dataset", "preprocess", "train", "evaluate", "check_accuracy"):
        assert states[task].endswith("success"), (task, states)
    assert states["skip_registration"].endswith("skipped")

    run = _store("runs", "review_sentiment_pipeline", dr.run_id.replace(":", "_").replace("+", "_"))
    evaluation = json.loads((run / "evaluate" / "evaluation.json").read_text())
    acc = evaluation["metrics"]["accuracy"]["value"]
    assert 0.0 <= acc <= 1.0 and evaluation["test_rows"] > 0
    assert (run / "evaluate" / "confusion_matrix.png").stat().st_size > 1000
    models = list((run / "train").glob("rs-train-*/output/model.tar.gz"))
    assert len(models) == 1, models
    for split in ("train", "validation", "test"):
        assert list((run / "preprocess" / "features" / split).glob("part-*.parquet")), split
    lineage = {p.stem for p in (run / "_lineage").glob("*.json")}
    assert {"register_dataset", "validate_dataset", "preprocess", "train", "evaluate"} <= lineage

    con = duckdb.connect(str(get_settings().catalog_path), read_only=True)
    try:
        parts = [r[0].isoformat() for r in con.execute("SELECT DISTINCT ds FROM reviews.reviews_raw ORDER BY 1").fetchall()]
        assert parts == ["2026-11-19", DS], "the backlog day and the run's day are both registered"
        snap = con.execute("SELECT count(*) FROM reviews.reviews_features WHERE snapshot_id = ?", [dr.run_id]).fetchone()[0]
        assert snap > 0
    finally:
        con.close()


def test_threshold_above_one_takes_the_no_register_branch(landed):
    dr, states = run_dag("review_sentiment_pipeline", **{**TINY, "min_accuracy": 1.01})
    assert states["evaluate"].endswith("success")
    assert states["skip_registration"].endswith("success")
    assert states["accuracy_passed"].endswith("skipped")
