"""review_sentiment_pipeline end to end with dag.test() on a tiny training budget: every
step's artifacts, the registered and deployed model answering HTTP, and a second run below
min_accuracy that takes the no-register branch while the deployed version keeps answering."""
from __future__ import annotations

import json

import duckdb
import httpx

from include.common.config import get_settings
from include.common.io import uri_to_path
from include.model.registry import get_registry
from include.model.registry_base import APPROVED
from include.serving.endpoint import get_endpoint
from tests.integration.conftest import DEPLOY, DS, run_dag


def _invoke_jsonlines(port: int, texts: list[str]) -> httpx.Response:
    body = "\n".join(json.dumps({"features": [t]}) for t in texts)
    return httpx.post(f"http://127.0.0.1:{port}/invocations", content=body,
                      headers={"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"}, timeout=30)


def _check_artifacts(run_id: str) -> None:
    run = uri_to_path(get_settings().run_uri("review_sentiment_pipeline", run_id, "x")).parent
    evaluation = json.loads((run / "evaluate" / "evaluation.json").read_text())
    assert 0.0 <= evaluation["metrics"]["accuracy"]["value"] <= 1.0 and evaluation["test_rows"] > 0
    assert set(evaluation["per_class"]) == {"negative", "neutral", "positive"}
    assert (run / "evaluate" / "confusion_matrix.png").stat().st_size > 1000
    assert len(list((run / "train").glob("rs-train-*/output/model.tar.gz"))) == 1
    assert not (run / "train" / "checkpoints").exists(), "checkpoints are dropped once the model is published"
    for split in ("train", "validation", "test"):
        assert list((run / "preprocess" / "features" / split).glob("part-*.parquet")), split
        # the jobs' channels: the feature store's point-in-time export as of the run's ds
        assert list((run / "preprocess" / "channels" / split).glob("part-*.parquet")), split
    assert list((run / "validate").glob("*.html")), "validation report published"
    lineage = {p.stem for p in (run / "_lineage").glob("*.json")}
    assert {"register_dataset", "validate_dataset", "preprocess", "train", "evaluate", "register_model",
            "deploy_model"} <= lineage, lineage
    con = duckdb.connect(str(get_settings().catalog_path), read_only=True)
    try:
        parts = [r[0].isoformat() for r in con.execute("SELECT DISTINCT ds FROM reviews.reviews_raw ORDER BY 1").fetchall()]
        assert parts == ["2026-11-19", DS], "the backlog day and the run's day are both registered"
        snap = con.execute("SELECT count(*) FROM feature_store.reviews_features WHERE source = ?", [run_id]).fetchone()[0]
        assert snap > 0, "the run's features were ingested into the offline store"
    finally:
        con.close()


def test_pipeline_end_to_end_deploys_a_model_that_answers_and_a_failed_gate_keeps_it(endpoint_port):
    dr, states = run_dag("review_sentiment_pipeline", **DEPLOY, auto_approve=True)
    assert str(dr.state).endswith("success"), states
    for task in ("register_dataset", "validate_dataset", "preprocess", "train", "evaluate", "check_accuracy",
                 "register_model", "deploy_model"):
        assert states[task].endswith("success"), (task, states)
    assert states["skip_registration"].endswith("skipped") and states["approve_model"].endswith("skipped")
    _check_artifacts(dr.run_id)

    version = get_registry().deployed_version()
    assert version is not None and version.approval_status == APPROVED
    assert version.lineage["run_id"] == dr.run_id and version.lineage["ds"] == DS
    assert version.lineage["feature_snapshot_id"] == dr.run_id and version.lineage["git_commit"]
    # the registry entry links the run's evaluation report (file and Airflow UI address)
    assert uri_to_path(version.lineage["evaluation_report_uri"]).name == "report.html"
    assert uri_to_path(version.lineage["evaluation_report_uri"]).is_file()
    assert version.lineage["evaluation_report_url"].endswith("/evaluate/report.html")
    # deploy_model measured int8 against fp32 on this run's test split and recorded the decision
    assert version.serving["precision"] in ("fp32", "int8") and int(version.serving["eval_rows"]) > 0
    assert 0.0 <= float(version.serving["int8_accuracy"]) <= 1.0 and version.serving["test_uri"].endswith("/test")
    assert get_endpoint().status()["precision"] == version.serving["precision"]
    # check_accuracy's decision (no champion, no baseline yet) is in the registry entry.
    assert version.lineage["gate_decision"] == "register" and "champion none" in version.lineage["gate_note"]
    answer = _invoke_jsonlines(endpoint_port, ["I love this dress", "It fell apart after one wash"])
    assert answer.status_code == 200, answer.text
    lines = [json.loads(line) for line in answer.text.strip().splitlines()]
    assert len(lines) == 2 and all(line["predicted_label"] in (-1, 0, 1) for line in lines)
    assert all(0.0 <= line["probability"] <= 1.0 for line in lines)

    # A threshold above 1 takes the no-register branch and must not touch what is served.
    dr2, states2 = run_dag("review_sentiment_pipeline", **{**DEPLOY, "min_accuracy": 1.01}, auto_approve=True)
    assert states2["evaluate"].endswith("success")
    # the second run's evaluation also scored the deployed version on its own test split
    evaluate_dir = uri_to_path(get_settings().run_uri("review_sentiment_pipeline", dr2.run_id, "evaluate"))
    deployed = json.loads((evaluate_dir / "comparison.json").read_text())["deployed"]
    candidate = json.loads((evaluate_dir / "evaluation.json").read_text())
    assert deployed["version"] == str(version.version) and deployed["test_rows"] == candidate["test_rows"]
    assert f"deployed v{version.version} (same test split)" in (evaluate_dir / "report.html").read_text()
    assert states2["skip_registration"].endswith("success"), states2
    for task in ("register_model", "deploy_model"):
        assert states2[task].endswith("skipped"), (task, states2)
    assert len(get_registry().list_versions()) == 1, "the failed run registered nothing"
    # The champion (the deployed version) was re-scored on the second run's own test split.
    decision = json.loads((uri_to_path(get_settings().run_uri("review_sentiment_pipeline", dr2.run_id,
                                                                "check_accuracy")) / "decision.json").read_text())
    assert decision["decision"] == "skip" and decision["champion_version"] == version.version
    assert 0.0 <= decision["champion"] <= 1.0 and decision["baseline"] is None
    answer = httpx.post(f"http://127.0.0.1:{endpoint_port}/invocations", json="great fit", timeout=30)
    assert answer.status_code == 200, answer.text
    assert str(answer.json()["model_version"]) == str(version.version), "the deployed version still answers"
    assert str(get_endpoint().status()["version"]) == str(version.version)
