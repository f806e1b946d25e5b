"""What a reviewer sees: the evaluation report of a run and the approval request built from it.

The reports are files in the run's folders of the object store; the Airflow UI opens them
through the ``review_reports`` plugin (``plugins/review_reports.py``), which serves
``<api base url>/reports/runs/<dag_id>/<run_id>/<step>/<file>``. :func:`report_url` builds
those links, so the approval request and the registry link to a page the UI can open rather
than to a path on the worker's disk.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import quote

from include.analytics import evaluation_report
from include.common.config import Settings, get_settings, safe_name
from include.common.io import exists, local_dir, read_json, uri_to_path

log = logging.getLogger("airflow.task")

REPORTS_PREFIX = "/reports"  # the plugin's FastAPI app is mounted here on the Airflow API server
# The only files the plugin serves: reports and their pictures, never models or data.
SERVED_SUFFIXES = (".html", ".png", ".json")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ReportNotFoundError(LookupError):
    """The asked-for report does not exist or is not one the plugin serves."""


def api_base_url() -> str:
    """The Airflow API server's public base URL (``[api] base_url``), '' when unset (links stay relative)."""
    try:
        from airflow.configuration import conf
    except ImportError:  # outside an Airflow install (a plain script): the relative link is still right
        return ""
    return (conf.get("api", "base_url", fallback="") or "").rstrip("/")


def report_url(dag_id: str, run_id: str, step: str, name: str, base_url: str | None = None) -> str:
    """UI link of a run's report file (relative to the API server unless ``[api] base_url`` is set)."""
    base = api_base_url() if base_url is None else base_url.rstrip("/")
    parts = [safe_name(dag_id), safe_name(run_id), step, name]
    return f"{base}{REPORTS_PREFIX}/runs/" + "/".join(quote(p, safe="") for p in parts)


def resolve_report(dag_id: str, run_id_folder: str, step: str, name: str, settings: Settings | None = None) -> Path:
    """The file behind a report URL, refusing anything outside the runs folder or not a report."""
    for part in (dag_id, run_id_folder, step, name):
        if not _SEGMENT.match(part) or part in (".", ".."):
            raise ReportNotFoundError(f"{part!r}: not a valid path segment")
    if not name.endswith(SERVED_SUFFIXES):
        raise ReportNotFoundError(f"{name}: only {', '.join(SERVED_SUFFIXES)} files are served")
    root = uri_to_path((settings or get_settings()).uri("runs")).resolve()
    path = (root / dag_id / run_id_folder / step / name).resolve()
    if root not in path.parents or not path.is_file():
        raise ReportNotFoundError(f"no report {dag_id}/{run_id_folder}/{step}/{name}")
    return path


def list_reports(settings: Settings | None = None, limit: int = 50) -> list[dict]:
    """The newest runs' report files: ``[{"dag_id", "run", "step", "name", "mtime"}]``, newest first."""
    root = uri_to_path((settings or get_settings()).uri("runs"))
    found = []
    for pattern in ("*/*/evaluate/report.html", "*/*/analysis/report.html", "*/*/drift/drift_report.html",
                    "*/*/validate/*.html"):
        for p in root.glob(pattern):
            dag_id, run, step = p.relative_to(root).parts[:3]
            found.append({"dag_id": dag_id, "run": run, "step": step, "name": p.name, "mtime": p.stat().st_mtime})
    return sorted(found, key=lambda r: -r["mtime"])[:limit]


def data_range(data_from: str | None, data_to: str, rows: int | str | None = None) -> str:
    """``ds <from>..<to> (<rows> clean reviews)``: the data a model was trained on."""
    span = f"ds {data_from}..{data_to}" if data_from and data_from != data_to else f"ds {data_to}"
    return span + (f" ({int(rows):,} clean reviews before the split)" if rows not in (None, "") else "")


def write_evaluation_report(evaluate_dir: Path, dag_id: str, run_id: str, trained_on: str,
                            baseline: dict | None = None) -> dict:
    """Render ``report.html`` into the run's ``evaluate/`` folder; its path and UI link.

    ``baseline`` is the hook for the AutoML baseline's figures (see
    :func:`include.analytics.evaluation_report.columns`); the report shows it when given.
    """
    path = evaluation_report.write_report(
        evaluate_dir, title=f"Evaluation of the review-sentiment model, run {run_id}",
        data_range=trained_on, baseline=baseline)
    url = report_url(dag_id, run_id, "evaluate", evaluation_report.REPORT_NAME)
    log.info("evaluation report: %s (UI: %s)", path, url)
    return {"report_path": str(path), "report_url": url}


def approval_request(version: str, baseline: dict | None = None) -> tuple[str, str]:
    """Subject and Markdown body of the approval request for registered ``version``.

    Built from the registry (the version's lineage points at its evaluation folder) and that
    folder's files, so the request shows what the report shows.
    """
    from include.model.registry import get_registry

    mv = get_registry().get(str(version))
    lineage = mv.lineage
    folder_uri = lineage["evaluation_uri"].rsplit("/", 1)[0]
    with local_dir(folder_uri) as folder:  # on aws: the evaluation folder downloaded from S3
        inputs = evaluation_report.load(folder)
    url = lineage.get("evaluation_report_url") or report_url(
        lineage["dag_id"], lineage["run_id"], "evaluate", evaluation_report.REPORT_NAME)
    if baseline is None:  # check_accuracy scored the latest AutoML baseline on this run's test split
        decision = folder_uri.rsplit("/", 1)[0] + "/check_accuracy/decision.json"
        baseline = read_json(decision).get("baseline_figures") if exists(decision) else None
    acc = inputs.evaluation["metrics"]["accuracy"]["value"]
    deployed = (inputs.comparison or {}).get("deployed")
    versus = (f" vs {deployed['accuracy']:.4f} for deployed v{deployed.get('version') or '?'}" if deployed
              else " (nothing deployed yet)")
    subject = f"Approve review-sentiment model v{mv.version}? Accuracy {acc:.4f}{versus}"
    body = evaluation_report.approval_markdown(
        inputs, version=mv.version,
        data_range=data_range(lineage.get("data_from"), lineage.get("data_to") or lineage.get("ds", ""),
                              lineage.get("clean_rows")),
        report_url=url, baseline=baseline)
    return subject, body + "\n\nApprove deploys it to the endpoint; Reject records the rejection."
