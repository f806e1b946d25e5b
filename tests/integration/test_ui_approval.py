"""Step 8 by a person in a real browser: a run of review_sentiment_pipeline on a running Airflow
(api-server, scheduler, dag-processor, triggerer) waits at ``approve_model``; headless Chromium,
logged in with the JWT of ``POST /auth/token`` as the UI's ``_token`` cookie, goes to *Browse ->
Required Actions*, opens the request and clicks Approve (the run deploys) or Reject (nothing is
deployed, the registry says Rejected). Screenshots of the approval page are kept as artifacts."""
from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from include.model.registry import APPROVED, REJECTED, get_registry
from include.pipeline.cli import logical_date_for
from include.serving import endpoint
from tests.integration.browser import CHROMIUM_ARGS, keep_artifact
from tests.integration.conftest import DEPLOY, DS
from tests.integration.native_airflow import AirflowStack

DAG_ID = "review_sentiment_pipeline"
UI_TIMEOUT_MS = 60_000


def _wait_for_approval_request(stack: AirflowStack) -> str:
    """Trigger a tiny run that asks for approval; return its run id once ``approve_model`` waits."""
    run_id = stack.trigger(DAG_ID, logical_date_for(date.fromisoformat(DS)), {**DEPLOY, "auto_approve": False})
    # The HITL task is "awaiting_input" while it waits for a person (Airflow 3.3).
    stack.wait_for_task_state(DAG_ID, run_id, "approve_model", "awaiting_input")
    return run_id


def _open_request(page: Page, stack: AirflowStack, run_id: str) -> None:
    """From *Required Actions* to the task's request, the way a reviewer goes there."""
    page.goto(f"{stack.base_url}/required_actions")
    row = page.get_by_role("row").filter(has_text=run_id)
    row.get_by_role("link", name=re.compile(r"^Approve review-sentiment model")).click()
    expect(page).to_have_url(re.compile(r"/tasks/approve_model/required_actions$"), timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text("Awaiting Input")).to_be_visible(timeout=UI_TIMEOUT_MS)


def _respond(page: Page, stack: AirflowStack, run_id: str, choice: str, shots: Path) -> str:
    """Open the request, screenshot it, click ``choice``, wait for the UI to confirm; return the
    page's text as the reviewer saw it before clicking."""
    _open_request(page, stack, run_id)
    button = page.get_by_role("button", name=choice, exact=True)
    expect(button).to_be_enabled()
    request_text = page.locator("body").inner_text()
    page.screenshot(path=shots / "approval-page.png")
    button.click()
    expect(page.get_by_text("approve_model response successful")).to_be_visible()
    page.reload()
    # the page now says who answered, and the buttons are gone grey
    expect(page.get_by_text(re.compile(r"Response received at .* from admin"))).to_be_visible()
    expect(page.get_by_role("button", name=choice, exact=True)).to_be_disabled()
    page.screenshot(path=shots / f"approval-page-after-{choice.lower()}.png")
    return request_text


def _respond_in_browser(stack: AirflowStack, chromium_path: Path, run_id: str, choice: str, shots: Path) -> str:
    """Headless Chromium logged in with the REST API's JWT as the ``_token`` cookie answers the
    request with ``choice``; a screenshot of the page is kept if anything fails."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_cookies([{"name": "_token", "value": stack.token(), "url": stack.base_url}])
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            try:
                return _respond(page, stack, run_id, choice, shots)
            except Exception:
                page.screenshot(path=shots / "failure.png")  # what the browser showed when it failed
                raise
        finally:
            browser.close()


def _shots(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


def _keep(shots: Path, prefix: str) -> None:
    for png in shots.glob("*.png"):
        keep_artifact(png.rename(png.with_name(f"{prefix}-{png.name}")))


def test_approving_in_the_browser_deploys_the_model(native_airflow, chromium, tmp_path):
    run_id = _wait_for_approval_request(native_airflow)
    assert endpoint.status() is None, "nothing may be deployed before the approval"
    shots = _shots(tmp_path, "screenshots")
    try:
        request_text = _respond_in_browser(native_airflow, chromium, run_id, "Approve", shots)
    finally:
        _keep(shots, "approve")
    assert "Approve review-sentiment model v1?" in request_text and "macro-F1" in request_text

    state, states = native_airflow.wait_for_run(DAG_ID, run_id)
    assert state == "success", (states, native_airflow.logs())
    assert states["approve_model"] == "success" and states["deploy_model"] == "success", states
    version = get_registry().get("1")
    assert version.approval_status == APPROVED
    # the decision was made by the user the browser logged in as, in this run
    assert version.approval_note == f"Approve by admin in Airflow run {run_id}", version.approval_note
    assert get_registry().deployed_version().version == "1"
    served = endpoint.status()
    assert served is not None and served["healthy"] and served["serving_version"] == "1", served
    answers = endpoint.predict(["I love this dress, it fits perfectly.", "Terrible, it ripped after one wash."])
    assert len(answers) == 2 and all(a["label"] in ("negative", "neutral", "positive") and str(a["model_version"]) == "1"
                                 for a in answers), answers


def test_rejecting_in_the_browser_deploys_nothing(native_airflow, chromium, tmp_path):
    run_id = _wait_for_approval_request(native_airflow)
    shots = _shots(tmp_path, "screenshots")
    try:
        _respond_in_browser(native_airflow, chromium, run_id, "Reject", shots)
    finally:
        _keep(shots, "reject")

    state, states = native_airflow.wait_for_run(DAG_ID, run_id)
    assert state == "success", (states, native_airflow.logs())
    assert states["approve_model"] == "success" and states["deploy_model"] == "skipped", states
    versions = get_registry().list_versions()
    assert [(v.version, v.approval_status) for v in versions] == [("1", REJECTED)]
    assert versions[0].approval_note == f"Reject by admin in Airflow run {run_id}", versions[0].approval_note
    assert get_registry().deployed_version() is None
    assert endpoint.status() is None, "nothing was deployed"
