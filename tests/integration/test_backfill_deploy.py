"""Backfills never move production backwards: a run for an older logical date registers its
model but does not deploy it over the model trained on newer data; the task log says so."""
from __future__ import annotations

import json
from datetime import date, timedelta

import httpx

from include.common.config import get_settings
from include.common.io import uri_to_path
from include.model.registry import get_registry
from include.model.registry_base import APPROVED
from include.serving.endpoint import get_endpoint
from tests.integration.conftest import DEPLOY, DS, run_dag

DAG = "review_sentiment_pipeline"


def test_a_backfilled_run_registers_but_does_not_replace_a_model_trained_on_newer_data(endpoint_port, capfd,
                                                                                       caplog):
    newer, states = run_dag(DAG, ds=DS, **DEPLOY, auto_approve=True)
    assert states["deploy_model"].endswith("success"), states
    served = get_registry().deployed_version()
    assert served is not None and served.lineage["data_to"] == DS
    capfd.readouterr()
    caplog.clear()

    older_day = (date.fromisoformat(DS) - timedelta(days=1)).isoformat()
    older, states = run_dag(DAG, ds=older_day, **DEPLOY, auto_approve=True)
    out = capfd.readouterr()
    log = out.out + out.err + caplog.text  # the task log reaches stdout (buffered) and the logging handlers
    assert str(older.state).endswith("success") and states["register_model"].endswith("success"), states
    assert states["deploy_model"].endswith("success"), "not deploying is a decision, not a failure"

    versions = get_registry().list_versions()
    backfilled = next(v for v in versions if v.lineage["run_id"] == older.run_id)
    assert backfilled.approval_status == APPROVED and backfilled.lineage["data_to"] == older_day
    assert int(backfilled.version) > int(served.version), "the backfill registered a newer version number"
    # ... but the model trained on newer data keeps serving
    assert get_registry().deployed_version().version == served.version
    assert str(get_endpoint().status()["version"]) == str(served.version)
    answer = httpx.post(f"http://127.0.0.1:{endpoint_port}/invocations", json="great fit", timeout=30)
    assert answer.status_code == 200 and str(answer.json()["model_version"]) == str(served.version)
    line = next((ln for ln in log.splitlines() if "never moves production backwards" in ln), "")
    assert f"ds={older_day}" in line and f"ds={DS}" in line and f"version {served.version}" in line, log[-3000:]
    deploy = json.loads((uri_to_path(get_settings().run_uri(DAG, older.run_id, "_lineage")) / "deploy_model.json")
                        .read_text())["result"]
    assert deploy["deployed"] is False and deploy["serving_version"] == served.version
