"""Step 8 through the real DAG: the run waits for a person, who rejects over the REST API."""
from __future__ import annotations

import json
import re
import tarfile
import threading
import time

from include.model.registry import get_registry
from include.model.registry_base import REJECTED
from include.serving.endpoint import get_endpoint
from tests.integration.conftest import DEPLOY, run_dag


def _api_client():
    # Built in the test's thread before the reviewer starts: create_app() importing Airflow's
    # models in one thread while dag.test() configures the ORM mappers (which import them too)
    # in another deadlocked on the import lock.
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    return TestClient(create_app())


def _reject_when_asked(client, result: dict, stop: threading.Event) -> None:
    """Acts as the reviewer: finds the pending approval over the REST API and rejects it."""
    base = "/api/v2/dags/review_sentiment_pipeline/dagRuns"
    while not stop.is_set():
        listing = client.get(f"{base}/~/hitlDetails")
        pending = [d for d in listing.json().get("hitl_details", []) if not d.get("response_received")] \
            if listing.status_code == 200 else []
        if pending:
            ti = pending[0]["task_instance"]
            result["seen"] = ti
            result["subject"], result["body"] = pending[0]["subject"], pending[0]["body"]
            # the link in the request opens in the same API server (the review_reports plugin)
            link = re.search(r"\]\((/reports/[^)]+)\)", pending[0]["body"] or "")
            page = client.get(link.group(1)) if link else None
            result["report"] = (page.status_code, page.text) if page is not None else None
            url = f"{base}/{ti['dag_run_id']}/taskInstances/{ti['task_id']}/{ti['map_index']}/hitlDetails"
            reply = client.patch(url, json={"chosen_options": ["Reject"], "params_input": {}})
            result["reply"] = (reply.status_code, reply.text)
            return
        time.sleep(2)


def run_evaluation_uri(run_id: str) -> str:
    from include.common.config import get_settings

    return get_settings().run_uri("review_sentiment_pipeline", run_id, "evaluate") + "/evaluation.json"


def test_manual_approval_waits_and_a_rejection_deploys_nothing(endpoint_port):
    result: dict = {}
    stop = threading.Event()
    reviewer = threading.Thread(target=_reject_when_asked, args=(_api_client(), result, stop), daemon=True)
    reviewer.start()
    try:
        dr, states = run_dag("review_sentiment_pipeline", **DEPLOY, auto_approve=False)
    finally:
        stop.set()
        reviewer.join(10)
    assert result.get("seen", {}).get("task_id") == "approve_model", result
    assert result["reply"][0] == 200, result["reply"]
    # the request a reviewer reads: the figures of evaluation.json, the data range, a report the UI opens
    from include.common.io import uri_to_path

    evaluation = json.loads(uri_to_path(run_evaluation_uri(dr.run_id)).read_text())
    acc = f"{evaluation['metrics']['accuracy']['value']:.4f}"
    assert result["subject"] == f"Approve review-sentiment model v1? Accuracy {acc} (nothing deployed yet)"
    assert f"| accuracy | {acc} |" in result["body"] and "| macro-F1 |" in result["body"]
    assert "No version is deployed yet" in result["body"] and "**Trained on**: ds " in result["body"]
    assert "file://" not in result["body"]
    assert result["report"] is not None and result["report"][0] == 200, result.get("report")
    assert f"Accuracy <b>{acc}</b>" in result["report"][1]
    assert states["approve_model"].endswith("success"), states
    assert states["deploy_model"].endswith("skipped"), states
    versions = get_registry().list_versions()
    assert len(versions) == 1 and versions[0].approval_status == REJECTED
    with tarfile.open(uri_to_path(versions[0].package_uri), "r:gz") as tar:  # register_model's int8 model
        assert "model.int8.onnx" in tar.getnames()
    assert get_registry().deployed_version() is None
    assert get_endpoint().status() is None, "nothing was deployed"
