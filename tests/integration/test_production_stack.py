"""review_sentiment_pipeline on the production topology (``make stack``): Postgres metadata DB,
CeleryExecutor with Redis, two Celery workers, scheduler, dag-processor, triggerer, api-server.

Every run is made through Airflow's REST API with a JWT (no ALL_ADMINS), as a user or a CI job
would: a manual run with a conf whose training worker is killed with SIGKILL in the middle of the
train task (the task is retried, the run deploys, nothing is written twice), and an Airflow 3
backfill of three logical dates. The training budget is
the tiny one of the other integration tests (``TINY``), so each run takes minutes, not hours."""
from __future__ import annotations

import json
import time
from datetime import date, datetime, timedelta

import duckdb
import httpx
import pyarrow.parquet as pq
import pytest

from include.common.config import Settings
from include.common.io import uri_to_path
from include.pipeline.cli import logical_date_for
from include.pipeline.stack import TRAINING_QUEUE
from tests.integration.conftest import DEPLOY, TINY
from tests.integration.stack_fixture import RUN_DEADLINE_MINUTES, STACK_END, StackClient

pytestmark = [pytest.mark.timeout(1800), pytest.mark.xdist_group("stack")]  # one worker: the stack group
ROWS_PER_DAY = 100  # stack_fixture lands 500 reviews over 5 days


def _iso(day: date) -> str:
    return logical_date_for(day).isoformat().replace("+00:00", "Z")


def _midnight(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def _run_dir(settings: Settings, run_id: str):
    return uri_to_path(settings.run_uri("review_sentiment_pipeline", run_id, "x")).parent


def _lineage(settings: Settings, run_id: str, step: str) -> dict:
    return json.loads((_run_dir(settings, run_id) / "_lineage" / f"{step}.json").read_text())


def _registry_versions(run_id: str) -> list:
    from include.model.registry import get_registry

    return [v for v in get_registry().list_versions() if v.lineage.get("run_id") == run_id]


def _assert_no_duplicates(settings: Settings, run_id: str) -> None:
    """Catalog rows, the run's feature records and its registry versions each exist once."""
    con = duckdb.connect(str(settings.catalog_path), read_only=True)
    try:
        per_day = con.execute("SELECT ds, count(*), count(DISTINCT review_id) FROM reviews.reviews_raw "
                              "GROUP BY ds ORDER BY ds").fetchall()
        assert per_day and all(n == distinct == ROWS_PER_DAY for _, n, distinct in per_day), per_day
        n, distinct = con.execute("SELECT count(*), count(DISTINCT review_id) FROM feature_store.reviews_features "
                                  "WHERE source = ?", [run_id]).fetchone()
        assert n > 0 and n == distinct, f"feature records of {run_id}: {n} rows, {distinct} review ids"
    finally:
        con.close()
    assert len(_registry_versions(run_id)) == 1, [v.version for v in _registry_versions(run_id)]
    run = _run_dir(settings, run_id)
    assert len(list((run / "train").glob("rs-train-*/output/model.tar.gz"))) == 1, "one published model"


def _deadline_alerts(settings: Settings, run_id: str, timeout_s: float = 120) -> list[dict]:
    """The ``deadline_missed`` events the stack recorded for ``run_id`` (waits for the first: the
    scheduler finds the missed deadline, a Celery worker runs the callback)."""
    path = settings.state_dir / "alerts" / "alerts.jsonl"
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [e for e in map(json.loads, lines) if e["kind"] == "deadline_missed" and e["run_id"] == run_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(2)


def _kill_worker_mid_training(stack: StackClient, run_id: str) -> str:
    """SIGKILL every process of the worker running ``train`` (worker, pool, task process and its
    training job) a few seconds into the task, then start it again, as a restart policy would."""
    deadline = time.monotonic() + 600
    while True:
        ti = stack.task_instances(run_id).get("train") or {}
        worker = stack.stack.service_of(ti["pid"]) if ti.get("state") == "running" and ti.get("pid") else None
        if worker:
            break
        state = stack.run(run_id)["state"]
        assert state in ("queued", "running"), f"the run ended ({state}) before train ran"
        assert time.monotonic() < deadline, f"train never ran: {ti}"
        time.sleep(1)
    # in the middle of the training job: its log shows training steps
    logs = stack.state_dir / "jobs"
    while not any("step " in p.read_text(errors="replace") for p in logs.glob("rs-train-*/job.log")):
        assert stack.task_instances(run_id)["train"]["state"] == "running", "train finished before the kill"
        time.sleep(0.5)
    assert stack.task_instances(run_id)["train"]["state"] == "running", "train finished before the kill"
    assert worker == "worker-2", f"train ran on {worker}, not the worker of the {TRAINING_QUEUE} queue"
    stack.stack.kill_service(worker)
    time.sleep(1)
    assert stack.stack.pid(worker) is None and stack.stack.service_of(ti["pid"]) is None, "the worker is gone"
    stack.stack.start_service(worker)
    return worker


def test_rest_run_survives_a_worker_killed_mid_training_and_deploys_without_duplicates(stack, stack_state, minilm_dir):
    # The suite's one run on the real MiniLM end to end (the others start from the tiny BERT): it
    # fine-tunes it for a few steps, exports, deploys and serves it - and its training is slow
    # enough to be killed in the middle.
    conf = {**DEPLOY, "auto_approve": True, "model_name_or_path": minilm_dir}
    run_id = stack.trigger(_iso(STACK_END), conf)
    _kill_worker_mid_training(stack, run_id)
    run = stack.wait_run(run_id, timeout_s=1200)
    tis = stack.task_instances(run_id)
    assert run["state"] == "success", {k: v["state"] for k, v in tis.items()}
    assert run["conf"]["max_train_samples"] == TINY["max_train_samples"] and run["run_type"] == "manual"
    assert tis["train"]["queue"] == TRAINING_QUEUE and tis["preprocess"]["queue"] == "default"
    # the killed try failed (no heartbeat), the retry trained the model
    assert tis["train"]["state"] == "success" and tis["train"]["try_number"] == 2, tis["train"]
    tries = stack.request("GET", f"/dags/review_sentiment_pipeline/dagRuns/{run_id}/taskInstances/train/tries"
                          ).json()["task_instances"]
    states = {t["try_number"]: t["state"] for t in tries}
    assert states.get(1) in ("failed", "up_for_retry") and states.get(2) == "success", states
    for task in ("register_dataset", "validate_dataset", "preprocess", "evaluate", "register_model", "deploy_model"):
        assert tis[task]["state"] == "success" and tis[task]["try_number"] == 1, (task, tis[task])

    run_dir = _run_dir(stack_state, run_id)
    evaluation = json.loads((run_dir / "evaluate" / "evaluation.json").read_text())
    assert 0.0 <= evaluation["metrics"]["accuracy"]["value"] <= 1.0 and evaluation["test_rows"] > 0
    assert _lineage(stack_state, run_id, "preprocess")["result"]["data_to"] == STACK_END.isoformat()
    assert _lineage(stack_state, run_id, "train")["try_number"] == 2
    train_logs = "".join(p.read_text(errors="replace") for p in (stack.state_dir / "jobs").glob("rs-train-*/job.log"))
    assert f"loaded {minilm_dir} (bert, 22." in train_logs, "the real MiniLM (22.7M parameters) was fine-tuned"
    _assert_no_duplicates(stack_state, run_id)
    version, = _registry_versions(run_id)
    assert version.lineage["ds"] == STACK_END.isoformat()
    # the run took minutes, its deadline was a minute after it was queued: the scheduler fired the
    # DAG's DeadlineAlert once, a worker ran our callback (the alert log line and the run's note)
    alert, = _deadline_alerts(stack_state, run_id)
    assert alert["interval_s"] == float(RUN_DEADLINE_MINUTES) * 60 and alert["dag_id"] == "review_sentiment_pipeline"
    queued, due = (datetime.fromisoformat(alert[k].replace("Z", "+00:00")) for k in ("queued_at", "deadline_time"))
    assert abs((due - queued).total_seconds() - alert["interval_s"]) < 1, alert
    assert alert["recorded_at"] >= due.timestamp() and alert["state"] == "running", alert
    note = json.loads((run_dir / "_notes" / "deadline_missed.json").read_text())
    assert note["deadline_id"] == alert["deadline_id"]
    # deploy_model, run by a Celery worker, serves the version on the stack's endpoint port
    port = stack.stack.state().endpoint_port
    answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json="great fit, love it", timeout=30)
    assert answer.status_code == 200, answer.text
    assert str(answer.json()["model_version"]) == str(version.version)


def test_backfill_of_three_dates_trains_each_run_on_the_data_as_of_its_date(stack, stack_state):
    days = [STACK_END - timedelta(days=k) for k in (4, 3, 2)]  # 11-16, 11-17, 11-18
    # min_accuracy above 1: each run trains and evaluates, then ends at skip_registration (fast)
    # a backfill's logical dates are its runs' data-interval starts: the days themselves
    backfill = stack.backfill(_midnight(days[0]), _midnight(days[-1]), {**TINY, "min_accuracy": 1.01},
                              max_active_runs=1)
    runs = stack.wait_backfill(backfill, timeout_s=1500)
    by_ds = {date.fromisoformat(r["data_interval_start"][:10]): r for r in runs}
    assert sorted(by_ds) == days, sorted(by_ds)
    for k, day in enumerate(days, start=1):
        run = by_ds[day]
        assert run["state"] == "success", (day, {t: v["state"] for t, v in stack.task_instances(run["dag_run_id"]).items()})
        pre = _lineage(stack_state, run["dag_run_id"], "preprocess")
        # trained on every day up to its own date, none after it
        assert pre["ds"] == day.isoformat() and pre["result"]["data_to"] == day.isoformat(), pre["result"]
        assert pre["result"]["clean_rows"] == k * ROWS_PER_DAY, (day, pre["result"]["clean_rows"])
        train = pq.read_table(uri_to_path(pre["result"]["train_uri"]), columns=["date"]).column("date").to_pylist()
        assert train and max(d.date() if hasattr(d, "date") else d for d in train) <= day
        assert _lineage(stack_state, run["dag_run_id"], "train")["ds"] == day.isoformat()
    done = stack.request("GET", f"/backfills/{backfill['id']}").json()
    assert done["completed_at"] is not None and done["dag_id"] == "review_sentiment_pipeline"
