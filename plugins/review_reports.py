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

import html
from datetime import datetime, timezone

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from include.pipeline.review import REPORTS_PREFIX, ReportNotFoundError, list_reports, resolve_report

app = FastAPI(title="Review-sentiment reports", docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/", response_class=HTMLResponse)
def index() -> str:
    """The newest runs' reports, newest first (links relative, so a proxy prefix keeps working)."""
    rows = "".join(
        f"<tr><td>{html.escape(r['dag_id'])}</td><td>{html.escape(r['run'])}</td><td>{html.escape(r['step'])}</td>"
        f"<td><a href=\"runs/{r['dag_id']}/{r['run']}/{r['step']}/{r['name']}\">{html.escape(r['name'])}</a></td>"
        f"<td>{datetime.fromtimestamp(r['mtime'], timezone.utc):%Y-%m-%d %H:%M} UTC</td></tr>"
        for r in list_reports())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Model reports</title><style>"
            "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:3px 8px}"
            "table{border-collapse:collapse}</style></head><body><h1>Model reports</h1>"
            + (f"<table><tr><th>DAG</th><th>run</th><th>step</th><th>report</th><th>written</th></tr>{rows}</table>"
               if rows else "<p>No report yet: run a DAG first.</p>") + "</body></html>")


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
