"""Airflow plugin: the project's reports, opened from the Airflow UI.

A FastAPI app mounted on the Airflow API server at ``/reports`` serves the runs' report
files from the object store (``runs/<dag_id>/<run_id>/<step>/<file>``: the evaluation
report, the catalog analysis and drift reports, the validation report; only ``.html``,
``.png`` and ``.json``, never models or data), and a *Browse -> Model reports* menu entry
lists the newest ones. The approval request and the model registry link here, so a reviewer
opens the report in the browser instead of a ``file://`` path on a worker's disk.

Like any plugin FastAPI app it is not behind Airflow's login (see docs/ui-and-approval.md): on a shared
deployment put the API server behind your proxy's authentication.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from include.common.templating import render
from include.pipeline.review import REPORTS_PREFIX, ReportNotFoundError, list_reports, resolve_report

TEMPLATES = Path(__file__).resolve().parent / "templates"  # review_reports.html.j2

app = FastAPI(title="Review-sentiment reports", docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/", response_class=HTMLResponse)
def index() -> str:
    """The newest runs' reports, newest first (links relative, so a proxy prefix keeps working); the page is
    ``templates/review_reports.html.j2``, every name escaped."""
    reports = [{**r, "written": f"{datetime.fromtimestamp(r['mtime'], timezone.utc):%Y-%m-%d %H:%M} UTC"}
               for r in list_reports()]
    return render(TEMPLATES, "review_reports.html.j2", title="Model reports", reports=reports)


@app.get("/runs/{dag_id}/{run}/{step}/{name}")
def report_file(dag_id: str, run: str, step: str, name: str) -> FileResponse:
    """One report file of one run."""
    try:
        return FileResponse(resolve_report(dag_id, run, step, name))
    except ReportNotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


class ReviewReportsPlugin(AirflowPlugin):
    """Registers the reports app and its menu entry."""

    name = "review_reports"
    fastapi_apps = [{"app": app, "url_prefix": REPORTS_PREFIX, "name": "Review-sentiment reports"}]
    external_views = [{"name": "Model reports", "href": REPORTS_PREFIX.lstrip("/") + "/", "destination": "nav",
                       "category": "browse", "url_route": "model-reports"}]
