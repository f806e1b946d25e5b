"""Failure records and notifications: the DAGs' ``on_failure_callback`` and deadline-alert callback.

A failed task (its last try, or one a retry cannot fix) and a nightly run that overruns its
deadline are each *recorded* twice, atomically:

* one JSON line in ``<state dir>/alerts/alerts.jsonl`` (one ``write`` with ``O_APPEND``: lines
  from concurrent workers never interleave), the history ``make`` targets and people can grep;
* a JSON note in the run's own folder, ``runs/<dag_id>/<run_id>/_notes/<task>.try<N>.json``
  (``deadline.json`` for the deadline), beside its outputs and lineage. Airflow 3's task API
  offers tasks no way to edit the DAG run's UI note, so the run's notes live there.

Then they are *notified* through :class:`PipelineNotifier` (an Airflow ``BaseNotifier``), whose
target is configured by ``REVIEWS_NOTIFIER`` (env) or the Airflow Variable ``reviews_notifier``:

* ``log`` (default) - a warning in the task (or callback) log only;
* ``webhook:<url>`` - the event as JSON, POSTed to the URL (a chat or incident webhook);
* ``<module.Class>`` - any Airflow notifier class (``airflow.providers.smtp.notifications.smtp.
  SmtpNotifier``, Slack's, ...), built with the JSON object in ``REVIEWS_NOTIFIER_KWARGS`` /
  Variable ``reviews_notifier_kwargs`` and called with the callback's context.

A notification that fails is logged, never raised: it must not hide the failure it reports.
DAG parsing imports this module (``defaults.py``): nothing heavy at module level.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from airflow.sdk import BaseNotifier

from include.common.config import ConfigError, env_or_variable, get_settings, safe_name
from include.common.io import write_json_atomic

log = logging.getLogger("airflow.task")
NOTIFIER_ENV, NOTIFIER_VARIABLE = "REVIEWS_NOTIFIER", "reviews_notifier"
KWARGS_ENV, KWARGS_VARIABLE = "REVIEWS_NOTIFIER_KWARGS", "reviews_notifier_kwargs"
WEBHOOK_TIMEOUT_S = 10.0


def alerts_log() -> Path:
    """The JSON-lines history of failures and missed deadlines."""
    return get_settings().state_dir / "alerts" / "alerts.jsonl"


def _append_line(path: Path, event: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(event, default=str, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)  # one write: appended whole
    finally:
        os.close(fd)


def _run_note(dag_id: str, run_id: str, name: str) -> Path:
    from include.common.io import uri_to_path

    return uri_to_path(get_settings().run_uri(dag_id, run_id, "_notes")) / f"{safe_name(name)}.json"


def record(event: dict) -> dict:
    """Append ``event`` to :func:`alerts_log` and keep it as a note in its run's folder."""
    event = {"recorded_at": time.time(), **event}
    _append_line(alerts_log(), event)
    if event.get("dag_id") and event.get("run_id"):
        name = f"{event['task_id']}.try{event.get('try_number', 1)}" if event.get("task_id") else event["kind"]
        write_json_atomic(_run_note(event["dag_id"], event["run_id"], name), event)
    return event


def failure_event(context: dict) -> dict:
    """What a failed task's context says: which task, which try, which error, where its log is."""
    ti = context.get("ti") or context.get("task_instance")
    error = context.get("exception")
    return {"kind": "task_failed", "dag_id": getattr(ti, "dag_id", None), "run_id": context.get("run_id"),
            "task_id": getattr(ti, "task_id", None), "try_number": getattr(ti, "try_number", None),
            "max_tries": getattr(ti, "max_tries", None), "logical_date": context.get("logical_date"),
            "error_type": type(error).__name__ if error is not None else None,
            "error": str(error).splitlines()[0][:500] if error is not None else None,
            "log_url": getattr(ti, "log_url", None)}


def deadline_event(context: dict, interval_s: float | None = None) -> dict:
    """What a missed deadline's context (``dag_run`` as the REST API shows it, ``deadline``) says."""
    dag_run, deadline = context.get("dag_run") or {}, context.get("deadline") or {}
    return {"kind": "deadline_missed", "dag_id": dag_run.get("dag_id"), "run_id": dag_run.get("dag_run_id"),
            "logical_date": dag_run.get("logical_date"), "queued_at": dag_run.get("queued_at"),
            "state": dag_run.get("state"), "deadline_time": deadline.get("deadline_time"),
            "deadline_id": deadline.get("id"), "interval_s": interval_s}


def message(event: dict) -> str:
    """One line a person reads in a chat or a mail subject."""
    if event["kind"] == "deadline_missed":
        return (f"{event['dag_id']} run {event['run_id']} is still {event.get('state') or 'running'} past its "
                f"deadline {event.get('deadline_time')} (queued at {event.get('queued_at')})")
    return (f"{event['dag_id']}.{event['task_id']} failed in run {event['run_id']} (try {event.get('try_number')}): "
            f"{event.get('error_type')}: {event.get('error')}")


class PipelineNotifier(BaseNotifier):
    """Sends an alert event to the configured target (see the module docstring)."""

    template_fields = ()

    def __init__(self, event: dict | None = None) -> None:
        super().__init__()
        self.event = event

    def notify(self, context: dict) -> None:
        """Deliver ``self.event`` (default: the failure described by ``context``)."""
        event = self.event or failure_event(context)
        target = env_or_variable(NOTIFIER_ENV, NOTIFIER_VARIABLE, "log").strip() or "log"
        try:
            if target == "log":
                log.warning("ALERT %s", message(event))
            elif target.startswith("webhook:"):
                _post(target[len("webhook:"):], {"text": message(event), "event": event})
            else:
                _notifier_class(target)(**_notifier_kwargs())(context)
        except Exception as exc:  # noqa: BLE001 - the alert must not hide the failure it reports
            log.error("ALERT %s (notifier %s failed: %s: %s)", message(event), target, type(exc).__name__, exc)


def _post(url: str, payload: dict) -> None:
    import httpx

    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{NOTIFIER_ENV}=webhook:{url}: the URL must start with http:// or https://")
    httpx.post(url, json=json.loads(json.dumps(payload, default=str)), timeout=WEBHOOK_TIMEOUT_S).raise_for_status()


def _notifier_class(path: str) -> type:
    from airflow.sdk.module_loading import import_string

    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ConfigError(f"{NOTIFIER_ENV}={path!r}: use log, webhook:<url> or a notifier class path ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseNotifier)):
        raise ConfigError(f"{NOTIFIER_ENV}={path!r} is not an Airflow BaseNotifier subclass")
    return cls


def _notifier_kwargs() -> dict:
    raw = env_or_variable(KWARGS_ENV, KWARGS_VARIABLE, "{}") or "{}"
    try:
        kwargs = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{KWARGS_ENV}: not JSON ({exc})") from exc
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{KWARGS_ENV}: a JSON object of the notifier's arguments, got {type(kwargs).__name__}")
    return kwargs


def on_task_failure(context: dict) -> None:
    """``on_failure_callback`` of every task: record the failure, then notify."""
    try:
        event = record(failure_event(context))
    except Exception as exc:  # noqa: BLE001 - keep notifying even when the state dir is unwritable
        log.error("could not record the failure: %s: %s", type(exc).__name__, exc)
        event = failure_event(context)
    PipelineNotifier(event).notify(context)


def deadline_missed(context: dict, interval_s: float | None = None) -> None:
    """Deadline-alert callback (``SyncCallback``, run by the executor): record and notify."""
    event = record(deadline_event(context, interval_s))
    PipelineNotifier(event).notify(context)
