"""The production stack (include/pipeline/stack.py) as a session-scoped pytest fixture.

One stack per test session: Postgres (a database of its own, dropped at the end), Redis (a key
prefix of its own), scheduler, dag-processor, triggerer, api-server on a free loopback port and
two Celery workers, with a state dir of its own where real reviews are landed for
``STACK_DAYS``. Its runs' deadline is one minute (``RUN_DEADLINE_MINUTES``), so the scheduler
fires the DAG's deadline alert for every run that takes longer. Scheduled runs are off
(``use_job_schedule = False``): a test makes every run itself, through the REST API, with a JWT
from ``/auth/token`` for a user with a random password (``SIMPLE_AUTH_MANAGER_ALL_ADMINS`` of the
rest of the suite is not passed to the stack).

Use it as ``def test_x(stack: StackClient)``; ``stack.stack`` is the :class:`Stack` itself
(services, pids, logs), ``stack.state_dir`` its REVIEWS_HOME. The stack tests and the browser
tests (``test_production_stack.py``, ``test_ui_approval.py``) share the one stack; ``stack_state``
points this process at its catalog, store and registry.
"""
from __future__ import annotations

import secrets
import time
from datetime import date
from pathlib import Path

import pytest

from include.common.config import Settings
from include.pipeline.stack import Stack, StackAPI, StackError

DAG_ID = "review_sentiment_pipeline"
STACK_END = date(2026, 11, 20)
STACK_DAYS = 5  # landed: 2026-11-16 .. 2026-11-20, 100 reviews a day
STACK_ROWS = 500
RUN_DEADLINE_MINUTES = "1"  # the DAG's deadline alert, shortened so that the stack's runs overrun it


# The REST client lives with the stack (the benchmark uses it too); tests know it by this name.
StackClient = StackAPI


def _land(state_dir: Path) -> None:
    from include.common.io import uri_to_path
    from include.data.landing import land_daily_drops

    landing = uri_to_path(Settings(backend="local", state_dir=state_dir).landing_uri)
    land_daily_drops(landing, STACK_END, days=STACK_DAYS, limit=STACK_ROWS)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> StackClient:
    """A running production stack for the session; every process of it is stopped afterwards."""
    state_dir = tmp_path_factory.mktemp("stack-state")
    _land(state_dir)
    st = Stack(state_dir)
    try:
        st.start(ui_password=secrets.token_urlsafe(12), schedule=False,
                 db_name=f"reviews_test_{secrets.token_hex(4)}", timeout_s=300,
                 extra_env={"AIRFLOW__REVIEWS__RUN_DEADLINE_MINUTES": RUN_DEADLINE_MINUTES})
        client = StackAPI(st)
        # the dag-processor has parsed the pipeline: the API knows it
        deadline = time.monotonic() + 180
        while client.request("GET", f"/dags/{DAG_ID}").status_code != 200:
            if time.monotonic() > deadline:
                raise StackError(f"{DAG_ID} not parsed after 180s:\n{st.log_tail('dag-processor')}")
            time.sleep(2)
        yield client
    finally:
        st.stop(drop_database=True)


@pytest.fixture
def stack_state(stack: StackClient, monkeypatch) -> Settings:
    """This process reads the stack's catalog, store and registry (its REVIEWS_HOME)."""
    monkeypatch.setenv("REVIEWS_HOME", str(stack.state_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{stack.state_dir / 'mlflow' / 'mlflow.db'}")
    return Settings(backend="local", state_dir=stack.state_dir)
