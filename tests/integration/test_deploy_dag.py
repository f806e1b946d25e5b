"""Steps 7-9 through the real DAG: register, approve (or reject) in Airflow, deploy, serve."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from include import endpoint
from include.registry import APPROVED, REJECTED, get_registry
from tests.integration.conftest import DS, TINY, run_dag

# Earlier tiny models are random-ish: the "not behind the deployed model" rule is off here.
DEPLOY = {**TINY, "max_accuracy_drop": 1.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoint_port(landed, monkeypatch):
    port = _free_port()
    monkeypatch.setenv("ENDPOINT_PORT", str(port))
    yield port
    endpoint.stop()


def _invoke_jsonlines(port: int, texts: list[str]) -> httpx.Response:
    body = "\n".join(__import__("json").dumps({"features": [t]}) for t in texts)
    return httpx.post(f"http://127.0.0.1:{port}/invocations", content=body,
                      headers={"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"}, timeout=30)


def test_auto_approved_model_is_deployed_and_survives_a_failed_gate(endpoint_port):
    dr, states = run_dag("review_sentiment_pipeline", **DEPLOY, auto_approve=True)
    assert str(dr.state).endswith("success"), states
    assert states["approve_model"].endswith("skipped") and states["deploy_model"].endswith("success"), states
    version = get_registry().deployed_version()
    assert version is not None and version.approval_status == APPROVED
    assert version.lineage["run_id"] == dr.run_id and version.lineage["ds"] == DS
    assert version.lineage["feature_snapshot_id"] == dr.run_id and version.lineage["git_commit"]

    answer = _invoke_jsonlines(endpoint_port, ["I love this dress", "It fell apart after one wash"])
    assert answer.status_code == 200, answer.text
    lines = [__import__("json").loads(line) for line in answer.text.strip().splitlines()]
    assert len(lines) == 2 and all(line["predicted_label"] in (-1, 0, 1) for line in lines)
    assert all(0.0 <= line["probability"] <= 1.0 for line in lines)

    # A run below min_accuracy must not touch what is served.
    dr2, states2 = run_dag("review_sentiment_pipeline", **{**DEPLOY, "min_accuracy": 1.01}, auto_approve=True)
    assert states2["skip_registration"].endswith("success") and states2["deploy_model"].endswith("skipped"), states2
    answer = httpx.post(f"http://127.0.0.1:{endpoint_port}/invocations", json="great fit", timeout=30)
    assert answer.status_code == 200, answer.text
    assert str(answer.json()["model_version"]) == str(version.version), "the deployed version still answers"
    assert len(get_registry().list_versions()) == 1, "the failed run registered nothing"


def _reject_when_asked(result: dict, stop: threading.Event) -> None:
    """Acts as the reviewer: finds the pending approval over the REST API and rejects it."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    client = TestClient(create_app())
    base = "/api/v2/dags/review_sentiment_pipeline/dagRuns"
    while not stop.is_set():
        listing = client.get(f"{base}/~/hitlDetails")
        pending = [d for d in listing.json().get("hitl_details", []) if not d.get("response_received")] \
            if listing.status_code == 200 else []
        if pending:
            ti = pending[0]["task_instance"]
            result["seen"] = ti
            url = f"{base}/{ti['dag_run_id']}/taskInstances/{ti['task_id']}/{ti['map_index']}/hitlDetails"
            reply = client.patch(url, json={"chosen_options": ["Reject"], "params_input": {}})
            result["reply"] = (reply.status_code, reply.text)
            return
        time.sleep(2)


def test_manual_approval_waits_and_a_rejection_deploys_nothing(endpoint_port):
    result: dict = {}
    stop = threading.Event()
    reviewer = threading.Thread(target=_reject_when_asked, args=(result, stop), daemon=True)
    reviewer.start()
    try:
        dr, states = run_dag("review_sentiment_pipeline", **DEPLOY, auto_approve=False)
    finally:
        stop.set()
        reviewer.join(10)
    assert result.get("seen", {}).get("task_id") == "approve_model", result
    assert result["reply"][0] == 200, result["reply"]
    assert states["approve_model"].endswith("success"), states
    assert states["deploy_model"].endswith("skipped"), states
    versions = get_registry().list_versions()
    assert len(versions) == 1 and versions[0].approval_status == REJECTED
    assert get_registry().deployed_version() is None
    assert endpoint.status() is None, "nothing was deployed"
