"""Fixtures for end-to-end runs of the DAGs with ``dag.test()``."""
from __future__ import annotations

import socket
from datetime import date
from pathlib import Path

import pytest

from include.common.config import get_settings
from include.common.io import uri_to_path
from include.data.landing import land_daily_drops
from tests.integration.stack_fixture import stack, stack_state  # noqa: F401 - the session's production stack (make stack)

DS = "2026-11-20"
# A tiny but real budget: enough to show the wiring, not to reach the default accuracy.
TINY = {"profile": "quick", "max_seq_length": 32, "epochs": 1, "train_batch_size": 16, "max_train_samples": 96,
        "learning_rate": 1e-4, "min_accuracy": 0.0}


# Tiny models are random-ish: the "beat the deployed model" rule is off in tests.
DEPLOY = {**TINY, "min_improvement": -1.0}


def load_dag(dag_id: str):
    """A DAG from the project's dags folder, failing on import errors."""
    from include.pipeline.cli import load_dag as _load

    return _load(dag_id) if dag_id != "review_sentiment_pipeline" else _load()


def run_dag(dag_id: str, ds: str = DS, **conf):
    """One ``dag.test()`` run for ``ds``; returns (DagRun, {task_id: TaskInstance})."""
    from include.pipeline.cli import logical_date_for

    dag = load_dag(dag_id)
    dr = dag.test(logical_date=logical_date_for(date.fromisoformat(ds)), run_conf=conf)
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id,
                                                         TaskInstance.run_id == dr.run_id)).all()
        states = {ti.task_id: str(ti.state) for ti in tis}
    return dr, states


@pytest.fixture
def landed(reviews_home, airflow_db) -> Path:
    """Two daily drops of real reviews (600 rows) ending at DS in a fresh state dir."""
    root = uri_to_path(get_settings().landing_uri)
    land_daily_drops(root, date.fromisoformat(DS), days=2, limit=600)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoint_port(landed, monkeypatch):
    """A free loopback port for the model endpoint; the endpoint is stopped afterwards."""
    from include.serving.endpoint import get_endpoint

    port = _free_port()
    monkeypatch.setenv("ENDPOINT_PORT", str(port))
    yield port
    get_endpoint().stop()


# Kept in its own module: `chromium` (Debian's browser, installed when missing).
from tests.integration.browser import chromium  # noqa: E402,F401
