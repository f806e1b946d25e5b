"""Scheduling semantics of review_sentiment_pipeline: catchup, the daily data interval and the
landing partition it picks, retries with back-off, task timeouts and the failure callback.

The retry / timeout / callback behaviour is shown on small DAGs built here with the project's
DEFAULT_ARGS and run by dag.test(), so that a real Airflow task runner retries, times out and
calls the callback in seconds rather than the production delays."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from include.pipeline import alerts
from include.pipeline.defaults import DEFAULT_ARGS, START_DATE, TASK_TIMEOUTS

DAG = "review_sentiment_pipeline"


@pytest.fixture(scope="module")
def pipeline():
    from include.pipeline.cli import load_dag

    return load_dag()


def _core_timetable(dag):
    from airflow.serialization.encoders import coerce_to_core_timetable

    return coerce_to_core_timetable(dag.timetable)


def test_catchup_off_schedules_only_the_last_complete_day_not_the_start_date(pipeline):
    from airflow.timetables.base import TimeRestriction

    timetable = _core_timetable(pipeline)
    assert pipeline.catchup is False
    info = timetable.next_dagrun_info(last_automated_data_interval=None,
                                      restriction=TimeRestriction(earliest=START_DATE, latest=None, catchup=False))
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    assert info.data_interval.start == today - timedelta(days=1) and info.data_interval.end == today
    # with catchup on, the first run would be the start date's day (every missed night since)
    with_catchup = timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=START_DATE, latest=None, catchup=True))
    assert with_catchup.data_interval.start == START_DATE


def test_the_nightly_run_processes_the_day_its_data_interval_covers(pipeline):
    from airflow.timetables.base import DataInterval, TimeRestriction

    from include.data.catalog_base import landing_root
    from include.pipeline.cli import logical_date_for
    from include.pipeline.context import resolve_ds

    timetable = _core_timetable(pipeline)
    previous = DataInterval(datetime(2026, 11, 19, tzinfo=timezone.utc), datetime(2026, 11, 20, tzinfo=timezone.utc))
    # the night after the previous run (as the scheduler sees it on time, or a backfill walks the days)
    info = timetable.next_dagrun_info(last_automated_data_interval=previous,
                                      restriction=TimeRestriction(earliest=START_DATE, latest=None, catchup=True))
    # the run made at midnight of the 21st covers the 20th, and reads landing/reviews/ds=2026-11-20/
    assert info.run_after == datetime(2026, 11, 21, tzinfo=timezone.utc)
    assert resolve_ds(info.data_interval.start, "") == "2026-11-20"
    assert resolve_ds(info.data_interval.start, "2026-11-02") == "2026-11-02", "the ds param overrides"
    assert (landing_root() / "ds=2026-11-20").name == "ds=2026-11-20"
    assert logical_date_for(info.data_interval.start.date()) == info.run_after, "make run uses the same mapping"


def _retry_delay_s(task, try_number: int) -> float:
    """Airflow's own next_retry_datetime for ``task`` after failed try ``try_number``."""
    from airflow.models.taskinstance import TaskInstance

    end = datetime(2026, 11, 21, tzinfo=timezone.utc)
    ti = SimpleNamespace(task=task, try_number=try_number, end_date=end, dag_id=DAG, task_id=task.task_id,
                         logical_date=end, retry_delay_override=None, log=None)
    return (TaskInstance.next_retry_datetime(ti) - end).total_seconds()


def test_every_task_retries_with_exponential_back_off_capped_at_max_retry_delay(pipeline):
    for task in pipeline.tasks:
        assert task.retries == 2, task.task_id
        delays = [_retry_delay_s(task, n) for n in (1, 2, 3, 10)]
        assert 20 <= delays[0] <= 40 and 40 <= delays[1] <= 80 and 80 <= delays[2] <= 160, (task.task_id, delays)
        assert delays[3] == 600, "capped at max_retry_delay"


def test_each_task_type_has_its_execution_timeout(pipeline):
    kinds = {"preprocess": "processing", "evaluate": "processing", "check_accuracy": "processing",
             "train": "training", "deploy_model": "deploy"}
    for task in pipeline.tasks:
        expected = TASK_TIMEOUTS[kinds.get(task.task_id, "light")]
        assert task.execution_timeout == expected, (task.task_id, task.execution_timeout)
    # the jobs inside stop before their task does (include/jobs/requests.py limits)
    from include.jobs import requests

    assert TASK_TIMEOUTS["training"].total_seconds() > 1.5 * requests.training_request.__kwdefaults__["timeout_s"]
    assert TASK_TIMEOUTS["processing"].total_seconds() > requests.preprocess_request.__kwdefaults__["timeout_s"]


# ---------------------------------------------------------------- behaviour under a real task runner


def _small_dag(dag_id: str, fn, **task_args):
    """A one-task DAG with the project's DEFAULT_ARGS (short delays), its task wrapped by airflow_step."""
    from airflow.sdk import DAG as AirflowDAG
    from airflow.sdk import task

    from include.pipeline.tasks import airflow_step

    args = {**DEFAULT_ARGS, "retry_delay": timedelta(seconds=1), **task_args}
    with AirflowDAG(dag_id, schedule=None, start_date=START_DATE, default_args=args, catchup=False) as dag:
        task(task_id="work")(airflow_step(fn))()
    return dag


def _serialize(dag, tmp_path) -> None:
    """Write the DAG's serialized version to the metadata DB, as the dag-processor does for a file."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    (tmp_path / "empty").mkdir(exist_ok=True)
    bag = DagBag(dag_folder=str(tmp_path / "empty"))
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


def _run(dag, tmp_path):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    _serialize(dag, tmp_path)
    dr = dag.test(logical_date=datetime(2026, 11, 21, tzinfo=timezone.utc))
    with create_session() as session:
        ti = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag.dag_id,
                                                        TaskInstance.run_id == dr.run_id)).one()
        return dr, str(ti.state), ti.try_number


def _failures(dag_id: str) -> list[dict]:
    path = alerts.alerts_log()
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in lines if r["dag_id"] == dag_id]


def flaky() -> dict:
    """Fails its first try with a transient error, succeeds on the retry."""
    from airflow.sdk import get_current_context

    if get_current_context()["ti"].try_number == 1:
        raise OSError("connection reset by peer")
    return {"ok": True}


def test_a_transient_error_is_retried_and_the_run_succeeds_without_an_alert(reviews_home, airflow_db, tmp_path):
    dr, state, tries = _run(_small_dag("sched_flaky", flaky), tmp_path)
    assert str(dr.state).endswith("success") and state.endswith("success") and tries == 2
    assert _failures("sched_flaky") == []


def bad_param() -> dict:
    """Bad input: a retry cannot fix it."""
    from include.pipeline.context import PipelineError

    raise PipelineError("param ds='yesterday': use YYYY-MM-DD")


def test_a_non_retriable_error_fails_at_once_and_the_callback_records_it(reviews_home, airflow_db, tmp_path):
    dr, state, tries = _run(_small_dag("sched_bad", bad_param), tmp_path)
    assert state.endswith("failed") and tries == 1, "no retry for bad input"
    (record,) = _failures("sched_bad")
    assert record["task_id"] == "work" and record["run_id"] == dr.run_id and record["try_number"] == 1
    assert "PipelineError" in record["error"] and "use YYYY-MM-DD" in record["error"]


def slow() -> dict:
    """Outlives its execution_timeout."""
    time.sleep(30)
    return {}


def test_a_task_past_its_execution_timeout_is_stopped_and_recorded(reviews_home, airflow_db, tmp_path):
    started = time.monotonic()
    dr, state, tries = _run(_small_dag("sched_slow", slow, retries=0, execution_timeout=timedelta(seconds=2)), tmp_path)
    assert state.endswith("failed") and time.monotonic() - started < 25, "stopped, not left to finish"
    (record,) = _failures("sched_slow")
    assert record["error_type"] == "AirflowTaskTimeout", record
