"""``dag.test()`` runs started from a terminal (``make run``): owned, interruptible, never left ``running``.

``dag.test()`` runs a DAG inside the calling process, without a scheduler. When that process
dies in the middle of a task (Ctrl-C, ``kill``), nothing marks its DAG run finished: it stays
``running`` in the metadata DB, and with ``max_active_runs=1`` every later run of the DAG (from
the UI, the REST API or the schedule) waits in ``queued`` with no word of why. Worse, Airflow's
task runner replaces the process's SIGTERM handler while a task runs (it only calls the
operator's ``on_kill``), so a plain ``kill`` does not even stop a ``dag.test()``. Hence:

- :func:`supervise` runs the ``dag.test()`` process as a child in its own session and owns the
  signals: on SIGINT/SIGTERM it kills that child and the job processes under it (not the model
  endpoint, which outlives runs by design) and marks the run failed, with a note saying why;
- :func:`owner_lock` is held by the ``dag.test()`` process while it runs: it tells a live owner
  from a dead one without trusting a recycled pid, and refuses a second run of the same DAG and
  logical date (``dag.test()`` would delete the first one's run under it);
- :func:`fail_stale_runs` fails, at the start of ``make run``, the ``dag.test()`` runs still
  ``running`` that no live process owns any more (one killed with SIGKILL, a crashed machine).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from include.common.config import safe_name
from include.common.errors import NonRetriableError

Logger = Callable[[str], None]
# A dag.test() run whose process recorded nothing yet (no owner lock, no task started) is
# given this long before it counts as abandoned: it may be a run another tool is starting.
UNRECORDED_GRACE_S = 600
# How long the job processes of an interrupted run get to exit on SIGTERM before SIGKILL.
JOB_STOP_GRACE_S = 10
# The local model endpoint (include/serving/endpoint.py) is started by deploy_model in its own
# session and serves after the run ends: stopping a run must not take the endpoint down.
_ENDPOINT_SERVER_MODULE = "include.serving.server"


class RunAlreadyActiveError(NonRetriableError):
    """Another live process is running the same DAG for the same logical date."""


@dataclass(frozen=True)
class StaleRun:
    """A ``dag.test()`` run left ``running`` by a process that is gone."""

    dag_id: str
    run_id: str
    why: str


def _airflow_home() -> Path:
    from airflow.configuration import AIRFLOW_HOME

    return Path(AIRFLOW_HOME)


def lock_path(dag_id: str, logical_date: datetime) -> Path:
    """The owner lock of the ``dag.test()`` run of ``dag_id`` at ``logical_date``."""
    stamp = logical_date.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return _airflow_home() / "dag_test_owners" / f"{safe_name(dag_id)}__{stamp}.lock"


@contextlib.contextmanager
def owner_lock(dag_id: str, logical_date: datetime) -> Iterator[Path]:
    """Hold the owner lock of this run for the block (the holder's pid is written into it).

    Raises :class:`RunAlreadyActiveError` naming the other process when it is held already. The
    file is left in place afterwards (unlinking a flock'ed file races with the next holder); an
    unlocked file means "no owner".
    """
    path = lock_path(dag_id, logical_date)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "?"
            raise RunAlreadyActiveError(
                f"{dag_id} is already running for logical date {logical_date.isoformat()} in process {other} "
                f"(owner lock {path}); wait for it to finish or stop it (kill {other}) and run again") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def _lock_state(path: Path) -> bool | None:
    """True: a live process holds the lock; False: the file exists, nobody holds it; None: no file."""
    if not path.exists():
        return None
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def _pid_alive_since(pid: int, since: datetime | None) -> bool:
    """True when ``pid`` is a live process on this host that already existed at ``since``
    (a process started later only recycled the pid)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return since is None or proc.create_time() <= since.timestamp() + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _stale_reason(dr, tis: list, now: float) -> str | None:
    """Why ``dr`` (a running dag.test() run) has no owner any more, or None when it may have one."""
    from airflow.utils.net import get_hostname

    if dr.logical_date is not None and _lock_state(lock_path(dr.dag_id, dr.logical_date)) is True:
        return None  # its make run process is alive
    host = get_hostname()
    started = [ti for ti in tis if ti.pid]
    if any(ti.hostname and ti.hostname != host for ti in started):
        return None  # run by another machine sharing this metadata DB: we cannot see its processes
    if any(_pid_alive_since(ti.pid, ti.start_date) for ti in started):
        return None  # dag.test() runs tasks in its own process: that process still lives
    if started:
        last = max(started, key=lambda ti: ti.start_date or datetime.min.replace(tzinfo=timezone.utc))
        return f"its process {last.pid} (task {last.task_id}) is gone"
    if dr.logical_date is not None and _lock_state(lock_path(dr.dag_id, dr.logical_date)) is False:
        return "the make run process that started it is gone"
    updated = dr.updated_at.timestamp() if dr.updated_at else 0.0
    if now - updated > UNRECORDED_GRACE_S:
        return f"no process recorded for it and no change for {int(now - updated)} s"
    return None


def find_stale_runs(dag_id: str | None = None) -> list[StaleRun]:
    """``dag.test()`` runs (of ``dag_id``, or of every DAG) still ``running`` with no live owner."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy import select

    now = time.time()
    stale = []
    with create_session() as session:
        query = select(DagRun).where(DagRun.state == DagRunState.RUNNING,
                                     DagRun.triggered_by == DagRunTriggeredByType.TEST)
        if dag_id:
            query = query.where(DagRun.dag_id == dag_id)
        for dr in session.scalars(query).all():
            tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dr.dag_id,
                                                             TaskInstance.run_id == dr.run_id)).all()
            why = _stale_reason(dr, list(tis), now)
            if why:
                stale.append(StaleRun(dr.dag_id, dr.run_id, why))
    return stale


def fail_run(dag_id: str, run_id: str, reason: str) -> list[str]:
    """Mark a running DAG run failed, as the UI's *Mark run as failed* does, in one transaction:
    its running/deferred/awaiting-input tasks FAILED, its unfinished ones SKIPPED, ``reason`` as
    the run's note. Returns the failed task ids; [] when the run is not running (any more)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, State, TaskInstanceState
    from sqlalchemy import select

    active = {TaskInstanceState.RUNNING, TaskInstanceState.DEFERRED, TaskInstanceState.UP_FOR_RESCHEDULE,
              TaskInstanceState.AWAITING_INPUT}
    with create_session() as session:  # commits at the end, rolls back on any error
        dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if dr is None or dr.state != DagRunState.RUNNING:
            return []
        failed = []
        for ti in session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id,
                                                             TaskInstance.run_id == run_id)).all():
            if ti.state in active:
                ti.set_state(TaskInstanceState.FAILED, session=session)
                failed.append(ti.task_id)
            elif ti.state is None or ti.state not in State.finished:
                ti.set_state(TaskInstanceState.SKIPPED, session=session)
        dr.set_state(DagRunState.FAILED)
        dr.note = reason
    return failed


def fail_stale_runs(dag_id: str | None = None, log: Logger = print) -> list[StaleRun]:
    """Fail every stale ``dag.test()`` run (see :func:`find_stale_runs`), saying which and why."""
    stale = find_stale_runs(dag_id)
    for run in stale:
        tasks = fail_run(run.dag_id, run.run_id, f"Failed by make run: left running by an earlier dag.test(); {run.why}.")
        log(f"==> failed stale run {run.dag_id} / {run.run_id}: {run.why}"
            f"{' (tasks ' + ', '.join(tasks) + ' marked failed)' if tasks else ''}")
    return stale


def _running_run_id(dag_id: str, logical_date: datetime) -> str | None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(DagRun.run_id).where(DagRun.dag_id == dag_id, DagRun.logical_date == logical_date,
                                                          DagRun.state == DagRunState.RUNNING))


def _stop_tree(proc: subprocess.Popen, log: Logger) -> None:
    """Kill the dag.test() process at once (it must write nothing more), then stop its jobs."""
    import psutil

    try:
        jobs = [p for p in psutil.Process(proc.pid).children(recursive=True)
                if _ENDPOINT_SERVER_MODULE not in " ".join(p.cmdline())]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        jobs = []
    # SIGKILL, not SIGTERM: Airflow's task runner swallows SIGTERM during a task. A DB write cut
    # short is rolled back by the database; outputs are published by rename, never half-written.
    proc.kill()
    proc.wait()
    for p in jobs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(jobs, timeout=JOB_STOP_GRACE_S)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    if jobs:
        log(f"==> stopped {len(jobs)} job process(es): {', '.join(str(p.pid) for p in jobs)}")


def supervise(argv: list[str], dag_id: str, logical_date: datetime, log: Logger = print) -> int:
    """Run ``argv`` (a process that runs ``dag_id`` at ``logical_date`` with ``dag.test()``) and
    return its exit status. On SIGINT/SIGTERM: stop it and its jobs, mark its run failed, and
    return 128 + the signal number (130 for Ctrl-C, 143 for ``kill``)."""
    handled = (signal.SIGINT, signal.SIGTERM)
    received: list[int] = []
    # The handler only records the signal; the loop below acts on it. So a signal that lands
    # while the child is being started is not lost, and the child is never left unsupervised.
    previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum)) for s in handled}
    try:
        # Own session: a Ctrl-C in the terminal reaches this process only, which then stops the
        # run in order rather than leaving Airflow's task runner to turn it into a task retry.
        proc = subprocess.Popen(argv, start_new_session=True)
        while not received:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.wait(timeout=0.2)
        for s in handled:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        name = signal.Signals(received[0]).name
        log(f"\n==> {name} received: stopping the {dag_id} run (process {proc.pid})")
        _stop_tree(proc, log)
        run_id = _running_run_id(dag_id, logical_date)
        if run_id:
            tasks = fail_run(dag_id, run_id, f"Failed by make run: interrupted by {name}.")
            log(f"==> run {run_id} marked failed{' (tasks ' + ', '.join(tasks) + ' failed)' if tasks else ''}; "
                "later runs are not blocked by it")
        return 128 + received[0]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
