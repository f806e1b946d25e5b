"""`make run` interrupted: a real `python -m include.pipeline.cli run` on the tiny conf, stopped
with a real SIGINT / SIGTERM in the middle of a task, leaves no run `running` behind; a run left
`running` by a dag.test() process killed outright is failed by the next `make run`, which says so."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import psutil

from include.pipeline.cli import DAG_ID, logical_date_for
from tests.conftest import ROOT
from tests.integration.conftest import DS, TINY


def _cli(log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "include.pipeline.cli", *args], cwd=ROOT, env=dict(os.environ),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _run(ds: str) -> tuple[str | None, str | None, dict[str, str], str | None]:
    """(run_id, state, {task_id: state}, note) of the DAG's run for partition ``ds``."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dr = session.scalar(select(DagRun).where(DagRun.dag_id == DAG_ID,
                                                 DagRun.logical_date == logical_date_for(date.fromisoformat(ds))))
        if dr is None:
            return None, None, {}, None
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == DAG_ID,
                                                         TaskInstance.run_id == dr.run_id)).all()
        return dr.run_id, str(dr.state), {ti.task_id: str(ti.state) for ti in tis}, dr.note


def _wait(what: str, check, proc: subprocess.Popen, log: Path, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert proc.poll() is None, f"exited {proc.returncode} before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def _running_task(ds: str, task_id: str | None = None):
    _, state, tis, _ = _run(ds)
    running = [t for t, s in tis.items() if s == "running" and task_id in (None, t)]
    return running[0] if state == "running" and running else None


def _job_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    """The job processes: children of the supervised dag.test() process (itself a child of ``proc``)."""
    try:
        return [p for p in psutil.Process(proc.pid).children(recursive=True) if p.ppid() != proc.pid]
    except psutil.NoSuchProcess:
        return []


def test_sigint_in_a_job_task_fails_the_run_and_stops_the_job(landed, tmp_path):
    log = tmp_path / "run.log"
    proc = _cli(log, "run", "--ds", DS, "--conf", json.dumps(TINY))
    try:
        _wait("the preprocess job", lambda: _running_task(DS, "preprocess") and _job_processes(proc), proc, log)
        tree = psutil.Process(proc.pid).children(recursive=True)  # dag.test() process + the job
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    run_id, state, tis, note = _run(DS)
    assert state == "failed", (state, tis)
    assert tis["register_dataset"] == "success" and tis["preprocess"] == "failed"
    assert not [t for t, s in tis.items() if s in ("running", "queued", "scheduled", "up_for_retry", "None")]
    assert "interrupted by SIGINT" in note
    assert f"run {run_id} marked failed" in log.read_text()
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "processes left running"


def test_sigterm_fails_the_run(landed, tmp_path):
    log = tmp_path / "run.log"
    proc = _cli(log, "run", "--ds", DS, "--conf", json.dumps(TINY))
    try:
        # the training task: long enough that it is still running when the signal lands (a short
        # task such as register_dataset may finish in between, and the next one fails instead)
        _wait("the train task", lambda: _running_task(DS, "train"), proc, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    _, state, tis, note = _run(DS)
    assert state == "failed" and tis["train"] == "failed", (state, tis)
    assert not [t for t, s in tis.items() if s in ("running", "queued", "scheduled", "up_for_retry")], tis
    assert "interrupted by SIGTERM" in note


def test_a_run_left_by_a_killed_dag_test_is_failed_by_the_next_make_run(landed, tmp_path):
    from include.pipeline.local_runs import find_stale_runs

    earlier = (date.fromisoformat(DS) - timedelta(days=1)).isoformat()
    # The unsupervised dag.test() process, killed outright: what a `kill -9` of make run leaves.
    log0 = tmp_path / "killed.log"
    child = _cli(log0, "dag-test", "--ds", earlier, "--conf", json.dumps(TINY))
    try:
        _wait("a running task", lambda: _running_task(earlier), child, log0)
        stale_id = _run(earlier)[0]
        assert stale_id not in {r.run_id for r in find_stale_runs(DAG_ID)}, "a live owner's run is not stale"
    finally:
        child.kill()
        child.wait()
    assert _run(earlier)[1] == "running"  # left behind: this is what blocks every later run
    assert stale_id in {r.run_id for r in find_stale_runs(DAG_ID)}

    log = tmp_path / "run.log"
    proc = _cli(log, "run", "--ds", DS, "--conf", json.dumps(TINY))
    try:
        _wait("the new run's first task", lambda: _running_task(DS), proc, log)
        assert f"failed stale run {DAG_ID} / {stale_id}" in log.read_text()
        assert _run(DS)[0] not in {r.run_id for r in find_stale_runs(DAG_ID)}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    _, state, tis, note = _run(earlier)
    assert state == "failed" and "left running by an earlier dag.test()" in note, (state, note)
    assert not [t for t, s in tis.items() if s == "running"]
    assert _run(DS)[1] == "failed"
