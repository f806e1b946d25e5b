"""The production stack (include/pipeline/stack.py) as a session-scoped pytest fixture.

One stack per test session: Postgres (a database of its own, dropped at the end), Redis (a key
prefix of its own), scheduler, dag-processor, triggerer, api-server on a free loopback port and
two Celery workers, with a state dir of its own where real reviews are landed for
``STACK_DAYS``. Scheduled runs are off (``use_job_schedule = False``): a test makes every run
itself, through the REST API, with a JWT from ``/auth/token`` for a user with a random password
(``SIMPLE_AUTH_MANAGER_ALL_ADMINS`` of the rest of the suite is not passed to the stack).

Use it as ``def test_x(stack: StackClient)``; ``stack.stack`` is the :class:`Stack` itself
(services, pids, logs), ``stack.state_dir`` its REVIEWS_HOME.
"""
from __future__ import annotations

import secrets
import time
from datetime import date
from pathlib import Path

import httpx
import pytest

from include.pipeline.stack import Stack, StackError

DAG_ID = "review_sentiment_pipeline"
STACK_END = date(2026, 11, 20)
STACK_DAYS = 5  # landed: 2026-11-16 .. 2026-11-20, 100 reviews a day
STACK_ROWS = 500
FINISHED = ("success", "failed")


class StackClient:
    """The REST API of a running stack, authenticated like a user: a JWT from ``POST /auth/token``."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.state_dir: Path = stack.state_dir
        st = stack.state()
        self.base = stack.api_url
        self.user, self.password = st.ui_user, st.ui_password
        self._token: str | None = None

    def token(self) -> str:
        """A fresh access token for the stack's admin user."""
        resp = httpx.post(f"{self.base}/auth/token", json={"username": self.user, "password": self.password},
                          timeout=30)
        assert resp.status_code == 201, resp.text
        return resp.json()["access_token"]

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """``method`` on ``/api/v2<path>`` with the bearer token (renewed once on 401)."""
        for _ in range(2):
            self._token = self._token or self.token()
            resp = httpx.request(method, f"{self.base}/api/v2{path}", timeout=60,
                                 headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
            if resp.status_code != 401:
                return resp
            self._token = None
        return resp

    def trigger(self, logical_date: str, conf: dict, dag_id: str = DAG_ID) -> str:
        """Trigger a run (``POST /dags/{dag_id}/dagRuns``); its run id."""
        resp = self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": conf})
        assert resp.status_code == 200, resp.text
        return resp.json()["dag_run_id"]

    def run(self, run_id: str, dag_id: str = DAG_ID) -> dict:
        """One DAG run as the API returns it."""
        resp = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, dict]:
        """{task_id: task instance} of a run."""
        resp = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        assert resp.status_code == 200, resp.text
        return {ti["task_id"]: ti for ti in resp.json()["task_instances"]}

    def wait_run(self, run_id: str, timeout_s: float = 900, dag_id: str = DAG_ID) -> dict:
        """Poll a run until it finishes; fails with the task states and the stack's health on timeout
        or when a service of the stack died."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.run(run_id, dag_id)
            if run["state"] in FINISHED:
                return run
            dead = [n for n in self.stack.services() if self.stack.pid(n) is None]
            assert not dead, f"stack services died: {dead}\n{self.stack.log_tail(dead[0])}"
            if time.monotonic() > deadline:
                states = {k: v["state"] for k, v in self.task_instances(run_id, dag_id).items()}
                pytest.fail(f"run {run_id} still {run['state']} after {timeout_s:.0f}s: {states}")
            time.sleep(3)

    def task_log(self, run_id: str, task_id: str, try_number: int, dag_id: str = DAG_ID) -> str:
        """The task log of one try, as text."""
        resp = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                            headers={"Accept": "application/json"})
        assert resp.status_code == 200, resp.text
        content = resp.json()["content"]
        return "\n".join(c.get("event", "") if isinstance(c, dict) else str(c) for c in content)


def _land(state_dir: Path) -> None:
    from include.common.config import Settings
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
                 db_name=f"reviews_test_{secrets.token_hex(4)}", timeout_s=300)
        client = StackClient(st)
        # the dag-processor has parsed the pipeline: the API knows it
        deadline = time.monotonic() + 180
        while client.request("GET", f"/dags/{DAG_ID}").status_code != 200:
            if time.monotonic() > deadline:
                raise StackError(f"{DAG_ID} not parsed after 180s:\n{st.log_tail('dag-processor')}")
            time.sleep(2)
        yield client
    finally:
        st.stop(drop_database=True)
