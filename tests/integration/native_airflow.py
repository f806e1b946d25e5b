"""A real Airflow started natively for a test: api-server, scheduler, dag-processor and triggerer
as separate processes (LocalExecutor), each in its own process group, on a copy of a freshly migrated
metadata DB and a free loopback port. Runs are triggered and watched over the REST API
with a token from ``POST /auth/token``, as a user (or a browser) would.

The fixture ``native_airflow`` yields an :class:`AirflowStack`; a stack started some other way
(the production stack, `make stack`) can stand in for it as long as it offers the same
``base_url``, ``login`` and ``token()``.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import _free_port

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TERMINAL_RUN_STATES = ("success", "failed")


@dataclass
class AirflowStack:
    """A running Airflow: where its UI/API answers, the UI login, its processes and logs."""

    base_url: str
    login: tuple[str, str]
    home: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _token: str | None = None

    def token(self) -> str:
        """A JWT for ``login`` from ``POST /auth/token`` (the UI takes the same token as its
        ``_token`` cookie)."""
        if self._token is None:
            user, password = self.login
            resp = httpx.post(f"{self.base_url}/auth/token", json={"username": user, "password": password},
                              timeout=30)
            assert resp.status_code == 201, f"POST /auth/token: {resp.status_code} {resp.text}"
            self._token = resp.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One authenticated REST call, ``path`` relative to ``/api/v2``."""
        return httpx.request(method, f"{self.base_url}/api/v2{path}", timeout=30,
                             headers={"Authorization": f"Bearer {self.token()}"}, **kwargs)

    def logs(self, tail: int = 2500) -> str:
        """The last ``tail`` characters of every component's log (for assertion messages)."""
        return "\n".join(f"--- {name} ---\n{(self.home / f'{name}.log').read_text(errors='replace')[-tail:]}"
                         for name in self.procs)

    def check_alive(self) -> None:
        """Fail with the component's log if one of the processes has exited."""
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"airflow {name} exited with {proc.returncode}:\n{self.logs()}"

    def wait_for(self, what: str, check, timeout_s: float = 600, every_s: float = 2):
        """Poll ``check()`` until it returns something truthy; fail naming ``what`` otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = check()
            if found:
                return found
            self.check_alive()
            assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}\n{self.logs()}"
            time.sleep(every_s)

    def trigger(self, dag_id: str, logical_date: datetime, conf: dict) -> str:
        """Trigger a run over the REST API once the dag-processor has serialized ``dag_id``;
        returns its run id."""
        self.wait_for(f"{dag_id} to be parsed", lambda: self.api("GET", f"/dags/{dag_id}").status_code == 200,
                      timeout_s=300)
        resp = self.api("POST", f"/dags/{dag_id}/dagRuns",
                        json={"logical_date": logical_date.isoformat(), "conf": conf})
        assert resp.status_code == 200, f"trigger {dag_id}: {resp.status_code} {resp.text}"
        return resp.json()["dag_run_id"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``{task_id: state}`` of one run."""
        resp = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        assert resp.status_code == 200, resp.text
        return {ti["task_id"]: ti["state"] for ti in resp.json()["task_instances"]}

    def wait_for_task_state(self, dag_id: str, run_id: str, task_id: str, state: str,
                            timeout_s: float = 600) -> dict[str, str | None]:
        """Wait until ``task_id`` is in ``state``; fail at once if the run ends first."""
        def check():
            states = self.task_states(dag_id, run_id)
            run_state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
            assert run_state not in TERMINAL_RUN_STATES or states.get(task_id) == state, \
                f"run {run_id} ended {run_state} before {task_id} was {state}: {states}\n{self.logs()}"
            return states if states.get(task_id) == state else None

        return self.wait_for(f"{dag_id}.{task_id} to be {state}", check, timeout_s)

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 600) -> tuple[str, dict[str, str | None]]:
        """Wait until the run has ended; returns (run state, {task_id: state})."""
        def check():
            state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
            return state if state in TERMINAL_RUN_STATES else None

        state = self.wait_for(f"run {run_id} to end", check, timeout_s)
        return state, self.task_states(dag_id, run_id)


def stack_env(home: Path, port: int, password_file: Path) -> dict[str, str]:
    """The environment of every component: the test's own (REVIEWS_HOME, ENDPOINT_PORT, ...) plus
    a metadata DB, executor, login and execution API of this stack."""
    env = dict(os.environ)
    # The suite's in-process REST calls run with everyone admin; a browser logs in here.
    env.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", None)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        # one secret for every component: the scheduler's task tokens are checked by the api-server
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # Only the runs a test triggers: no nightly run for "yesterday" appears when the DAG is parsed.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    })
    return env


def _stop(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGTERM the component's process group, SIGKILL what is left of it after 30 s, including
    descendants that started a process group of their own; returns the processes it stopped."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    groups = {proc.pid}
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            groups.add(os.getpgid(p.pid))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for p in tree[1:]:  # psutil checks it is still the same process before killing
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=30)
    return tree


def _alive(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture(scope="session")
def empty_metadata_db(tmp_path_factory) -> Path:
    """A freshly migrated metadata DB that no test has written to (the session's DB holds the
    dag.test() runs of other tests: a run left there could hold the DAG's one active-run slot)."""
    home = tmp_path_factory.mktemp("airflow-stack-template")
    env = {**os.environ, "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
    proc = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return home / "airflow.db"


@pytest.fixture
def native_airflow(empty_metadata_db, endpoint_port, tmp_path):
    """api-server, scheduler, dag-processor and triggerer of a fresh Airflow (LocalExecutor) on a
    copy of an empty migrated DB; the test's REVIEWS_HOME / ENDPOINT_PORT are inherited. All
    stopped (process groups) at the end; the endpoint a run deployed is stopped by ``endpoint_port``."""
    home = tmp_path / "airflow-stack"
    home.mkdir()
    shutil.copy2(empty_metadata_db, home / "airflow.db")
    password_file = home / "passwords.json"
    password = secrets.token_urlsafe(12)
    password_file.write_text(json.dumps({"admin": password}))
    password_file.chmod(0o600)
    port = _free_port()
    env = stack_env(home, port, password_file)
    stack = AirflowStack(base_url=f"http://127.0.0.1:{port}", login=("admin", password), home=home)
    try:
        for name in COMPONENTS:
            where = ["--host", "127.0.0.1", "--port", str(port)] if name == "api-server" else []
            args = [sys.executable, "-m", "airflow", name, *where]
            with open(home / f"{name}.log", "w") as log:
                stack.procs[name] = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                     stdin=subprocess.DEVNULL, start_new_session=True)

        def healthy():
            try:
                health = httpx.get(f"{stack.base_url}/api/v2/monitor/health", timeout=5).json()
            except (httpx.TransportError, ValueError):
                return None
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

        stack.wait_for("all components healthy", healthy, timeout_s=300)
        yield stack
    finally:
        stopped = [p for name in reversed(list(stack.procs)) for p in _stop(stack.procs[name])]
        time.sleep(0.5)  # SIGKILLed processes take a moment to disappear
        left = _alive(stopped)
        assert not left, "processes of the Airflow stack survived teardown: " + "; ".join(left)
