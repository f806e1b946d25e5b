"""review_automl_baseline end to end with dag.test(), then the champion/challenger scoring that
check_accuracy runs, and the baseline served by the real endpoint over loopback."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx

from include.common.config import get_settings
from include.common.io import uri_to_path
from include.model.registry import get_registry
from include.model.registry_base import BASELINE_MODEL_NAME, PENDING
from include.pipeline.context import RunInfo
from include.scripts.preprocess import __file__ as PREPROCESS
from include.serving.protocol import SMOKE_REVIEWS
from tests.integration.conftest import run_dag


def _ingest_features(landed, tmp_path) -> str:
    """What review_sentiment_pipeline's preprocess leaves behind: a feature snapshot (real reviews)."""
    from include.data import feature_store

    out = tmp_path / "features"
    subprocess.run([sys.executable, PREPROCESS, "--input-data", str(landed), "--output-data", str(out),
                    "--max-seq-length", "16", "--balance-dataset", "eval", "--train-split-percentage", "0.7",
                    "--validation-split-percentage", "0.15"], check=True, capture_output=True)
    channels = tmp_path / "channels"
    feature_store.get_feature_store().ingest_run_features(out, "2026-11-20", "manual__snapshot-1", channels.as_uri())
    return "manual__snapshot-1"


def test_automl_dag_without_a_feature_snapshot_fails_at_once_saying_what_to_do(reviews_home, airflow_db):
    dr, states = run_dag("review_automl_baseline", time_budget_s=30, max_candidates=2)
    assert str(dr.state).endswith("failed") and states["export_features"].endswith("failed"), states
    assert states["automl_search"].endswith("upstream_failed")


def test_automl_dag_registers_a_servable_baseline_that_check_accuracy_scores(landed, tmp_path, endpoint_port):
    snapshot = _ingest_features(landed, tmp_path)
    dr, states = run_dag("review_automl_baseline", time_budget_s=60, max_candidates=3)
    assert str(dr.state).endswith("success"), states

    run_dir = uri_to_path(get_settings().run_uri("review_automl_baseline", dr.run_id, "automl"))
    board = json.loads((run_dir / "leaderboard" / "leaderboard.json").read_text())
    # at most 3 searched candidates, plus the stacked one when two or more were fitted
    assert 1 <= board["candidates"] <= 4 and (run_dir / "leaderboard" / "leaderboard.html").is_file()
    versions = get_registry(BASELINE_MODEL_NAME).list_versions()
    assert len(versions) == 1
    baseline = versions[0]
    assert baseline.approval_status == PENDING and baseline.lineage["feature_snapshot_id"] == snapshot
    assert baseline.lineage["candidate"] == board["best_candidate"]
    assert abs(baseline.metrics["accuracy"] - board["best_accuracy"]) < 1e-4
    assert get_registry().list_versions() == [], "the BERT model's registry is untouched"

    # A re-run of the same DAG run registers no second version.
    from include.pipeline import automl_steps

    info = RunInfo("review_automl_baseline", dr.run_id, "")
    lineage = json.loads((uri_to_path(get_settings().run_uri("review_automl_baseline", dr.run_id, "_lineage"))
                          / "automl_search.json").read_text())["result"]
    feats = json.loads((uri_to_path(get_settings().run_uri("review_automl_baseline", dr.run_id, "_lineage"))
                        / "export_features.json").read_text())["result"]
    again = automl_steps.register_baseline(info, feats, lineage)
    assert again["created"] is False and again["version"] == baseline.version

    # check_accuracy's reference scoring: the baseline re-scored by a processing job on a test split.
    refs = automl_steps.reference_accuracies(RunInfo("review_sentiment_pipeline", "manual__x", "2026-11-20"),
                                             feats["test_uri"])
    assert refs["champion"] is None and refs["baseline_version"] == baseline.version
    assert abs(refs["baseline"] - board["best_accuracy"]) < 1e-4, "same rows, same model, same accuracy"
    figures = refs["baseline_figures"]  # what the evaluation report and the approval request show
    assert figures["accuracy"] == refs["baseline"] and set(figures["per_class"]) == {"negative", "neutral", "positive"}

    # The baseline package is served by the same endpoint with the same contract.
    from include.serving.endpoint import get_endpoint

    info = get_endpoint().deploy(baseline.package_uri, f"baseline-{baseline.version}", list(SMOKE_REVIEWS))
    assert info["url"].endswith(str(endpoint_port))
    body = "\n".join(json.dumps({"features": [t]}) for t in SMOKE_REVIEWS) + "\n"
    answer = httpx.post(f"http://127.0.0.1:{endpoint_port}/invocations", content=body,
                        headers={"Content-Type": "application/jsonlines"}, timeout=30)
    assert answer.status_code == 200, answer.text
    lines = [json.loads(x) for x in answer.text.strip().splitlines()]
    assert len(lines) == 3 and all(x["predicted_label"] in (-1, 0, 1) for x in lines)
    bad = httpx.post(f"http://127.0.0.1:{endpoint_port}/invocations", content=b'{"text": 1}\n',
                     headers={"Content-Type": "application/jsonlines"}, timeout=30)
    assert bad.status_code == 400 and "features" in bad.json()["error"]
