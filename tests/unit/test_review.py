"""include/pipeline/review.py and the reports plugin: report links, the served files, the approval request."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from include.common.config import get_settings
from include.common.io import uri_to_path
from include.pipeline import review

EVALUATION = {
    "metrics": {"accuracy": {"value": 0.7}, "macro_f1": {"value": 0.68}},
    "per_class": {k: {"precision": p, "recall": p, "f1": p, "support": 10}
                  for k, p in (("negative", 0.8), ("neutral", 0.5), ("positive", 0.8))},
    "confusion_matrix": {"labels": ["negative", "neutral", "positive"], "matrix": [[8, 2, 0], [3, 5, 2], [0, 2, 8]]},
    "accuracy_ci95": [0.536, 0.864], "test_rows": 30,
}
DEPLOYED = {"version": "1", "test_rows": 30, "accuracy": 0.6, "macro_f1": 0.55, "accuracy_ci95": [0.42, 0.78],
            "per_class": {k: {"precision": f, "recall": f, "f1": f, "support": 10}
                          for k, f in (("negative", 0.7), ("neutral", 0.3), ("positive", 0.75))},
            "confusion_matrix": {"labels": [], "matrix": []}}


@pytest.fixture
def run_folder(reviews_home):
    """An evaluate/ folder of run ``manual__2026-11-21T00:00:00+00:00`` with its report written."""
    run_id = "manual__2026-11-21T00:00:00+00:00"
    folder = uri_to_path(get_settings().run_uri("review_sentiment_pipeline", run_id, "evaluate"))
    folder.mkdir(parents=True)
    (folder / "evaluation.json").write_text(json.dumps(EVALUATION))
    (folder / "comparison.json").write_text(json.dumps({"deployed": DEPLOYED}))
    (folder / "model.tar.gz").write_bytes(b"not a report")
    page = review.write_evaluation_report(folder, "review_sentiment_pipeline", run_id,
                                          review.data_range("2026-10-23", "2026-11-20", 6402))
    return run_id, folder, page


def test_report_url_is_served_by_the_plugin_not_a_file_path(run_folder):
    run_id, folder, page = run_folder
    assert page["report_path"] == str(folder / "report.html")
    assert page["report_url"] == ("/reports/runs/review_sentiment_pipeline/manual__2026-11-21T00_00_00_00_00/"
                                  "evaluate/report.html")
    assert review.report_url("d", "r", "evaluate", "report.html", base_url="https://af.example.com/") == \
        "https://af.example.com/reports/runs/d/r/evaluate/report.html"


def test_plugin_serves_reports_and_lists_them(run_folder):
    from review_reports import ReviewReportsPlugin, app

    run_id, folder, page = run_folder
    assert ReviewReportsPlugin.fastapi_apps[0]["url_prefix"] == review.REPORTS_PREFIX
    client = TestClient(app)
    path = page["report_url"][len(review.REPORTS_PREFIX):]
    got = client.get(path)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
    assert got.text == (folder / "report.html").read_text() and "0.7000" in got.text
    index = client.get("/")
    assert index.status_code == 200 and f'href="{path.lstrip("/")}"' in index.text


@pytest.mark.parametrize("bad", ["evaluate/model.tar.gz", "evaluate/missing.html", "..%2F..%2Fetc/passwd",
                                 "evaluate/..%2F..%2F..%2Fsecret.html"])
def test_plugin_refuses_what_is_not_a_report(run_folder, bad):
    from review_reports import app

    run_id, folder, page = run_folder
    run = page["report_url"].split("/")[4]
    assert TestClient(app).get(f"/runs/review_sentiment_pipeline/{run}/{bad}").status_code == 404
    with pytest.raises(review.ReportNotFoundError):
        review.resolve_report("review_sentiment_pipeline", run, "..", "report.html")


def test_approval_request_comes_from_the_registry_and_the_report(run_folder, tmp_path):
    from include.model.registry import get_registry
    from include.model.registry_base import PENDING

    run_id, folder, page = run_folder
    package = tmp_path / "model.tar.gz"
    package.write_bytes(b"not inspected by the registry")
    mv = get_registry().register(package.as_uri(), {"accuracy": 0.7}, {
        "dag_id": "review_sentiment_pipeline", "run_id": run_id, "ds": "2026-11-20",
        "evaluation_uri": (folder / "evaluation.json").as_uri(), "data_from": "2026-10-23", "data_to": "2026-11-20",
        "clean_rows": "6402", "evaluation_report_url": page["report_url"]}, PENDING)
    subject, body = review.approval_request(mv.version)
    assert subject == f"Approve review-sentiment model v{mv.version}? Accuracy 0.7000 vs 0.6000 for deployed v1"
    assert f"| metric | candidate v{mv.version} | deployed v1 | change vs deployed |" in body
    assert "| accuracy | 0.7000 | 0.6000 | +0.1000 |" in body
    assert "| F1 neutral | 0.5000 | 0.3000 | +0.2000 |" in body
    assert "ds 2026-10-23..2026-11-20 (6,402 clean reviews before the split)" in body
    assert f"]({page['report_url']})" in body and "file://" not in body
    assert "Debugger warnings**: none" in body


def test_approval_request_shows_the_automl_baseline_scored_by_check_accuracy(run_folder, tmp_path):
    import json

    from include.model.registry import get_registry
    from include.model.registry_base import PENDING

    run_id, folder, page = run_folder
    package = tmp_path / "model.tar.gz"
    package.write_bytes(b"not inspected by the registry")
    mv = get_registry().register(package.as_uri(), {"accuracy": 0.7}, {
        "dag_id": "review_sentiment_pipeline", "run_id": run_id, "ds": "2026-11-20",
        "evaluation_uri": (folder / "evaluation.json").as_uri(), "evaluation_report_url": page["report_url"]}, PENDING)
    decision = folder.parent / "check_accuracy" / "decision.json"
    decision.parent.mkdir(parents=True, exist_ok=True)
    decision.write_text(json.dumps({"decision": "register", "baseline": 0.65, "baseline_figures": {
        "title": "AutoML baseline v3", "accuracy": 0.65, "macro_f1": 0.64,
        "per_class": {"negative": {"f1": 0.7}, "neutral": {"f1": 0.4}, "positive": {"f1": 0.8}}}}))
    _, body = review.approval_request(mv.version)
    assert "AutoML baseline v3" in body and "0.6500" in body
