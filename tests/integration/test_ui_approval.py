"""Step 8 by a person in a real browser, on the production stack (CeleryExecutor, Postgres, two
workers, scheduler, dag-processor, triggerer, api-server: ``tests/integration/stack_fixture.py``,
shared with ``test_production_stack.py``): a run of review_sentiment_pipeline waits at
``approve_model``; headless Chromium, logged in with the JWT of ``POST /auth/token`` as the UI's
``_token`` cookie, goes to *Browse -> Required Actions*, opens the request and clicks Approve (the run
deploys, the stack's endpoint serves the version) or Reject (nothing is deployed, the registry says
Rejected). Screenshots of the approval page are kept as artifacts."""
from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from include.model.registry import get_registry
from include.model.registry_base import APPROVED, REJECTED
from tests.integration.browser import CHROMIUM_ARGS, keep_artifact
from tests.integration.conftest import DEPLOY
from tests.integration.stack_fixture import STACK_END, StackClient

pytestmark = pytest.mark.xdist_group("stack")  # one worker runs the stack group (tests/conftest.py)

DAG_ID = "review_sentiment_pipeline"
# every wait of the browser, expect() included (its own default is 5 s: too short on a loaded machine)
UI_TIMEOUT_MS = 60_000
REVIEWS = ["I love this dress, it fits perfectly.", "Terrible, it ripped after one wash."]


def _wait_for_approval_request(stack: StackClient) -> str:
    """Trigger a tiny run (REST API) that asks for approval; its run id once ``approve_model`` waits.

    Like the UI's Trigger button, the run has no logical date: it processes the newest landed day,
    ``STACK_END``, the day of the stack test's run (Airflow keeps one run per logical date). Its
    data, settings and job code are that run's, so preprocess, train and evaluate are cache hits
    when that test ran first."""
    run_id = stack.trigger(None, {**DEPLOY, "auto_approve": False})
    # The HITL task is "awaiting_input" while it waits for a person (Airflow 3.3).
    stack.wait_task_state(run_id, "approve_model", "awaiting_input", timeout_s=900)
    return run_id


def _open_request(page: Page, stack: StackClient, run_id: str) -> None:
    """From *Required Actions* to the task's request, the way a reviewer goes there."""
    page.goto(f"{stack.base}/required_actions")
    row = page.get_by_role("row").filter(has_text=run_id)
    row.get_by_role("link", name=re.compile(r"^Approve review-sentiment model")).click()
    expect(page).to_have_url(re.compile(r"/tasks/approve_model/required_actions$"), timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text("Awaiting Input")).to_be_visible(timeout=UI_TIMEOUT_MS)


def _respond(page: Page, stack: StackClient, run_id: str, choice: str, shots: Path) -> str:
    """Open the request, screenshot it, click ``choice``, wait for the UI to confirm; return the
    page's text as the reviewer saw it before clicking."""
    _open_request(page, stack, run_id)
    button = page.get_by_role("button", name=choice, exact=True)
    expect(button).to_be_enabled(timeout=UI_TIMEOUT_MS)
    request_text = page.locator("body").inner_text()
    page.screenshot(path=shots / "approval-page.png")
    button.click()
    expect(page.get_by_text("approve_model response successful")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.reload()
    # the page now says who answered, and the buttons are gone grey
    expect(page.get_by_text(re.compile(r"Response received at .* from admin"))).to_be_visible(
        timeout=UI_TIMEOUT_MS)
    expect(page.get_by_role("button", name=choice, exact=True)).to_be_disabled(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=shots / f"approval-page-after-{choice.lower()}.png")
    return request_text


def _respond_in_browser(stack: StackClient, chromium_path: Path, run_id: str, choice: str, shots: Path) -> str:
    """Headless Chromium logged in with the REST API's JWT as the ``_token`` cookie answers the
    request with ``choice``; a screenshot of the page is kept if anything fails."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_cookies([{"name": "_token", "value": stack.token(), "url": stack.base}])
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


def _run_version(run_id: str):
    """The registry version ``run_id`` registered (exactly one)."""
    versions = [v for v in get_registry().list_versions() if v.lineage.get("run_id") == run_id]
    assert len(versions) == 1, [(v.version, v.lineage.get("run_id")) for v in versions]
    return versions[0]


def _served_versions(stack: StackClient) -> set[str] | None:
    """The model versions the stack's endpoint answers with, or None when nothing serves."""
    port = stack.stack.state().endpoint_port
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json=REVIEWS, timeout=30)
    except httpx.TransportError:
        return None
    assert answer.status_code == 200, answer.text
    predictions = answer.json()  # a JSON list of reviews in, one answer per review out
    assert isinstance(predictions, list) and len(predictions) == len(REVIEWS), predictions
    assert all(p["label"] in ("negative", "neutral", "positive") for p in predictions), predictions
    return {str(p["model_version"]) for p in predictions}


def _wait_run(stack: StackClient, run_id: str) -> dict[str, str]:
    run = stack.wait_run(run_id, timeout_s=900)
    states = {t: ti["state"] for t, ti in stack.task_instances(run_id).items()}
    assert run["state"] == "success", states
    return states


def test_approving_in_the_browser_deploys_the_model(stack, stack_state, chromium, tmp_path):
    run_id = _wait_for_approval_request(stack)
    version = _run_version(run_id)
    assert version.approval_status not in (APPROVED, REJECTED), version.approval_status
    assert version.lineage["ds"] == STACK_END.isoformat(), version.lineage
    assert str(version.version) not in (_served_versions(stack) or set()), "deployed before the approval"
    shots = _shots(tmp_path, "screenshots")
    try:
        request_text = _respond_in_browser(stack, chromium, run_id, "Approve", shots)
    finally:
        _keep(shots, "approve")
    assert f"Approve review-sentiment model v{version.version}?" in request_text and "macro-F1" in request_text

    states = _wait_run(stack, run_id)
    assert states["approve_model"] == "success" and states["deploy_model"] == "success", states
    version = get_registry().get(version.version)
    assert version.approval_status == APPROVED
    # the decision was made by the user the browser logged in as, in this run
    assert version.approval_note == f"Approve by admin in Airflow run {run_id}", version.approval_note
    assert get_registry().deployed_version().version == version.version
    # deploy_model ran on a Celery worker; the endpoint it started answers with the approved version
    assert _served_versions(stack) == {str(version.version)}


def test_rejecting_in_the_browser_deploys_nothing(stack, stack_state, chromium, tmp_path):
    before = get_registry().deployed_version()
    served_before = _served_versions(stack)
    run_id = _wait_for_approval_request(stack)
    rejected = _run_version(run_id)
    shots = _shots(tmp_path, "screenshots")
    try:
        _respond_in_browser(stack, chromium, run_id, "Reject", shots)
    finally:
        _keep(shots, "reject")

    states = _wait_run(stack, run_id)
    assert states["approve_model"] == "success" and states["deploy_model"] == "skipped", states
    rejected = get_registry().get(rejected.version)
    assert rejected.approval_status == REJECTED
    assert rejected.approval_note == f"Reject by admin in Airflow run {run_id}", rejected.approval_note
    # production is as it was: the same deployed version (or none), the endpoint answers as before
    after = get_registry().deployed_version()
    assert (after and after.version) == (before and before.version) and (after and after.version) != rejected.version
    assert _served_versions(stack) == served_before
