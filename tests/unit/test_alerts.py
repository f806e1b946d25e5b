"""Failure and deadline alerts (include/pipeline/alerts.py): the record, the run note, the notifier."""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest
import structlog
from airflow.sdk import BaseNotifier

from include.common.config import get_settings
from include.common.io import uri_to_path
from include.pipeline import alerts

DAG = "review_sentiment_pipeline"
SENT: list[dict] = []


class RecordingNotifier(BaseNotifier):
    """Stands in for a provider's notifier (Slack, SMTP): keeps what it was asked to send."""

    def __init__(self, channel: str = "") -> None:
        super().__init__()
        self.channel = channel

    def notify(self, context: dict) -> None:
        SENT.append({"channel": self.channel, "context": context})


@pytest.fixture
def webhook():
    """A real HTTP server on loopback that keeps the JSON bodies POSTed to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def _failure_context(run_id: str = "scheduled__2026-11-20T00:00:00+00:00") -> dict:
    ti = SimpleNamespace(dag_id=DAG, task_id="train", try_number=3, max_tries=2, log_url="http://ui/log")
    return {"ti": ti, "run_id": run_id, "logical_date": "2026-11-20T00:00:00+00:00",
            "exception": RuntimeError("CUDA out of memory\ntraceback...")}


def _deadline_context() -> dict:
    # the shape Airflow's Deadline.handle_miss passes (dag_run as the REST API shows it)
    return {"dag_run": {"dag_id": DAG, "dag_run_id": "scheduled__2026-11-20T00:00:00+00:00", "state": "running",
                        "logical_date": "2026-11-20T00:00:00Z", "queued_at": "2026-11-21T00:00:05Z"},
            "deadline": {"id": "d-1", "deadline_time": "2026-11-21T02:00:05Z"}}


def _records() -> list[dict]:
    return [json.loads(line) for line in alerts.alerts_log().read_text().splitlines()]


def test_a_task_failure_is_recorded_as_a_line_and_a_run_note_and_logged_by_default(reviews_home, caplog, monkeypatch):
    monkeypatch.delenv(alerts.NOTIFIER_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="airflow.task"):
        alerts.on_task_failure(_failure_context())
    (line,) = _records()
    assert line["kind"] == "task_failed" and line["task_id"] == "train" and line["try_number"] == 3
    assert line["error_type"] == "RuntimeError" and line["error"] == "CUDA out of memory"
    note = uri_to_path(get_settings().run_uri(DAG, line["run_id"], "_notes")) / "train.try3.json"
    assert json.loads(note.read_text())["error"] == "CUDA out of memory"
    assert "ALERT review_sentiment_pipeline.train failed" in caplog.text


def test_failures_append_one_line_each(reviews_home):
    alerts.on_task_failure(_failure_context("run-a"))
    alerts.on_task_failure(_failure_context("run-b"))
    assert [r["run_id"] for r in _records()] == ["run-a", "run-b"]


def test_the_webhook_notifier_posts_the_event(reviews_home, webhook, monkeypatch):
    url, received = webhook
    monkeypatch.setenv(alerts.NOTIFIER_ENV, f"webhook:{url}")
    alerts.on_task_failure(_failure_context())
    (body,) = received
    assert body["event"]["task_id"] == "train" and "failed in run" in body["text"]


def test_a_notifier_class_from_the_configuration_gets_the_context(reviews_home, monkeypatch):
    SENT.clear()
    monkeypatch.setenv(alerts.NOTIFIER_ENV, f"{__name__}.RecordingNotifier")
    monkeypatch.setenv(alerts.KWARGS_ENV, json.dumps({"channel": "#mlops"}))
    context = _failure_context()
    alerts.on_task_failure(context)
    assert SENT == [{"channel": "#mlops", "context": context}]


@pytest.mark.parametrize("target, kwargs, problem", [
    ("no.such.Notifier", "{}", "use log, webhook:<url> or a notifier class path"),
    ("json.JSONDecoder", "{}", "not an Airflow BaseNotifier subclass"),
    (f"{__name__}.RecordingNotifier", "[1]", "a JSON object"),
    ("webhook:ftp://x", "{}", "must start with http"),
])
def test_a_broken_notifier_setting_is_logged_and_the_failure_still_recorded(reviews_home, monkeypatch, caplog,
                                                                             target, kwargs, problem):
    monkeypatch.setenv(alerts.NOTIFIER_ENV, target)
    monkeypatch.setenv(alerts.KWARGS_ENV, kwargs)
    with caplog.at_level(logging.ERROR, logger="airflow.task"):
        alerts.on_task_failure(_failure_context())  # does not raise
    assert len(_records()) == 1
    assert problem in caplog.text and "ALERT" in caplog.text


def test_the_nightly_dag_has_a_deadline_alert_on_queued_at_with_our_callback():
    from airflow.sdk.definitions.deadline import DagRunQueuedAtDeadline

    from include.pipeline.cli import load_dag
    from include.pipeline.defaults import NIGHTLY_DEADLINE

    dag = load_dag(keep_deadline=True)
    (alert,) = dag.deadline
    assert isinstance(alert.reference, DagRunQueuedAtDeadline) and alert.interval == NIGHTLY_DEADLINE
    assert alert.callback.path == "include.pipeline.alerts.deadline_missed"
    assert alert.callback.kwargs == {"interval_s": NIGHTLY_DEADLINE.total_seconds()}
    assert NIGHTLY_DEADLINE < dag.dagrun_timeout, "the alert comes before the run is stopped"
    assert load_dag().deadline is None, "dropped for dag.test() runs (see cli.load_dag)"


def test_the_deadline_callback_runs_through_airflows_executor_path_and_notifies(reviews_home, webhook, monkeypatch):
    from airflow.sdk.execution_time.callback_supervisor import execute_callback

    from include.pipeline.defaults import DEADLINE

    url, received = webhook
    monkeypatch.setenv(alerts.NOTIFIER_ENV, f"webhook:{url}")
    ok, error = execute_callback(DEADLINE.callback.path, {**DEADLINE.callback.kwargs, "context": _deadline_context()},
                                 dag_rel_path=None, bundle_path=None, log=structlog.get_logger("test"))
    assert ok, error
    (line,) = _records()
    assert line["kind"] == "deadline_missed" and line["deadline_time"] == "2026-11-21T02:00:05Z"
    assert line["interval_s"] == 7200.0
    note = uri_to_path(get_settings().run_uri(DAG, line["run_id"], "_notes")) / "deadline_missed.json"
    assert note.is_file()
    assert "past its deadline 2026-11-21T02:00:05Z" in received[0]["text"]


def test_the_run_deadline_comes_from_the_reviews_config_and_rejects_nonsense(monkeypatch):
    from datetime import timedelta

    from include.pipeline.defaults import DEFAULT_RUN_DEADLINE_MINUTES, run_deadline

    monkeypatch.delenv("AIRFLOW__REVIEWS__RUN_DEADLINE_MINUTES", raising=False)
    assert run_deadline() == timedelta(minutes=DEFAULT_RUN_DEADLINE_MINUTES) == timedelta(hours=2)
    monkeypatch.setenv("AIRFLOW__REVIEWS__RUN_DEADLINE_MINUTES", "1.5")
    assert run_deadline() == timedelta(seconds=90)
    for bad in ("0", "-3", "two hours"):
        monkeypatch.setenv("AIRFLOW__REVIEWS__RUN_DEADLINE_MINUTES", bad)
        with pytest.raises(ValueError, match=r"run_deadline_minutes .*a positive number of minutes"):
            run_deadline()
